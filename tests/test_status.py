"""The operator's status page (``/status``) through Flask's test client: off without an admin
token, the bearer token and the login form with its cookie, what it shows, escaped."""

import json
import re
import time

import pytest

from responses_proxy.cli import when
from responses_proxy.crypto import encryption_key
from responses_proxy.store import accounts as account_store
from responses_proxy.store import keys as key_store
from responses_proxy.store import usage as usage_store
from responses_proxy.store.accounts import upsert
from responses_proxy.upstream.credentials import parse_auth_json
from tests.fake_upstream import auth_json
from tests.helpers import built_usage_row, make_app

TOKEN = "status-admin-token-0123456789"
HOSTILE_EMAIL = '<img src=x onerror="window.pwned=1">'
HOSTILE_KEY = "<script>window.pwned=1</script>"


@pytest.fixture
def status_app(tmp_path, upstream):
    app = make_app(tmp_path, upstream.base_url, ADMIN_TOKEN=TOKEN)
    yield app
    app.extensions["responses_proxy"].engine.dispose()


@pytest.fixture
def web(status_app):
    return status_app.test_client()


@pytest.fixture
def store(status_app):
    return status_app.extensions["responses_proxy"]


def bearer(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def add_account(store, **kwargs):
    return upsert(store.engine, store.cipher, parse_auth_json(json.dumps(auth_json(**kwargs)).encode()))[0]


def error_of(reply, status):
    assert reply.status_code == status, reply.data
    assert reply.mimetype == "application/json"
    body = reply.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}
    return body["error"]


def session_cookie(reply):
    cookies = [value for value in reply.headers.getlist("Set-Cookie") if value.startswith("responses_proxy_status=")]
    assert len(cookies) == 1, reply.headers
    return cookies[0]


def sign_in(web, token=TOKEN, **kwargs):
    return web.post("/status", data={"token": token}, **kwargs)


# --- off without a token ------------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [("GET", "/status"), ("POST", "/status"), ("GET", "/status/data.json"),
                                          ("POST", "/status/logout"), ("GET", "/status/static/status.js")])
def test_without_an_admin_token_the_page_is_the_usual_404(client, method, path):
    reply = client.open(path, method=method, headers=bearer("anything-at-all-long-enough"))
    unknown = client.open("/no-such-page", method=method)

    assert error_of(reply, 404) == error_of(unknown, 404)
    assert error_of(reply, 404)["code"] == "not_found"
    assert "Set-Cookie" not in reply.headers


def test_without_an_admin_token_flask_has_no_session_key(app):
    assert app.secret_key is None


# --- the bearer token ---------------------------------------------------------------------------

def test_the_admin_token_as_bearer_opens_the_page_and_its_data(web):
    page = web.get("/status", headers=bearer())
    data = web.get("/status/data.json", headers=bearer())

    assert page.status_code == 200 and page.mimetype == "text/html"
    assert '<table id="accounts">' in page.text and 'name="token"' not in page.text
    assert data.status_code == 200 and set(data.get_json()) == {"generated_at", "generated_at_text", "accounts",
                                                                "keys", "chart"}
    assert "Set-Cookie" not in page.headers, "a bearer token needs no session"


