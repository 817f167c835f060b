"""Operator commands: ``flask --app wsgi keys|accounts|usage|db|settings``; each takes ``--json``."""

import functools
import re
import time
from datetime import UTC, datetime

import click
import orjson
from flask.cli import AppGroup, ScriptInfo, with_appcontext
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from .config import PREFIX, SECRETS, SETTINGS
from .pool import COOLING_DOWN, NEEDS_RELOGIN, account_state
from .services import services
from .store import accounts as account_store
from .store import describe_error, migrate
from .store import usage as usage_store
from .upstream.credentials import CredentialsError, parse_auth_json

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


class Command(click.Command):
    """A command whose failures are one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except SQLAlchemyError as exc:
            raise click.ClickException(f"database error ({database_of(ctx)}): {describe_error(exc)}") \
                from None
        except Exception as exc:  # an operator gets a sentence, not a stack
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


class Group(AppGroup):
    command_class = Command


def database_of(ctx):
    try:
        engine = ctx.ensure_object(ScriptInfo).load_app().extensions["responses_proxy"].engine
    except Exception:
        return "database"
    return engine.url.render_as_string(hide_password=True)


def uses_database(command):
    """The schema is brought up to date first, so a command works before the first start."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        migrate.ensure_current(services().engine)
        return command(*args, **kwargs)

    return wrapper


def emit(data, as_json, text):
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(text)


