"""Entries written before the layout change still run: a queued job and a dead letter kept 30 days name
``worker.jobs.store_payloads`` and ``worker.jobs.on_failure``, and an upgraded syncnotify must store them."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from redis import Redis
from rq import Callback, Queue, Retry
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from sqlalchemy import Engine, select

from shared.schema import notifications
from shared.types import Payload
from syncnotify.redis_server import EmbeddedRedis
from tests.payloads import SUBSCRIPTION_A, SUBSCRIPTION_B, make_event, make_notification, watermark
from tests.processes import run, service_env

#: The names as d697697 (before ``syncnotify/``) wrote them, spelled out rather than read from shared.queues.
OLD_STORE_JOB = "worker.jobs.store_payloads"
OLD_FAILURE_CALLBACK = "worker.jobs.on_failure"


def _payload(subscription_id: str, n: int) -> Payload:
    return Payload(
        id=uuid.uuid4().hex,
        tenant="Default",
        received_at=time.time(),
        source="127.0.0.1",
        subscription_ids=[subscription_id],
        body=make_notification(subscription_id, watermark(n), [make_event("Created", watermark(n + 1))]),
    )


def _old_queued_job(redis: Redis, payloads: list[Payload]) -> None:
    """What the old ingress's ``payloads_job`` and ``add_to_queue`` wrote."""
    job = Job.create(
        OLD_STORE_JOB,
        args=(payloads,),
        connection=redis,
        timeout=300,
        result_ttl=0,
        failure_ttl=30 * 86400,
        on_failure=Callback(OLD_FAILURE_CALLBACK),
        retry=Retry(max=8, interval=[1, 2, 5, 10, 30, 60, 120, 300]),
        meta={"tenants": ["Default"], "payloads": len(payloads)},
        description=f"store {len(payloads)} payload(s)",
    )
    Queue("syncnotify", connection=redis).enqueue_job(job)


def _old_dead_letter(redis: Redis, payload: Payload) -> None:
    """What the old ``worker.dlq.dead_letter`` wrote."""
    job = Job.create(
        OLD_STORE_JOB,
        args=([payload],),
        connection=redis,
        timeout=300,
        result_ttl=0,
        failure_ttl=30 * 86400,
        origin="syncnotify",
        on_failure=Callback(OLD_FAILURE_CALLBACK),
        meta={"error_class": "transient", "error": "database unavailable", "attempts": 9},
        description=f"dead letter of payload {payload['id']}",
        status=JobStatus.FAILED,
    )
    job.ended_at = datetime.now(UTC)
    with redis.pipeline() as pipe:
        job.save(pipeline=pipe)
        FailedJobRegistry("syncnotify", connection=redis).add(
            job, ttl=30 * 86400, exc_string="transient: database unavailable", pipeline=pipe
        )
        pipe.execute()


def test_jobs_and_dead_letters_of_the_old_layout_are_stored_after_an_upgrade(
    redis_server: EmbeddedRedis, redis: Redis, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    env = service_env(redis_server.url, database_url, tmp_path)
    _old_queued_job(redis, [_payload(SUBSCRIPTION_A, 0), _payload(SUBSCRIPTION_A, 1)])
    _old_dead_letter(redis, _payload(SUBSCRIPTION_B, 0))

    listed = run(["dlq", "list", "--json"], env, tmp_path)
    assert listed.returncode == 0 and '"error_class": "transient"' in listed.stdout, listed.stderr
    replayed = run(["dlq", "replay", "--all", "--no-wait"], env, tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    worker = run(["worker", "--burst", "--metrics-port", "0"], env, tmp_path)
    assert worker.returncode == 0, worker.stdout + worker.stderr

    with engine.connect() as conn:
        rows = conn.execute(
            select(notifications.c.subscription_id, notifications.c.seq).order_by(
                notifications.c.subscription_id, notifications.c.seq
            )
        ).all()
    assert sorted(rows) == sorted([(SUBSCRIPTION_A, 1), (SUBSCRIPTION_A, 2), (SUBSCRIPTION_B, 1)])
    assert FailedJobRegistry("syncnotify", connection=redis).count == 0
