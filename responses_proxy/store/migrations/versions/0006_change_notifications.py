"""PostgreSQL: every change to api_keys or accounts notifies the workers' listening connections
(``store/changes.py``), so that they can keep those rows between requests. SQLite needs nothing:
its ``PRAGMA data_version`` tells the same.

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
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_changed ON {table}")
    op.execute("DROP FUNCTION IF EXISTS responses_proxy_notify_change()")
