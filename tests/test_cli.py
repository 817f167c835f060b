"""The operator CLI (``flask --app wsgi ...``), run through Flask's CLI runner."""

import json
import os
import re
import time

import pytest
from sqlalchemy import update

from responses_proxy.crypto import TokenCipher, fernet_key
from responses_proxy.store import accounts as account_store
from responses_proxy.store import keys as key_store
from responses_proxy.store import migrate
from responses_proxy.store import usage as usage_store
from responses_proxy.store.tables import accounts
from tests.fake_upstream import auth_json, jwt
from tests.helpers import ROOT, built_usage_row, make_app


def run(runner, *args):
    # `flask` (FlaskGroup) pushes an app context for every command; the test runner invokes
    # app.cli directly, which does so only for commands registered on an AppGroup.
    with runner.app.app_context():
        return runner.invoke(args=list(args))


def ok(result):
    assert result.exit_code == 0, result.output
    return result.output


def failed(result):
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.output


def write(tmp_path, name, document):
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return str(path)


# --- keys -----------------------------------------------------------------------------------------

def test_keys_create_prints_id_and_key_once(runner, services):
    output = ok(run(runner, "keys", "create", "--name", "laptop"))

    [key_id] = [line.split()[1] for line in output.splitlines() if line.startswith("id:")]
    [key] = [line.split()[1] for line in output.splitlines() if line.startswith("key:")]
    assert key.startswith("sk-rp-")
    assert "only time" in output
    found = key_store.find_active(services.engine, key)
    assert found == {"id": key_id, "name": "laptop", "allowed_models": None, "rpm": None, "concurrency": None,
                     "daily_tokens": None}


def test_keys_create_json(runner, services):
    created = json.loads(ok(run(runner, "keys", "create", "--name", "ci", "--json")))

    assert created["id"].startswith("key_") and created["key"].startswith("sk-rp-")
    assert (created["name"], created["allowed_models"], created["revoked_at"]) == ("ci", None, None)
    assert key_store.find_active(services.engine, created["key"])["id"] == created["id"]


def test_keys_create_with_allowed_models(runner, services):
    created = json.loads(ok(run(runner, "keys", "create", "--name", "ci", "--allowed-models",
                                "gpt-5.2, gpt-4.1,", "--json")))

    assert created["allowed_models"] == ["gpt-5.2", "gpt-4.1"]
    assert key_store.find_active(services.engine, created["key"])["allowed_models"] == ["gpt-5.2", "gpt-4.1"]


@pytest.mark.parametrize("args, fragment", [
    pytest.param(("--name", "x", "--allowed-models", " , "), "--allowed-models", id="empty-model-list"),
    pytest.param((), "--name", id="no-name"),
])
def test_keys_create_refuses_bad_options(runner, services, args, fragment):
    output = failed(run(runner, "keys", "create", *args))
    assert fragment in output
    assert key_store.list_all(services.engine) == []


def test_keys_list_never_shows_plaintext(runner, services):
    first = key_store.create(services.engine, "first", ["gpt-5.2"])
    second = key_store.create(services.engine, "second")

    text = ok(run(runner, "keys", "list"))
    listed = json.loads(ok(run(runner, "keys", "list", "--json")))

    for created in (first, second):
        assert created["id"] in text and created["prefix"] in text
        assert created["key"] not in text and created["key"] not in json.dumps(listed)
    assert "first" in text and "gpt-5.2" in text
    assert [row["id"] for row in listed] == [first["id"], second["id"]]
    assert all("key" not in row for row in listed)


def test_keys_list_empty(runner):
    assert "(none)" in ok(run(runner, "keys", "list"))
    assert json.loads(ok(run(runner, "keys", "list", "--json"))) == []


def test_keys_revoke(runner, services):
    created = key_store.create(services.engine, "old")

    output = ok(run(runner, "keys", "revoke", created["id"]))

    assert created["id"] in output
    assert key_store.find_active(services.engine, created["key"]) is None
    assert "revoked" in ok(run(runner, "keys", "list"))


def test_keys_revoke_json(runner, services):
    created = key_store.create(services.engine, "old")
    assert json.loads(ok(run(runner, "keys", "revoke", created["id"], "--json"))) == {
        "id": created["id"], "revoked": True}


@pytest.mark.parametrize("already_revoked", [False, True], ids=["unknown-id", "already-revoked"])
def test_keys_revoke_unknown_id_fails_clearly(runner, services, already_revoked):
    key_id = "key_doesnotexist"
    if already_revoked:
        key_id = key_store.create(services.engine, "x")["id"]
        key_store.revoke(services.engine, key_id)

    output = failed(run(runner, "keys", "revoke", key_id))

    assert key_id in output and "no active key" in output


