"""``flask --app wsgi conversations ...``: retention of stored conversations."""

import click
from flask import current_app

from ..cli import Group, emit, json_option, uses_database
from ..services import services

conversations_cli = Group("conversations", help="Delete stored conversations.")


@conversations_cli.command("purge")
@click.option("--key", "key_id", required=True, help="The API key id whose conversations are deleted.")
@json_option
@uses_database
def conversations_purge(key_id, as_json):
    """Delete every conversation of one API key."""
    deleted = services().conversations.purge_key(key_id)
    emit({"key_id": key_id, "deleted": deleted}, as_json, f"deleted {deleted} conversations of {key_id}")


@conversations_cli.command("prune")
@click.option("--days", type=float, default=None,
              help="Idle days to keep (default: RESPONSES_PROXY_CONVERSATION_RETENTION_DAYS).")
@json_option
@uses_database
def conversations_prune(days, as_json):
    """Delete conversations idle for longer than the retention period (for cron)."""
    days = current_app.config["CONVERSATION_RETENTION_DAYS"] if days is None else days
    deleted = services().conversations.prune(days)
    emit({"retention_days": days, "deleted": deleted}, as_json,
         f"deleted {deleted} conversations idle for more than {days:g} days")
