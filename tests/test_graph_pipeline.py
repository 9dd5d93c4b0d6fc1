"""Graph notifications end to end through the real ingress and workers, on both databases: every sample of
tests/samples/graph behaves as its README says; rows once, ``seq`` in receive order with two workers;
lifecycle events move the subscription's state; unusable items are located dead letters."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from sqlalchemy import Engine, select

from migrations import upgrade
from shared.schema import make_engine, notifications, subscriptions
from syncnotify.redis_server import EmbeddedRedis
from tests.graph_samples import CLIENT_STATE, JSON, ROOM_A, ROOM_B, TENANT_ID, body, items, sample
from tests.processes import queue_drained, row_count, run, service, service_env, wait_for

NOTIFY = "/api/webhooks/graph?tenant=contoso"
LIFECYCLE = "/api/webhooks/graph/lifecycle?tenant=contoso"


@dataclass
class Service:
    url: str
    env: dict[str, str]
    engine: Engine
    redis: Redis
    tmp: Path

    def post(self, content: bytes, path: str = NOTIFY) -> None:
        response = httpx.post(self.url + path, content=content, headers=JSON, timeout=10)
        assert response.status_code == 202, response.text

    def drained(self, rows: int | None = None) -> None:
        wait_for(lambda: queue_drained(self.redis), 60, "the queue to drain")
        if rows is not None:
            wait_for(lambda: row_count(self.engine) >= rows, 30, f"{rows} rows")

    def rows(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(select(notifications).order_by(notifications.c.subscription_id, notifications.c.seq))
            )

    def subscription(self, subscription_id: str, tenant: str = "contoso") -> Any:
        with self.engine.connect() as conn:
            query = select(subscriptions).where(
                subscriptions.c.tenant == tenant, subscriptions.c.subscription_id == subscription_id
            )
            return conn.execute(query).one()

    def dead_letters(self) -> list[dict[str, Any]]:
        result = run(["dlq", "list", "--json"], self.env, self.tmp)
        assert result.returncode == 0, result.stderr
        entries: list[dict[str, Any]] = json.loads(result.stdout)
        return entries


def _service(
    redis_server: EmbeddedRedis, redis: Redis, database_url: str, tmp: Path, workers: int
) -> Iterator[Service]:
    engine = make_engine(database_url)
    upgrade(engine)
    env = service_env(
        redis_server.url,
        database_url,
        tmp,
        SYNCNOTIFY_TENANTS="contoso,other",
        SYNCNOTIFY_GRAPH_CLIENT_STATE=CLIENT_STATE,
    )
    with service(env, tmp, workers) as url:
        yield Service(url, env, engine, redis, tmp)
    engine.dispose()


@pytest.fixture
def graph(redis_server: EmbeddedRedis, redis: Redis, database_url: str, tmp_path: Path) -> Iterator[Service]:
    yield from _service(redis_server, redis, database_url, tmp_path, workers=1)


@pytest.fixture
def graph2(redis_server: EmbeddedRedis, redis: Redis, database_url: str, tmp_path: Path) -> Iterator[Service]:
    yield from _service(redis_server, redis, database_url, tmp_path, workers=2)


def test_every_sample_behaves_as_its_readme_says(graph: Service) -> None:
    graph.post(sample("02"))  # one row
    graph.post(sample("03"))
    graph.post(sample("03"))  # the plain retry: still one row
    graph.post(sample("04"))  # a delete without etag: one row
    graph.post(sample("05"))  # 5 items, the verbatim pair collapses: 4 rows
    graph.post(sample("06"))  # the 03 item again and a newer one: 1 new row
    graph.post(sample("07"))  # forged and unsigned: nothing
    graph.drained(rows=8)
    rows = graph.rows()
    assert len(rows) == 8
    by_room = {room: [r for r in rows if r.subscription_id == room] for room in (ROOM_A, ROOM_B)}
    assert [r.seq for r in by_room[ROOM_A]] == [1, 2, 3, 4, 5, 6]
    assert [r.seq for r in by_room[ROOM_B]] == [1, 2]
    a = by_room[ROOM_A]
    assert [r.event_type for r in a] == ["Created", "Modified", "Deleted", "Created", "Modified", "Modified"]
    assert a[0].item_change_key == "DwAAABYAAACKL0xhfT5LGaXAkebStH8IAAAAUaDz"  # the etag without W/"…"
    assert a[2].item_change_key is None and a[2].item_id == items("04")[0]["resourceData"]["id"]
    assert all(r.source == "graph" and r.tenant == "contoso" and r.resource_data is None for r in rows)
    assert a[0].resource == items("02")[0]["resource"]
    assert all(r.watermark.startswith("graph:") and r.previous_watermark is None for r in rows)
    room_a = graph.subscription(ROOM_A)
    assert room_a.source == "graph" and room_a.state == "active" and room_a.last_seq == 6
    assert room_a.expires_at is not None and room_a.expires_at.isoformat().startswith("2026-12-08T07:30:00.447239")
    assert graph.dead_letters() == []

    graph.post(sample("08"), LIFECYCLE)
    graph.post(sample("09"), LIFECYCLE)
    graph.post(sample("10"), "/api/webhooks/graph/lifecycle?tenant=other")  # a fresh pair of subscriptions
    graph.drained()
    wait_for(lambda: graph.subscription(ROOM_B).state == "removed", 30, "room B removed")
    assert graph.subscription(ROOM_A).state == "reauthorization_required"
    wait_for(lambda: graph.subscription(ROOM_A, "other").state == "needs_resync", 30, "room A resync (other)")
    assert graph.subscription(ROOM_A, "other").gap_count == 1
    assert graph.subscription(ROOM_B, "other").state == "reauthorization_required"
    assert row_count(graph.engine) == 8  # lifecycle items make no rows


def test_unusable_items_are_located_dead_letters_and_the_rest_is_stored(graph: Service) -> None:
    (good,) = items("03")
    moved = {**good, "changeType": "moved"}
    no_data = {k: v for k, v in good.items() if k != "resourceData"}
    no_subscription = {k: v for k, v in good.items() if k != "subscriptionId"}
    strange = {**good, "lifecycleEvent": "vanished"}
    wrong_type = {**good, "resource": 42}
    graph.post(body(moved, no_data, good, no_subscription, strange, wrong_type))
    graph.drained(rows=1)
    wait_for(lambda: len(graph.dead_letters()) == 5, 30, "five dead letters")
    entries = sorted(graph.dead_letters(), key=lambda e: str(e["message"]))
    classes = sorted(str(e["error_class"]) for e in entries)
    assert classes == [
        "bad_value",
        "no_resource_data",
        "no_subscription_id",
        "unknown_change_type",
        "unknown_lifecycle_event",
    ]
    for entry in entries:
        assert "item " in str(entry["message"]), entry  # located: which item
    assert row_count(graph.engine) == 1

    # a replay puts them back; they are refused again alike and stay one entry each
    replay = run(["dlq", "replay", "--all"], graph.env, graph.tmp)
    assert replay.returncode in (0, 1), replay.stderr
    graph.drained()
    wait_for(lambda: len(graph.dead_letters()) == 5, 30, "the five again")
    assert row_count(graph.engine) == 1


def test_seq_follows_receive_order_with_two_workers(graph2: Service) -> None:
    rng = random.Random(7)
    (template,) = items("03")
    rooms = [f"room-{n}" for n in range(6)]
    sent: dict[str, list[str]] = {room: [] for room in rooms}  # item ids, in the order first posted
    history: list[dict[str, Any]] = []
    for post in range(150):
        value = []
        for _ in range(rng.randint(1, 4)):
            if history and rng.random() < 0.2:
                value.append(rng.choice(history))  # Graph's retry of an earlier item
                continue
            room = rng.choice(rooms)
            item_id = f"ev-{post}-{len(value)}"
            item = {
                **template,
                "subscriptionId": room,
                "tenantId": TENANT_ID,
                "resourceData": {**template["resourceData"], "id": item_id},
            }
            value.append(item)
            history.append(item)
            sent[room].append(item_id)
        graph2.post(body(*value))
    total = sum(len(ids) for ids in sent.values())
    graph2.drained(rows=total)
    wait_for(lambda: all(r.seq is not None for r in graph2.rows()), 30, "every row numbered")
    rows = graph2.rows()
    assert len(rows) == total
    for room in rooms:
        mine = [r for r in rows if r.subscription_id == room]
        assert [r.seq for r in mine] == list(range(1, len(mine) + 1))
        assert [r.item_id for r in mine] == sent[room]
