"""A worker takes the jobs waiting in the queue together (``worker.batching``): one transaction for all,
while a bad payload still fails alone and a transient failure still retries each job on its own."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

from redis import Redis
from rq import Queue
from rq.executions import Execution
from rq.job import Job
from sqlalchemy import Engine

from shared.queues import QUEUE_NAME
from shared.settings import Settings
from shared.store_job import enqueue_payloads
from shared.types import Payload
from syncnotify.redis_server import EmbeddedRedis
from tests.conftest import SAMPLES
from tests.payloads import chained_payloads, watermark
from tests.processes import queue_drained, row_count, run, service_env, wait_for
from tests.test_pipeline import seqs
from worker.recovery import requeue_abandoned


def _bad(tenant: str = "Default") -> Payload:
    body = (SAMPLES / "00_seed_sample_malformed.xml").read_bytes()
    return Payload(
        id=uuid.uuid4().hex, tenant=tenant, received_at=time.time(), source="127.0.0.1", subscription_ids=[], body=body
    )


def _jobs_of(payloads: list[Payload], sizes: list[int]) -> list[list[Payload]]:
    """``payloads`` cut into jobs of the given sizes, repeated."""
    jobs, start, i = [], 0, 0
    while start < len(payloads):
        size = sizes[i % len(sizes)]
        jobs.append(payloads[start : start + size])
        start, i = start + size, i + 1
    return jobs


def _chain(payloads: list[Payload], sub: str) -> list[str]:
    """The watermarks of ``sub``'s rows in chain order (``chained_payloads`` makes one event a payload)."""
    mine = [p for p in payloads if sub in p["subscription_ids"]]
    return [watermark(n + 1) for n, p in enumerate(mine) if b"StatusEvent" not in p["body"]]


def _batch_sizes(log: str) -> list[int]:
    """How many jobs each store took, from the worker's log."""
    return [int(n) for n in re.findall(r"stored \d+ rows from \d+ payloads of (\d+) job", log)]


