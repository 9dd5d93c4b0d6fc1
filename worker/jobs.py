"""The RQ entry points: the store job and its failure callback.

Their dotted paths (``shared.queues.STORE_JOB``, ``FAILURE_CALLBACK``) are written into every queued job
and every dead letter, kept for 30 days: they must not move.
"""

from __future__ import annotations

from types import TracebackType

from redis import Redis
from rq.exceptions import AbandonedJobError
from rq.job import Job, get_current_job

from shared.errors import PermanentError, TransientError
from shared.queues import MAX_ABANDONS
from shared.settings import get_settings
from shared.types import Payload
from worker import batch, metrics
from worker.deadletter import dead_letter, release_dead_lettered
from worker.recovery import drop_dead_executions


def _connection() -> Redis:
    job = get_current_job()
    if job is not None:
        return job.connection
    return Redis.from_url(get_settings().redis)


def store_payloads(payloads: list[Payload]) -> dict[str, int]:
    """The RQ job: store ``payloads``; raise ``PermanentError`` if a lone payload is bad, ``TransientError`` to retry.

    In a job of several payloads, a bad one is dead-lettered alone and the others are stored; when a
    transient failure outlasts the retries, each payload is dead-lettered on its own.
    """
    redis, job = _connection(), get_current_job()
    outcome = batch.run(redis, [(job, payloads)])
    if outcome.failing:
        raise outcome.failing[0][1]
    transient = outcome.transient
    if transient is not None:
        if len(payloads) == 1 or (job is not None and job.should_retry):
            raise transient
        errors = {payload["id"]: error for _, payload, error in outcome.bad}
        for payload in payloads:  # retries spent: each payload gets its own dead-letter entry
            dead_letter(redis, job, payload, errors.get(payload["id"], transient))
        outcome.dead_lettered = len(payloads)
    return outcome.summary()


def on_failure(
    job: Job,
    connection: Redis,
    exc_type: type[BaseException],
    exc: BaseException,
    tb: TracebackType | None,  # noqa: ARG001
) -> None:
    """RQ failure callback: a permanent failure is dead-lettered at once, not retried; record why and how often."""
    if isinstance(exc, PermanentError):
        job.retries_left = 0
        error_class = exc.error_class
    elif isinstance(exc, TransientError):
        error_class = "transient"
    elif isinstance(exc, AbandonedJobError):
        # Its worker died mid-job (RQ's registry cleanup found it).  Run it again without spending a
        # retry -- unless it keeps killing its workers (shared.queues.MAX_ABANDONS).
        error_class = "abandoned"
        abandons = int(job.meta.get("abandoned", 0)) + 1
        job.meta["abandoned"] = abandons
        job.retries_left = 0 if abandons > MAX_ABANDONS else (job.retries_left or 0) + 1
        drop_dead_executions(job)
    else:
        error_class = exc_type.__name__
    job.meta.update(error_class=error_class, error=str(exc), attempts=int(job.meta.get("attempts", 0)) + 1)
    job.save_meta()  # type: ignore[no-untyped-call]
    if not job.should_retry:
        if job.args:
            release_dead_lettered(connection, job.args[0])
        metrics.DEAD_LETTERED.labels(error_class).inc()
        metrics.PAYLOADS.labels("dead_lettered").inc(len(job.args[0]) if job.args else 1)