def test_keys_create_with_limits(runner, services):
    created = json.loads(ok(run(runner, "keys", "create", "--name", "ci", "--rpm", "60", "--concurrency", "2",
                                "--daily-tokens", "100000", "--json")))

    assert (created["rpm"], created["concurrency"], created["daily_tokens"]) == (60, 2, 100000)
    found = key_store.find_active(services.engine, created["key"])
    assert (found["rpm"], found["concurrency"], found["daily_tokens"]) == (60, 2, 100000)


@pytest.mark.parametrize("option", ["--rpm", "--concurrency", "--daily-tokens"])
@pytest.mark.parametrize("value", ["0", "-1", "many", "none"])
def test_keys_create_refuses_bad_limits(runner, services, option, value):
    output = failed(run(runner, "keys", "create", "--name", "x", option, value))
    assert option in output
    assert key_store.list_all(services.engine) == []


def test_keys_list_shows_limits_and_what_they_count(runner, services):
    limited = key_store.create(services.engine, "limited", rpm=60, concurrency=2, daily_tokens=1000)
    free = key_store.create(services.engine, "free")
    held = services.limits.admit(services.keys.authenticate(f"Bearer {limited['key']}")[0])
    try:
        usage_store.insert_many(services.engine, [built_usage_row(time.time() - 5, limited["id"], total=40),
                                                  built_usage_row(time.time() - 5, free["id"], total=15)])

        text = ok(run(runner, "keys", "list"))
        rows = {row["id"]: row for row in json.loads(ok(run(runner, "keys", "list", "--json")))}
    finally:
        held.release()

    assert "60 rpm, 2 at once, 1000 tokens/day" in text
    assert "LIMITS" in text and "IN FLIGHT" in text and "TOKENS TODAY" in text
    assert {name: rows[limited["id"]][name] for name in ("rpm", "concurrency", "daily_tokens", "in_flight",
                                                         "tokens_today")} == {
        "rpm": 60, "concurrency": 2, "daily_tokens": 1000, "in_flight": 1, "tokens_today": 40}
    assert {name: rows[free["id"]][name] for name in ("rpm", "concurrency", "daily_tokens", "in_flight",
                                                      "tokens_today")} == {
        "rpm": None, "concurrency": None, "daily_tokens": None, "in_flight": None, "tokens_today": 15}


def test_keys_update(runner, services):
    created = key_store.create(services.engine, "old", ["gpt-5.2"], rpm=10, concurrency=3)

    updated = json.loads(ok(run(runner, "keys", "update", created["id"], "--name", "new", "--rpm", "none",
                                "--daily-tokens", "500", "--allowed-models", "gpt-4.1,gpt-5.2", "--json")))

    assert (updated["name"], updated["allowed_models"], updated["rpm"], updated["concurrency"],
            updated["daily_tokens"]) == ("new", ["gpt-4.1", "gpt-5.2"], None, 3, 500)
    found = key_store.find_active(services.engine, created["key"])
    assert found["id"] == created["id"], "the same key: only its settings changed"
    assert (found["rpm"], found["concurrency"], found["daily_tokens"]) == (None, 3, 500)

    text = ok(run(runner, "keys", "update", created["id"], "--allowed-models", "all", "--concurrency", "none"))
    assert created["id"] in text and "models *" in text and "500 tokens/day" in text
    found = key_store.find_active(services.engine, created["key"])
    assert (found["allowed_models"], found["concurrency"]) == (None, None)


@pytest.mark.parametrize("args, fragment", [
    pytest.param((), "nothing to change", id="no-option"),
    pytest.param(("--rpm", "0"), "--rpm", id="zero"),
    pytest.param(("--concurrency", "two"), "--concurrency", id="not-a-number"),
    pytest.param(("--name", " "), "--name", id="empty-name"),
    pytest.param(("--allowed-models", ","), "--allowed-models", id="empty-model-list"),
])
def test_keys_update_refuses_bad_options(runner, services, args, fragment):
    created = key_store.create(services.engine, "k", rpm=5)
    output = failed(run(runner, "keys", "update", created["id"], *args))
    assert fragment in output
    assert key_store.find_active(services.engine, created["key"])["rpm"] == 5


