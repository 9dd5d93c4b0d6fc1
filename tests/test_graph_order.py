"""Graph rows in the place of their first delivery (SPEC §9), whatever order the workers store the POSTs in.

In-process, on both databases: ``worker.store.store`` called with the jobs in the order a slow worker would
finish them, and the ingress's in-flight marks as they would stand.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from shared.schema import notifications, subscriptions
from shared.types import InFlight, SubscriptionKey
from syncnotify.simulator.graph_payloads import Change, change_item, etag, event_id, notification_body
from worker.graph import parse_graph
from worker.store import Delivery, InFlightOf, store, sweep

TENANT = "Default"
SUB = "6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b"
ROOM = "room-a101@example.com"


@dataclass(frozen=True)
class Post:
    id: str
    received: datetime
    body: bytes

    def delivery(self) -> Delivery:
        return Delivery(self.id, TENANT, self.received, parse_graph(self.body))


def post(seconds_ago: float, *changes: Change) -> Post:
    body = notification_body([change_item(c, "dir", "state") for c in changes])
    return Post(uuid.uuid4().hex, datetime.now(UTC) - timedelta(seconds=seconds_ago), body)


def marks(*posts: Post) -> InFlight:
    return {(TENANT, SUB): [(p.id, p.received.timestamp()) for p in posts]}


def in_flight(*posts: Post) -> InFlightOf:
    def of(_keys: Sequence[SubscriptionKey]) -> InFlight:
        return marks(*posts)

    return of


def stored(engine: Engine) -> list[tuple[int | None, str]]:
    with engine.connect() as conn:
        query = select(notifications.c.seq, notifications.c.event_type).where(notifications.c.subscription_id == SUB)
        return sorted((r.seq, r.event_type) for r in conn.execute(query.order_by(notifications.c.seq)))


def test_a_redelivery_stored_before_its_first_delivery_does_not_move_the_change_behind_newer_ones(
    engine: Engine,
) -> None:
    created = Change(SUB, ROOM, "created", event_id(ROOM, 1), etag(ROOM, 1, 0))
    updated = Change(SUB, ROOM, "updated", event_id(ROOM, 1), etag(ROOM, 1, 1))
    first, newer = post(3, created), post(2, updated)
    again = Post(uuid.uuid4().hex, datetime.now(UTC) - timedelta(seconds=1), first.body)  # Graph redelivers

    store(engine, [again.delivery()], in_flight(first, newer, again))  # the redelivery's job runs first …
    store(engine, [newer.delivery()], in_flight(first, newer))  # … then the newer POST's …
    assert stored(engine) == [(None, "Created"), (None, "Modified")]  # both wait for the first POST
    store(engine, [first.delivery()], in_flight(first))  # … and the first delivery's last
    assert stored(engine) == [(1, "Created"), (2, "Modified")]


def test_a_queue_backlog_older_than_the_gap_timeout_keeps_the_order_and_only_a_long_wait_is_a_gap(
    engine: Engine,
) -> None:
    created = Change(SUB, ROOM, "created", event_id(ROOM, 2), etag(ROOM, 2, 0))
    updated = Change(SUB, ROOM, "updated", event_id(ROOM, 2), etag(ROOM, 2, 1))
    old, newer = post(300, created), post(240, updated)  # both queued for minutes behind a backlog

    store(engine, [newer.delivery()], in_flight(old, newer))
    sweep(engine, 60.0, in_flight(old))  # it has not waited 60 s in the database: it keeps waiting
    assert stored(engine) == [(None, "Modified")]
    store(engine, [old.delivery()], in_flight(old))
    assert stored(engine) == [(1, "Created"), (2, "Modified")]

    edited = Change(SUB, ROOM, "updated", event_id(ROOM, 2), etag(ROOM, 2, 2))
    lost, later = post(2, Change(SUB, ROOM, "deleted", event_id(ROOM, 2), None)), post(1, edited)
    store(engine, [later.delivery()], in_flight(lost, later))
    sweep(engine, 0.0, in_flight(lost))  # waited past the gap timeout: numbered, and the room wants a resync
    with engine.connect() as conn:
        state, gaps = conn.execute(
            select(subscriptions.c.state, subscriptions.c.gap_count).where(subscriptions.c.subscription_id == SUB)
        ).one()
    assert (state, gaps) == ("needs_resync", 1)
    assert stored(engine) == [(1, "Created"), (2, "Modified"), (3, "Modified")]
