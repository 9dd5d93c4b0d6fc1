"""The operator's view, as an operator uses it: ``dlq``, ``status`` and ``subscriptions`` against real
processes, real Redis and both databases, including a database outage and a replay after it."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from redis import Redis
from sqlalchemy import Engine, select, update

from shared import store_job
from shared.ews import SOAP_ACTION
from shared.schema import make_engine, notifications, subscriptions
from shared.types import Payload
from syncnotify import dlq
from syncnotify.redis_server import EmbeddedRedis
from tests import processes
from tests.conftest import SAMPLES
from tests.payloads import make_event, make_notification, watermark
from tests.processes import run, service_env, wait_for

SOAP_HEADERS = {
    "Content-Type": "text/xml; charset=utf-8",
    "SOAPAction": f'"{SOAP_ACTION}"',
}


@contextmanager
def database_outage(database_url: str, request: pytest.FixtureRequest) -> Iterator[None]:
    """The database stops taking work: PostgreSQL refuses connections (and drops the open ones);
    SQLite is locked by another process."""
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[1].split("?", 1)[0]
        code = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()"
        )
        holder = subprocess.Popen([sys.executable, "-c", code, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        try:
            yield
        finally:
            assert holder.stdin is not None and holder.stdout is not None
            holder.stdin.close()
            holder.wait(10)
            holder.stdout.close()
        return
    admin: psycopg.Connection = request.getfixturevalue("pg_admin")
    name = database_url.rsplit("/", 1)[1]
    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    try:
        yield
    finally:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def cli(env: dict[str, str], tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(list(args), env, tmp)


def cli_json(env: dict[str, str], tmp: Path, *args: str) -> Any:
    result = cli(env, tmp, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def post(url: str, body: bytes) -> httpx.Response:
    return httpx.post(url, content=body, headers=SOAP_HEADERS, timeout=10)


@pytest.fixture
def service(
    redis_server: EmbeddedRedis, redis: Redis, database_url: str, tmp_path: Path
) -> Iterator[tuple[dict[str, str], str]]:
    """Ingress and a worker, with fast retries: (environment for CLI calls, notification URL)."""
    url = database_url + ("?timeout=1" if database_url.startswith("sqlite") else "")
    env = service_env(redis_server.url, url, tmp_path, SYNCNOTIFY_JOB_RETRIES="2")
    with processes.service(env, tmp_path) as base:
        yield env, f"{base}/Webservices/SyncNotification.svc"


def test_malformed_sample_is_listed_shown_replayed_and_purged(
    service: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    env, url = service
    malformed = (SAMPLES / "00_seed_sample_malformed.xml").read_bytes()
    assert post(url, malformed).status_code == 200
    assert post(url, (SAMPLES / "02_created_event_item.xml").read_bytes()).status_code == 200

    def listed() -> list[dict[str, object]]:
        entries: list[dict[str, object]] = cli_json(env, tmp_path, "dlq", "list")
        return entries

    wait_for(lambda: len(listed()) == 1, 30, "the malformed payload in the dead-letter queue")
    (entry,) = listed()
    assert entry["error_class"] == "malformed_xml" and entry["tenant"] == "Default" and entry["attempts"] == 1
    assert "not well-formed XML: mismatched tag at line 1, column 1894" in str(entry["message"])
    human = cli(env, tmp_path, "dlq", "list")
    assert str(entry["id"]) in human.stdout and "malformed_xml" in human.stdout

    shown = subprocess.run(
        [sys.executable, "-m", "syncnotify", "dlq", "show", str(entry["id"])],
        env=env,
        cwd=tmp_path,
        capture_output=True,
    )
    assert shown.returncode == 0 and shown.stdout == malformed  # byte for byte
    assert b"error_class: malformed_xml" in shown.stderr

    dry = cli(env, tmp_path, "dlq", "replay", str(entry["id"]), "--dry-run")
    assert dry.returncode == 0 and "would replay 1 entry; nothing changed" in dry.stdout
    replayed = cli(env, tmp_path, "dlq", "replay", str(entry["id"]))
    assert replayed.returncode == 1  # it fails again, and says so
    assert "replayed 1, skipped 0, stored 0, failed again 1, still pending 0" in replayed.stdout
    assert replayed.stderr.strip().splitlines()[-1] == "syncnotify: 1 failed again, 0 not done yet (see dlq list)"
    (again,) = listed()
    assert again["id"] == entry["id"] and again["attempts"] == 2

    refused = cli(env, tmp_path, "dlq", "purge", str(entry["id"]))
    assert refused.returncode == 2 and "--yes" in refused.stderr
    purged = cli(env, tmp_path, "dlq", "purge", str(entry["id"]), "--yes")
    assert purged.returncode == 0 and "purged 1" in purged.stdout
    assert listed() == []
    missing = cli(env, tmp_path, "dlq", "show", str(entry["id"]))
    assert missing.returncode == 1 and missing.stderr.strip() == f"syncnotify: no dead-letter entry {entry['id']!r}"


def test_database_outage_dead_letters_then_replay_stores_everything_once_in_order(
    service: tuple[dict[str, str], str],
    database_url: str,
    engine: Engine,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    env, url = service
    sub = f"outage-{uuid.uuid4().hex[:8]}"
    bodies = [make_notification(sub, watermark(n), [make_event("Modified", watermark(n + 1))]) for n in range(5)]
    with database_outage(database_url, request):
        for body in bodies:  # one at a time, as Exchange sends them
            assert post(url, body).status_code == 200
        wait_for(
            lambda: len(cli_json(env, tmp_path, "dlq", "list", "--error", "transient")) == 5,
            90,
            "five payloads retried and dead-lettered",
        )
    entries = cli_json(env, tmp_path, "dlq", "list", "--error", "transient")
    assert isinstance(entries, list) and all(e["attempts"] == 3 for e in entries)  # first try and 2 retries

    started_at = time.monotonic()
    replay = cli(env, tmp_path, "dlq", "replay", "--all", "--rate", "5")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "replayed 5, skipped 0, stored 5, failed again 0, still pending 0" in replay.stdout
    assert time.monotonic() - started_at >= 0.8  # five at five a second
    with engine.connect() as conn:
        got = conn.execute(
            select(notifications.c.seq, notifications.c.watermark)
            .where(notifications.c.subscription_id == sub)
            .order_by(notifications.c.seq)
        ).all()
    assert [(r.seq, r.watermark) for r in got] == [(n + 1, watermark(n + 1)) for n in range(5)]
    assert cli_json(env, tmp_path, "dlq", "list") == []

    again = cli(env, tmp_path, "dlq", "replay", "--all")
    assert again.returncode == 0 and "replayed 0" in again.stdout


def test_status_and_subscriptions_commands(
    service: tuple[dict[str, str], str], engine: Engine, redis: Redis, tmp_path: Path
) -> None:
    env, url = service
    for name in ("02_created_event_item.xml", "03_modified_event_item_and_folder.xml", "10_more_events_part1.xml"):
        assert post(url, (SAMPLES / name).read_bytes()).status_code == 200
    assert post(url, b"not xml at all").status_code == 200
    wait_for(lambda: len(cli_json(env, tmp_path, "subscriptions", "list")) == 2, 30, "two subscriptions")
    wait_for(lambda: len(cli_json(env, tmp_path, "dlq", "list")) == 1, 30, "the junk payload dead-lettered")

    status = cli_json(env, tmp_path, "status")
    assert isinstance(status, dict)
    assert status["queue_depth"] == 0 and status["workers"] >= 1
    assert status["dead_letter"] == {"total": 1, "by_error_class": {"not_xml": 1}}
    assert status["subscriptions"]["by_state"] == {"active": 2}
    human = cli(env, tmp_path, "status")
    assert human.returncode == 0 and "dead-letter queue  1 (not_xml 1)" in human.stdout

    # a room silent for days is shown stale, first
    a = "RVhBTVBMRS1TVUJTQ1JJUFRJT04tQTo6bWJ4LXJvb20tMTAxQGV4YW1wbGUuY29t"
    with engine.begin() as conn:
        conn.execute(
            update(subscriptions)
            .where(subscriptions.c.subscription_id == a)
            .values(last_seen_at=datetime.now(UTC) - timedelta(days=3), heartbeat_seconds=600)
        )
    listed = cli_json(env, tmp_path, "subscriptions", "list")
    assert isinstance(listed, list) and [s["state"] for s in listed] == ["stale", "active"]
    assert listed[0]["subscription_id"] == a and listed[0]["last_seq"] == 4
    assert [s["subscription_id"] for s in cli_json(env, tmp_path, "subscriptions", "list", "--state", "stale")] == [a]
    table = cli(env, tmp_path, "subscriptions", "list")
    assert table.stdout.splitlines()[0].split()[:3] == ["TENANT", "SUBSCRIPTION", "STATE"]

    done = cli(env, tmp_path, "subscriptions", "unsubscribe", a)
    assert done.returncode == 0
    body = (SAMPLES / "04_newmail_event.xml").read_bytes()
    wait_for(
        lambda: b"<m:SubscriptionStatus>Unsubscribe</m:SubscriptionStatus>" in post(url, body).content,
        10,
        "the ingress to answer Unsubscribe",
    )
    states = {s["subscription_id"]: s["state"] for s in cli_json(env, tmp_path, "subscriptions", "list")}
    assert states[a] == "unsubscribed"


def test_dlq_filters_and_json(redis_server: EmbeddedRedis, redis: Redis, tmp_path: Path) -> None:
    env = service_env(redis_server.url, f"sqlite:///{tmp_path / 'x.db'}", tmp_path)
    old = Payload(
        id="a" * 32,
        tenant="Default",
        received_at=time.time() - 7200,
        source="198.51.100.1",
        subscription_ids=["s1"],
        body=b"<a/>",
    )
    new = Payload(
        id="b" * 32,
        tenant="Other",
        received_at=time.time(),
        source="198.51.100.2",
        subscription_ids=["s2"],
        body=b"\xff\xfe junk",
    )
    store_job.dead_letter(redis, old, "not_send_notification", "payload has no SOAP Envelope", 1, 3600)
    store_job.dead_letter(redis, new, "not_xml", "payload is not XML", 1, 3600)
    assert len(cli_json(env, tmp_path, "dlq", "list")) == 2
    assert [e["tenant"] for e in cli_json(env, tmp_path, "dlq", "list", "--tenant", "other")] == ["Other"]
    assert [e["error_class"] for e in cli_json(env, tmp_path, "dlq", "list", "--error", "not_xml")] == ["not_xml"]
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert [e["tenant"] for e in cli_json(env, tmp_path, "dlq", "list", "--since", since)] == ["Other"]
    bad = cli(env, tmp_path, "dlq", "list", "--since", "yesterday")
    assert bad.returncode == 1 and bad.stderr.strip() == "syncnotify: --since 'yesterday' is not an ISO date or time"
    nothing = cli(env, tmp_path, "dlq", "replay")
    assert nothing.returncode == 2 and "name entry IDs or --all" in nothing.stderr
    dry = cli_json(env, tmp_path, "dlq", "purge", "--all", "--error", "not_xml", "--dry-run")
    assert dry == {
        "dry_run": True,
        "selected": 1,
        "replayed": 0,
        "purged": 1,
        "skipped": 0,
        "stored": 0,
        "failed_again": 0,
        "pending": 0,
    }
    assert len(cli_json(env, tmp_path, "dlq", "list")) == 2
    job_id = next(e["id"] for e in cli_json(env, tmp_path, "dlq", "list", "--tenant", "Other"))
    shown = cli_json(env, tmp_path, "dlq", "show", job_id)
    assert isinstance(shown, dict) and shown["body_base64"] == "//4ganVuaw=="


@pytest.mark.slow
def test_replaying_many_entries_never_holds_them_all_in_memory(redis: Redis) -> None:
    body = (SAMPLES / "03_modified_event_item_and_folder.xml").read_bytes() * 2  # ~5 kB each
    count = 20_000
    for i in range(count):
        payload = Payload(
            id=f"{i:032x}", tenant="Default", received_at=1.7e9 + i, source="127.0.0.1", subscription_ids=[], body=body
        )
        store_job.dead_letter(redis, payload, "transient", "database unavailable", 9, 3600)
    assert store_job.dead_letters(redis).count == count
    tracemalloc.start()
    outcome, _ = dlq.replay(redis, dlq.matching(redis, None, dlq.Filter()), retries=2, dry_run=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert outcome.selected == count
    all_bodies = count * len(body)
    assert peak < all_bodies / 10, f"peak {peak / 1e6:.1f} MB for {all_bodies / 1e6:.0f} MB of payloads"


def test_sqlite_outage_helper_really_locks(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    path = tmp_path / "locked.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    with database_outage(f"sqlite:///{path}", request):
        conn = sqlite3.connect(path, timeout=0.2)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            conn.execute("BEGIN IMMEDIATE")
        conn.close()


def test_dead_letters_are_kept_for_the_retention_days_not_rqs_year(
    redis_server: EmbeddedRedis, redis: Redis, tmp_path: Path
) -> None:
    from shared.settings import Settings
    from shared.store_job import enqueue_payloads

    settings = Settings(redis_url=redis_server.url, dlq_retention_days=3, database_url=f"sqlite:///{tmp_path / 'r.db'}")
    payload = Payload(
        id="c" * 32, tenant="Default", received_at=time.time(), source="127.0.0.1", subscription_ids=[], body=b"not xml"
    )
    enqueue_payloads(redis, [payload], settings)
    env = service_env(redis_server.url, f"sqlite:///{tmp_path / 'r.db'}", tmp_path, SYNCNOTIFY_DLQ_RETENTION_DAYS="3")
    assert run(["db", "upgrade"], env, tmp_path).returncode == 0
    assert run(["worker", "--burst", "--metrics-port", "0"], env, tmp_path).returncode == 0
    (job_id,) = store_job.dead_letters(redis).get_job_ids()
    expires = redis.zscore(store_job.dead_letters(redis).key, job_id)
    assert expires is not None and abs(expires - (time.time() + 3 * 86400)) < 120
    assert abs(redis.ttl(f"rq:job:{job_id}") - 3 * 86400) < 120


def test_replay_with_no_worker_says_so_at_once_and_leaves_the_entries_queued(
    redis_server: EmbeddedRedis, redis: Redis, tmp_path: Path
) -> None:
    from rq import Queue

    from shared.queues import QUEUE_NAME

    database = f"sqlite:///{tmp_path / 'idle.db'}"
    env = service_env(redis_server.url, database, tmp_path)
    assert run(["db", "upgrade"], env, tmp_path).returncode == 0
    body = (SAMPLES / "02_created_event_item.xml").read_bytes()

    def dead_letter(n: int) -> None:
        payload = Payload(
            id=f"{n:032x}", tenant="Default", received_at=time.time(), source="::1", subscription_ids=[], body=body
        )
        store_job.dead_letter(redis, payload, "transient", "database unavailable", 3, 3600)

    for n in range(3):
        dead_letter(n)

    started_at = time.monotonic()
    replay = cli(env, tmp_path, "dlq", "replay", "--all")
    assert time.monotonic() - started_at < 30, "it must not wait for a worker that is not there"
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert replay.stdout.strip().splitlines() == [
        "replayed 3 entries; no worker is running, so they wait on the queue: start `syncnotify worker`"
    ]
    assert Queue(QUEUE_NAME, connection=redis).count == 3 and store_job.dead_letters(redis).count == 0

    # --json: the document alone on stdout, counting them pending; the note on stderr
    dead_letter(3)
    document = cli_json(env, tmp_path, "dlq", "replay", "--all")
    assert isinstance(document, dict) and document["replayed"] == 1 and document["pending"] == 1

    assert run(["worker", "--burst", "--metrics-port", "0"], env, tmp_path).returncode == 0
    assert Queue(QUEUE_NAME, connection=redis).count == 0 and store_job.dead_letters(redis).count == 0
    with make_engine(database).connect() as conn:
        assert conn.execute(select(notifications.c.id)).all(), "the worker stored the replayed payloads"
