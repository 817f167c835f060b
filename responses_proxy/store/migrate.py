"""Schema migrations (Alembic).

The gunicorn master runs them once before it forks workers (``python -m
responses_proxy.store.migrate``), and every CLI command brings the schema up to date before it
touches the database, so keys and accounts can be added before the first start. Several
processes may do this at once (a deploy script, two hosts starting together): they take turns
behind a lock, and whoever comes second finds nothing left to do.
"""

import contextlib
import fcntl
import os
import sys

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from ..errors import describe_error
from . import make_engine, write

MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations")
# Any constant shared by every process of every host: the key of PostgreSQL's advisory lock.
ADVISORY_LOCK_KEY = 0x72705F6D6967  # "rp_mig"


def alembic_config(connection):
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    return config


def head():
    return ScriptDirectory.from_config(alembic_config(None)).get_current_head()


def current(engine):
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@contextlib.contextmanager
def _file_lock(engine):
    """SQLite: an exclusive lock on a file beside the database (nothing to lock in memory)."""
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    path = os.path.abspath(database) + ".migrate-lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def upgrade(engine, revision="head"):
    """Apply the pending migrations, one process at a time."""
    if engine.dialect.name == "postgresql":
        with write(engine) as connection:
            # A migration may rewrite a big table, and a second process waits here for the first
            # to finish: no statement timeout in this transaction.
            connection.execute(text("SET LOCAL statement_timeout = 0"))
            # Held until this transaction ends; PostgreSQL's DDL is transactional, so a second
            # process waits here and then finds the schema current.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
            command.upgrade(alembic_config(connection), revision)
        return
    with _file_lock(engine), write(engine) as connection:
        command.upgrade(alembic_config(connection), revision)


def ensure_current(engine):
    """Upgrade when the schema is behind; one query when it is not."""
    if current(engine) != head():
        upgrade(engine)


def main():
    from sqlalchemy.exc import SQLAlchemyError

    from ..config import ConfigError, load_config

    try:
        config = load_config()
    except ConfigError as exc:
        sys.exit(f"responses-proxy: {exc}")
    engine = make_engine(config["DATABASE_URL"], config)
    where = engine.url.render_as_string(hide_password=True)
    try:
        upgrade(engine)
    except SQLAlchemyError as exc:
        sys.exit(f"responses-proxy: cannot bring the database schema up to date ({where}): {describe_error(exc)}")
    finally:
        engine.dispose()
    print(f"database schema up to date ({where})", file=sys.stderr)


if __name__ == "__main__":
    main()
