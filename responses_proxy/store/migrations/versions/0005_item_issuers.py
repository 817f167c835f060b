"""Which account issued each conversation item, the compaction items found by index, and
where a moved thread's items from its previous account end.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("conversation_items") as batch:
        batch.add_column(sa.Column("account_id", sa.String(32), nullable=True))
    op.create_index("ix_conversation_items_type", "conversation_items", ["conversation_id", "type", "position"])
    with op.batch_alter_table("affinity") as batch:
        batch.add_column(sa.Column("boundary", sa.String(64), nullable=True))


def downgrade():
    with op.batch_alter_table("affinity") as batch:
        batch.drop_column("boundary")
    op.drop_index("ix_conversation_items_type", "conversation_items")
    with op.batch_alter_table("conversation_items") as batch:
        batch.drop_column("account_id")
