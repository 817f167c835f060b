"""``flask --app wsgi usage``: requests, errors and tokens per key, model, account, day or hour."""

import csv
import io
import time

import click
import orjson
from flask.cli import with_appcontext

from ..cli import Command, json_option, table, uses_database
from ..services import services
from .service import DIMENSIONS, METRICS, WindowError, parse_groups, window

TITLES = {"key_name": "NAME", "input_tokens": "INPUT", "cached_tokens": "CACHED", "output_tokens": "OUTPUT",
          "reasoning_tokens": "REASONING", "total_tokens": "TOTAL", "avg_ttfb_ms": "AVG TTFB MS"}


def columns_of(groups):
    names = []
    for name in groups:
        names.append(name)
        if name == "key":
            names.append("key_name")
    return [*names, *METRICS, "avg_ttfb_ms"]


def as_csv(rows, columns):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows([["" if row[name] is None else row[name] for name in columns] for row in rows])
    return buffer.getvalue()


def as_table(rows, columns):
    return table([["-" if row[name] is None else row[name] for name in columns] for row in rows],
                 [TITLES.get(name, name.upper()) for name in columns])


@click.command("usage", cls=Command)
@with_appcontext
@click.option("--since", default="24h", show_default=True,
              help="Start: a duration back from now (30m, 24h, 7d) or an ISO date or time (UTC unless it says).")
@click.option("--until", default=None, help="End, in the same forms (default: now).")
@click.option("--by", "by", multiple=True, metavar="GROUP",
              help=f"Group by {', '.join(DIMENSIONS)}; repeat or comma-separate to combine (default: key).")
@click.option("--format", "output", type=click.Choice(["table", "json", "csv"]), default=None,
              help="Output format (default: table).")
@json_option
@uses_database
def usage_report(since, until, by, output, as_json):
    """Requests, errors and tokens (input, cached, output, reasoning, total) per group."""
    if as_json and output not in (None, "json"):
        raise click.UsageError("--json is --format json: give one or the other")
    output = "json" if as_json else output or "table"
    try:
        groups = parse_groups(by or ["key"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--by") from None
    try:
        start, end = window(since, until, time.time())
    except WindowError as exc:
        raise click.BadParameter(str(exc), param_hint=f"--{exc.name}") from None
    rows = services().usage.report(start, end, groups)
    columns = columns_of(groups)
    if output == "json":
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    elif output == "csv":
        click.echo(as_csv(rows, columns), nl=False)
    else:
        click.echo(as_table(rows, columns))
