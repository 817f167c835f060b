"""The status page as an operator sees it: headless Chromium (Debian's, driven by selenium through
chromedriver) against gunicorn with two workers and the fake upstream. Sign in through the
form, read the accounts, keys and chart, watch the numbers change without a reload, and see
hostile names as text.

Chromium comes from ``make test`` (apt-get); without it the test skips, except under
``CI=true``, where it fails.
"""

import json
import os
import re

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.helpers import cli, wait_for
from tests.fake_upstream import USAGE, auth_json
from tests.helpers import Gateway, service_missing

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1100")
TOKEN = "e2e-status-admin-token-0123456789"
HOSTILE_EMAIL = '<img src=x onerror="window.pwned=1">'
HOSTILE_KEY = "<script>window.pwned=2</script>"
LATE_EMAIL = '<img src=y onerror="window.pwned=3">'
LIMITED = {"status": 429, "body": {"error": {"type": "usage_limit_reached",
                                             "message": "The usage limit has been reached", "resets_in_seconds": 3600}}}
# Time for a change to show: a request's usage row is written within 0.1 s here, and the page
# refreshes every 5 s.
SHOWS_WITHIN = 15


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        service_missing(f"Chromium is not installed ({CHROMIUM}, {CHROMEDRIVER}): "
                        "apt-get install chromium chromium-driver, which `make test` does")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def watched(fake_upstream, tmp_path_factory):
    server = Gateway(tmp_path_factory.mktemp("status"), fake_upstream.base_url,
                     env={"RESPONSES_PROXY_ADMIN_TOKEN": TOKEN, "RESPONSES_PROXY_QUOTA_POLL_SECONDS": "1"})
    server.start()
    yield server
    server.stop()


def flask(gateway, *args):
    return json.loads(cli(gateway, *args, "--json"))


def import_account(gateway, tmp_path, account_id, email):
    path = tmp_path / f"{account_id}.json"
    path.write_text(json.dumps(auth_json(account_id=account_id, email=email, last_refresh="2099-01-01T00:00:00Z")))
    return flask(gateway, "accounts", "import", str(path))["id"]


def ask(gateway, key):
    return requests.post(gateway.url + "/v1/responses", headers={"Authorization": f"Bearer {key}"},
                         json={"model": "gpt-5.2", "input": "hi"}, timeout=20).status_code


def document(gateway):
    reply = requests.get(gateway.url + "/status/data.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.json()


def accounts_shown(driver):
    """{email as shown: {state, words, quota bar widths, use}} of the accounts table."""
    rows = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "#accounts tbody > tr[data-item]"):
        state = row.find_element(By.CSS_SELECTOR, ".state")
        bars = row.find_elements(By.CSS_SELECTOR, "svg.bar rect.fill")
        rows[row.find_element(By.CSS_SELECTOR, "[data-text=email]").text] = {
            "state": state.get_attribute("data-state"), "words": state.text,
            "bars": [bar.get_attribute("width") for bar in bars],
            "bar_pixels": [bar.rect["width"] for bar in bars],
            "last_hour": row.find_elements(By.CSS_SELECTOR, "td.num")[0].text.split()}
    return rows


def key_shown(driver, name):
    for row in driver.find_elements(By.CSS_SELECTOR, "#keys tbody > tr[data-item]"):
        if row.find_element(By.CSS_SELECTOR, "[data-text=name]").text == name:
            return [cell.text for cell in row.find_elements(By.CSS_SELECTOR, "td")]
    return None


def chart_shown(driver, chart):
    """(requests or tokens per hour, as the bars' tooltips say; the bars' heights in pixels)."""
    bars = driver.find_elements(By.CSS_SELECTOR, f"#{chart}-chart rect")
    counts = [int(re.search(rf"(\d+) {chart}", bar.get_attribute("textContent")).group(1)) for bar in bars]
    return counts, [bar.rect["height"] for bar in bars]


def nothing_injected(driver):
    assert driver.find_elements(By.CSS_SELECTOR, "main img, main script") == []
    assert driver.execute_script("return window.pwned") is None
    # The page's own script and style are all it loads: nothing the policy had to refuse.
    refused = [entry["message"] for entry in driver.get_log("browser") if "Content Security Policy" in entry["message"]]
    assert refused == []


