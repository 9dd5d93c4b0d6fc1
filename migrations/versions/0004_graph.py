"""Microsoft Graph: ``source`` on both tables, Graph's columns, and the Graph subscription states

notifications: ``source`` ('ews' | 'graph', existing rows 'ews' from the server default), ``resource``,
``resource_data``.  subscriptions: ``source``, ``expires_at``, ``mailbox``, ``resource``,
``directory_tenant_id``; ``ck_subscriptions_state`` also allows 'reauthorization_required' and 'removed'.
(SPEC §6, §9, §10.)

On SQLite a constraint cannot be altered, so batch mode recreates both tables (copying their rows);
on PostgreSQL these are plain ``ALTER TABLE`` statements.

0001 named the state check ``ck_subscriptions_state``, but Alembic ran that name through the naming
convention of ``shared.schema.metadata`` (``ck_%(table_name)s_%(constraint_name)s``) once more, so databases
made by 0001 call it ``ck_subscriptions_ck_subscriptions_state``.  This revision drops the state check under
whichever name it has and creates every check under the name ``shared.schema`` gives it; names here go
through ``op.f``, which marks them final.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Spelled out rather than read from shared.schema: a migration stays what it was when later code changes.
OLD_STATES = "state IN ('active', 'stale', 'needs_resync', 'error', 'unsubscribed')"
NEW_STATES = (
    "state IN ('active', 'stale', 'needs_resync', 'error', 'unsubscribed', 'reauthorization_required', 'removed')"
)
SOURCES = "source IN ('ews', 'graph')"
#: The name 0001's state check got in the database (see above); downgrade restores it.
OLD_STATE_CHECK = "ck_subscriptions_ck_subscriptions_state"
STATE_CHECK_NAMES = (OLD_STATE_CHECK, "ck_subscriptions_state")


def _state_check_name() -> str:
    """The name of the state check on ``subscriptions`` in this database."""
    names = {check["name"] for check in sa.inspect(op.get_bind()).get_check_constraints("subscriptions")}
    found = [name for name in STATE_CHECK_NAMES if name in names]
    if len(found) != 1:
        raise RuntimeError(f"expected one state check on subscriptions, found the checks {sorted(map(str, names))}")
    return found[0]


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("source", sa.Text, nullable=False, server_default="ews"))
        batch.add_column(sa.Column("resource", sa.Text, nullable=True))
        batch.add_column(sa.Column("resource_data", sa.Text, nullable=True))
        batch.create_check_constraint(op.f("ck_notifications_source"), SOURCES)
    state_check = _state_check_name()
    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(sa.Column("source", sa.Text, nullable=False, server_default="ews"))
        batch.add_column(sa.Column("expires_at", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("mailbox", sa.Text, nullable=True))
        batch.add_column(sa.Column("resource", sa.Text, nullable=True))
        batch.add_column(sa.Column("directory_tenant_id", sa.Text, nullable=True))
        batch.drop_constraint(op.f(state_check), type_="check")
        batch.create_check_constraint(op.f("ck_subscriptions_state"), NEW_STATES)
        batch.create_check_constraint(op.f("ck_subscriptions_source"), SOURCES)


def downgrade() -> None:
    """Back to 0003, refused while Graph rows exist: they would pass for EWS rows, or break the old check."""
    conn = op.get_bind()
    graph_rows = conn.execute(
        sa.text(
            "SELECT (SELECT count(*) FROM notifications WHERE source <> 'ews')"
            " + (SELECT count(*) FROM subscriptions"
            "    WHERE source <> 'ews' OR state IN ('reauthorization_required', 'removed'))"
        )
    ).scalar_one()
    if graph_rows:
        raise RuntimeError(
            f"cannot downgrade below 0004: {graph_rows} Graph row(s) in notifications/subscriptions;"
            " delete them first if they are to be lost"
        )
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_constraint(op.f("ck_subscriptions_source"), type_="check")
        batch.drop_constraint(op.f("ck_subscriptions_state"), type_="check")
        batch.create_check_constraint(op.f(OLD_STATE_CHECK), OLD_STATES)
        batch.drop_column("directory_tenant_id")
        batch.drop_column("resource")
        batch.drop_column("mailbox")
        batch.drop_column("expires_at")
        batch.drop_column("source")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_constraint(op.f("ck_notifications_source"), type_="check")
        batch.drop_column("resource_data")
        batch.drop_column("resource")
        batch.drop_column("source")
