"""Parsed notifications → deduplicated rows with a contiguous ``seq`` in watermark-chain order (SPEC §6, §7).

``store`` writes a batch of parsed payloads in one transaction and ``sweep`` closes gaps that waited too
long; the ordering rule itself is ``worker.chain``'s.  All of it happens under a per-subscription lock
(``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's single writer lock, taken by ``BEGIN IMMEDIATE``), so any
number of workers may store concurrently.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select, tuple_, update

from shared.schema import chain_links, insert_new, subscriptions
from shared.types import InFlight, SubscriptionKey
from worker.chain import Chain, Incoming, StoreResult, add_batch, advance, keys_waiting
from worker.graph_types import Change, GraphPayload, Lifecycle
from worker.parse import Event, Notification, ParsedPayload

logger = logging.getLogger(__name__)

#: Reads the ``InFlight`` payloads of the given subscriptions (from Redis, in the worker).
InFlightOf = Callable[[Sequence[SubscriptionKey]], InFlight]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One parsed payload, ready to be stored."""

    payload_id: str
    tenant: str
    received_at: datetime
    parsed: ParsedPayload | GraphPayload


#: The ``previous_watermark`` of every Graph link: Graph names no predecessor (see ``worker.chain``).
GRAPH_LINK = "graph"


@dataclass(slots=True)
class _GraphBatch:
    """The Graph deliveries of a batch, by subscription: links to be, lifecycle events, expiries."""

    news: dict[SubscriptionKey, list[Incoming]] = field(default_factory=lambda: defaultdict(list))
    lifecycle: dict[SubscriptionKey, list[Lifecycle]] = field(default_factory=lambda: defaultdict(list))
    expires: dict[SubscriptionKey, datetime] = field(default_factory=dict)

    def add(
        self, delivery: Delivery, parsed: GraphPayload, seen: dict[SubscriptionKey, datetime], now: datetime
    ) -> None:
        changes: dict[str, list[Change]] = defaultdict(list)
        for change in parsed.changes:
            changes[change.subscription_id].append(change)
        for subscription_id, group in changes.items():
            key = (delivery.tenant, subscription_id)
            rows = _graph_rows(delivery, group, now)
            last = f"graph:{delivery.payload_id}"
            self.news[key].append(Incoming(key, delivery.payload_id, delivery.received_at, GRAPH_LINK, last, rows))
        for event in parsed.lifecycle:
            self.lifecycle[(delivery.tenant, event.subscription_id)].append(event)
        items: list[Change | Lifecycle] = [*parsed.changes, *parsed.lifecycle]
        for item in items:
            key = (delivery.tenant, item.subscription_id)
            seen[key] = delivery.received_at
            if item.expires_at is not None and (key not in self.expires or item.expires_at > self.expires[key]):
                self.expires[key] = item.expires_at


def store(
    engine: Engine,
    deliveries: Sequence[Delivery],
    in_flight_of: InFlightOf | None = None,
) -> StoreResult:
    """Store ``deliveries`` in one transaction; raises SQLAlchemy errors unchanged (the job classifies them).

    ``in_flight_of`` is asked only about subscriptions with links left waiting (see ``InFlight``), and
    about Graph subscriptions (whose every link waits for what was received before it): for EWS in the
    steady state, none.  A link waits in the database until the sweeper's gap timeout (``sweep``).
    """
    now = datetime.now(UTC)
    by_key: dict[SubscriptionKey, list[tuple[Delivery, int, Notification]]] = defaultdict(list)
    seen: dict[SubscriptionKey, datetime] = {}
    errors: dict[SubscriptionKey, str] = {}
    versions: dict[SubscriptionKey, str] = {}
    graph = _GraphBatch()
    for delivery in sorted(deliveries, key=lambda d: d.received_at):
        parsed = delivery.parsed
        if isinstance(parsed, GraphPayload):
            graph.add(delivery, parsed, seen, now)
            continue
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
    graph_keys = sorted(set(graph.news) | set(graph.lifecycle))
    with engine.begin() as conn:
        chains = _lock(conn, keys, set(graph_keys))
        graph_waiting = set(keys_waiting(conn, sorted(graph.news)))
        in_flight = in_flight_of(sorted(graph.news)) if (in_flight_of and graph.news) else {}
        news = [_incoming(key, d, n, now) for key in keys for d, _, n in by_key.get(key, [])]
        news += [new for key in keys for new in graph.news.get(key, [])]
        ready = _graph_ready(graph_waiting, in_flight, batch_payloads)
        add_batch(conn, chains, [new for new in news if new is not None], now, result, ready)
        waiting = keys_waiting(conn, keys)
        unread = [key for key in waiting if key not in in_flight and key not in graph.news]
        if in_flight_of and unread:
            in_flight = {**in_flight, **in_flight_of(unread)}
        for key in waiting:
            advance(conn, chains[key], result, in_flight.get(key, ()), batch_payloads)
        for key in graph_keys:
            _apply_lifecycle(chains[key], graph.lifecycle.get(key, []), graph.expires.get(key), result)
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


def _graph_ready(waiting: set[SubscriptionKey], in_flight: InFlight, batch: set[str]) -> Callable[[Incoming], bool]:
    """Whether a Graph link of this batch may be numbered now: nothing of its subscription received before it
    waits in the database or is in flight outside this batch.  Once one link of a subscription waits, the
    later ones do too (``advance`` then decides, knowing what is stored)."""
    held = set(waiting)

    def ready(new: Incoming) -> bool:
        if new.key in held:
            return False
        at = new.received_at.timestamp()
        if any(score < at and pid not in batch for pid, score in in_flight.get(new.key, ())):
            held.add(new.key)
            return False
        return True

    return ready


