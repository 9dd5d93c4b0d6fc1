"""End to end with real processes: ``syncnotify ingress`` and ``worker``, real Redis, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import httpx
from redis import Redis
from rq import Queue
from rq.job import Job
from sqlalchemy import Engine, select

from shared.queues import QUEUE_NAME
from shared.schema import notifications, subscriptions
from shared.settings import Settings
from shared.store_job import enqueue_payloads
from syncnotify.redis_server import EmbeddedRedis, free_port
from tests.conftest import SAMPLES, SEED_SUBSCRIPTION
from tests.payloads import SUBSCRIPTION_A, SUBSCRIPTION_B, chained_payloads, watermark
from tests.processes import queue_drained, row_count, run, service_env, started, wait_for, wait_http


def metric_values(text: str) -> dict[str, float]:
    """Prometheus text format → {'name{labels}': value}."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def seqs(engine: Engine, subscription_id: str) -> list[tuple[int | None, str]]:
    query = (
        select(notifications.c.seq, notifications.c.watermark)
        .where(notifications.c.subscription_id == subscription_id)
        .order_by(notifications.c.seq.nulls_last(), notifications.c.id)
    )
    with engine.connect() as conn:
        return [(r.seq, r.watermark) for r in conn.execute(query)]


def test_every_sample_through_ingress_queue_and_two_workers(
    redis_server: EmbeddedRedis, redis: Redis, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    """What the README tells a new user to do: start the service, ``syncnotify send`` every sample."""
    port, metrics_port = free_port(), free_port()
    env = service_env(redis_server.url, database_url, tmp_path)
    url = f"http://127.0.0.1:{port}/Webservices/SyncNotification.svc?Default"
    log = tmp_path / "services.log"
    with (
        started(["ingress", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path, log),
        started(["worker", "--processes", "2", "--metrics-port", str(metrics_port)], env, tmp_path, log),
    ):
        wait_http(f"http://127.0.0.1:{port}/healthz")
        files = sorted(str(p) for p in SAMPLES.glob("[01][0-9]_*.xml"))
        sent = run(["send", *files, "--url", url], env, tmp_path)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert sent.stdout.count(": 200 OK") == len(files)
        wait_for(lambda: queue_drained(redis) and row_count(engine) == 17, 60, "all rows")
        wait_for(lambda: seqs(engine, SUBSCRIPTION_A)[-1][0] == 12, 30, "the gap timeout to number sample 12")
        # both worker processes' counters, summed on one scrape target
        scraped = metric_values(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text)
        ingress = metric_values(httpx.get(f"http://127.0.0.1:{port}/metrics").text)

    assert [s for s, _ in seqs(engine, SUBSCRIPTION_A)] == list(range(1, 13))
    assert [s for s, _ in seqs(engine, SUBSCRIPTION_B)] == [1, 2, 3]
    assert [s for s, _ in seqs(engine, SEED_SUBSCRIPTION)] == [1, 2]
    with engine.connect() as conn:
        state = conn.execute(select(subscriptions).where(subscriptions.c.subscription_id == SUBSCRIPTION_A)).one()
    assert (state.state, state.error_code, state.gap_count) == ("error", "ErrorReadEventsFailed", 1)

    assert scraped["syncnotify_events_stored_total"] == 17  # sample 12's row too, numbered later by the sweeper
    assert scraped["syncnotify_duplicates_dropped_total"] == 3  # 13 (one event) and 15 (two)
    assert scraped["syncnotify_gaps_total"] == 1
    assert scraped['syncnotify_dead_lettered_total{error_class="malformed_xml"}'] == 1
    assert scraped["syncnotify_receipt_to_row_seconds_count"] == 17  # every stored payload
    assert scraped["syncnotify_queue_depth"] == 0 and scraped["syncnotify_dead_letter_entries"] == 1
    assert scraped['syncnotify_subscriptions{state="error"}'] == 1
    assert ingress['syncnotify_ingress_requests_total{status="200"}'] == 18

    # the malformed seed sample was acked, and is now in the dead-letter queue with a located reason
    failed = Queue(QUEUE_NAME, connection=redis).failed_job_registry
    assert failed.count == 1
    job = Job.fetch(failed.get_job_ids()[0], connection=redis)
    assert job.meta["error_class"] == "malformed_xml"
    assert "mismatched tag at line 1, column" in job.meta["error"]
    assert job.args[0][0]["body"] == (SAMPLES / "00_seed_sample_malformed.xml").read_bytes()


def test_two_worker_processes_racing_on_the_same_subscriptions_keep_chain_order(
    redis_server: EmbeddedRedis, redis: Redis, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    """Jobs taken in any order by two workers still number every chain 1, 2, 3 … in watermark order."""
    random.seed(11)
    subs = {f"race-{i}-{uuid.uuid4().hex[:8]}": 40 for i in range(4)}
    payloads = chained_payloads(subs, seed=11)
    settings = Settings(redis_url=redis_server.url, database_url=database_url)
    jobs = [[p] for p in payloads]  # one payload a job: the most interleaving two workers can get
    random.shuffle(jobs)  # and the queue in an order unlike the chain, the first two of each chain included
    for job in jobs:
        enqueue_payloads(redis, job, settings)
    env = service_env(redis_server.url, database_url, tmp_path)
    log = tmp_path / "workers.log"
    with started(["worker", "--burst"], env, tmp_path, log), started(["worker", "--burst"], env, tmp_path, log) as w2:
        w2.wait(120)
    wait_for(lambda: queue_drained(redis), 60, "the queue to drain")
    for sub in subs:
        got = seqs(engine, sub)
        expected = [
            watermark(n + 1)
            for n, p in enumerate(p for p in payloads if sub in p["subscription_ids"])
            if b"StatusEvent" not in p["body"]
        ]
        assert [w for _, w in got] == expected, log.read_text()[-2000:]
        assert [s for s, _ in got] == list(range(1, len(expected) + 1))
    assert Queue(QUEUE_NAME, connection=redis).failed_job_registry.count == 0


def test_db_upgrade_command_creates_the_schema(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    result = run(["db", "upgrade"], service_env(redis_server.url, url, tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "is at the latest schema" in result.stdout
    again = run(["db", "upgrade"], service_env(redis_server.url, url, tmp_path), tmp_path)
    assert again.returncode == 0


def test_bad_setting_stops_with_one_line_naming_it(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    env = service_env(redis_server.url, "sqlite:///x.db", tmp_path, SYNCNOTIFY_MAX_BODY_BYTES="lots")
    result = run(["db", "upgrade"], env, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "syncnotify: SYNCNOTIFY_MAX_BODY_BYTES='lots' is not valid: "
        "Input should be a valid integer, unable to parse string as an integer"
    ]


def test_usage_error_exits_2(tmp_path: Path) -> None:
    result = run(["worker", "--processes", "many"], {}, tmp_path)
    assert result.returncode == 2
    assert "invalid int value" in result.stderr


def test_simulator_posts_real_chains_and_verifies_every_row(
    redis_server: EmbeddedRedis, redis: Redis, database_url: str, tmp_path: Path
) -> None:
    """``syncnotify simulate`` (for operators trying a deployment) against real ingress and workers."""
    port = free_port()
    env = service_env(redis_server.url, database_url, tmp_path)
    log = tmp_path / "services.log"
    with (
        started(["ingress", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path, log),
        started(["worker", "--processes", "2", "--metrics-port", "0"], env, tmp_path, log),
    ):
        wait_http(f"http://127.0.0.1:{port}/healthz")
        result = run(
            [
                "simulate",
                "--url",
                f"http://127.0.0.1:{port}/Webservices/SyncNotification.svc",
                "--subscriptions",
                "60",
                "--notifications",
                "600",
                "--connections",
                "8",
                "--seed",
                "7",
                "--verify",
                database_url,
                "--json",
                "--drain-timeout",
                "120",
            ],
            env,
            tmp_path,
            timeout=300,
        )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["ok"] is True
    checked = report["verify"]
    assert (checked["lost"], checked["duplicated"], checked["seq_broken"], checked["unnumbered"]) == (0, 0, 0, 0)
