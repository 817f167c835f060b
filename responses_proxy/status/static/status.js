// Keeps the status page current without reloading it: every few seconds it fetches the page's
// document (the body's data-source) and writes it into the elements that name its fields:
//   data-text="a.b"       the field's value as the element's text ("-" for none)
//   data-attr="name:a.b"  the field's value as that attribute (none: the attribute goes)
//   data-list="a.b"       one data-item child per entry of a list; when their number changes
//                         they are cloned anew from the child <template>. Inside an item,
//                         fields are named relative to its entry.
// Values reach the page only as text and attribute values, never as markup.
"use strict";

(function () {
  const source = document.body.dataset.source;
  const period = Number(document.body.dataset.refreshMs) || 5000;
  const problem = document.getElementById("problem");

  function lookup(data, path) {
    return path.split(".").reduce((value, name) => (value == null ? undefined : value[name]), data);
  }

  // The item an element's fields are relative to (null: the document itself).
  function itemOf(element) {
    return element.parentElement ? element.parentElement.closest("[data-item]") : null;
  }

  function apply(element, data) {
    const { text, attr, list } = element.dataset;
    if (text !== undefined) {
      const value = lookup(data, text);
      element.textContent = value == null ? "-" : String(value);
    }
    if (attr !== undefined) {
      const split = attr.indexOf(":");
      const name = attr.slice(0, split);
      const value = lookup(data, attr.slice(split + 1));
      if (value == null) {
        element.removeAttribute(name);
      } else {
        element.setAttribute(name, String(value));
      }
    }
    if (list !== undefined) {
      fill(element, lookup(data, list) || []);
    }
  }

  function bind(root, item, data) {
    for (const element of root.querySelectorAll("[data-text], [data-attr], [data-list]")) {
      if (itemOf(element) === item) {
        apply(element, data);
      }
    }
  }

  function fill(container, entries) {
    let items = container.querySelectorAll(":scope > [data-item]");
    const template = container.querySelector(":scope > template");
    if (items.length !== entries.length && template) {
      items.forEach((item) => item.remove());
      for (let index = 0; index < entries.length; index += 1) {
        container.appendChild(template.content.firstElementChild.cloneNode(true));
      }
      items = container.querySelectorAll(":scope > [data-item]");
    }
    const empty = container.querySelector(":scope > [data-empty]");
    if (empty) {
      empty.hidden = entries.length > 0;
    }
    items.forEach((item, index) => {
      if (index < entries.length) {
        bind(item, item, entries[index]);
      }
    });
  }

  async function refresh() {
    let reply;
    try {
      reply = await fetch(source, { credentials: "same-origin", cache: "no-store",
                                    headers: { Accept: "application/json" } });
      if (reply.status === 401) {
        problem.textContent = "Signed out: reload the page to sign in again.";
        return false;
      }
      if (!reply.ok) {
        throw new Error("HTTP " + reply.status);
      }
      bind(document, null, await reply.json());
      problem.textContent = "";
    } catch (error) {
      problem.textContent = "Update failed (" + error.message + "); trying again.";
    }
    return true;
  }

  async function loop() {
    if (await refresh()) {
      setTimeout(loop, period);
    }
  }

  setTimeout(loop, period);
})();
