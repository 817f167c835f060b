"""Operator commands (``flask --app wsgi ...``): what every domain's commands share (``Group``,
``uses_database``, ``emit``, ``table``), and the db and settings commands. Each takes ``--json``."""

import functools
from datetime import UTC, datetime

import click
import orjson
from flask.cli import AppGroup, ScriptInfo, with_appcontext
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from .config import PREFIX, SECRETS, SETTINGS
from .services import services
from .store import describe_error, migrate

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
    for command in (db_cli, settings):
        app.cli.add_command(command)
