"""``flask --app wsgi keys ...``: create, list and revoke the API keys clients use."""

import click

from ..cli import Group, emit, json_option, table, uses_database, when
from ..services import services

keys_cli = Group("keys", help="Create, list and revoke the API keys clients use.")


@keys_cli.command("create")
@click.option("--name", required=True, help="What the key is for (shown in listings).")
@click.option("--allowed-models", default=None, help="Comma-separated model slugs this key may use (default: all).")
@json_option
@uses_database
def keys_create(name, allowed_models, as_json):
    """Create a key; its plaintext is printed once and never stored."""
    models = [model.strip() for model in allowed_models.split(",") if model.strip()] if allowed_models else None
    if allowed_models is not None and not models:
        raise click.BadParameter("name at least one model", param_hint="--allowed-models")
    created = services().keys.create(name, models)
    emit(created, as_json,
         f"id:  {created['id']}\nkey: {created['key']}\n"
         "This is the only time the key is shown: store it now.")


@keys_cli.command("list")
@json_option
@uses_database
def keys_list(as_json):
    """List keys (never their plaintext)."""
    rows = services().keys.list()
    emit(rows, as_json, table(
        [(row["id"], row["name"], row["prefix"] + "…", ",".join(row["allowed_models"] or ["*"]),
          when(row["created_at"]), "revoked " + when(row["revoked_at"]) if row["revoked_at"] else "active")
         for row in rows],
        ("ID", "NAME", "PREFIX", "MODELS", "CREATED", "STATUS")))


@keys_cli.command("revoke")
@click.argument("key_id")
@json_option
@uses_database
def keys_revoke(key_id, as_json):
    """Revoke a key: requests with it get 401 from now on."""
    if not services().keys.revoke(key_id):
        raise click.ClickException(f"no active key with id {key_id}")
    emit({"id": key_id, "revoked": True}, as_json, f"revoked {key_id}")