def test_an_operator_signs_in_and_watches_the_gateway(watched, upstream, browser, tmp_path):
    key = flask(watched, "keys", "create", "--name", HOSTILE_KEY, "--rpm", "100", "--concurrency", "5",
                "--daily-tokens", "100000")["key"]
    # The first account cools down after the upstream's 429, before any other can serve.
    upstream.push(LIMITED, account="acct-status-cooling")
    import_account(watched, tmp_path, "acct-status-cooling", "cooling@example.com")
    assert ask(watched, key) == 429
    import_account(watched, tmp_path, "acct-status-active", HOSTILE_EMAIL)
    disabled = import_account(watched, tmp_path, "acct-status-disabled", "disabled@example.com")
    flask(watched, "accounts", "disable", disabled)
    assert [ask(watched, key) for _ in range(3)] == [200, 200, 200]
    # The plan windows of the serving account are polled; every row is written.
    assert wait_for(lambda: [row["quota"]["primary"]["used_percent"] for row in document(watched)["accounts"]
                             if row["email"] == HOSTILE_EMAIL] == [10.0]
                    and sum(hour["requests"] for hour in document(watched)["chart"]["hours"]) == 4, timeout=10)

    browser.get(watched.url + "/status")
    browser.find_element(By.NAME, "token").send_keys("not-the-admin-token")
    browser.find_element(By.CSS_SELECTOR, "form button").click()
    (error,) = WebDriverWait(browser, 10).until(lambda driver: driver.find_elements(By.ID, "login-error"))
    assert error.text == "That is not the admin token."
    browser.find_element(By.NAME, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "form button").click()
    WebDriverWait(browser, 10).until(lambda driver: driver.find_elements(By.ID, "accounts"))
    assert browser.current_url == watched.url + "/status"

    accounts = accounts_shown(browser)
    assert set(accounts) == {HOSTILE_EMAIL, "cooling@example.com", "disabled@example.com"}
    assert accounts[HOSTILE_EMAIL]["state"] == "active" and accounts[HOSTILE_EMAIL]["words"] == "active"
    assert accounts["cooling@example.com"]["state"] == "cooling_down"
    assert re.fullmatch(r"cooling down until \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", accounts["cooling@example.com"]["words"])
    assert accounts["disabled@example.com"]["words"] == "disabled"
    # The fake upstream's plan windows: 10% and 5% used.
    assert [float(width) for width in accounts[HOSTILE_EMAIL]["bars"]] == [10.0, 5.0]
    primary, secondary = accounts[HOSTILE_EMAIL]["bar_pixels"]
    assert primary > secondary > 0
    assert accounts[HOSTILE_EMAIL]["last_hour"] == ["3", "req", str(3 * USAGE["total_tokens"]), "tok"]
    tokens = 3 * USAGE["total_tokens"]
    assert key_shown(browser, HOSTILE_KEY)[1:] == ["100", "5", "100000", "0", str(tokens), f"4 req\n{tokens} tok"]
    requests_per_hour, heights = chart_shown(browser, "requests")
    assert len(requests_per_hour) == 24 and sum(requests_per_hour) == 4
    assert all((height > 0) == (count > 0) for count, height in zip(requests_per_hour, heights, strict=True))
    assert sum(chart_shown(browser, "tokens")[0]) == tokens
    nothing_injected(browser)
    browser.save_screenshot(str(tmp_path / "status.png"))

    # A request and an account more: the open page shows them by itself.
    browser.execute_script("window.notReloaded = true")
    late = import_account(watched, tmp_path, "acct-status-late", LATE_EMAIL)
    flask(watched, "accounts", "disable", late)
    assert ask(watched, key) == 200
    tokens += USAGE["total_tokens"]
    # A new row count makes the page rebuild the table: rows read meanwhile may be gone.
    WebDriverWait(browser, SHOWS_WITHIN, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda driver: sum(chart_shown(driver, "requests")[0]) == 5 and len(accounts_shown(driver)) == 4
        and key_shown(driver, HOSTILE_KEY)[5] == str(tokens))
    accounts = accounts_shown(browser)
    assert accounts[HOSTILE_EMAIL]["last_hour"][0] == "4"
    assert (accounts[LATE_EMAIL]["state"], accounts[LATE_EMAIL]["words"]) == ("disabled", "disabled")
    assert browser.execute_script("return window.notReloaded") is True
    assert browser.find_element(By.ID, "problem").text == ""
    nothing_injected(browser)
    browser.save_screenshot(str(tmp_path / "status-updated.png"))

    browser.find_element(By.CSS_SELECTOR, "header form button").click()
    WebDriverWait(browser, 10).until(lambda driver: driver.find_elements(By.NAME, "token"))
    browser.get(watched.url + "/status/data.json")
    assert "Missing admin token" in browser.find_element(By.TAG_NAME, "body").text
