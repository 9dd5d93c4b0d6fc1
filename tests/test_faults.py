"""Reliability promises shown by doing the thing (SPEC §8): workers killed with SIGKILL mid-job, Redis
killed and restarted, database connections cut, the ingress killed mid-request — then rows are counted.
In the first three, Microsoft Graph rooms post to a real ingress while the fault happens (``tests.graph_traffic``)
and their rows are counted too.

These are the long runs: marked ``slow`` (``make test-quick`` skips them; CI runs them).  Each reports its
figures through ``reliability`` into the terminal summary, which the README's reliability table quotes.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
from redis import Redis
from rq import Queue
from sqlalchemy import Engine, select

from ingress.soap import scan_subscription_ids
from shared.ews import SOAP_ACTION
from shared.queues import QUEUE_NAME
from shared.schema import notifications
from shared.settings import Settings
from shared.store_job import enqueue_payloads
from shared.types import Payload
from syncnotify.redis_server import EmbeddedRedis, free_port
from tests.conftest import PG_ADMIN_URL, Reliability
from tests.graph_traffic import GRAPH_ENV, GraphTraffic, running_ingress
from tests.payloads import make_event, make_notification, watermark
from tests.processes import (
    children_of,
    db_name,
    queue_drained,
    service_env,
    spawn,
    started,
    started_jobs,
    stop,
    wait_drained,
    wait_for,
    wait_http,
)

pytestmark = pytest.mark.slow

SOAP_HEADERS = {
    "Content-Type": "text/xml; charset=utf-8",
    "SOAPAction": SOAP_ACTION,
}


def chains(subscriptions: int, length: int) -> dict[str, list[bytes]]:
    """Per subscription, its notifications in chain order (two events each: a row and a heartbeat-free pair)."""
    result = {}
    for i in range(subscriptions):
        sub = f"fault-{i}-{uuid.uuid4().hex[:8]}"
        result[sub] = [
            make_notification(
                sub,
                watermark(2 * n),
                [make_event("Modified", watermark(2 * n + 1)), make_event("Created", watermark(2 * n + 2))],
            )
            for n in range(length)
        ]
    return result


def interleaved(by_sub: dict[str, list[bytes]]) -> list[bytes]:
    """Round-robin over subscriptions: arrival order as many rooms post at once, each in its chain order."""
    length = max(len(b) for b in by_sub.values())
    return [bodies[n] for n in range(length) for bodies in by_sub.values() if n < len(bodies)]


def as_payloads(bodies: list[bytes]) -> list[Payload]:
    start = time.time()
    return [
        Payload(
            id=uuid.uuid4().hex,
            tenant="Default",
            received_at=round(start + i / 1000, 6),
            source="127.0.0.1",
            subscription_ids=scan_subscription_ids(body),
            body=body,
        )
        for i, body in enumerate(bodies)
    ]


def assert_stored_once_in_order(engine: Engine, by_sub: dict[str, list[bytes]]) -> int:
    """Every event stored once, ``seq`` 1, 2, 3 … in chain order for each subscription; return the row count."""
    total = 0
    with engine.connect() as conn:
        for sub, bodies in by_sub.items():
            rows = conn.execute(
                select(notifications.c.seq, notifications.c.watermark)
                .where(notifications.c.subscription_id == sub)
                .order_by(notifications.c.seq)
            ).all()
            expected = [watermark(k) for k in range(1, 2 * len(bodies) + 1)]
            assert [r.watermark for r in rows] == expected, f"{sub}: rows out of chain order or missing"
            assert [r.seq for r in rows] == list(range(1, len(expected) + 1)), f"{sub}: seq not contiguous"
            total += len(rows)
    return total


@pytest.mark.timeout(480)
def test_workers_killed_with_sigkill_mid_job_lose_nothing(
    redis_server: EmbeddedRedis,
    redis: Redis,
    database_url: str,
    engine: Engine,
    tmp_path: Path,
    reliability: Reliability,
) -> None:
    by_sub = chains(subscriptions=40, length=150)
    payloads = as_payloads(interleaved(by_sub))
    settings = Settings(redis_url=redis_server.url, database_url=database_url)
    # 300 jobs of 20 payloads: a worker takes ten at a time (SYNCNOTIFY_BATCH_MAX 200, ~0.15 s a batch), so
    # kills land inside batches, and between taking jobs and starting them
    job_size = 20
    for start in range(0, len(payloads), job_size):
        enqueue_payloads(redis, payloads[start : start + job_size], settings)
    # the gap timeout outlasts the recovery (as the defaults do, 60 s and 40 s): a killed job's payloads
    # come back before their successors give up on them
    env = service_env(
        redis_server.url,
        database_url,
        tmp_path,
        SYNCNOTIFY_ABANDONED_AFTER_SECONDS="5",
        SYNCNOTIFY_GAP_TIMEOUT_SECONDS="600",
        **GRAPH_ENV,
    )
    rng = random.Random(5)
    kills = mid_job = 0
    with (
        running_ingress(env, tmp_path) as base,
        started(["worker", "--processes", "2", "--metrics-port", "0"], env, tmp_path, tmp_path / "w.log") as sup,
    ):
        graph = GraphTraffic(base, seed=5)
        with graph.posting():  # Graph jobs join the queue between the EWS ones while workers are killed
            deadline = time.monotonic() + 120
            while kills < 8 and not queue_drained(redis) and time.monotonic() < deadline:
                wait_for(lambda: started_jobs(redis) > 0 or queue_drained(redis), 30, "a worker to take a job")
                time.sleep(rng.uniform(0.0, 0.05))  # at a random moment inside the job
                workers = children_of(sup.pid)
                if workers:
                    mid_job += started_jobs(redis) > 0
                    os.kill(rng.choice(workers), signal.SIGKILL)
                    kills += 1
                time.sleep(1.5)  # the supervisor starts a new worker; let it take work
        # a job that met a transient failure waits its backoff (shared.queues.RETRY_INTERVALS) before its retry
        wait_drained(redis, 300, "every job, re-run ones included, to finish")
        graph_rows = graph.assert_stored_once_in_order(engine)
    assert kills >= 5 and mid_job >= 3, (kills, mid_job)
    rows = assert_stored_once_in_order(engine, by_sub)
    assert Queue(QUEUE_NAME, connection=redis).failed_job_registry.count == 0
    reliability.append(
        (
            f"worker killed with SIGKILL at random moments ({db_name(database_url)})",
            f"{kills} kills ({mid_job} mid-job), 2 workers",
            f"{len(payloads)} payloads in {len(payloads) // job_size} jobs, taken ten at a time;"
            f" {graph.posts} Graph POSTs meanwhile",
            f"{rows} rows + {graph_rows} Graph rows, 0 lost, 0 duplicated",
        )
    )


def test_redis_killed_and_restarted_keeps_every_queued_payload(
    database_url: str, engine: Engine, tmp_path: Path, reliability: Reliability
) -> None:
    redis_server = EmbeddedRedis(tmp_path / "redis", free_port(), appendonly=True, appendfsync="always")
    redis_server.directory.mkdir()
    redis_server.start()
    try:
        by_sub = chains(subscriptions=10, length=20)
        bodies = interleaved(by_sub)
        env = service_env(redis_server.url, database_url, tmp_path, **GRAPH_ENV)
        with running_ingress(env, tmp_path) as base:
            graph = GraphTraffic(base, seed=6)
            with graph.posting(), httpx.Client() as client:  # Graph POSTs between the EWS ones
                for body in bodies:
                    response = client.post(
                        f"{base}/Webservices/SyncNotification.svc", content=body, headers=SOAP_HEADERS
                    )
                    assert response.status_code == 200
            queued = Queue(QUEUE_NAME, connection=redis_server.client()).count
            redis_server.stop(kill=True)  # SIGKILL: only what the append-only file holds survives
            before_kill = graph.posts
            with graph.posting():  # Redis away: the ingress spools Graph POSTs and still acks them
                time.sleep(1)
            spooled = graph.posts - before_kill
        redis_server.start()  # the ingress is stopped, so nothing drains its spool before the count
        assert Queue(QUEUE_NAME, connection=redis_server.client()).count == queued
        with running_ingress(env, tmp_path):  # drains the spool of the one before
            wait_for(lambda: not list((tmp_path / "spool").glob("*.spool")), 30, "the spool to drain")
        with started(["worker", "--burst", "--metrics-port", "0"], env, tmp_path, tmp_path / "w.log") as worker:
            worker.wait(120)
        rows = assert_stored_once_in_order(engine, by_sub)
        graph_rows = graph.assert_stored_once_in_order(engine)
    finally:
        redis_server.stop()
    assert spooled > 0, "Graph POSTs while Redis was away"
    reliability.append(
        (
            f"Redis killed (SIGKILL) and restarted, appendfsync always ({db_name(database_url)})",
            "1 kill with a full queue",
            f"{len(bodies)} posts acked; {graph.posts} Graph POSTs, {spooled} of them while Redis was away",
            f"{rows} rows + {graph_rows} Graph rows, 0 lost",
        )
    )


def retries(log: Path) -> int:
    """Job attempts that failed transiently, as RQ logged them."""
    return log.read_text().count("shared.errors.TransientError")


def test_database_connections_cut_mid_transaction(
    redis_server: EmbeddedRedis,
    redis: Redis,
    database_url: str,
    engine: Engine,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    reliability: Reliability,
) -> None:
    from tests.processes import service_env
    from tests.test_operator import database_outage

    by_sub = chains(subscriptions=40, length=400)
    payloads = as_payloads(interleaved(by_sub))
    settings = Settings(redis_url=redis_server.url, database_url=database_url)
    for start in range(0, len(payloads), 20):
        enqueue_payloads(redis, payloads[start : start + 20], settings)
    url = database_url + ("?timeout=0.5" if database_url.startswith("sqlite") else "")
    # retried jobs come back within the gap timeout (as with the defaults), so no gap may be recorded
    env = service_env(redis_server.url, url, tmp_path, SYNCNOTIFY_GAP_TIMEOUT_SECONDS="600", **GRAPH_ENV)
    cuts = 0
    stop = threading.Event()

    def cut() -> None:
        nonlocal cuts
        rng = random.Random(3)
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True) if database_url.startswith("postgresql") else None
        while not stop.wait(rng.uniform(0.01, 0.05) if admin else rng.uniform(0.1, 0.4)):
            if admin is not None:  # only backends inside a transaction: idle ones the pool would just replace
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%%'"
                    " OR (datname = %s AND state = 'active' AND pid <> pg_backend_pid())",
                    (database_url.rsplit("/", 1)[1],) * 2,
                )
            else:
                with database_outage(database_url, request):
                    time.sleep(0.7)  # longer than the workers' busy timeout: their transactions fail
            cuts += 1
        if admin is not None:
            admin.close()

    cutter = threading.Thread(target=cut)
    log = tmp_path / "w.log"
    with (
        running_ingress(env, tmp_path) as base,
        started(["worker", "--processes", "2", "--metrics-port", "0"], env, tmp_path, log),
    ):
        graph = GraphTraffic(base, seed=3)
        with graph.posting():  # Graph jobs join the queue while the cuts happen
            cutter.start()
            wait_for(
                lambda: cuts >= 5 and (retries(log) >= 3 or queue_drained(redis)), 60, "cuts that hit transactions"
            )
            stop.set()
            cutter.join()
        wait_for(lambda: queue_drained(redis), 180, "the backlog to drain after the cuts")
    rows = assert_stored_once_in_order(engine, by_sub)
    graph_rows = graph.assert_stored_once_in_order(engine)
    retried = retries(log)
    assert retried >= 1, "the cuts must have hit transactions"
    assert Queue(QUEUE_NAME, connection=redis).failed_job_registry.count == 0
    kind = "connections terminated" if database_url.startswith("postgresql") else "file locked by another process"
    reliability.append(
        (
            f"database cut mid-transaction: {kind} ({db_name(database_url)})",
            f"{cuts} cuts, {retried} job attempts failed and retried, 2 workers",
            f"{len(payloads)} payloads; {graph.posts} Graph POSTs meanwhile",
            f"{rows} rows + {graph_rows} Graph rows, 0 lost, 0 duplicated, seq contiguous",
        )
    )


def test_ingress_killed_mid_request_loses_nothing_it_acked(
    redis_server: EmbeddedRedis,
    redis: Redis,
    database_url: str,
    engine: Engine,
    tmp_path: Path,
    reliability: Reliability,
) -> None:
    by_sub = chains(subscriptions=20, length=30)
    env = service_env(redis_server.url, database_url, tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}/Webservices/SyncNotification.svc"
    ingress_cmd = ["ingress", "--host", "127.0.0.1", "--port", str(port)]
    acked: set[bytes] = set()

    async def exchange(bodies: list[bytes], client: httpx.AsyncClient) -> None:
        """One room: each notification after the previous was answered; on failure, retry later (as Exchange)."""
        for body in bodies:
            while True:
                try:
                    response = await client.post(url, content=body, headers=SOAP_HEADERS)
                    if response.status_code == 200:
                        acked.add(body)
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)

    async def run_all() -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            await asyncio.gather(*(exchange(b, client) for b in by_sub.values()))

    log = tmp_path / "i.log"
    ingress = [spawn(ingress_cmd, env, tmp_path, log)]
    wait_http(f"http://127.0.0.1:{port}/healthz")
    acked_before_kill = 0

    def kill_and_restart() -> None:
        nonlocal acked_before_kill
        time.sleep(0.5)
        acked_before_kill = len(acked)
        ingress[0].kill()  # SIGKILL, in the middle of requests
        ingress[0].wait()
        time.sleep(0.5)  # Exchange's posts fail meanwhile: not acked, so retried
        ingress.append(spawn(ingress_cmd, env, tmp_path, log))

    killer = threading.Thread(target=kill_and_restart)
    killer.start()
    try:
        asyncio.run(run_all())
    finally:
        killer.join()
        for process in ingress:
            stop(process)
    with started(["worker", "--burst", "--metrics-port", "0"], env, tmp_path, tmp_path / "w.log") as worker:
        worker.wait(120)
    rows = assert_stored_once_in_order(engine, by_sub)
    total = sum(len(b) for b in by_sub.values())
    assert len(acked) == total and 0 < acked_before_kill < total
    reliability.append(
        (
            f"ingress killed (SIGKILL) mid-request, Exchange retrying ({db_name(database_url)})",
            f"1 kill after {acked_before_kill} acks",
            f"{total} notifications from 20 rooms at once",
            f"{rows} rows, 0 lost, 0 duplicated",
        )
    )


def test_ingress_killed_mid_drain_queues_each_spooled_payload_once(
    tmp_path: Path, database_url: str, reliability: Reliability
) -> None:
    """Redis away: posts go to the spool; Redis back: the ingress drains — and is killed while draining."""
    redis_server = EmbeddedRedis(tmp_path / "redis", free_port(), appendonly=True, appendfsync="always")
    redis_server.directory.mkdir()
    env = service_env(redis_server.url, database_url, tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}/Webservices/SyncNotification.svc"
    ingress_cmd = ["ingress", "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "i.log"
    bodies = interleaved(chains(subscriptions=20, length=120))
    first = spawn(ingress_cmd, env, tmp_path, log)
    second = None
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        with httpx.Client() as client:
            for body in bodies:  # Redis is down: every one of these goes to the spool, fsynced, then acked
                assert client.post(url, content=body, headers=SOAP_HEADERS).status_code == 200
        assert list((tmp_path / "spool").glob("*.spool"))
        redis_server.start()
        redis = redis_server.client()
        queue = Queue(QUEUE_NAME, connection=redis)
        deadline = time.monotonic() + 30
        while queue.count == 0 and time.monotonic() < deadline:
            time.sleep(0.0005)
        first.kill()  # SIGKILL, as soon as the first chunk is on the queue
        first.wait()
        at_kill = sum(len(job.args[0]) for job in Queue(QUEUE_NAME, connection=redis).get_jobs())
        second = spawn(ingress_cmd, env, tmp_path, log)  # takes over the dead process's spool file
        wait_for(lambda: not list((tmp_path / "spool").glob("*.spool")), 60, "the spool to drain")
        queued = [p["body"] for job in Queue(QUEUE_NAME, connection=redis).get_jobs() for p in job.args[0]]
    finally:
        stop(first)
        if second is not None:
            stop(second)
        redis_server.stop()
    assert 0 < at_kill < len(bodies), "the kill must land in the middle of the drain"
    assert len(queued) == len(bodies) and set(queued) == set(bodies), "each acked payload queued exactly once"
    assert queued == bodies  # and in arrival order
    reliability.append(
        (
            f"ingress killed (SIGKILL) while draining its spool ({db_name(database_url)})",
            f"1 kill with {at_kill} of {len(bodies)} drained",
            f"{len(bodies)} posts acked while Redis was down",
            "0 lost, 0 queued twice, arrival order kept",
        )
    )
