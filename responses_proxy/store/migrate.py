"""Schema migrations (Alembic), run by ``flask --app wsgi db upgrade`` and once by the gunicorn
master before it forks workers (``python -m responses_proxy.store.migrate``)."""

import os
import sys

from alembic import command
from alembic.config import Config

from . import make_engine

MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations")


def alembic_config(connection):
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    return config


def upgrade(engine, revision="head"):
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)


def current(engine):
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def main():
    from ..config import load_config

    config = load_config()
    engine = make_engine(config["DATABASE_URL"])
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    print(f"database schema up to date ({engine.url.render_as_string(hide_password=True)})", file=sys.stderr)


if __name__ == "__main__":
    main()