def test_keys_update_unknown_or_revoked_key(runner, services):
    output = failed(run(runner, "keys", "update", "key_nope", "--rpm", "5"))
    assert "no active key with id key_nope" in output
    created = key_store.create(services.engine, "k")
    key_store.revoke(services.engine, created["id"])
    assert "no active key" in failed(run(runner, "keys", "update", created["id"], "--rpm", "5"))


def test_keys_reset_usage(runner, services):
    created = key_store.create(services.engine, "k", rpm=1, daily_tokens=10)
    key = services.keys.authenticate(f"Bearer {created['key']}")[0]
    services.limits.admit(key)
    usage_store.insert_many(services.engine, [built_usage_row(time.time(), created["id"], total=25)])
    with pytest.raises(Exception, match="Rate limit reached"):
        services.limits.admit(key)

    assert json.loads(ok(run(runner, "keys", "reset-usage", created["id"], "--json"))) == {
        "id": created["id"], "reset": True}

    assert services.limits.admit(key) is not None
    assert key_store.find_active(services.engine, created["key"])["rpm"] == 1, "the key keeps its limits"
    assert "reset the usage counters" in ok(run(runner, "keys", "reset-usage", created["id"]))
    assert "no key with id key_nope" in failed(run(runner, "keys", "reset-usage", "key_nope"))


# --- accounts -------------------------------------------------------------------------------------

def test_accounts_import(runner, services, tmp_path):
    document = auth_json(account_id="acct-imp-1", email="ops@example.com", plan="pro")
    path = write(tmp_path, "auth.json", document)

    output = ok(run(runner, "accounts", "import", path))

    [row] = account_store.all_rows(services.engine)
    assert "imported" in output and row["id"] in output and "ops@example.com" in output and "pro" in output
    assert (row["chatgpt_account_id"], row["email"], row["plan"], row["status"]) == (
        "acct-imp-1", "ops@example.com", "pro", "active")
    [stored] = account_store.all_rows(services.engine)
    assert account_store.tokens(services.cipher, stored)["refresh_token"] == document["tokens"]["refresh_token"]
    assert document["tokens"]["access_token"] not in output


def test_accounts_import_json_and_reimport_updates(runner, services, tmp_path):
    path = write(tmp_path, "auth.json", auth_json(account_id="acct-imp-1", refresh_token="rt-first"))
    first = json.loads(ok(run(runner, "accounts", "import", path, "--json")))
    assert first["created"] is True and first["chatgpt_account_id"] == "acct-imp-1"
    assert "tokens" not in first and "access_token" not in json.dumps(first)

    renewed = auth_json(account_id="acct-imp-1", refresh_token="rt-second", plan="pro")
    path = write(tmp_path, "auth.json", renewed)
    second = json.loads(ok(run(runner, "accounts", "import", path, "--json")))

    assert second["created"] is False and second["id"] == first["id"] and second["plan"] == "pro"
    [stored] = account_store.all_rows(services.engine)
    assert account_store.tokens(services.cipher, stored) == {
        "id_token": renewed["tokens"]["id_token"], "access_token": renewed["tokens"]["access_token"],
        "refresh_token": "rt-second"}
    assert "updated" in ok(run(runner, "accounts", "import", path))


def test_accounts_import_several_files(runner, services, tmp_path):
    paths = [write(tmp_path, f"auth{index}.json", auth_json(account_id=f"acct-{index}")) for index in range(2)]
    ok(run(runner, "accounts", "import", *paths))
    assert {row["chatgpt_account_id"] for row in account_store.all_rows(services.engine)} == {"acct-0", "acct-1"}


def without(mapping, key):
    return {name: value for name, value in mapping.items() if name != key}


def tokens_with(**changes):
    document = auth_json()
    document["tokens"] = {**document["tokens"], **changes}
    return document


