"""index notifications.stored_at, which the status page's throughput reads

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_notifications_stored_at", "notifications", ["stored_at"])


def downgrade() -> None:
    op.drop_index("ix_notifications_stored_at", table_name="notifications")
