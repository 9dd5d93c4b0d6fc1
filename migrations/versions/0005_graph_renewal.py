"""Graph subscriptions kept alive by syncnotify: the renewal's record, and the state ``renewal_failed``

subscriptions: ``renewed_at`` (last time Graph granted a lifetime: creation, renewal or reauthorization),
``renewal_attempted_at``, ``renewal_error`` (why the last attempt failed, one line; null after a success),
``renewal_failures`` (failed attempts in a row, for the backoff); ``ck_subscriptions_state`` also allows
'renewal_failed' (SPEC §10).  Batch mode, as in 0004, because SQLite cannot alter a check.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Spelled out rather than read from shared.schema: a migration stays what it was when later code changes.
OLD_STATES = (
    "state IN ('active', 'stale', 'needs_resync', 'error', 'unsubscribed', 'reauthorization_required', 'removed')"
)
NEW_STATES = (
    "state IN ('active', 'stale', 'needs_resync', 'error', 'unsubscribed', 'reauthorization_required', 'removed',"
    " 'renewal_failed')"
)


def upgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(sa.Column("renewed_at", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("renewal_attempted_at", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("renewal_error", sa.Text, nullable=True))
        batch.add_column(sa.Column("renewal_failures", sa.Integer, nullable=False, server_default="0"))
        batch.drop_constraint(op.f("ck_subscriptions_state"), type_="check")
        batch.create_check_constraint(op.f("ck_subscriptions_state"), NEW_STATES)


def downgrade() -> None:
    """Back to 0004; a subscription in ``renewal_failed`` goes back to ``active``, the state it had before."""
    op.execute("UPDATE subscriptions SET state = 'active' WHERE state = 'renewal_failed'")
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_constraint(op.f("ck_subscriptions_state"), type_="check")
        batch.create_check_constraint(op.f("ck_subscriptions_state"), OLD_STATES)
        batch.drop_column("renewal_failures")
        batch.drop_column("renewal_error")
        batch.drop_column("renewal_attempted_at")
        batch.drop_column("renewed_at")
