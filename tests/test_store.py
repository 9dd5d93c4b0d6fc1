"""Storing: one row per event, ``seq`` 1, 2, 3 … in chain order whatever the delivery order (SPEC §6, §7).

Every test here runs on SQLite and on PostgreSQL (the ``engine`` fixture is parametrised).
"""

from __future__ import annotations

import functools
import itertools
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from shared.schema import chain_links, notifications, subscriptions
from shared.types import SubscriptionKey
from tests.conftest import SAMPLES, SEED_SUBSCRIPTION
from tests.payloads import (
    SUBSCRIPTION_A,
    SUBSCRIPTION_B,
    envelope,
    error_response,
    make_event,
    make_notification,
    notification_message,
    watermark,
)
from worker.parse import parse_payload
from worker.store import Delivery, InFlight, store, sweep

TENANT = "Default"


@dataclass
class Post:
    """A payload as the ingress would have received it: id and receive time fixed at creation."""

    body: bytes
    id: str
    received: float

    def delivery(self, tenant: str = TENANT) -> Delivery:
        return Delivery(self.id, tenant, datetime.fromtimestamp(self.received, UTC), parse_payload(self.body))


_clock = itertools.count(1)


def post(body: bytes) -> Post:
    """Each post is received after the previous one, as Exchange sends them one at a time."""
    return Post(body, uuid.uuid4().hex, 1_700_000_000 + next(_clock) / 1000)


def _always(marks: InFlight, keys: Sequence[SubscriptionKey]) -> InFlight:
    """An ``in_flight_of`` that answers ``marks`` whatever it is asked."""
    return marks


def in_flight(posts: Sequence[Post], subscription_id: str, tenant: str = TENANT) -> InFlight:
    return {(tenant, subscription_id): [(p.id, p.received) for p in posts]}


def rows(engine: Engine, subscription_id: str) -> list[tuple[int | None, str, str]]:
    query = (
        select(notifications.c.seq, notifications.c.event_type, notifications.c.watermark)
        .where(notifications.c.subscription_id == subscription_id)
        .order_by(notifications.c.seq.nulls_last(), notifications.c.id)
    )
    with engine.connect() as conn:
        return [(r.seq, r.event_type, r.watermark) for r in conn.execute(query)]


def subscription(engine: Engine, subscription_id: str) -> dict[str, object]:
    with engine.connect() as conn:
        row = conn.execute(select(subscriptions).where(subscriptions.c.subscription_id == subscription_id)).one()
    return dict(row._mapping)


def chain(subscription_id: str, first: int, count: int, kinds: Sequence[str] = ("Modified",)) -> list[bytes]:
    """``count`` notifications with one event each, chained from counter ``first``."""
    bodies = []
    for n in range(first, first + count):
        kind = kinds[(n - first) % len(kinds)]
        bodies.append(make_notification(subscription_id, watermark(n), [make_event(kind, watermark(n + 1))]))
    return bodies


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def test_samples_in_order_give_one_row_per_event(engine: Engine) -> None:
    names = sorted(p.name for p in SAMPLES.glob("[01][0-9]_*.xml") if "malformed" not in p.name)
    results = [store(engine, [post(sample(name)).delivery()]) for name in names]
    by_name = dict(zip(names, results, strict=True))

    a = rows(engine, SUBSCRIPTION_A)
    kinds = [kind for seq, kind, _ in a if seq is not None]
    assert kinds == [
        "Created",
        "Modified",
        "Modified",
        "Modified",
        "Created",
        "NewMail",
        "Moved",
        "Moved",
        "Copied",
        "Deleted",
        "FreeBusyChanged",
    ]
    assert [seq for seq, _, _ in a if seq is not None] == list(range(1, 12))
    # 12 is a gap: its row waits (seq null) until the gap timeout
    assert [(seq, kind) for seq, kind, _ in a if seq is None] == [(None, "Modified")]
    assert by_name["13_retry_duplicate_of_09.xml"].rows == 0
    assert by_name["13_retry_duplicate_of_09.xml"].duplicates == 1
    assert by_name["15_prefix_variant_of_02.xml"].rows == 0
    assert [seq for seq, _, _ in rows(engine, SUBSCRIPTION_B)] == [1, 2, 3]

    state = subscription(engine, SUBSCRIPTION_A)
    assert state["state"] == "error" and state["error_code"] == "ErrorReadEventsFailed"
    assert state["last_seq"] == 11 and state["server_version"] == "Exchange2016"

    with engine.connect() as conn:
        moved = conn.execute(select(notifications).where(notifications.c.watermark == watermark(1028))).one()
        folder = conn.execute(select(notifications).where(notifications.c.watermark == watermark(1011))).one()
    assert moved.old_item_id == "AAMkAEXAMPLEITEM000000000000001AAA="
    assert moved.old_parent_folder_id == "AAMkAEXAMPLECALENDARFOLDER0001AAA="
    assert moved.event_time == datetime(2026, 3, 2, 9, 5, 10, tzinfo=UTC)
    assert folder.unread_count == 3 and folder.folder_id == "AAMkAEXAMPLEINBOXFOLDER00000001AAA="
    assert moved.previous_watermark == watermark(1027)

    # the gap: once the timeout passes, the waiting row is numbered and the gap is on record
    time.sleep(0.05)
    result = sweep(engine, gap_timeout=0.01)
    assert result.gaps == 1
    assert [seq for seq, _, _ in rows(engine, SUBSCRIPTION_A)] == list(range(1, 13))
    state = subscription(engine, SUBSCRIPTION_A)
    assert state["gap_count"] == 1 and state["state"] == "error"  # an error outranks needs_resync


