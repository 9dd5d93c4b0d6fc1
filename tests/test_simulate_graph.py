"""``syncnotify simulate --graph``: the rooms' plans, then the simulator against the real ingress and workers —
every acknowledged change one row in order, lifecycle states set, retries with backoff through an ingress
that refuses and then is gone for a moment."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Column, Engine, func, select

from shared.schema import make_engine, notifications, subscriptions
from syncnotify.redis_server import EmbeddedRedis, free_port
from syncnotify.simulator.graph_player import graph_urls
from syncnotify.simulator.graph_rooms import LIFECYCLE_EVENTS, Room, rooms
from syncnotify.simulator.options import DIRECTORY_TENANT
from syncnotify.simulator.verify import graph_expected
from tests.processes import SYNCNOTIFY, run, service_env, started, stop, wait_http

CLIENT_STATE = "sim-graph-Vq8Lr3Tz6Xw1Pm4Kd7"
TENANT = "contoso"


def _edits(room: Room) -> dict[int, list[Any]]:
    edits: dict[int, list[Any]] = defaultdict(list)
    for step in room.steps:
        if step.change is not None:
            edits[step.edit].append(step.change)
    return edits


def test_room_plans_are_graphs_calendar_changes_and_repeat_by_seed() -> None:
    fleet = rooms(11, 40, 1000, lifecycle=6)
    assert fleet == rooms(11, 40, 1000, lifecycle=6)
    assert [r.subscription_id for r in fleet] != [r.subscription_id for r in rooms(12, 40, 1000, lifecycle=6)]
    assert len({r.subscription_id for r in fleet}) == 40 and len({r.user_id for r in fleet}) == 40
    assert all(uuid.UUID(r.subscription_id).version == 4 and uuid.UUID(r.user_id).version == 4 for r in fleet)
    assert sum(1 for r in fleet for s in r.steps if s.change is not None) == 1000

    pairs = bookings = 0
    for room in fleet:
        edits = _edits(room)
        last = max(edits)
        history: dict[str, list[Any]] = defaultdict(list)
        for number, changes in sorted(edits.items()):
            assert len({c.event_id for c in changes}) == 1, "an edit changes one event"
            kinds = [c.change_type for c in changes]
            if kinds[0] == "created":
                bookings += 1
                pairs += kinds == ["created", "updated"]
                assert kinds in (["created"], ["created", "updated"]) or number == last
            elif kinds[0] == "deleted":
                assert kinds == ["deleted"] and changes[0].etag is None
            else:
                assert set(kinds) == {"updated"}
                assert 2 <= len(kinds) <= 4 or number == last  # the room's last edit may be cut at its count
            history[changes[0].event_id].extend(changes)
        for changes in history.values():
            assert changes[0].change_type == "created"
            assert "deleted" not in [c.change_type for c in changes[:-1]], "nothing after a delete"
            tags = [c.etag for c in changes if c.change_type != "deleted"]
            assert all(tags) and len(set(tags)) == len(tags), "each version its own etag"
    assert bookings > 50 and pairs > bookings / 2, "a created is mostly followed at once by an updated"

    with_lifecycle = [r for r in fleet if any(s.lifecycle for s in r.steps)]
    events = [s.lifecycle for r in with_lifecycle for s in r.steps if s.lifecycle]
    assert len(with_lifecycle) == 6 and Counter(events) == dict.fromkeys(LIFECYCLE_EVENTS, 3)
    assert all(r.steps[0].change is not None for r in with_lifecycle)

    missed = next(r for r in with_lifecycle if any(s.lifecycle == "missed" for s in r.steps))
    everything = graph_expected(missed, len(missed.steps), DIRECTORY_TENANT)
    assert (everything.state, everything.gaps, everything.tail) == ("needs_resync", 1, None)
    assert len(everything.rows) == len(set(everything.rows)) == len(missed.steps) - 1
    first = graph_expected(missed, 1, DIRECTORY_TENANT)
    assert (first.rows, first.state, first.gaps) == (everything.rows[:1], "active", 0)
    assert graph_expected(missed, 0, DIRECTORY_TENANT).state is None


def test_graph_urls_add_the_tenant_only_where_none_is_named() -> None:
    assert graph_urls("http://h:1/api/webhooks/graph", "T") == (
        "http://h:1/api/webhooks/graph?tenant=T",
        "http://h:1/api/webhooks/graph/lifecycle?tenant=T",
    )
    assert graph_urls("http://h:1/M2/api/webhooks/graph", "T")[1] == "http://h:1/M2/api/webhooks/graph/lifecycle"
    assert graph_urls("http://h:1/api/webhooks/graph?tenant=M3", "T")[0] == "http://h:1/api/webhooks/graph?tenant=M3"


def _simulate_args(port: int, database_url: str, *extra: str) -> list[str]:
    return [
        "simulate",
        "--graph",
        "--url",
        f"http://127.0.0.1:{port}/api/webhooks/graph",
        "--tenant",
        TENANT,
        "--verify",
        database_url,
        "--json",
        "--drain-timeout",
        "20",
        "--progress-every",
        "0",
        *extra,
    ]


def _graph_counts(engine: Engine, column: Column[str]) -> Counter[str]:
    """Graph rows of ``column``'s table (``notifications``, ``subscriptions``) counted by its value."""
    query = select(column, func.count()).where(column.table.c.source == "graph").group_by(column)
    with engine.connect() as conn:
        return Counter({str(value): int(n) for value, n in conn.execute(query)})


