"""Every change to api_keys or accounts is signalled (``store/changes.py``), so that workers can
keep those rows between requests. PostgreSQL: a notification to the workers' listening
connections. SQLite: a counter that triggers move, which a worker reads only when ``PRAGMA
data_version`` says something (anything: usage rows, limits, leases) was committed.

Revision ID: 0006
Revises: 0005
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("api_keys", "accounts")


def upgrade():
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE TABLE change_counter (id INTEGER PRIMARY KEY, changes INTEGER NOT NULL)")
        op.execute("INSERT INTO change_counter (id, changes) VALUES (1, 0)")
        for table in TABLES:
            for action in ("INSERT", "UPDATE", "DELETE"):
                op.execute(f"CREATE TRIGGER {table}_{action.lower()}_counted AFTER {action} ON {table} "
                           "BEGIN UPDATE change_counter SET changes = changes + 1 WHERE id = 1; END")
        return
    if op.get_bind().dialect.name != "postgresql":
        return
    # Once per statement, not per row; PostgreSQL delivers the notification when the
    # transaction commits (never for one rolled back), and folds duplicates within it.
    op.execute("""
        CREATE OR REPLACE FUNCTION responses_proxy_notify_change() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('responses_proxy_changes', TG_TABLE_NAME);
            RETURN NULL;
        END
        $$ LANGUAGE plpgsql
    """)
    for table in TABLES:
        op.execute(f"CREATE TRIGGER {table}_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION responses_proxy_notify_change()")


def downgrade():
    if op.get_bind().dialect.name == "sqlite":
        for table in TABLES:
            for action in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_{action}_counted")
        op.execute("DROP TABLE IF EXISTS change_counter")
        return
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_changed ON {table}")
    op.execute("DROP FUNCTION IF EXISTS responses_proxy_notify_change()")
