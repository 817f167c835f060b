"""Per-key limits and their shared counters; the table readiness checks write to.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rpm_limit", sa.Integer, nullable=True))
        batch.add_column(sa.Column("concurrency_limit", sa.Integer, nullable=True))
        batch.add_column(sa.Column("daily_token_limit", sa.BigInteger, nullable=True))
    op.create_table(
        "key_counters",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("bucket_full_at", sa.Float, nullable=True),
        sa.Column("lease_period", sa.BigInteger, nullable=False),
        sa.Column("in_flight", sa.Integer, nullable=False),
        sa.Column("in_flight_previous", sa.Integer, nullable=False),
        sa.Column("token_day", sa.Integer, nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "readiness",
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("checked_at", sa.Float, nullable=False),
    )


def downgrade():
    op.drop_table("readiness")
    op.drop_table("key_counters")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("daily_token_limit")
        batch.drop_column("concurrency_limit")
        batch.drop_column("rpm_limit")
