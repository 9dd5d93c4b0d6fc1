"""The store job as both halves see it: how it is built and queued, and the form of its dead letters.

The ingress queues payloads as a job of ``STORE_JOB`` (by its dotted name, so it never imports worker
code); the worker runs it; a payload that cannot be stored becomes a *dead letter*: a failed job of the
same function carrying that one payload, in RQ's failed-job registry of the queue, so that a replay is
RQ's own requeue.  Entries expire after ``SYNCNOTIFY_DLQ_RETENTION_DAYS`` (the job's ``failure_ttl``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq import Callback, Queue, Retry
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from shared import inflight
from shared.queues import (
    FAILURE_CALLBACK,
    INFLIGHT_TTL_SECONDS,
    JOB_TIMEOUT_SECONDS,
    QUEUE_NAME,
    RETRY_INTERVALS,
    STORE_JOB,
)
from shared.settings import Settings
from shared.types import Payload


def _create(redis: Redis, payloads: list[Payload], func: str, failure_ttl: int, **options: Any) -> Job:
    """A job of ``func`` on ``payloads`` with the options every store job and dead letter shares."""
    return Job.create(
        func,
        args=(payloads,),
        connection=redis,
        timeout=JOB_TIMEOUT_SECONDS,
        result_ttl=0,  # a stored job keeps no result: gone means stored
        failure_ttl=failure_ttl,
        on_failure=Callback(FAILURE_CALLBACK),
        **options,
    )


def payloads_job(redis: Redis, payloads: list[Payload], settings: Settings, func: str = STORE_JOB) -> Job:
    """The queue job that carries ``payloads`` to ``func`` (the store job; the bench swaps in a no-op)."""
    # RQ counts intervals from the end of the list when it is longer than the retries: cut it to size
    retries = settings.job_retries
    return _create(
        redis,
        payloads,
        func,
        settings.dlq_retention_days * 86400,
        retry=Retry(max=retries, interval=RETRY_INTERVALS[:retries]) if retries else None,
        meta={"tenants": sorted({p["tenant"] for p in payloads}), "payloads": len(payloads)},
        # RQ would otherwise render every body into the description: CPU here, kilobytes in Redis
        description=f"store {len(payloads)} payload(s)",
    )


def add_to_queue(pipe: Pipeline, queue: Queue, job: Job, payloads: list[Payload]) -> None:
    """Queue ``job`` and mark its payloads in flight, in the transaction of ``pipe``."""
    queue.enqueue_job(job, pipeline=pipe)  # first: it opens the MULTI block the marks then join
    inflight.mark(pipe, payloads)


def enqueue_payloads(
    redis: Redis, payloads: list[Payload], settings: Settings, once_key: str | None = None
) -> Job | None:
    """Put ``payloads`` on the queue as one job, with their in-flight marks, in one Redis transaction.

    With ``once_key``, a second call with the same key enqueues nothing (and returns None): the key is
    written in the same transaction as the job.  The spool's drain uses it to queue each chunk once.
    """
    if once_key is not None and redis.exists(once_key):
        return None
    job = payloads_job(redis, payloads, settings)
    with redis.pipeline() as pipe:
        add_to_queue(pipe, Queue(QUEUE_NAME, connection=redis), job, payloads)
        if once_key is not None:
            pipe.set(once_key, job.id, ex=INFLIGHT_TTL_SECONDS)
        pipe.execute()
    return job


def dead_letters(redis: Redis) -> FailedJobRegistry:
    """The dead-letter queue: RQ's failed-job registry of the queue."""
    return FailedJobRegistry(QUEUE_NAME, connection=redis)


def dead_letter(
    redis: Redis,
    payload: Payload,
    error_class: str,
    message: str,
    attempts: int,
    retention_seconds: int,
    entry_id: str | None = None,
) -> Job:
    """Put one payload straight into the dead-letter queue (a job of several must fail one payload alone).

    With ``entry_id`` the entry has that id, so that writing it twice (a job run again after its worker died)
    leaves one entry.
    """
    job = _create(
        redis,
        [payload],
        STORE_JOB,
        retention_seconds,
        id=entry_id,
        origin=QUEUE_NAME,
        meta={"error_class": error_class, "error": message, "attempts": attempts},
        description=f"dead letter of payload {payload['id']}",
        status=JobStatus.FAILED,
    )
    job.ended_at = datetime.now(UTC)
    with redis.pipeline() as pipe:
        job.save(pipeline=pipe)
        dead_letters(redis).add(job, ttl=retention_seconds, exc_string=f"{error_class}: {message}", pipeline=pipe)
        pipe.execute()
    return job


def is_dead_letter(job: Job) -> bool:
    """Whether ``job`` has the form of a dead letter: the store job on exactly one payload."""
    try:
        return job.func_name == STORE_JOB and len(job.args[0]) == 1
    except (IndexError, TypeError, AttributeError):
        return False


def payload_of(job: Job) -> Payload:
    """The one payload of a dead letter."""
    payloads: list[Payload] = job.args[0]
    return payloads[0]