def test_waiting_jobs_are_stored_together_and_a_bad_payload_still_fails_alone(
    redis_server: EmbeddedRedis, redis: Redis, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    subs = {f"batch-{i}-{uuid.uuid4().hex[:8]}": 30 for i in range(3)}
    payloads = chained_payloads(subs, seed=3)
    jobs = _jobs_of(payloads, [1, 3, 2, 4])
    jobs[5].insert(1, _bad())  # a bad payload among good ones
    jobs[20].append(_bad())
    lone = [_bad()]  # a job of one bad payload is its own dead letter
    settings = Settings(redis_url=redis_server.url, database_url=database_url)
    enqueued = [enqueue_payloads(redis, job, settings) for job in [*jobs[:10], lone, *jobs[10:]]]
    lone_job = enqueued[10]
    assert lone_job is not None

    env = service_env(redis_server.url, database_url, tmp_path, SYNCNOTIFY_LOG_LEVEL="INFO")
    worker = run(["worker", "--burst", "--metrics-port", "0"], env, tmp_path)
    assert worker.returncode == 0, worker.stderr[-2000:]

    sizes = _batch_sizes(worker.stderr)
    assert max(sizes) > 1, worker.stderr[-2000:]  # jobs were taken together
    assert sum(sizes) == len(jobs) + 1  # every job stored exactly once (the lone bad one stores nothing)
    assert row_count(engine) == sum(1 for p in payloads if b"StatusEvent" not in p["body"])
    for sub in subs:
        assert seqs(engine, sub) == list(enumerate(_chain(payloads, sub), start=1))

    queue = Queue(QUEUE_NAME, connection=redis)
    failed = queue.failed_job_registry
    assert failed.count == 3
    entries = [Job.fetch(i, connection=redis) for i in failed.get_job_ids()]
    assert all(len(e.args[0]) == 1 and e.meta["error_class"] == "malformed_xml" for e in entries)
    assert lone_job.id in failed.get_job_ids()  # failed as itself: the id an operator may already know
    assert queue.count == 0 and queue.started_job_registry.get_job_count(cleanup=False) == 0
    assert redis.llen(queue.intermediate_queue_key) == 0
    assert queue.scheduled_job_registry.get_job_count(cleanup=False) == 0
    # finished jobs leave nothing behind: their data, results and executions are gone
    left = {key.decode().split(":")[2] for key in redis.scan_iter("rq:job*:*")}
    left |= {key.decode().split(":")[2] for key in redis.scan_iter("rq:execution*:*")}
    assert left <= set(failed.get_job_ids())


def test_a_transient_failure_retries_each_job_of_a_batch_on_its_own(
    redis_server: EmbeddedRedis, redis: Redis, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    subs = {f"outage-{i}-{uuid.uuid4().hex[:8]}": 10 for i in range(2)}
    payloads = chained_payloads(subs, seed=5)
    jobs = _jobs_of(payloads, [2, 1, 3])
    settings = Settings(redis_url=redis_server.url, database_url=database_url)
    ids = {job.id for job in (enqueue_payloads(redis, j, settings) for j in jobs) if job is not None}

    unreachable = f"sqlite:///{tmp_path}/no/such/folder/syncnotify.db"
    env = service_env(redis_server.url, unreachable, tmp_path, SYNCNOTIFY_LOG_LEVEL="INFO")
    failing = run(["worker", "--burst", "--metrics-port", "0"], env, tmp_path)
    assert failing.returncode == 0, failing.stderr[-2000:]
    assert "unable to open database file" in failing.stderr
    queue = Queue(QUEUE_NAME, connection=redis)
    # each job waits for its retry (or is back in the queue when it came due before the worker quit)
    assert set(queue.scheduled_job_registry.get_job_ids(cleanup=False)) | set(queue.job_ids) == ids
    assert queue.failed_job_registry.count == 0  # nothing was dead-lettered
    for job in (Job.fetch(i, connection=redis) for i in ids):
        # a retry is spent for each failure of the job alone, none for the batch's
        assert job.meta["error_class"] == "transient" and job.meta["attempts"] >= 1
        assert job.retries_left == settings.job_retries - job.meta["attempts"]
    assert "failed (database unavailable" in failing.stderr and "running them one by one" in failing.stderr

    env = service_env(redis_server.url, database_url, tmp_path, SYNCNOTIFY_LOG_LEVEL="INFO")
    expected = sum(1 for p in payloads if b"StatusEvent" not in p["body"])

    def recovered() -> bool:  # a burst worker takes the retries that have come due
        worker = run(["worker", "--burst", "--metrics-port", "0"], env, tmp_path)
        assert worker.returncode == 0, worker.stderr[-2000:]
        return row_count(engine) == expected

    wait_for(recovered, 60, "the retried jobs to be stored")
    for sub in subs:
        assert seqs(engine, sub) == list(enumerate(_chain(payloads, sub), start=1))
    wait_for(lambda: queue_drained(redis), 10, "no job left")


def test_retries_spent_dead_letter_each_payload_of_a_batch_alone(
    redis_server: EmbeddedRedis, redis: Redis, tmp_path: Path
) -> None:
    payloads = chained_payloads({f"spent-{uuid.uuid4().hex[:8]}": 9}, seed=7)
    settings = Settings(redis_url=redis_server.url, job_retries=0)
    jobs = _jobs_of(payloads, [3, 1, 2])
    for job in jobs:
        enqueue_payloads(redis, job, settings)

    unreachable = f"sqlite:///{tmp_path}/no/such/folder/syncnotify.db"
    env = service_env(redis_server.url, unreachable, tmp_path, SYNCNOTIFY_LOG_LEVEL="INFO")
    worker = run(["worker", "--burst", "--metrics-port", "0"], env, tmp_path)
    assert worker.returncode == 0, worker.stderr[-2000:]
    assert _batch_sizes(worker.stderr) == []  # nothing stored
    failed = Queue(QUEUE_NAME, connection=redis).failed_job_registry
    entries = [Job.fetch(i, connection=redis) for i in failed.get_job_ids()]
    assert sorted(p["id"] for e in entries for p in e.args[0]) == sorted(p["id"] for p in payloads)
    assert all(len(e.args[0]) == 1 and e.meta["error_class"] == "transient" for e in entries)


def test_jobs_a_dead_worker_took_but_never_started_are_queued_again(
    redis_server: EmbeddedRedis, redis: Redis, tmp_path: Path
) -> None:
    settings = Settings(redis_url=redis_server.url)
    queue = Queue(QUEUE_NAME, connection=redis)
    first, second = (enqueue_payloads(redis, [p], settings) for p in chained_payloads({"taken": 2}))
    assert first is not None and second is not None
    # two jobs taken by workers (moved to RQ's intermediate queue); the one that took the first dies
    redis.lmove(queue.key, queue.intermediate_queue_key)
    redis.lmove(queue.key, queue.intermediate_queue_key)
    assert requeue_abandoned(queue) == []  # first seen: a live worker may be about to start them
    # meanwhile a live worker starts the second (it is in the started registry): not to be touched
    with redis.pipeline() as pipe:
        Execution.create(second, ttl=60, pipeline=pipe)
        pipe.execute()
    time.sleep(1.1)
    assert requeue_abandoned(queue) == [first.id]
    assert queue.job_ids == [first.id]
    assert redis.lrange(queue.intermediate_queue_key, 0, -1) == [second.id.encode()]
    # neither is remembered as seen waiting any more (a retry of either starts afresh)
    assert not any(redis.exists(queue.intermediate_queue.get_first_seen_key(j.id)) for j in (first, second))
