"""notifications, subscriptions and chain_links

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.schema import BigID, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", BigID, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("subscription_id", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=True),
        sa.Column("watermark", sa.Text, nullable=False),
        sa.Column("previous_watermark", sa.Text, nullable=True),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("event_time", UTCDateTime, nullable=True),
        sa.Column("item_id", sa.Text),
        sa.Column("item_change_key", sa.Text),
        sa.Column("folder_id", sa.Text),
        sa.Column("folder_change_key", sa.Text),
        sa.Column("parent_folder_id", sa.Text),
        sa.Column("old_item_id", sa.Text),
        sa.Column("old_folder_id", sa.Text),
        sa.Column("old_parent_folder_id", sa.Text),
        sa.Column("unread_count", sa.Integer),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.Column("stored_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_notifications"),
        sa.UniqueConstraint(
            "tenant", "subscription_id", "watermark", name="uq_notifications_tenant_subscription_id_watermark"
        ),
    )
    op.create_index(
        "ix_notifications_tenant_subscription_id_seq", "notifications", ["tenant", "subscription_id", "seq"]
    )
    op.create_table(
        "subscriptions",
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("subscription_id", sa.Text, nullable=False),
        sa.Column("last_watermark", sa.Text, nullable=True),
        sa.Column("last_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_seen_at", UTCDateTime, nullable=True),
        sa.Column("state", sa.Text, nullable=False, server_default="active"),
        sa.Column("error_code", sa.Text, nullable=True),
        sa.Column("gap_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("server_version", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("tenant", "subscription_id", name="pk_subscriptions"),
        sa.CheckConstraint(
            "state IN ('active', 'stale', 'needs_resync', 'error', 'unsubscribed')",
            name="ck_subscriptions_state",
        ),
    )
    op.create_table(
        "chain_links",
        sa.Column("id", BigID, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("subscription_id", sa.Text, nullable=False),
        sa.Column("previous_watermark", sa.Text, nullable=False),
        sa.Column("last_watermark", sa.Text, nullable=False),
        sa.Column("row_watermarks", sa.Text, nullable=False),
        sa.Column("payload_id", sa.Text, nullable=False),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.Column("waiting_since", UTCDateTime, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_chain_links"),
        sa.UniqueConstraint(
            "tenant",
            "subscription_id",
            "last_watermark",
            "previous_watermark",
            name="uq_chain_links_link",
        ),
    )
    op.create_index(
        "ix_chain_links_predecessor",
        "chain_links",
        ["tenant", "subscription_id", "previous_watermark"],
    )
    op.create_index("ix_chain_links_waiting_since", "chain_links", ["waiting_since"])


def downgrade() -> None:
    op.drop_table("chain_links")
    op.drop_table("subscriptions")
    op.drop_index("ix_notifications_tenant_subscription_id_seq", table_name="notifications")
    op.drop_table("notifications")