MALFORMED = [
    pytest.param("this is not json {", "not valid JSON", id="not-json"),
    pytest.param("", "not valid JSON", id="empty-file"),
    pytest.param([auth_json()], "JSON object", id="json-array"),
    pytest.param(without(auth_json(), "tokens"), "tokens", id="no-tokens"),
    pytest.param({"OPENAI_API_KEY": "sk-proj-abc123", "tokens": None}, "API key", id="api-key-only"),
    pytest.param({"OPENAI_API_KEY": "sk-proj-abc123"}, "API key", id="api-key-only-no-tokens-field"),
    pytest.param(tokens_with(access_token="not-a-jwt"), "tokens.access_token is not a JWT", id="access-not-jwt"),
    pytest.param(tokens_with(id_token="abc.%%%.def"), "tokens.id_token is not a JWT", id="id-token-not-jwt"),
    pytest.param(tokens_with(access_token="a.bm90IGpzb24.c"), "tokens.access_token is not a JWT",
                 id="jwt-payload-not-json"),
    pytest.param(tokens_with(access_token="a.WzEsIDJd.c"), "tokens.access_token is not a JWT",
                 id="jwt-payload-json-array"),
    pytest.param({**auth_json(), "tokens": without(auth_json()["tokens"], "refresh_token")},
                 "tokens.refresh_token", id="missing-refresh-token"),
    pytest.param(tokens_with(refresh_token=""), "tokens.refresh_token", id="empty-refresh-token"),
    pytest.param(tokens_with(access_token=None), "tokens.access_token", id="null-access-token"),
    pytest.param(tokens_with(account_id=None, id_token=jwt({"email": "x@example.com"}),
                             access_token=jwt({"exp": 9999999999})), "account id", id="no-account-id"),
    pytest.param({**auth_json(), "last_refresh": "yesterday"}, "last_refresh", id="bad-last-refresh"),
]


@pytest.mark.parametrize("document, fragment", MALFORMED)
def test_accounts_import_malformed_file(runner, services, tmp_path, document, fragment):
    path = write(tmp_path, "auth.json", document)

    output = failed(run(runner, "accounts", "import", path))

    assert "Error" in output and path in output and fragment in output
    assert "Traceback" not in output
    assert account_store.all_rows(services.engine) == []


def test_accounts_import_missing_file(runner, services, tmp_path):
    output = failed(run(runner, "accounts", "import", str(tmp_path / "nope.json")))
    assert "nope.json" in output
    assert account_store.all_rows(services.engine) == []


def test_accounts_import_one_bad_file_imports_nothing(runner, services, tmp_path):
    good = write(tmp_path, "good.json", auth_json(account_id="acct-good"))
    bad = write(tmp_path, "bad.json", tokens_with(access_token="nope"))

    output = failed(run(runner, "accounts", "import", good, bad))

    assert "bad.json" in output
    assert account_store.all_rows(services.engine) == []


def test_accounts_list(runner, services, tmp_path):
    ok(run(runner, "accounts", "import", write(tmp_path, "a.json", auth_json(account_id="acct-a",
                                                                            email="a@example.com"))))
    ok(run(runner, "accounts", "import", write(tmp_path, "b.json", auth_json(account_id="acct-b",
                                                                            email="b@example.com"))))

    text = ok(run(runner, "accounts", "list"))
    rows = json.loads(ok(run(runner, "accounts", "list", "--json")))

    assert [row["chatgpt_account_id"] for row in rows] == ["acct-a", "acct-b"]
    for row in rows:
        assert row["id"] in text and row["email"] in text
        assert row["status"] == "active" and "tokens" not in row
    assert "active" in text
    assert "eyJ" not in text and "eyJ" not in json.dumps(rows), "no JWT in a listing"


def test_accounts_list_says_which_accounts_cannot_serve_and_why(runner, services, tmp_path):
    for name in ("a", "b", "c"):
        ok(run(runner, "accounts", "import", write(tmp_path, f"{name}.json", auth_json(account_id=f"acct-{name}"))))
    ids = {row["chatgpt_account_id"]: row["id"] for row in account_store.all_rows(services.engine)}
    account_store.set_cooldown(services.engine, ids["acct-a"], time.time() + 3600, "usage limit")
    with services.engine.begin() as conn:  # tokens encrypted with another key
        conn.execute(update(accounts).where(accounts.c.id == ids["acct-b"]).values(
            tokens=TokenCipher(fernet_key("another key")).encrypt(b"{}"), updated_at=time.time()))

    rows = {row["chatgpt_account_id"]: row for row in json.loads(ok(run(runner, "accounts", "list", "--json")))}
    text = ok(run(runner, "accounts", "list"))

    assert rows["acct-a"]["state"].startswith("cooling down until ") and rows["acct-a"]["problem"] is None
    assert rows["acct-b"]["state"] == "needs re-login" and "cannot be decrypted" in rows["acct-b"]["problem"]
    assert rows["acct-b"]["status"] == "active", "the stored status is left alone"
    assert (rows["acct-c"]["state"], rows["acct-c"]["problem"]) == ("active", None)
    assert "needs re-login" in text and "cannot be decrypted" in text and "cooling down until" in text


def test_accounts_list_empty(runner):
    assert "(none)" in ok(run(runner, "accounts", "list"))
    assert json.loads(ok(run(runner, "accounts", "list", "--json"))) == []


