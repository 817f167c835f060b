"""Account pool: refresh lock, quota windows, cache affinity, per-worker load.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("refresh_lock_until", sa.Float, nullable=True))
        batch.add_column(sa.Column("refresh_lock_owner", sa.String(64), nullable=True))
        batch.add_column(sa.Column("quota", sa.JSON, nullable=True))
        batch.add_column(sa.Column("quota_checked_at", sa.Float, nullable=True))
    op.create_table(
        "affinity",
        sa.Column("cache_key", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_affinity_updated_at", "affinity", ["updated_at"])
    op.create_table(
        "worker_load",
        sa.Column("worker_id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(32), primary_key=True),
        sa.Column("in_flight", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade():
    op.drop_table("worker_load")
    op.drop_table("affinity")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("quota_checked_at")
        batch.drop_column("quota")
        batch.drop_column("refresh_lock_owner")
        batch.drop_column("refresh_lock_until")