def _assert_clean(report: dict[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = report["verify"]
    assert checked["problems"] == []
    assert (checked["lost"], checked["duplicated"], checked["seq_broken"], checked["unnumbered"]) == (0, 0, 0, 0)
    assert (checked["unexpected"], checked["out_of_order"], checked["gaps"], checked["wrong_state"]) == (0, 0, 0, 0)
    assert checked["drained"] is True and checked["stored_rows"] == checked["expected_rows"]
    assert report["ok"] is True and report["acknowledged"] == report["planned"]
    return checked


def test_simulate_graph_stores_every_change_once_in_order(
    redis_server: EmbeddedRedis, redis: Redis, database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = service_env(
        redis_server.url, database_url, tmp_path, SYNCNOTIFY_TENANTS=TENANT, SYNCNOTIFY_GRAPH_CLIENT_STATE=CLIENT_STATE
    )
    log = tmp_path / "services.log"
    with (
        started(["ingress", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path, log),
        started(["worker", "--processes", "2", "--metrics-port", "0"], env, tmp_path, log),
    ):
        wait_http(f"http://127.0.0.1:{port}/healthz")
        # no --client-state: the simulator takes the first of SYNCNOTIFY_GRAPH_CLIENT_STATE
        args = ["--subscriptions", "30", "--notifications", "400", "--connections", "6", "--duplicates", "0.2"]
        result = run(
            _simulate_args(port, database_url, *args, "--lifecycle", "8", "--seed", "5"), env, tmp_path, timeout=120
        )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    checked = _assert_clean(report)
    assert report["planned"] == 408 and report["notifications"] == 408  # 400 changes + 8 lifecycle events
    assert report["duplicates_posted"] > 0, "some POSTs were redelivered"
    assert report["posts"] < report["notifications"], "POSTs carry several rooms' items"
    assert set(report["statuses"]) == {"202"}
    engine = make_engine(database_url)
    try:
        kinds = _graph_counts(engine, notifications.c.event_type)
        assert sum(kinds.values()) == checked["expected_rows"] == 400
        assert set(kinds) == {"Created", "Modified", "Deleted"} and kinds["Modified"] > kinds["Created"]
        assert _graph_counts(engine, subscriptions.c.state) == {
            "active": 22,
            "needs_resync": 4,
            "reauthorization_required": 4,
        }
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_simulate_graph_retries_with_backoff_until_the_ingress_takes_it(
    redis_server: EmbeddedRedis, redis: Redis, database_url: str, tmp_path: Path
) -> None:
    """First an ingress with Graph off (404), then none at all, then the right one: every POST gets through."""
    port = free_port()
    env = service_env(redis_server.url, database_url, tmp_path, SYNCNOTIFY_TENANTS=TENANT)
    graph_env = {**env, "SYNCNOTIFY_GRAPH_CLIENT_STATE": CLIENT_STATE}
    log = tmp_path / "services.log"
    ingress = ["ingress", "--host", "127.0.0.1", "--port", str(port)]
    with started(["worker", "--metrics-port", "0"], graph_env, tmp_path, log):
        with started(ingress, env, tmp_path, log) as refusing:
            wait_http(f"http://127.0.0.1:{port}/healthz")
            args = ["--subscriptions", "10", "--notifications", "100", "--connections", "4", "--duplicates", "0.1"]
            args += ["--lifecycle", "2", "--client-state", CLIENT_STATE, "--retry-delay", "0.5"]
            simulator = subprocess.Popen(
                SYNCNOTIFY + _simulate_args(port, database_url, *args, "--max-attempts", "8"),
                env=env,  # no SYNCNOTIFY_GRAPH_CLIENT_STATE here: --client-state is used
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(2)
            stop(refusing)
        time.sleep(2.5)  # nobody listening: the retries due meanwhile meet a refused connection
        with started(ingress, graph_env, tmp_path, log):
            stdout, stderr = simulator.communicate(timeout=120)
    assert simulator.returncode == 0, stdout[-2000:] + stderr[-2000:]
    report = json.loads(stdout)
    _assert_clean(report)
    assert report["statuses"].get("404", 0) >= 1, "the first POSTs were refused (Graph off) and retried"
    assert report["failures"] > 0, "connections were refused while no ingress listened"
    assert report["gave_up"] == 0 and report["statuses"]["202"] >= 1
