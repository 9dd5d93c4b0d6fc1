"""Parsed notifications → deduplicated rows with a contiguous ``seq`` in watermark-chain order (SPEC §6, §7).

How the chain is kept:

- Every ``Notification`` element becomes one *link* in ``chain_links`` (its ``PreviousWatermark``, its last
  ``Watermark`` and the watermarks of the rows it made).  The link's unique key makes a redelivered
  notification a no-op, and each row's unique ``(tenant, subscription_id, watermark)`` does the same for
  events.
- A subscription's ``last_watermark`` is the tail of its chain.  A link whose ``PreviousWatermark`` is the
  tail is *linked*: its rows get the next ``seq`` numbers in document order and its last watermark becomes
  the tail.  A link that does not fit yet *waits* (rows with ``seq`` null) until its predecessor is linked.
- A new subscription has no tail.  Its head is the earliest-received waiting link, but only once no
  payload of that subscription received before it is still in flight (queued, or being retried): the
  ingress records each payload's receive time in Redis and the job passes what is still in flight here.
  Exchange sends a subscription's next notification only after we answered the previous one, so receive
  order is chain order, whatever order the workers finish in.
- A link that waits longer than the gap timeout is linked anyway by ``sweep``: the gap is counted, the
  subscription goes to ``needs_resync`` and the chain continues past it.

All of it happens under a per-subscription lock (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's single
writer lock, taken by ``BEGIN IMMEDIATE``), so any number of workers may store concurrently.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, select, tuple_, update

from shared.schema import chain_links, insert_new, insert_new_returning, notifications, subscriptions
from worker.parse import Event, Notification, ParsedPayload

logger = logging.getLogger(__name__)

SubscriptionKey = tuple[str, str]
#: Payloads still in flight for a subscription: (payload id, receive time in epoch seconds).
InFlight = Mapping[SubscriptionKey, Sequence[tuple[str, float]]]
#: Reads the ``InFlight`` payloads of the given subscriptions (from Redis, in the worker).
InFlightOf = Callable[[Sequence[SubscriptionKey]], InFlight]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One parsed payload, ready to be stored."""

    payload_id: str
    tenant: str
    received_at: datetime
    parsed: ParsedPayload


@dataclass(slots=True)
class StoreResult:
    """What one call stored; the job turns it into log lines and metrics."""

    rows: int = 0
    duplicates: int = 0
    gaps: int = 0
    errors: int = 0

    def add(self, other: StoreResult) -> None:
        self.rows += other.rows
        self.duplicates += other.duplicates
        self.gaps += other.gaps
        self.errors += other.errors


@dataclass(slots=True)
class _Chain:
    """A subscription's row, locked for the length of the transaction and written back whole."""

    tenant: str
    subscription_id: str
    tail: str | None
    last_seq: int
    last_seen_at: datetime | None
    heartbeat_seconds: float | None
    state: str
    error_code: str | None
    gap_count: int
    server_version: str | None

    @property
    def key(self) -> SubscriptionKey:
        return (self.tenant, self.subscription_id)


@dataclass(slots=True)
class _New:
    """A notification of this batch on its way to becoming a link."""

    key: SubscriptionKey
    delivery: Delivery
    previous: str
    last: str
    rows: list[dict[str, Any]]
    id: int | None = None


@dataclass(frozen=True, slots=True)
class _Link:
    id: int
    previous_watermark: str
    last_watermark: str
    row_watermarks: tuple[str, ...]
    payload_id: str
    received_at: datetime
    waiting_since: datetime