def test_seed_sample_is_a_new_subscription_with_two_rows(engine: Engine) -> None:
    result = store(engine, [post(sample("00_seed_sample.xml")).delivery()])
    assert result.rows == 2
    assert [(seq, kind) for seq, kind, _ in rows(engine, SEED_SUBSCRIPTION)] == [(1, "Modified"), (2, "Modified")]


def test_first_two_of_a_new_subscription_in_reverse_order(engine: Engine) -> None:
    sub = f"new-{uuid.uuid4().hex}"
    first, second = (post(b) for b in chain(sub, 10, 2, kinds=("Created", "Modified")))
    marks = in_flight([first, second], sub)
    store(engine, [second.delivery()], lambda keys: marks)  # the second finishes first: it must not become the head
    assert rows(engine, sub) == [(None, "Modified", watermark(12))]
    store(engine, [first.delivery()], lambda keys: in_flight([second], sub))
    assert rows(engine, sub) == [(1, "Created", watermark(11)), (2, "Modified", watermark(12))]
    assert subscription(engine, sub)["last_watermark"] == watermark(12)


def test_new_subscription_head_waits_for_an_earlier_error_message(engine: Engine) -> None:
    """An earlier payload in flight blocks the head even if it will make no link (here an error message)."""
    sub = f"err-{uuid.uuid4().hex}"
    error = post(envelope(error_response(sub, "ErrorMissedNotificationEvents")))
    first = post(chain(sub, 1, 1)[0])
    store(engine, [first.delivery()], lambda keys: in_flight([error, first], sub))
    assert rows(engine, sub)[0][0] is None
    store(engine, [error.delivery()], lambda keys: in_flight([first], sub))
    sweep(engine, gap_timeout=60, in_flight_of=lambda keys: {})  # the error is stored: nothing blocks now
    assert rows(engine, sub)[0][0] == 1
    assert subscription(engine, sub)["state"] == "error"
    assert subscription(engine, sub)["gap_count"] == 0


def test_dead_lettered_first_payload_becomes_a_gap_after_the_timeout(engine: Engine) -> None:
    sub = f"lost-{uuid.uuid4().hex}"
    lost, second = (post(b) for b in chain(sub, 1, 2))
    marks = in_flight([lost, second], sub)
    store(engine, [second.delivery()], lambda keys: marks)
    assert sweep(engine, gap_timeout=60, in_flight_of=lambda keys: marks).gaps == 0
    assert rows(engine, sub)[0][0] is None
    time.sleep(0.05)
    assert sweep(engine, gap_timeout=0.01, in_flight_of=lambda keys: marks).gaps == 1
    assert rows(engine, sub) == [(1, "Modified", watermark(3))]
    assert subscription(engine, sub)["state"] == "needs_resync"