@pytest.mark.parametrize("header", ["Bearer wrong-token-of-some-length", "Bearer ", f"Basic {TOKEN}", TOKEN,
                                    f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"])
@pytest.mark.parametrize("path", ["/status", "/status/data.json"])
def test_a_wrong_bearer_token_is_401(web, path, header):
    reply = web.get(path, headers={"Authorization": header})

    error = error_of(reply, 401)
    assert error == {"message": "Incorrect admin token provided.", "type": "invalid_request_error",
                     "code": "invalid_api_key", "param": None}
    assert reply.headers["WWW-Authenticate"] == "Bearer"


def test_a_wrong_bearer_token_is_401_even_with_a_session(web):
    sign_in(web)
    assert web.get("/status/data.json").status_code == 200

    error_of(web.get("/status/data.json", headers=bearer("wrong-token-of-some-length")), 401)


def test_the_data_without_any_token_is_401_naming_both_ways_in(web):
    error = error_of(web.get("/status/data.json"), 401)
    assert error["message"] == ("Missing admin token: sign in at /status, or send it as "
                                "'Authorization: Bearer <token>'.")


# --- the login form and its cookie ------------------------------------------------------------

def test_without_a_token_the_page_is_its_login_form_and_shows_nothing_else(web, store):
    add_account(store, email="secret-operator@example.com")

    reply = web.get("/status")

    assert reply.status_code == 200
    assert '<form method="post" action="/status">' in reply.text and 'name="token" type="password"' in reply.text
    assert "secret-operator@example.com" not in reply.text and "accounts" not in reply.text.lower()


def test_a_wrong_token_in_the_form_gets_the_form_again_with_an_error(web):
    reply = sign_in(web, "not-the-admin-token-at-all")

    assert reply.status_code == 401
    assert 'name="token"' in reply.text and "That is not the admin token." in reply.text
    assert "responses_proxy_status=" not in reply.headers.get("Set-Cookie", "")
    error_of(web.get("/status/data.json"), 401)


def test_signing_in_sets_a_strict_http_only_cookie_that_opens_page_and_data(web):
    reply = sign_in(web)

    assert reply.status_code == 303 and reply.headers["Location"] == "/status"
    cookie = session_cookie(reply)
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
    assert attributes["httponly"] and attributes["samesite"] == "SameSite=Strict"
    assert attributes["path"] == "Path=/status", "the cookie goes to the page's paths only"
    assert "secure" not in attributes, "a cookie marked Secure is never sent back over http"
    page = web.get("/status")
    assert page.status_code == 200 and '<table id="accounts">' in page.text
    assert '<form method="post" action="/status/logout">' in page.text
    assert web.get("/status/data.json").status_code == 200


def test_the_cookie_is_secure_when_the_page_is_reached_over_https(web):
    reply = sign_in(web, base_url="https://status.example")

    assert "; Secure" in session_cookie(reply)


def test_signing_out_ends_the_session(web):
    sign_in(web)

    reply = web.post("/status/logout")

    assert reply.status_code == 303 and reply.headers["Location"] == "/status"
    assert "Expires=Thu, 01 Jan 1970" in session_cookie(reply)
    error_of(web.get("/status/data.json"), 401)
    assert 'name="token"' in web.get("/status").text


def test_a_forged_or_foreign_cookie_opens_nothing(web, tmp_path, upstream):
    other_token = "another-admin-token-0123456789"
    other = make_app(tmp_path / "other", upstream.base_url, ADMIN_TOKEN=other_token)
    try:
        foreign = session_cookie(sign_in(other.test_client(), other_token)).split(";")[0].split("=", 1)[1]
    finally:
        other.extensions["responses_proxy"].engine.dispose()

    for value in (foreign, "eyJvcGVyYXRvciI6dHJ1ZX0.forged.signature"):
        web.set_cookie("responses_proxy_status", value, path="/status")
        error_of(web.get("/status/data.json"), 401)


def test_a_new_admin_token_signs_every_session_out(tmp_path, upstream):
    before = make_app(tmp_path, upstream.base_url, ADMIN_TOKEN=TOKEN)
    after = make_app(tmp_path, upstream.base_url, ADMIN_TOKEN=TOKEN + "-rotated")
    again = make_app(tmp_path, upstream.base_url, ADMIN_TOKEN=TOKEN)
    try:
        value = session_cookie(sign_in(before.test_client())).split(";")[0].split("=", 1)[1]
        results = []
        for app in (after, again):
            web = app.test_client()
            web.set_cookie("responses_proxy_status", value, path="/status")
            results.append(web.get("/status/data.json").status_code)
    finally:
        for app in (before, after, again):
            app.extensions["responses_proxy"].engine.dispose()

    assert results == [401, 200], "another token: signed out; the same token (another worker, a restart): signed in"


def test_the_session_key_is_derived_never_the_encryption_key_or_the_token(status_app, store):
    key = status_app.secret_key

    assert isinstance(key, bytes) and len(key) == 32
    assert key not in (encryption_key(store.settings), TOKEN.encode())
    assert encryption_key(store.settings) not in key and TOKEN.encode() not in key
    assert "ADMIN_TOKEN" not in status_app.config and "ENCRYPTION_KEY" not in status_app.config


def test_api_requests_carry_no_session(web, store):
    key = key_store.create(store.engine, "k")["key"]
    sign_in(web)

    for reply in (web.get("/healthz"), web.get("/v1/models", headers={"Authorization": f"Bearer {key}"})):
        assert "Set-Cookie" not in reply.headers
        assert "Cookie" not in reply.headers.get("Vary", "")


def test_the_page_loads_nothing_from_elsewhere_and_is_never_cached(web):
    reply = web.get("/status", headers=bearer())

    policy = reply.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert reply.headers["Cache-Control"] == "no-store"
    assert web.get("/status/data.json", headers=bearer()).headers["Cache-Control"] == "no-store"
    sources = re.findall(r'(?:src|href|action)="([^"]*)"', reply.text)
    assert sources and all(source.startswith("/status") for source in sources), sources
    script = web.get("/status/static/status.js")
    assert script.status_code == 200 and "innerHTML" not in script.text and "textContent" in script.text
    script.close()


# --- what it shows ------------------------------------------------------------------------------

def test_names_are_escaped_in_the_page(web, store):
    add_account(store, email=HOSTILE_EMAIL)
    key_store.create(store.engine, HOSTILE_KEY)

    page = web.get("/status", headers=bearer()).text

    assert "<img src=x" not in page and "<script>window" not in page
    assert "&lt;img src=x onerror=&#34;window.pwned=1&#34;&gt;" in page
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in page
    data = web.get("/status/data.json", headers=bearer()).get_json()
    assert data["accounts"][0]["email"] == HOSTILE_EMAIL and data["keys"][0]["name"] == HOSTILE_KEY


def test_the_data_says_each_account_state_in_the_words_of_the_accounts_listing(web, store, runner):
    now = time.time()
    ids = {}
    for name in ("active", "cooling", "disabled", "relogin"):
        ids[name] = add_account(store, account_id=f"acct-{name}", email=f"{name}@example.com")["id"]
    account_store.set_cooldown(store.engine, ids["cooling"], now + 600, "usage_limit_reached: try later")
    account_store.set_status(store.engine, ids["disabled"], account_store.DISABLED)
    account_store.set_status(store.engine, ids["relogin"], account_store.NEEDS_RELOGIN)
    account_store.save_quota(store.engine, ids["active"], {"primary": {"used_percent": 37.0, "resets_at": now + 3600},
                                                           "secondary": {"used_percent": 5.0, "resets_at": None}})

    accounts = {row["email"]: row for row in web.get("/status/data.json", headers=bearer()).get_json()["accounts"]}
    with runner.app.app_context():
        listed = {row["email"]: row["state"]
                  for row in json.loads(runner.invoke(args=["accounts", "list", "--json"]).output)}

    assert {email: row["state_text"] for email, row in accounts.items()} == listed
    assert {email: row["state"] for email, row in accounts.items()} == {
        "active@example.com": "active", "cooling@example.com": "cooling_down",
        "disabled@example.com": "disabled", "relogin@example.com": "needs_relogin"}
    cooling = accounts["cooling@example.com"]
    assert cooling["state_text"] == "cooling down until " + when(now + 600)
    assert cooling["cooldown_until"] == pytest.approx(now + 600)
    assert cooling["last_error"] == "usage_limit_reached: try later" and cooling["last_error_at_text"]
    assert accounts["relogin@example.com"]["state_text"] == "needs re-login"
    assert accounts["disabled@example.com"]["cooldown_until"] is None
    active = accounts["active@example.com"]
    assert active["quota"] == {
        "primary": {"used_percent": 37.0, "resets_at": pytest.approx(now + 3600),
                    "text": f"37% (resets {when(now + 3600)})"},
        "secondary": {"used_percent": 5.0, "resets_at": None, "text": "5%"}}
    assert accounts["cooling@example.com"]["quota"]["primary"] == {"used_percent": None, "resets_at": None,
                                                                   "text": "-"}
    page = web.get("/status", headers=bearer()).text
    for words in ("cooling down until " + when(now + 600), "needs re-login", "disabled", "37% (resets "):
        assert words in page
    assert 'data-attr="width:quota.primary.used_percent" width="37.0"' in page


def test_the_data_counts_each_account_and_key_use_and_shows_key_limits(web, store):
    now = time.time()
    account = add_account(store)
    limited = key_store.create(store.engine, "limited", rpm=60, concurrency=4, daily_tokens=100000)
    free = key_store.create(store.engine, "free")
    revoked = key_store.create(store.engine, "revoked")
    key_store.revoke(store.engine, revoked["id"])
    usage_store.insert_many(store.engine, [
        built_usage_row(now - 60, limited["id"], account_id=account["id"], total=20),
        built_usage_row(now - 120, limited["id"], account_id=account["id"], total=30),
        built_usage_row(now - 7200, free["id"], account_id=account["id"], total=50),
        built_usage_row(now - 2 * 86400, free["id"], account_id=account["id"], total=1000),
    ])

    data = web.get("/status/data.json", headers=bearer()).get_json()

    (row,) = data["accounts"]
    assert row["last_hour"] == {"requests": 2, "tokens": 50} and row["last_day"] == {"requests": 3, "tokens": 100}
    keys = {key["name"]: key for key in data["keys"]}
    assert set(keys) == {"limited", "free"}, "revoked keys are not shown"
    assert keys["limited"] == {"id": limited["id"], "name": "limited", "prefix": limited["prefix"], "rpm": 60,
                               "concurrency": 4, "daily_tokens": 100000, "in_flight": 0,
                               "tokens_today": keys["limited"]["tokens_today"],
                               "last_day": {"requests": 2, "tokens": 50}}
    assert keys["limited"]["tokens_today"] in (20, 50), "tokens of today (UTC) only"
    assert (keys["free"]["rpm"], keys["free"]["concurrency"], keys["free"]["in_flight"]) == (None, None, None)
    assert keys["free"]["last_day"] == {"requests": 1, "tokens": 50}


def test_the_chart_has_the_last_24_hours_each_scaled_to_the_busiest(web, store):
    now = time.time()
    key = key_store.create(store.engine, "k")
    this_hour = int(now) // 3600 * 3600
    rows = [built_usage_row(this_hour + 1, key["id"], total=10) for _ in range(4)]
    rows += [built_usage_row(this_hour - 3 * 3600 + 5, key["id"], total=1)]
    rows += [built_usage_row(this_hour - 24 * 3600 + 5, key["id"], total=999)]  # a day ago: not shown
    usage_store.insert_many(store.engine, rows)

    chart = web.get("/status/data.json", headers=bearer()).get_json()["chart"]

    hours = chart["hours"]
    assert len(hours) == 24 and [hour["start"] for hour in hours] == [this_hour - (23 - i) * 3600 for i in range(24)]
    assert (chart["max_requests"], chart["max_tokens"]) == (4, 40)
    last, earlier = hours[-1], hours[-4]
    assert (last["requests"], last["tokens"], last["requests_percent"], last["tokens_percent"]) == (4, 40, 100, 100)
    assert (earlier["requests"], earlier["tokens"], earlier["requests_percent"]) == (1, 1, 25)
    assert earlier["tokens_percent"] == 2.5
    assert all(hour["requests"] == 0 and hour["requests_percent"] == 0 for hour in hours[:-4] + hours[-3:-1])
    assert last["label"] == time.strftime("%H:00", time.gmtime(this_hour))
    assert last["summary"] == (f"{last['label']}–{time.strftime('%H:00', time.gmtime(this_hour + 3600))} UTC: "
                               "4 requests, 40 tokens")
    page = web.get("/status", headers=bearer()).text
    assert page.count('data-attr="height:requests_percent" height="100.0"') == 1
    assert page.count('data-attr="height:tokens_percent" height="2.5"') == 1


def test_a_quiet_hour_beside_a_busy_one_still_shows(web, store):
    key = key_store.create(store.engine, "k")
    this_hour = int(time.time()) // 3600 * 3600
    usage_store.insert_many(store.engine, [built_usage_row(this_hour + 1, key["id"], total=100000),
                                           built_usage_row(this_hour - 3600 + 1, key["id"], total=1)])

    hours = web.get("/status/data.json", headers=bearer()).get_json()["chart"]["hours"]

    assert hours[-2]["tokens_percent"] == 2.0 and hours[-1]["tokens_percent"] == 100


def test_empty_tables_say_how_to_fill_them(web):
    page = web.get("/status", headers=bearer()).text

    assert "No account: import one with" in page and "No key: create one with" in page
    assert re.search(r"<tr data-empty>", page), "shown while there are none"
