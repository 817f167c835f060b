"""``flask --app wsgi keys ...``: create, list, change and revoke the API keys clients use."""

import click

from ..cli import Group, emit, json_option, table, uses_database, when
from ..services import services

keys_cli = Group("keys", help="Create, list, change and revoke the API keys clients use.")

NO_LIMIT = "none"
ALL_MODELS = ("all", "*")


class Limit(click.ParamType):
    """A positive whole number, or ``none`` (no limit)."""

    name = "N|none"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == NO_LIMIT:
            return value
        text = str(value).strip().lower()
        if text == NO_LIMIT:
            return NO_LIMIT
        if text.isdigit() and int(text) > 0:
            return int(text)
        return self.fail(f"{value!r} is not a positive whole number or 'none'", param, ctx)


def model_list(text, param_hint="--allowed-models"):
    models = [model.strip() for model in text.split(",") if model.strip()]
    if not models:
        raise click.BadParameter("name at least one model", param_hint=param_hint)
    return models


def describe_limits(row):
    limits = [f"{row['rpm']} rpm" if row["rpm"] is not None else None,
              f"{row['concurrency']} at once" if row["concurrency"] is not None else None,
              f"{row['daily_tokens']} tokens/day" if row["daily_tokens"] is not None else None]
    return ", ".join(limit for limit in limits if limit) or "-"


@keys_cli.command("create")
@click.option("--name", required=True, help="What the key is for (shown in listings).")
@click.option("--allowed-models", default=None, help="Comma-separated model slugs this key may use (default: all).")
@click.option("--rpm", type=click.IntRange(min=1), default=None, help="Requests per minute (default: no limit).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Requests in flight at once, streams included (default: no limit).")
@click.option("--daily-tokens", type=click.IntRange(min=1), default=None,
              help="Total tokens per calendar day, UTC (default: no limit).")
@json_option
@uses_database
def keys_create(name, allowed_models, rpm, concurrency, daily_tokens, as_json):
    """Create a key; its plaintext is printed once and never stored."""
    models = model_list(allowed_models) if allowed_models is not None else None
    created = services().keys.create(name, models, rpm, concurrency, daily_tokens)
    emit(created, as_json,
         f"id:  {created['id']}\nkey: {created['key']}\n"
         "This is the only time the key is shown: store it now.")


@keys_cli.command("list")
@json_option
@uses_database
def keys_list(as_json):
    """List keys (never their plaintext), their limits and what the limits count now."""
    rows = services().keys.list()
    emit(rows, as_json, table(
        [(row["id"], row["name"], row["prefix"] + "…", ",".join(row["allowed_models"] or ["*"]),
          describe_limits(row), "-" if row["in_flight"] is None else row["in_flight"],
          "-" if row["tokens_today"] is None else row["tokens_today"],
          when(row["created_at"]), "revoked " + when(row["revoked_at"]) if row["revoked_at"] else "active")
         for row in rows],
        ("ID", "NAME", "PREFIX", "MODELS", "LIMITS", "IN FLIGHT", "TOKENS TODAY", "CREATED", "STATUS")))


@keys_cli.command("update")
@click.argument("key_id")
@click.option("--name", default=None, help="A new name.")
@click.option("--allowed-models", default=None, help="Comma-separated model slugs, or 'all' for every model.")
@click.option("--rpm", type=Limit(), default=None, help="Requests per minute, or 'none'.")
@click.option("--concurrency", type=Limit(), default=None, help="Requests in flight at once, or 'none'.")
@click.option("--daily-tokens", type=Limit(), default=None, help="Total tokens per calendar day (UTC), or 'none'.")
@json_option
@uses_database
def keys_update(key_id, name, allowed_models, rpm, concurrency, daily_tokens, as_json):
    """Change a key's name, models or limits; the key itself stays the same."""
    changes = {}
    if name is not None:
        if not name.strip():
            raise click.BadParameter("must not be empty", param_hint="--name")
        changes["name"] = name
    if allowed_models is not None:
        changes["allowed_models"] = None if allowed_models.strip().lower() in ALL_MODELS else model_list(
            allowed_models)
    for option, value in (("rpm", rpm), ("concurrency", concurrency), ("daily_tokens", daily_tokens)):
        if value is not None:
            changes[option] = None if value == NO_LIMIT else value
    if not changes:
        raise click.UsageError("nothing to change: give --name, --allowed-models, --rpm, --concurrency "
                               "or --daily-tokens")
    updated = services().keys.update(key_id, changes)
    if updated is None:
        raise click.ClickException(f"no active key with id {key_id}")
    emit(updated, as_json,
         f"updated {key_id}: models {','.join(updated['allowed_models'] or ['*'])}, limits {describe_limits(updated)}")


@keys_cli.command("reset-usage")
@click.argument("key_id")
@json_option
@uses_database
def keys_reset_usage(key_id, as_json):
    """Forget what the key's limits counted: a full minute of requests, nothing in flight, no
    tokens used today. The key and its limits stay as they are."""
    if not services().keys.reset_usage(key_id):
        raise click.ClickException(f"no key with id {key_id}")
    emit({"id": key_id, "reset": True}, as_json, f"reset the usage counters of {key_id}")


@keys_cli.command("revoke")
@click.argument("key_id")
@json_option
@uses_database
def keys_revoke(key_id, as_json):
    """Revoke a key: requests with it get 401 from now on."""
    if not services().keys.revoke(key_id):
        raise click.ClickException(f"no active key with id {key_id}")
    emit({"id": key_id, "revoked": True}, as_json, f"revoked {key_id}")
