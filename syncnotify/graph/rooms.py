"""The ``subscriptions`` rows of the Graph subscriptions syncnotify made: one room's, read and written here only.

A room (``tenant``, ``mailbox``) has at most one live subscription row; a subscription Graph removed keeps its
row (state ``removed``) beside the one that replaced it, ``mailbox`` linking the two (SPEC §10).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, and_, func, insert, select, update
from sqlalchemy.engine import Connection, Row

from shared.schema import RETIRED_STATES, subscriptions


def resource_of(mailbox: str) -> str:
    """The resource a room is subscribed on: its whole calendar (GRAPH.md §6)."""
    return f"users/{mailbox}/events"


@dataclass(frozen=True, slots=True)
class Room:
    """One Graph subscription row of a room."""

    tenant: str
    mailbox: str
    subscription_id: str
    state: str
    expires_at: datetime | None
    renewed_at: datetime | None
    renewal_attempted_at: datetime | None
    renewal_error: str | None
    renewal_failures: int
    directory_tenant_id: str | None

    @property
    def retired(self) -> bool:
        return self.state in RETIRED_STATES

    @property
    def lifetime(self) -> timedelta | None:
        """What Graph granted last time (from the grant to the expiry); None before any grant is known."""
        if self.expires_at is None or self.renewed_at is None or self.expires_at <= self.renewed_at:
            return None
        return self.expires_at - self.renewed_at


def _room(row: Row[tuple[object, ...]]) -> Room:
    m = row._mapping  # noqa: SLF001 - SQLAlchemy's public mapping view of a row
    return Room(
        tenant=m["tenant"],
        mailbox=m["mailbox"],
        subscription_id=m["subscription_id"],
        state=m["state"],
        expires_at=m["expires_at"],
        renewed_at=m["renewed_at"],
        renewal_attempted_at=m["renewal_attempted_at"],
        renewal_error=m["renewal_error"],
        renewal_failures=m["renewal_failures"],
        directory_tenant_id=m["directory_tenant_id"],
    )


_MANAGED = and_(subscriptions.c.source == "graph", subscriptions.c.mailbox.is_not(None))


def rooms(engine: Engine, tenant: str | None = None, mailboxes: list[str] | None = None) -> list[Room]:
    """The rows of the Graph subscriptions syncnotify made, retired ones too; by tenant, mailbox, expiry."""
    query = select(subscriptions).where(_MANAGED)
    if tenant is not None:
        query = query.where(func.lower(subscriptions.c.tenant) == tenant.lower())
    if mailboxes is not None:
        query = query.where(func.lower(subscriptions.c.mailbox).in_([m.lower() for m in mailboxes]))
    with engine.connect() as conn:
        found = [_room(row) for row in conn.execute(query)]
    never = datetime.max.replace(tzinfo=UTC)
    return sorted(found, key=lambda r: (r.tenant, r.mailbox.lower(), r.retired, r.expires_at or never))


def live_room(engine: Engine, tenant: str, mailbox: str) -> Room | None:
    """The room's subscription that is not retired, if it has one."""
    return next((r for r in rooms(engine, tenant, [mailbox]) if not r.retired), None)


def room(engine: Engine, tenant: str, subscription_id: str) -> Room | None:
    """One subscription row, read afresh (after the room's lock is taken)."""
    query = select(subscriptions).where(
        _MANAGED, subscriptions.c.tenant == tenant, subscriptions.c.subscription_id == subscription_id
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return _room(row) if row is not None else None


def add(
    engine: Engine,
    tenant: str,
    mailbox: str,
    subscription_id: str,
    expires_at: datetime,
    directory_tenant_id: str | None,
    now: datetime,
) -> None:
    """The row of a subscription Graph just created (or one found at Graph that had no row: adopted)."""
    values = {
        "source": "graph",
        "mailbox": mailbox,
        "resource": resource_of(mailbox),
        "expires_at": expires_at,
        "renewed_at": now,
        "renewal_attempted_at": now,
        "renewal_error": None,
        "renewal_failures": 0,
        "directory_tenant_id": directory_tenant_id,
    }
    with engine.begin() as conn:
        key = (subscriptions.c.tenant == tenant) & (subscriptions.c.subscription_id == subscription_id)
        # a notification of the new subscription may have been stored first, making a bare row
        if not conn.execute(update(subscriptions).where(key).values(**values)).rowcount:
            conn.execute(
                insert(subscriptions).values(
                    tenant=tenant, subscription_id=subscription_id, last_seq=0, state="active", gap_count=0, **values
                )
            )


def _set(conn: Connection, r: Room, values: dict[str, object], expect_state: str | None = None) -> bool:
    query = update(subscriptions).where(
        subscriptions.c.tenant == r.tenant, subscriptions.c.subscription_id == r.subscription_id
    )
    if expect_state is not None:  # a lifecycle event stored meanwhile wins
        query = query.where(subscriptions.c.state == expect_state)
    return bool(conn.execute(query.values(**values)).rowcount)


def renewed(engine: Engine, r: Room, expires_at: datetime | None, now: datetime) -> None:
    """Graph granted ``r`` a new lifetime (renewal) or reauthorized it (``expires_at`` None: unchanged)."""
    values: dict[str, object] = {"renewal_attempted_at": now, "renewal_error": None, "renewal_failures": 0}
    if expires_at is not None:
        values |= {"renewed_at": now, "expires_at": expires_at}
    with engine.begin() as conn:
        _set(conn, r, values)
        if r.state in ("reauthorization_required", "renewal_failed"):
            _set(conn, r, {"state": "active"}, expect_state=r.state)


def failed(engine: Engine, r: Room, reason: str, now: datetime) -> None:
    """The attempt failed for ``reason`` (one line): state ``renewal_failed`` and the reason, tried again later."""
    with engine.begin() as conn:
        _set(
            conn,
            r,
            {
                "state": "renewal_failed",
                "renewal_attempted_at": now,
                "renewal_error": reason,
                "renewal_failures": r.renewal_failures + 1,
            },
        )


def postponed(engine: Engine, r: Room, reason: str, now: datetime) -> None:
    """A transient refusal (throttled, Graph away): the reason is recorded, the state kept, tried again later."""
    with engine.begin() as conn:
        _set(
            conn, r, {"renewal_attempted_at": now, "renewal_error": reason, "renewal_failures": r.renewal_failures + 1}
        )


def retire(engine: Engine, r: Room, state: str) -> None:
    """``removed`` (Graph lost it: the room wants a resync) or ``unsubscribed`` (an operator's wish)."""
    with engine.begin() as conn:
        _set(conn, r, {"state": state})