def test_accounts_remove(runner, services, account):
    output = ok(run(runner, "accounts", "remove", account["id"]))
    assert account["id"] in output
    assert account_store.all_rows(services.engine) == []

    output = failed(run(runner, "accounts", "remove", account["id"]))
    assert account["id"] in output and "no account" in output


def test_accounts_remove_json(runner, account):
    assert json.loads(ok(run(runner, "accounts", "remove", account["id"], "--json"))) == {
        "id": account["id"], "removed": True}


# --- db, settings ---------------------------------------------------------------------------------

def test_db_upgrade(runner, services):
    output = ok(run(runner, "db", "upgrade"))
    head = migrate.current(services.engine)
    assert head is not None and f"revision {head}" in output


def test_settings(runner):
    text = ok(run(runner, "settings"))
    values = json.loads(ok(run(runner, "settings", "--json")))

    assert "RESPONSES_PROXY_UPSTREAM_BASE_URL=http://127.0.0.1" in text
    assert values["RESPONSES_PROXY_MAX_BODY_BYTES"] == 64 * 1024 * 1024
    assert values["RESPONSES_PROXY_ENCRYPTION_KEY"] == "(set)"
    assert "test-secret-key" not in text and "test-secret-key" not in json.dumps(values)
    assert all(name.startswith("RESPONSES_PROXY_") for name in values)


def test_settings_mask_the_admin_token(tmp_path, upstream):
    token = "admin-token-shown-nowhere"
    app = make_app(tmp_path, upstream.base_url, ADMIN_TOKEN=token)
    try:
        text = ok(run(app.test_cli_runner(), "settings"))
        values = json.loads(ok(run(app.test_cli_runner(), "settings", "--json")))
    finally:
        app.extensions["responses_proxy"].engine.dispose()

    assert values["RESPONSES_PROXY_ADMIN_TOKEN"] == "(set)"
    assert "RESPONSES_PROXY_ADMIN_TOKEN=(set)" in text
    assert token not in text and token not in json.dumps(values)
    assert "ADMIN_TOKEN" not in app.config


def test_settings_show_every_setting_the_readme_documents(runner):
    """The README's table of the app's settings and `settings --json` name the same settings."""
    with open(os.path.join(ROOT, "README.md")) as handle:
        readme = handle.read()
    app_table = readme.split("### Settings", 1)[1].split("Read by `etc/gunicorn.conf.py`", 1)[0]
    documented = set(re.findall(r"^\| `(RESPONSES_PROXY_[A-Z_]+)` \|", app_table, re.MULTILINE))

    shown = set(json.loads(ok(run(runner, "settings", "--json"))))

    assert shown == documented
    assert {"RESPONSES_PROXY_IN_FLIGHT_LEASE_SECONDS", "RESPONSES_PROXY_READINESS_CACHE_SECONDS"} <= shown


def test_settings_hide_the_database_password(tmp_path, upstream, postgres_url):
    """`settings` output gets pasted into tickets: it must not carry the database password."""
    url = postgres_url.replace("postgres@", "postgres:hunter2-db-password@", 1)
    app = make_app(tmp_path, upstream.base_url, url)
    try:
        result = run(app.test_cli_runner(), "settings")
        as_json = run(app.test_cli_runner(), "settings", "--json")
    finally:
        app.extensions["responses_proxy"].engine.dispose()

    assert result.exit_code == 0 and as_json.exit_code == 0
    assert "RESPONSES_PROXY_DATABASE_URL=" in result.output
    assert "hunter2-db-password" not in result.output
    assert "hunter2-db-password" not in as_json.output


def test_the_token_key_is_not_flasks_session_key(app, runner):
    # Flask signs sessions with SECRET_KEY; the key that encrypts upstream tokens is not it,
    # and it stays out of Flask's config altogether.
    assert app.config.get("SECRET_KEY") is None and "ENCRYPTION_KEY" not in app.config
    assert app.extensions["responses_proxy"].settings["ENCRYPTION_KEY"]


def test_the_former_name_of_the_encryption_key_is_still_read():
    from responses_proxy.config import load_config

    assert load_config({"RESPONSES_PROXY_SECRET_KEY": "old"})["ENCRYPTION_KEY"] == "old"
    both = {"RESPONSES_PROXY_SECRET_KEY": "old", "RESPONSES_PROXY_ENCRYPTION_KEY": "new"}
    assert load_config(both)["ENCRYPTION_KEY"] == "new"
