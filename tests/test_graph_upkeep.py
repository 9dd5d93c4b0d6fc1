"""Graph subscriptions that never lapse (issue 11's "Done when"), through the real processes.

A fake Graph (HTTPS, from a CA made at run time) grants 90-second lifetimes; a real ingress and two real
worker processes run for several lifetimes, on SQLite and on PostgreSQL at once (one app each, so the two
worlds share the fake and the wall-clock time).  Meanwhile Graph asks for reauthorization, removes one
subscription, forgets another (404 on renewal), throttles a renewal (429 + Retry-After), and a worker is
SIGKILLed while it holds a room; at the end no subscription ever expired, each got the right answer, rows
flowed through a re-created subscription, and no secret appears in any output or log.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psycopg
import pytest
from redis import Redis
from sqlalchemy import Engine, select

from shared.schema import make_engine, notifications
from syncnotify.fakegraph import App, FakeGraph
from syncnotify.redis_server import EmbeddedRedis, free_port
from syncnotify.simulator.graph_payloads import etag, event_id
from tests.conftest import create_pg_database, drop_pg_database
from tests.processes import run, service, service_env, wait_for

LIFETIME = 90.0
#: Several lifetimes: every subscription must have been renewed at least twice by the end.
RUN_SECONDS = 3 * LIFETIME

pytestmark = [pytest.mark.slow, pytest.mark.minutes, pytest.mark.timeout(RUN_SECONDS + 180)]
ROOMS = ["room-a101@example.com", "room-b204@example.com", "room-c310@example.com", "room-d412@example.com"]
CLIENT_STATE = "upkeep-Zq7u3Wk9Xp2Lm5Vt8Rb4"


@dataclass
class World:
    """One deployment: its database, its app at the fake, its ingress and two workers."""

    name: str
    database_url: str
    engine: Engine
    app: App
    env: dict[str, str]
    tmp: Path

    def graph(self, *args: str) -> str:
        result = run(["graph", *args], self.env, self.tmp, timeout=120)
        assert result.returncode == 0, f"{self.name}: graph {args}: {result.stdout}{result.stderr}"
        return result.stdout

    def rows(self) -> list[tuple[str, str | None]]:
        with self.engine.connect() as conn:
            query = select(notifications.c.subscription_id, notifications.c.item_id).where(
                notifications.c.source == "graph"
            )
            return [(r.subscription_id, r.item_id) for r in conn.execute(query)]

    def live(self) -> dict[str, str]:
        """Mailbox → subscription id of the live rows, from ``graph list --json``."""
        import json

        listed = json.loads(self.graph("list", "--json"))
        return {r["mailbox"]: r["subscription_id"] for r in listed if r["state"] not in ("removed", "unsubscribed")}


def _world(name: str, database_url: str, fake: FakeGraph, redis_url: str, tmp: Path) -> World:
    app = App(directory_tenant_id=f"dir-{name}", client_id=f"app-{name}", client_secret=f"secret-{name}-9f3e1c")
    fake.add_app(app)
    tmp.mkdir()
    env = service_env(
        redis_url,
        database_url,
        tmp,
        SYNCNOTIFY_GRAPH_CLIENT_STATE=CLIENT_STATE,
        SYNCNOTIFY_GRAPH_DIRECTORY_TENANT_ID=app.directory_tenant_id,
        SYNCNOTIFY_GRAPH_CLIENT_ID=app.client_id,
        SYNCNOTIFY_GRAPH_CLIENT_SECRET=app.client_secret or "",
        SYNCNOTIFY_GRAPH_API_URL=fake.api_url,
        SYNCNOTIFY_GRAPH_AUTHORITY_URL=fake.authority_url,
        SYNCNOTIFY_GRAPH_UPKEEP_SECONDS="1",
        SSL_CERT_FILE=str(fake.ca_file),
        REQUESTS_CA_BUNDLE=str(fake.ca_file),
    )
    return World(name, database_url, make_engine(database_url), app, env, tmp)


@pytest.fixture
def worlds(
    redis_server: EmbeddedRedis, pg_admin: psycopg.Connection, tmp_path: Path
) -> Iterator[tuple[FakeGraph, list[World]]]:
    pg_url = create_pg_database(pg_admin)
    fake = FakeGraph(lifetime_seconds=LIFETIME, ca_dir=tmp_path / "ca")
    with fake, ExitStack() as stack:
        built = []
        for index, (name, url) in enumerate([("sqlite", f"sqlite:///{tmp_path / 'rooms.db'}"), ("pg", pg_url)]):
            redis_url = f"{redis_server.url.rsplit('/', 1)[0]}/{index + 1}"  # a Redis database each
            world = _world(name, url, fake, redis_url, tmp_path / name)
            run(["db", "upgrade"], world.env, world.tmp)
            port = free_port()
            world.env["SYNCNOTIFY_PUBLIC_URL"] = f"http://127.0.0.1:{port}"  # the upkeep re-creates through it
            stack.enter_context(service(world.env, world.tmp, workers=2, port=port))
            built.append(world)
        yield fake, built
        for world in built:
            world.engine.dispose()
    drop_pg_database(pg_admin, pg_url)


def _lock_holders(redis: Redis) -> list[int]:
    """The pids holding a room's lock now (the lock's value is ``host:pid:random``)."""
    pids = []
    for key in redis.scan_iter("syncnotify:graph:room:*"):
        value = redis.get(key)
        if value:
            pids.append(int(str(value.decode() if isinstance(value, bytes) else value).split(":")[1]))
    return pids


def _replaced(world: World, mailbox: str, old: str) -> bool:
    live = world.live()
    return mailbox in live and live[mailbox] != old


def _reauthorized(fake: FakeGraph, subscription_id: str) -> bool:
    sub = fake.subscriptions.get(subscription_id)
    return sub is not None and not sub.needs_reauthorization and sub.reauthorizations + sub.renewals > 0


def _has_rows_of(world: World, subscription_id: str) -> bool:
    return any(sub == subscription_id for sub, _ in world.rows())


def test_subscriptions_never_lapse_through_reauthorization_removal_404_429_and_a_killed_worker(
    worlds: tuple[FakeGraph, list[World]],
) -> None:
    fake, built = worlds
    started = time.monotonic()
    for world in built:
        out = world.graph("subscribe", *ROOMS)
        assert out.count(": subscribed ") == len(ROOMS), out
        again = world.graph("subscribe", ROOMS[0])
        assert ": already subscribed " in again, again  # idempotent
    subs = {world.name: world.live() for world in built}
    assert all(len(s) == len(ROOMS) for s in subs.values()), subs

    # rows flow through a subscription syncnotify made
    for world in built:
        status = fake.notify(subs[world.name][ROOMS[0]], "created", event_id(ROOMS[0], 1), etag(ROOMS[0], 1, 0))
        assert status == 202
    for world in built:
        wait_for(partial(_has_rows_of, world, subs[world.name][ROOMS[0]]), 30, f"{world.name}: the first Graph row")

    # Graph's demands: reauthorize room B, removed room C, forgotten room D (404 on its renewal), one 429
    for world in built:
        fake.reauthorization_required(subs[world.name][ROOMS[1]])
        fake.remove(subs[world.name][ROOMS[2]])
        fake.forget(subs[world.name][ROOMS[3]])
    fake.fail_next(method="PATCH", path_contains="/subscriptions/", status=429, retry_after=2, count=2)

    for world in built:
        old_c, old_b = subs[world.name][ROOMS[2]], subs[world.name][ROOMS[1]]
        wait_for(partial(_replaced, world, ROOMS[2], old_c), 60, f"{world.name}: room C re-created")
        wait_for(partial(_reauthorized, fake, old_b), 60, f"{world.name}: room B reauthorized")
    # rows flow through the re-created subscription too
    for world in built:
        recreated = world.live()[ROOMS[2]]
        assert fake.notify(recreated, "created", event_id(ROOMS[2], 7), etag(ROOMS[2], 7, 0)) == 202
        wait_for(partial(_has_rows_of, world, recreated), 30, f"{world.name}: a row of the re-created subscription")

    # a worker killed while it renews: Graph is slow on the next renewal; SIGKILL whoever holds a room then
    fake.hold_next("PATCH", "/subscriptions/", seconds=5)
    redises = [Redis.from_url(w.env["SYNCNOTIFY_REDIS_URL"]) for w in built]
    killed = 0
    deadline = time.monotonic() + LIFETIME
    while not killed and time.monotonic() < deadline:
        for pid in (pid for r in redises for pid in _lock_holders(r)):
            os.kill(pid, signal.SIGKILL)
            killed = pid
            break
        time.sleep(0.01)
    assert killed, "no worker was seen renewing within a lifetime"

    time.sleep(max(0.0, started + RUN_SECONDS - time.monotonic()))

    assert fake.expired == [], f"subscriptions lapsed at Graph: {[s.id for s in fake.expired]}"
    for world in built:
        live = world.live()
        assert set(live) == set(ROOMS), live
        assert live[ROOMS[3]] != subs[world.name][ROOMS[3]]  # the forgotten one was replaced after its 404
        for mailbox, sub_id in live.items():
            at_graph = fake.subscriptions[sub_id]
            assert at_graph.expires_at.timestamp() > time.time() + LIFETIME / 4, (world.name, mailbox)
            assert at_graph.renewals >= 1, (world.name, mailbox, at_graph)
        assert fake.subscriptions[live[ROOMS[0]]].renewals >= 2  # kept through several lifetimes
    throttled = [r for r in fake.requests if r.method == "PATCH" and r.status == 429]
    assert len(throttled) == 2

    secrets = [CLIENT_STATE, *(w.app.client_secret or "" for w in built)]
    logs = "".join((w.tmp / "services.log").read_text(errors="replace") for w in built)
    listed = "".join(w.graph("list") + w.graph("list", "--json") for w in built)
    for secret in secrets:
        assert secret not in logs and secret not in listed, "a secret appears in a log or an output"