def _apply_lifecycle(
    chain: Chain, events: Sequence[Lifecycle], expires_at: datetime | None, result: StoreResult
) -> None:
    """SPEC §9: ``missed`` → a gap and ``needs_resync``; ``reauthorizationRequired`` and ``subscriptionRemoved``
    → their states; an operator's ``unsubscribed`` stays.  ``expires_at`` only moves forward (a retry hours
    later carries an older expiry)."""
    if expires_at is not None and (chain.expires_at is None or expires_at > chain.expires_at):
        chain.expires_at = expires_at
    for event in events:
        if chain.state == "unsubscribed":
            break
        if event.event == "missed":
            chain.gap_count += 1
            result.gaps += 1
            if chain.state != "removed":
                chain.state = "needs_resync"
        elif event.event == "reauthorizationRequired":
            if chain.state != "removed":
                chain.state = "reauthorization_required"
        elif event.event == "subscriptionRemoved":
            chain.state = "removed"
        logger.warning(
            "Graph lifecycle event %s: subscription now %s",
            event.event,
            chain.state,
            extra={"tenant": chain.tenant, "subscription": chain.subscription_id},
        )


def _seen(chain: Chain, at: datetime) -> None:
    """Move ``last_seen_at`` and learn the subscription's usual longest silence (its heartbeat interval).

    The interval is the longest gap between notifications, decaying slowly, so that a room that reports
    every 30 minutes when idle is not called stale after 5 busy ones.
    """
    if chain.last_seen_at is not None and at <= chain.last_seen_at:
        return
    if chain.last_seen_at is not None and chain.source != "graph":  # Graph sends no heartbeat: silence says nothing
        interval = (at - chain.last_seen_at).total_seconds()
        previous = chain.heartbeat_seconds or interval
        chain.heartbeat_seconds = max(interval, previous * HEARTBEAT_DECAY)
    chain.last_seen_at = at


def _lock(
    conn: Connection, keys: Sequence[SubscriptionKey], graph: set[SubscriptionKey] | None = None
) -> dict[SubscriptionKey, Chain]:
    """Create missing subscription rows and lock all of them, in key order (so two workers cannot deadlock).

    Rows created for keys in ``graph`` are Graph subscriptions (``source`` ``graph``).
    """
    if not keys:
        return {}
    graph = graph or set()
    conn.execute(
        insert_new(conn, subscriptions),
        [
            {
                "tenant": t,
                "subscription_id": s,
                "last_seq": 0,
                "state": "active",
                "gap_count": 0,
                "source": "graph" if (t, s) in graph else "ews",
            }
            for t, s in keys
        ],
    )
    query = (
        select(subscriptions)
        .where(tuple_(subscriptions.c.tenant, subscriptions.c.subscription_id).in_(keys))
        .order_by(subscriptions.c.tenant, subscriptions.c.subscription_id)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return {
        (row.tenant, row.subscription_id): Chain(
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
            source=row.source,
            expires_at=row.expires_at,
        )
        for row in conn.execute(query)
    }


def _incoming(key: SubscriptionKey, delivery: Delivery, notification: Notification, now: datetime) -> Incoming | None:
    """The link-to-be of ``notification``; None for a StatusEvent without a Watermark (it only moves "last seen")."""
    watermarks = [e.watermark for e in notification.events if e.watermark is not None]
    if not watermarks:  # schema-legal
        return None
    rows = _rows(delivery, notification, now)
    previous = notification.previous_watermark or ""
    return Incoming(key, delivery.payload_id, delivery.received_at, previous, watermarks[-1], rows)


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
        "source": "ews",
        "resource": None,
        "resource_data": None,
    }


def _graph_rows(delivery: Delivery, changes: Sequence[Change], now: datetime) -> list[dict[str, Any]]:
    """One row per change (SPEC §9's table), the same change twice in one POST once, in ``value`` order."""
    rows: dict[str, dict[str, Any]] = {}
    for change in changes:
        rows.setdefault(
            change.watermark,
            {
                "tenant": delivery.tenant,
                "subscription_id": change.subscription_id,
                "seq": None,
                "watermark": change.watermark,
                "previous_watermark": None,
                "event_type": change.event_type,
                "event_time": None,
                "item_id": change.item_id,
                "item_change_key": change.etag,
                "folder_id": None,
                "folder_change_key": None,
                "parent_folder_id": None,
                "old_item_id": None,
                "old_folder_id": None,
                "old_parent_folder_id": None,
                "unread_count": None,
                "received_at": delivery.received_at,
                "stored_at": now,
                "source": "graph",
                "resource": change.resource,
                "resource_data": change.resource_data,
            },
        )
    return list(rows.values())


def _save(conn: Connection, chains: Sequence[Chain]) -> None:
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
            expires_at=bindparam("expires_at", type_=subscriptions.c.expires_at.type),
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
                "expires_at": c.expires_at,
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
            advance(conn, chain, result, in_flight.get(key, ()), set(), force_after=force_after)
            _save(conn, [chain])
        total.add(result)
    return total


__all__ = ["Delivery", "InFlight", "InFlightOf", "StoreResult", "store", "sweep"]
