"""Conversations and their items.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("metadata", sa.JSON, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("next_position", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_turn", sa.Integer, nullable=False, server_default="0"),
        sa.Column("busy_until", sa.Float, nullable=True),
        sa.Column("busy_owner", sa.String(64), nullable=True),
    )
    op.create_index("ix_conversations_key", "conversations", ["key_id"])
    op.create_index("ix_conversations_updated_at", "conversations", ["updated_at"])
    op.create_table(
        "conversation_items",
        sa.Column("seq", BigId, primary_key=True, autoincrement=True),
        sa.Column("conversation_id", sa.String(100),
                  sa.ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("turn", sa.Integer, nullable=False),
        sa.Column("item_id", sa.String(100), nullable=False),
        sa.Column("type", sa.String(64), nullable=True),
        sa.Column("call_id", sa.String(200), nullable=True),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_conversation_items_position", "conversation_items", ["conversation_id", "position"],
                    unique=True)
    op.create_index("ix_conversation_items_item", "conversation_items", ["conversation_id", "item_id"])


def downgrade():
    op.drop_table("conversation_items")
    op.drop_table("conversations")
