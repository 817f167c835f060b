"""``flask --app wsgi accounts ...``: import, list, disable, enable and remove upstream accounts."""

import click

from ..cli import Group, emit, json_option, table, uses_database
from ..services import services
from ..store.accounts import ACTIVE, DISABLED
from ..upstream.credentials import CredentialsError, parse_auth_json
from .admin import describe_state, describe_window

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
    results = services().accounts.import_logins(parsed)
    emit(results[0] if len(results) == 1 else results, as_json, "\n".join(
        f"{'imported' if row['created'] else 'updated'} {row['id']} "
        f"({row['email'] or 'no email'}, plan {row['plan'] or 'unknown'})" for row in results))


@accounts_cli.command("list")
@json_option
@uses_database
def accounts_list(as_json):
    """List accounts: state, recent use, plan windows, last error.

    The state is the gateway's own verdict, tokens that this key cannot decrypt included
    (``problem`` says so).
    """
    rows = [{**row, "state": describe_state(row)} for row in services().accounts.listing()]
    emit(rows, as_json, table(
        [(row["id"], row["email"] or "-", row["plan"] or "-", row["state"],
          f"{row['last_hour']['requests']}/{row['last_hour']['tokens']}",
          f"{row['last_day']['requests']}/{row['last_day']['tokens']}",
          describe_window((row["quota"] or {}).get("primary")), describe_window((row["quota"] or {}).get("secondary")),
          (row["problem"] or row["last_error"] or "-")[:60]) for row in rows],
        ("ID", "EMAIL", "PLAN", "STATUS", "1H REQ/TOK", "24H REQ/TOK", "PRIMARY", "SECONDARY", "LAST ERROR")))


def set_account_status(account_id, status, as_json):
    if not services().accounts.set_status(account_id, status):
        raise click.ClickException(f"no account with id {account_id}")
    emit({"id": account_id, "status": status}, as_json, f"{account_id} {status}")


@accounts_cli.command("disable")
@click.argument("account_id")
@json_option
@uses_database
def accounts_disable(account_id, as_json):
    """Take an account out of rotation (it keeps its tokens)."""
    set_account_status(account_id, DISABLED, as_json)


@accounts_cli.command("enable")
@click.argument("account_id")
@json_option
@uses_database
def accounts_enable(account_id, as_json):
    """Put a disabled account back into rotation."""
    set_account_status(account_id, ACTIVE, as_json)


@accounts_cli.command("remove")
@click.argument("account_id")
@json_option
@uses_database
def accounts_remove(account_id, as_json):
    """Remove an account and its tokens."""
    if not services().accounts.remove(account_id):
        raise click.ClickException(f"no account with id {account_id}")
    emit({"id": account_id, "removed": True}, as_json, f"removed {account_id}")