def test_retry_duplicate_after_later_notifications_adds_nothing(engine: Engine) -> None:
    sub = f"dup-{uuid.uuid4().hex}"
    bodies = chain(sub, 100, 4)
    for body in bodies:
        store(engine, [post(body).delivery()])
    before = rows(engine, sub)
    result = store(engine, [post(bodies[1]).delivery()])
    assert result.rows == 0 and result.duplicates == 1
    assert rows(engine, sub) == before == [(i + 1, "Modified", watermark(101 + i)) for i in range(4)]
    with engine.connect() as conn:
        waiting = conn.execute(
            select(func.count()).where(chain_links.c.subscription_id == sub, chain_links.c.waiting_since.is_not(None))
        ).scalar_one()
    assert waiting == 0


def test_status_event_between_two_item_notifications(engine: Engine) -> None:
    sub = f"status-{uuid.uuid4().hex}"
    item1 = post(make_notification(sub, watermark(1), [make_event("Created", watermark(2))]))
    status = post(make_notification(sub, watermark(2), [make_event("Status", watermark(3))]))
    heartbeat = post(make_notification(sub, watermark(3), [make_event("Status", watermark(3))]))  # no change
    item2 = post(make_notification(sub, watermark(3), [make_event("Deleted", watermark(4))]))
    store(engine, [item1.delivery()])
    store(engine, [item2.delivery()])  # before the status event that precedes it
    assert rows(engine, sub)[-1][0] is None
    store(engine, [status.delivery()])
    store(engine, [heartbeat.delivery()])
    assert rows(engine, sub) == [(1, "Created", watermark(2)), (2, "Deleted", watermark(4))]
    state = subscription(engine, sub)
    assert state["last_watermark"] == watermark(4) and state["last_seq"] == 2


def test_heartbeat_repeats_and_watermarkless_status_only_touch_last_seen(engine: Engine) -> None:
    sub = f"beat-{uuid.uuid4().hex}"
    store(engine, [post(make_notification(sub, watermark(5), [make_event("Status", watermark(5))])).delivery()])
    for _ in range(3):
        store(engine, [post(make_notification(sub, watermark(5), [make_event("Status", watermark(5))])).delivery()])
    minimal = post(envelope(notification_message(sub, None, [make_event("Status", None)], more_events=None)))
    store(engine, [minimal.delivery()])
    state = subscription(engine, sub)
    assert state["last_watermark"] == watermark(5) and state["last_seq"] == 0 and state["state"] == "active"
    assert state["last_seen_at"] == datetime.fromtimestamp(minimal.received, UTC)
    assert rows(engine, sub) == []


def test_one_batch_with_shuffled_notifications_of_several_subscriptions(engine: Engine) -> None:
    subs = [f"batch{i}-{uuid.uuid4().hex}" for i in range(3)]
    posts = [post(b) for sub in subs for b in chain(sub, 50, 5, kinds=("Created", "Modified", "Moved"))]
    random.Random(7).shuffle(posts)
    marks = {k: v for sub in subs for k, v in in_flight([p for p in posts if sub in p.body.decode()], sub).items()}
    store(engine, [p.delivery() for p in posts[:7]], lambda keys: marks)
    store(engine, [p.delivery() for p in posts[7:]], lambda keys: marks)
    for sub in subs:
        got = rows(engine, sub)
        assert [seq for seq, _, _ in got] == [1, 2, 3, 4, 5]
        assert [w for _, _, w in got] == [watermark(n) for n in range(51, 56)]


def test_several_response_messages_in_one_post(engine: Engine) -> None:
    body = envelope(
        notification_message(SUBSCRIPTION_A, watermark(1), [make_event("Created", watermark(2))]),
        notification_message(SUBSCRIPTION_B, watermark(7), [make_event("Modified", watermark(8))]),
        error_response("other-subscription", "ErrorMissedNotificationEvents"),
    )
    result = store(engine, [post(body).delivery()])
    assert result.rows == 2 and result.errors == 1
    assert rows(engine, SUBSCRIPTION_A) == [(1, "Created", watermark(2))]
    assert rows(engine, SUBSCRIPTION_B) == [(1, "Modified", watermark(8))]
    assert subscription(engine, "other-subscription")["error_code"] == "ErrorMissedNotificationEvents"