def store(engine: Engine, deliveries: Sequence[Delivery], in_flight_of: InFlightOf | None = None) -> StoreResult:
    """Store ``deliveries`` in one transaction; raises SQLAlchemy errors unchanged (the job classifies them).

    ``in_flight_of`` is asked only about subscriptions with links left waiting (see ``InFlight``): in the
    steady state, none.
    """
    now = datetime.now(UTC)
    by_key: dict[SubscriptionKey, list[tuple[Delivery, int, Notification]]] = defaultdict(list)
    seen: dict[SubscriptionKey, datetime] = {}
    errors: dict[SubscriptionKey, str] = {}
    versions: dict[SubscriptionKey, str] = {}
    for delivery in sorted(deliveries, key=lambda d: d.received_at):
        parsed = delivery.parsed
        for position, notification in enumerate(parsed.notifications):
            key = (delivery.tenant, notification.subscription_id)
            by_key[key].append((delivery, position, notification))
            seen[key] = delivery.received_at
            if parsed.server_version:
                versions[key] = parsed.server_version
        for error in parsed.errors:
            if error.subscription_id is None:
                logger.warning("error message %s without a subscription id", error.response_code)
                continue
            key = (delivery.tenant, error.subscription_id)
            errors[key] = error.response_code
            seen[key] = delivery.received_at

    result = StoreResult()
    batch_payloads = {d.payload_id for d in deliveries}
    keys = sorted(seen)
    with engine.begin() as conn:
        chains = _lock(conn, keys)
        _add_batch(conn, chains, [(key, d, n) for key in keys for d, _, n in by_key.get(key, [])], now, result)
        waiting = _keys_waiting(conn, keys)
        in_flight = in_flight_of(waiting) if (in_flight_of and waiting) else {}
        for key in waiting:
            _advance(conn, chains[key], now, result, in_flight.get(key, ()), batch_payloads)
        for key in keys:
            chain = chains[key]
            _seen(chain, seen[key])
            if key in versions:
                chain.server_version = versions[key]
            if key in errors:
                chain.state, chain.error_code = "error", errors[key]
                result.errors += 1
                logger.warning(
                    "subscription reported error %s",
                    errors[key],
                    extra={"tenant": key[0], "subscription": key[1]},
                )
        _save(conn, list(chains.values()))
    return result


#: How fast the remembered heartbeat interval forgets a long silence, per notification.
HEARTBEAT_DECAY = 0.95


def _seen(chain: _Chain, at: datetime) -> None:
    """Move ``last_seen_at`` and learn the subscription's usual longest silence (its heartbeat interval).

    The interval is the longest gap between notifications, decaying slowly, so that a room that reports
    every 30 minutes when idle is not called stale after 5 busy ones.
    """
    if chain.last_seen_at is not None and at <= chain.last_seen_at:
        return
    if chain.last_seen_at is not None:
        interval = (at - chain.last_seen_at).total_seconds()
        previous = chain.heartbeat_seconds or interval
        chain.heartbeat_seconds = max(interval, previous * HEARTBEAT_DECAY)
    chain.last_seen_at = at