def when(epoch):
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def table(rows, columns):
    if not rows:
        return "(none)"
    widths = [max(len(title), *(len(str(row[index])) for row in rows)) for index, title in enumerate(columns)]
    lines = ["  ".join(title.ljust(width) for title, width in zip(columns, widths, strict=True))]
    lines += ["  ".join(str(value).ljust(width) for value, width in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


accounts_cli = Group("accounts", help="Import, list and remove the upstream ChatGPT accounts.")


@accounts_cli.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
@json_option
@uses_database
def accounts_import(paths, as_json):
    """Import Codex CLI auth.json files (re-importing an account updates its tokens).

    Every file is checked before anything is written: one bad file imports nothing.
    """
    parsed = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None
        try:
            parsed.append(parse_auth_json(raw))
        except CredentialsError as exc:
            raise click.ClickException(f"{path}: {exc}") from None
    results = []
    for credentials in parsed:
        account, created = account_store.upsert(services().engine, services().cipher, credentials)
        results.append({**account, "created": created})
    emit(results[0] if len(results) == 1 else results, as_json, "\n".join(
        f"{'imported' if row['created'] else 'updated'} {row['id']} "
        f"({row['email'] or 'no email'}, plan {row['plan'] or 'unknown'})" for row in results))


def describe_state(row, now, readable=True):
    state = account_state(row, now, readable)
    if state == COOLING_DOWN:
        return "cooling down until " + when(row["cooldown_until"])
    return {NEEDS_RELOGIN: "needs re-login"}.get(state, state)


def describe_window(window):
    if not isinstance(window, dict) or window.get("used_percent") is None:
        return "-"
    resets = f" (resets {when(window['resets_at'])})" if window.get("resets_at") else ""
    return f"{window['used_percent']:.0f}%{resets}"


@accounts_cli.command("list")
@json_option
@uses_database
def accounts_list(as_json):
    """List accounts: state, recent use, plan windows, last error.

    The state is the gateway's own verdict, tokens that this key cannot decrypt included
    (``problem`` says so).
    """
    engine = services().engine
    now = time.time()
    hour = usage_store.per_account(engine, now - 3600)
    day = usage_store.per_account(engine, now - 86400)
    rows = []
    for account in services().pool.snapshot():
        row = account_store.public(account.row)
        requests_hour, tokens_hour = hour.get(row["id"], (0, 0))
        requests_day, tokens_day = day.get(row["id"], (0, 0))
        rows.append({**row, "state": describe_state(row, now, account.tokens is not None), "problem": account.problem,
                     "last_hour": {"requests": requests_hour, "tokens": tokens_hour},
                     "last_day": {"requests": requests_day, "tokens": tokens_day}})
    emit(rows, as_json, table(
        [(row["id"], row["email"] or "-", row["plan"] or "-", row["state"],
          f"{row['last_hour']['requests']}/{row['last_hour']['tokens']}",
          f"{row['last_day']['requests']}/{row['last_day']['tokens']}",
          describe_window((row["quota"] or {}).get("primary")), describe_window((row["quota"] or {}).get("secondary")),
          (row["problem"] or row["last_error"] or "-")[:60]) for row in rows],
        ("ID", "EMAIL", "PLAN", "STATUS", "1H REQ/TOK", "24H REQ/TOK", "PRIMARY", "SECONDARY", "LAST ERROR")))


def set_account_status(account_id, status, as_json):
    if not account_store.set_status(services().engine, account_id, status):
        raise click.ClickException(f"no account with id {account_id}")
    emit({"id": account_id, "status": status}, as_json, f"{account_id} {status}")


@accounts_cli.command("disable")
@click.argument("account_id")
@json_option
@uses_database
def accounts_disable(account_id, as_json):
    """Take an account out of rotation (it keeps its tokens)."""
    set_account_status(account_id, account_store.DISABLED, as_json)


@accounts_cli.command("enable")
@click.argument("account_id")
@json_option
@uses_database
def accounts_enable(account_id, as_json):
    """Put a disabled account back into rotation."""
    set_account_status(account_id, account_store.ACTIVE, as_json)


@accounts_cli.command("remove")
@click.argument("account_id")
@json_option
@uses_database
def accounts_remove(account_id, as_json):
    """Remove an account and its tokens."""
    if not account_store.remove(services().engine, account_id):
        raise click.ClickException(f"no account with id {account_id}")
    emit({"id": account_id, "removed": True}, as_json, f"removed {account_id}")


DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_since(value):
    match = DURATION.match(value)
    if not match:
        raise click.BadParameter("use a number and a unit, like 30m, 24h or 7d", param_hint="--since")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


@click.command("usage", cls=Command)
@with_appcontext
@click.option("--since", default="24h", show_default=True, help="Window: 30m, 24h, 7d...")
@click.option("--by", "group", type=click.Choice(["key", "account", "model"]), default="key", show_default=True)
@json_option
@uses_database
def usage_report(since, group, as_json):
    """Requests, errors and tokens per key, account or model."""
    rows = usage_store.summary(services().engine, time.time() - parse_since(since), group + "_id"
                               if group != "model" else "model")
    emit(rows, as_json, table(
        [(row["group"] or "-", row["requests"], row["errors"] or 0, row["input_tokens"], row["cached_tokens"],
          row["output_tokens"], row["reasoning_tokens"],
          "-" if row["avg_ttfb_ms"] is None else f"{row['avg_ttfb_ms']:.0f}") for row in rows],
        (group.upper(), "REQUESTS", "ERRORS", "INPUT", "CACHED", "OUTPUT", "REASONING", "AVG TTFB MS")))


db_cli = Group("db", help="Database schema.")


@db_cli.command("upgrade")
def db_upgrade():
    """Apply pending schema migrations (gunicorn also does this at start)."""
    migrate.upgrade(services().engine)
    click.echo(f"database schema at revision {migrate.current(services().engine)}")


@click.command("settings", cls=Command)
@with_appcontext
@json_option
def settings(as_json):
    """Show every RESPONSES_PROXY_* setting and its effective value."""
    values = {}
    for setting in SETTINGS:
        value = services().settings[setting.name]
        if setting.name in SECRETS and value:
            value = "(set)"
        elif setting.name == "DATABASE_URL":
            value = make_url(value).render_as_string(hide_password=True)
        values[PREFIX + setting.name] = value
    emit(values, as_json, "\n".join(f"{name}={'' if value is None else value}" for name, value in values.items()))


def init_app(app):
    for command in (accounts_cli, usage_report, db_cli, settings):
        app.cli.add_command(command)