def test_same_watermark_in_two_tenants_is_two_rows(engine: Engine) -> None:
    body = chain(SUBSCRIPTION_A, 1, 1)[0]
    store(engine, [post(body).delivery("Default"), post(body).delivery("Other")])
    with engine.connect() as conn:
        tenants = sorted(conn.execute(select(notifications.c.tenant, notifications.c.seq)).all())
    assert tenants == [("Default", 1), ("Other", 1)]


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[bytes], list[int], list[list[int]]]:
    """A chain of notifications (items, folders, heartbeats), then an order of delivery with duplicates."""
    kinds = st.sampled_from(
        ["Created", "Modified", "Deleted", "Moved", "Copied", "NewMail", "FreeBusyChanged", "Status"]
    )
    counter = 1
    bodies = []
    sub = f"prop-{uuid.uuid4().hex}"
    for _ in range(draw(st.integers(1, 8))):
        events = []
        previous = counter
        for kind in draw(st.lists(kinds, min_size=1, max_size=3)):
            counter += 1
            events.append(make_event(kind, watermark(counter)))
        bodies.append(make_notification(sub, watermark(previous), events))
    order = draw(st.permutations(range(len(bodies))))
    extra = draw(st.lists(st.sampled_from(range(len(bodies))), max_size=4))
    sequence = list(order) + extra
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(sequence) - 1)), max_size=3)))
    batches = [sequence[a:b] for a, b in itertools.pairwise([0, *cuts, len(sequence)]) if sequence[a:b]]
    return bodies, list(order), batches


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=deliveries())
def test_any_delivery_order_with_duplicates_gives_the_same_rows(engine: Engine, case: tuple) -> None:  # type: ignore[type-arg]
    """The property of STYLE.md: shuffled, duplicated, batched deliveries always give the same rows and seq."""
    bodies, _order, batches = case
    posts = [post(b) for b in bodies]  # received in chain order, as Exchange sends them
    sub = parse_payload(posts[0].body).notifications[0].subscription_id
    stored: set[str] = set()
    for batch in batches:
        marks = in_flight([p for p in posts if p.id not in stored], sub)
        store(engine, [posts[i].delivery() for i in batch], functools.partial(_always, marks))
        stored.update(posts[i].id for i in batch)
    sweep(engine, gap_timeout=60, in_flight_of=lambda keys: {})

    expected = [
        (e.kind, e.watermark)
        for p in posts
        for n in parse_payload(p.body).notifications
        for e in n.events
        if e.makes_row
    ]
    got = rows(engine, sub)
    assert [(kind, w) for _, kind, w in got] == expected
    assert [seq for seq, _, _ in got] == list(range(1, len(expected) + 1))
    assert subscription(engine, sub)["gap_count"] == 0


@pytest.mark.parametrize("bad", ["not a number", "99999999999"])
def test_bad_unread_count_is_a_permanent_parse_error_not_a_database_error(bad: str) -> None:
    from shared.errors import PermanentError

    body = make_notification(SUBSCRIPTION_A, watermark(1), [make_event("Modified", watermark(2), unread_count=bad)])
    with pytest.raises(PermanentError) as info:
        parse_payload(body)
    assert info.value.error_class == "bad_value"


def test_heartbeat_stored_after_its_successor_neither_waits_nor_sets_the_chain_back(engine: Engine) -> None:
    """W→W heartbeat and W→X change share their predecessor; a worker may store the change first."""
    sub = f"beat-race-{uuid.uuid4().hex}"
    store(engine, [post(make_notification(sub, watermark(1), [make_event("Created", watermark(2))])).delivery()])
    heartbeat = post(make_notification(sub, watermark(2), [make_event("Status", watermark(2))]))
    change = post(make_notification(sub, watermark(2), [make_event("Modified", watermark(3))]))
    after = post(make_notification(sub, watermark(3), [make_event("Deleted", watermark(4))]))
    store(engine, [change.delivery()])
    store(engine, [heartbeat.delivery()])  # late: the chain is already past W
    store(engine, [after.delivery()])
    time.sleep(0.05)
    assert sweep(engine, gap_timeout=0.01).gaps == 0  # nothing waits, so nothing is forced
    assert rows(engine, sub) == [
        (1, "Created", watermark(2)),
        (2, "Modified", watermark(3)),
        (3, "Deleted", watermark(4)),
    ]
    state = subscription(engine, sub)
    assert state["last_watermark"] == watermark(4) and state["gap_count"] == 0 and state["state"] == "active"