def _lock(conn: Connection, keys: Sequence[SubscriptionKey]) -> dict[SubscriptionKey, _Chain]:
    """Create missing subscription rows and lock all of them, in key order (so two workers cannot deadlock)."""
    if not keys:
        return {}
    conn.execute(
        insert_new(conn, subscriptions),
        [{"tenant": t, "subscription_id": s, "last_seq": 0, "state": "active", "gap_count": 0} for t, s in keys],
    )
    query = (
        select(subscriptions)
        .where(tuple_(subscriptions.c.tenant, subscriptions.c.subscription_id).in_(keys))
        .order_by(subscriptions.c.tenant, subscriptions.c.subscription_id)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return {
        (row.tenant, row.subscription_id): _Chain(
            tenant=row.tenant,
            subscription_id=row.subscription_id,
            tail=row.last_watermark,
            last_seq=row.last_seq,
            last_seen_at=row.last_seen_at,
            heartbeat_seconds=row.heartbeat_seconds,
            state=row.state,
            error_code=row.error_code,
            gap_count=row.gap_count,
            server_version=row.server_version,
        )
        for row in conn.execute(query)
    }


def _rows(delivery: Delivery, notification: Notification, now: datetime) -> list[dict[str, Any]]:
    """One row per item/folder event; a row's previous watermark is the watermark before it in the chain."""
    rows = []
    previous = notification.previous_watermark
    for event in notification.events:
        if event.makes_row and event.watermark is not None:
            rows.append(_row(delivery, notification.subscription_id, event, previous, now))
        previous = event.watermark or previous
    return rows


def _row(delivery: Delivery, subscription_id: str, event: Event, previous: str | None, now: datetime) -> dict[str, Any]:
    return {
        "tenant": delivery.tenant,
        "subscription_id": subscription_id,
        "seq": None,
        "watermark": event.watermark,
        "previous_watermark": previous,
        "event_type": event.kind,
        "event_time": event.timestamp,
        "item_id": event.item_id,
        "item_change_key": event.item_change_key,
        "folder_id": event.folder_id,
        "folder_change_key": event.folder_change_key,
        "parent_folder_id": event.parent_folder_id,
        "old_item_id": event.old_item_id,
        "old_folder_id": event.old_folder_id,
        "old_parent_folder_id": event.old_parent_folder_id,
        "unread_count": event.unread_count,
        "received_at": delivery.received_at,
        "stored_at": now,
    }


def _add_batch(
    conn: Connection,
    chains: dict[SubscriptionKey, _Chain],
    items: Sequence[tuple[SubscriptionKey, Delivery, Notification]],
    now: datetime,
    result: StoreResult,
) -> None:
    """Insert the batch's links and rows in a few statements; number the rows of links that fit the tail.

    ``items`` are in arrival order per subscription.  Links that do not fit are left waiting for ``_advance``.
    """
    news: list[_New] = []
    for key, delivery, notification in items:
        watermarks = [e.watermark for e in notification.events if e.watermark is not None]
        if watermarks:  # a StatusEvent without a Watermark (schema-legal) only moves "last seen"
            rows = _rows(delivery, notification, now)
            news.append(_New(key, delivery, notification.previous_watermark or "", watermarks[-1], rows))
    if not news:
        return
    inserted = insert_new_returning(
        conn,
        chain_links,
        [
            {
                "tenant": new.key[0],
                "subscription_id": new.key[1],
                "previous_watermark": new.previous,
                "last_watermark": new.last,
                "row_watermarks": " ".join(r["watermark"] for r in new.rows),
                "payload_id": new.delivery.payload_id,
                "received_at": new.delivery.received_at,
                "waiting_since": now,
            }
            for new in news
        ],
        [
            chain_links.c.id,
            chain_links.c.tenant,
            chain_links.c.subscription_id,
            chain_links.c.last_watermark,
            chain_links.c.previous_watermark,
        ],
    )
    ids: dict[tuple[str, str, str, str], int] = {
        (r.tenant, r.subscription_id, r.last_watermark, r.previous_watermark): r.id for r in inserted
    }
    base = {key: chain.last_seq for key, chain in chains.items()}
    linked: list[_New] = []
    fresh: list[_New] = []
    for new in news:
        new.id = ids.pop((*new.key, new.last, new.previous), None)
        if new.id is None:  # stored before (a retry, a replay, a second worker) or twice in this batch
            result.duplicates += len(new.rows)
            continue
        fresh.append(new)
        chain = chains[new.key]
        if chain.tail is not None and _standstill(new.previous, new.last, new.rows):
            linked.append(new)  # a heartbeat that moves nothing: it may come after its successor
        elif chain.tail is not None and new.previous in (chain.tail, ""):
            for offset, row in enumerate(new.rows, start=1):
                row["seq"] = chain.last_seq + offset
            chain.last_seq += len(new.rows)
            chain.tail = new.last
            linked.append(new)
    rows = [row for new in fresh for row in new.rows]
    stored: set[tuple[str, str, str]] = set()
    if rows:
        returned = insert_new_returning(
            conn,
            notifications,
            rows,
            [notifications.c.tenant, notifications.c.subscription_id, notifications.c.watermark],
        )
        stored = {(r.tenant, r.subscription_id, r.watermark) for r in returned}
    result.rows += len(stored)
    result.duplicates += len(rows) - len(stored)
    if len(stored) < len(rows):  # some events were stored under another notification: close the holes
        _renumber(conn, chains, base, linked, stored)
    for start in range(0, len(linked), 500):
        conn.execute(
            update(chain_links)
            .where(chain_links.c.id.in_([new.id for new in linked[start : start + 500]]))
            .values(waiting_since=None)
        )


def _renumber(
    conn: Connection,
    chains: dict[SubscriptionKey, _Chain],
    base: dict[SubscriptionKey, int],
    linked: Sequence[_New],
    stored: set[tuple[str, str, str]],
) -> None:
    """Give the rows this batch linked contiguous numbers again, leaving out events stored elsewhere before."""
    by_key: dict[SubscriptionKey, list[str]] = defaultdict(list)
    for new in linked:
        by_key[new.key] += [r["watermark"] for r in new.rows if (*new.key, r["watermark"]) in stored]
    for key, watermarks in by_key.items():
        chain = chains[key]
        chain.last_seq = base[key]
        _number(conn, chain, watermarks, renumber=True)


def _keys_waiting(conn: Connection, keys: Sequence[SubscriptionKey]) -> list[SubscriptionKey]:
    """The subscriptions among ``keys`` with links still waiting for their predecessor."""
    if not keys:
        return []
    query = (
        select(chain_links.c.tenant, chain_links.c.subscription_id)
        .where(
            chain_links.c.waiting_since.is_not(None),
            tuple_(chain_links.c.tenant, chain_links.c.subscription_id).in_(keys),
        )
        .distinct()
    )
    return sorted((r.tenant, r.subscription_id) for r in conn.execute(query))


def _number(conn: Connection, chain: _Chain, watermarks: Sequence[str], renumber: bool = False) -> None:
    """Give the rows with these watermarks the next ``seq`` numbers, in the given order."""
    if not watermarks:
        return
    condition = and_(
        notifications.c.tenant == chain.tenant,
        notifications.c.subscription_id == chain.subscription_id,
        notifications.c.watermark.in_(watermarks),
    )
    if not renumber:
        condition = and_(condition, notifications.c.seq.is_(None))
    unnumbered = {row.watermark for row in conn.execute(select(notifications.c.watermark).where(condition))}
    params = []
    for watermark in watermarks:
        if watermark in unnumbered:
            chain.last_seq += 1
            params.append({"w": watermark, "s": chain.last_seq})
    if params:
        conn.execute(
            update(notifications)
            .where(
                notifications.c.tenant == chain.tenant,
                notifications.c.subscription_id == chain.subscription_id,
                notifications.c.watermark == bindparam("w"),
            )
            .values(seq=bindparam("s")),
            params,
        )


def _waiting(conn: Connection, chain: _Chain, previous: Iterable[str] | None = None) -> list[_Link]:
    query = select(chain_links).where(
        chain_links.c.tenant == chain.tenant,
        chain_links.c.subscription_id == chain.subscription_id,
        chain_links.c.waiting_since.is_not(None),
    )
    if previous is not None:
        query = query.where(chain_links.c.previous_watermark.in_(list(previous)))
    query = query.order_by(chain_links.c.received_at, chain_links.c.id)
    return [
        _Link(
            r.id,
            r.previous_watermark,
            r.last_watermark,
            tuple(r.row_watermarks.split()),
            r.payload_id,
            r.received_at,
            r.waiting_since,
        )
        for r in conn.execute(query)
    ]


def _standstill(previous: str, last: str, rows: Sequence[object]) -> bool:
    """A StatusEvent whose Watermark is its PreviousWatermark: a link from W to W that moves the chain nowhere.

    Once the chain has a tail, such a heartbeat is linked wherever it arrives: its successor (from W on) may
    have been stored first, and the heartbeat must neither wait for a W that is already passed nor, forced
    through after the gap timeout, set the chain back to W.
    """
    return previous == last and not rows


def _link(conn: Connection, chain: _Chain, link: _Link) -> None:
    _number(conn, chain, link.row_watermarks)
    conn.execute(update(chain_links).where(chain_links.c.id == link.id).values(waiting_since=None))
    if chain.tail is None or not _standstill(link.previous_watermark, link.last_watermark, link.row_watermarks):
        chain.tail = link.last_watermark


def _head_blocked(
    conn: Connection, chain: _Chain, head: _Link, in_flight: Sequence[tuple[str, float]], batch: set[str]
) -> bool:
    """Whether a payload received before ``head`` is still in flight and not stored yet."""
    earlier = {pid for pid, score in in_flight if score < head.received_at.timestamp() and pid != head.payload_id}
    earlier -= batch
    if not earlier:
        return False
    stored = conn.execute(
        select(chain_links.c.payload_id).where(
            chain_links.c.tenant == chain.tenant,
            chain_links.c.subscription_id == chain.subscription_id,
            chain_links.c.payload_id.in_(earlier),
        )
    )
    return bool(earlier - {row.payload_id for row in stored})


def _advance(
    conn: Connection,
    chain: _Chain,
    now: datetime,
    result: StoreResult,
    in_flight: Sequence[tuple[str, float]],
    batch: set[str],
    force_after: datetime | None = None,
) -> None:
    """Link every waiting link that now fits; with ``force_after``, link past gaps older than that."""
    while True:
        if chain.tail is None:
            waiting = _waiting(conn, chain)
            if not waiting:
                return
            head = waiting[0]
            if _head_blocked(conn, chain, head, in_flight, batch):
                if force_after is None or head.waiting_since > force_after:
                    return
                _record_gap(chain, head, result, "its predecessor never arrived")
        else:
            fitting = _waiting(conn, chain, (chain.tail, ""))
            if fitting:
                head = fitting[0]
            else:
                if force_after is None:
                    return
                stale = [link for link in _waiting(conn, chain) if link.waiting_since <= force_after]
                if not stale:
                    return
                head = stale[0]
                _record_gap(chain, head, result, f"expected previous watermark {chain.tail}")
        _link(conn, chain, head)


def _record_gap(chain: _Chain, link: _Link, result: StoreResult, detail: str) -> None:
    result.gaps += 1
    chain.gap_count += 1
    if chain.state == "active":  # an error, or an operator's unsubscribe, says more
        chain.state = "needs_resync"
    logger.warning(
        "gap in the watermark chain: notification after watermark %s waited past the gap timeout (%s)",
        link.previous_watermark or "(none)",
        detail,
        extra={"tenant": chain.tenant, "subscription": chain.subscription_id},
    )


def _save(conn: Connection, chains: Sequence[_Chain]) -> None:
    """Write the locked subscription rows back, in one statement."""
    if not chains:
        return
    conn.execute(
        update(subscriptions)
        .where(
            subscriptions.c.tenant == bindparam("b_tenant"),
            subscriptions.c.subscription_id == bindparam("b_subscription_id"),
        )
        .values(
            last_watermark=bindparam("last_watermark"),
            last_seq=bindparam("last_seq"),
            last_seen_at=bindparam("last_seen_at", type_=subscriptions.c.last_seen_at.type),
            heartbeat_seconds=bindparam("heartbeat_seconds"),
            state=bindparam("state"),
            error_code=bindparam("error_code"),
            gap_count=bindparam("gap_count"),
            server_version=bindparam("server_version"),
        ),
        [
            {
                "b_tenant": c.tenant,
                "b_subscription_id": c.subscription_id,
                "last_watermark": c.tail,
                "last_seq": c.last_seq,
                "last_seen_at": c.last_seen_at,
                "heartbeat_seconds": c.heartbeat_seconds,
                "state": c.state,
                "error_code": c.error_code,
                "gap_count": c.gap_count,
                "server_version": c.server_version,
            }
            for c in chains
        ],
    )


def sweep(engine: Engine, gap_timeout: float, in_flight_of: InFlightOf | None = None) -> StoreResult:
    """Link what waits and may now go on; record gaps for what waited longer than ``gap_timeout`` seconds.

    ``in_flight_of(keys)`` returns the in-flight payloads of those subscriptions (see ``InFlight``);
    without it nothing is taken to be in flight.  Runs one short transaction per subscription.
    """
    now = datetime.now(UTC)
    force_after = now - timedelta(seconds=gap_timeout)
    with engine.connect() as conn:
        keys = sorted(
            {
                (r.tenant, r.subscription_id)
                for r in conn.execute(
                    select(chain_links.c.tenant, chain_links.c.subscription_id)
                    .where(chain_links.c.waiting_since.is_not(None))
                    .distinct()
                )
            }
        )
    in_flight: InFlight = in_flight_of(keys) if (in_flight_of and keys) else {}
    total = StoreResult()
    for key in keys:
        result = StoreResult()
        with engine.begin() as conn:
            chain = _lock(conn, [key])[key]
            _advance(conn, chain, now, result, in_flight.get(key, ()), set(), force_after=force_after)
            _save(conn, [chain])
        total.add(result)
    return total


__all__ = ["Delivery", "InFlight", "InFlightOf", "StoreResult", "store", "sweep"]
