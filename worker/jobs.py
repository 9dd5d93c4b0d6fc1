"""The RQ job: parse each queued payload, store the batch, release the in-flight marks.

A job carries several payloads (all posts the ingress gathered into one Redis write), and a worker may run
several waiting jobs together (``store_jobs``, see ``worker.rq_worker``).  Their payloads are stored in one
database transaction; a payload that cannot be stored fails alone: it is split off into a job of its own,
which fails with a located ``PermanentError`` and so lands, by itself, in RQ's failed-job registry (the
dead-letter queue).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from types import TracebackType
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import AbandonedJobError
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, get_current_job
from rq.utils import current_timestamp
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError

from shared.errors import PermanentError, SyncNotifyError, TransientError
from shared.queues import MAX_ABANDONS, inflight_key
from shared.schema import make_engine
from shared.settings import get_settings, redact_url
from shared.types import Payload
from worker import dlq, metrics
from worker.parse import parse_payload
from worker.store import Delivery, InFlight, InFlightOf, StoreResult, SubscriptionKey, store

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def engine() -> Engine:
    """This process's engine, made on first use (after any fork)."""
    return make_engine(get_settings().database)


def _connection() -> Redis:
    job = get_current_job()
    if job is not None:
        return job.connection
    return Redis.from_url(get_settings().redis)


#: One queued job and its payloads (``None``: the payloads are stored outside any job).
JobPayloads = tuple[Job | None, list[Payload]]


@dataclass(slots=True)
class Outcome:
    """What storing the payloads of one or more jobs came to."""

    result: StoreResult = field(default_factory=StoreResult)
    #: payloads that can never be stored, each with why (to be dead-lettered alone)
    bad: list[tuple[Job | None, Payload, PermanentError]] = field(default_factory=list)
    #: set when the database or Redis was away: then nothing was stored
    transient: TransientError | None = None
    #: jobs of one bad payload: each fails through RQ, as its own dead letter (see ``store_jobs``)
    failing: list[tuple[Job | None, PermanentError]] = field(default_factory=list)
    dead_lettered: int = 0

    def summary(self) -> dict[str, int]:
        rows, duplicates, gaps = self.result.rows, self.result.duplicates, self.result.gaps
        return {"rows": rows, "duplicates": duplicates, "gaps": gaps, "dead_lettered": self.dead_lettered}


def store_payloads(payloads: list[Payload]) -> dict[str, int]:
    """The RQ job: store ``payloads``; raise ``PermanentError`` if a lone payload is bad, ``TransientError`` to retry.

    In a job of several payloads, a bad one is dead-lettered alone and the others are stored; when a
    transient failure outlasts the retries, each payload is dead-lettered on its own.
    """
    redis, job = _connection(), get_current_job()
    outcome = store_jobs(redis, [(job, payloads)])
    if outcome.failing:
        raise outcome.failing[0][1]
    transient = outcome.transient
    if transient is not None:
        if len(payloads) == 1 or _may_retry(job):
            raise transient
        errors = {payload["id"]: error for _, payload, error in outcome.bad}
        for payload in payloads:  # retries spent: each payload gets its own dead-letter entry
            _dead_letter(redis, job, payload, errors.get(payload["id"], transient))
        outcome.dead_lettered = len(payloads)
    return outcome.summary()


def store_jobs(redis: Redis, parts: Sequence[JobPayloads]) -> Outcome:
    """Store the payloads of one or more jobs together, and dead-letter each bad payload alone.

    A job of one bad payload is not dead-lettered but listed in ``failing``: it is its own dead letter, to
    fail through RQ.  On a transient failure (``transient`` set) nothing is stored nor dead-lettered.
    """
    outcome = store_parts(redis, parts)
    if outcome.transient is not None:
        return outcome
    for job, payloads in parts:
        own = [(payload, error) for j, payload, error in outcome.bad if j is job]
        if len(payloads) == 1 and own:
            payload, error = own[0]
            logger.warning("payload %s fails permanently: %s", payload["id"], error, extra=_fields(payload, job))
            outcome.failing.append((job, error))
            continue
        for payload, error in own:
            _dead_letter(redis, job, payload, error)
        outcome.dead_lettered += len(own)
    return outcome


def store_parts(redis: Redis, parts: Sequence[JobPayloads]) -> Outcome:
    """Parse and store the payloads of ``parts`` in one transaction, then release their in-flight marks.

    Dead-letters nothing: the callers decide, since a job of one payload is its own dead letter.
    """
    outcome = Outcome()
    deliveries: list[Delivery] = []
    for job, payloads in parts:
        for payload in payloads:
            try:
                parsed = parse_payload(payload["body"])
            except PermanentError as exc:
                outcome.bad.append((job, payload, exc))
                continue
            received = datetime.fromtimestamp(payload["received_at"], UTC)
            deliveries.append(Delivery(payload["id"], payload["tenant"], received, parsed))
    try:
        outcome.result, failed = _store_isolating(deliveries, lambda keys: in_flight_of(redis, keys))
    except TransientError as exc:
        outcome.transient = exc
        return outcome
    payloads_by_id = {p["id"]: (job, p) for job, payloads in parts for p in payloads}
    outcome.bad += [(payloads_by_id[i][0], payloads_by_id[i][1], error) for i, error in failed.items()]
    bad_ids = {payload["id"] for _, payload, _ in outcome.bad}
    job_ids = [job.id for job, _ in parts if job is not None]
    stored = [p for _, payloads in parts for p in payloads if p["id"] not in bad_ids]
    _release(redis, stored)
    _observe(outcome.result, stored)
    logger.info(
        "stored %d rows from %d payloads of %d job(s) (%d duplicates, %d gaps)",
        outcome.result.rows,
        len(stored),
        len(parts),
        outcome.result.duplicates,
        outcome.result.gaps,
        # a batch is named by its first job, as RQ's timeout does; ``job_ids`` lists them all
        extra={"job_id": job_ids[0] if job_ids else None, "job_ids": job_ids},
    )
    return outcome


def _may_retry(job: Job | None) -> bool:
    return job is not None and bool(job.should_retry)


def _observe(result: StoreResult, stored: Sequence[Payload]) -> None:
    metrics.EVENTS_STORED.inc(result.rows)
    metrics.DUPLICATES.inc(result.duplicates)
    metrics.GAPS.inc(result.gaps)
    metrics.PAYLOADS.labels("stored").inc(len(stored))
    now = time.time()
    for payload in stored:
        metrics.RECEIPT_TO_ROW.observe(max(0.0, now - payload["received_at"]))


def _dead_letter(redis: Redis, job: Job | None, payload: Payload, error: SyncNotifyError) -> None:
    error_class = error.error_class if isinstance(error, PermanentError) else "transient"
    attempts = int(job.meta.get("attempts", 0)) + 1 if job is not None else 1
    retention = job.failure_ttl if job is not None and job.failure_ttl else get_settings().dlq_retention_days * 86400
    entry = dlq.dead_letter(redis, payload, error_class, str(error), attempts, retention)
    metrics.DEAD_LETTERED.labels(error_class).inc()
    metrics.PAYLOADS.labels("dead_lettered").inc()
    logger.warning(
        "payload %s dead-lettered as %s (%s): %s",
        payload["id"],
        entry.id,
        error_class,
        error,
        extra=_fields(payload, job),
    )


def _store_isolating(
    deliveries: Sequence[Delivery], in_flight_of: InFlightOf
) -> tuple[StoreResult, dict[str, PermanentError]]:
    """Store all in one transaction; if the data of one breaks it, store one by one to find the culprits."""
    if not deliveries:  # every payload failed to parse: nothing to store, and no database needed
        return StoreResult(), {}
    try:
        return _store(deliveries, in_flight_of), {}
    except PermanentError as exc:
        if len(deliveries) == 1:
            return StoreResult(), {deliveries[0].payload_id: exc}
    total, failed = StoreResult(), {}
    for delivery in deliveries:
        try:
            total.add(_store([delivery], in_flight_of))
        except PermanentError as exc:
            failed[delivery.payload_id] = exc
    return total, failed


def _store(deliveries: Sequence[Delivery], in_flight_of: InFlightOf) -> StoreResult:
    """``store`` with database errors sorted into transient (retry the job) and permanent (this data)."""
    try:
        return store(engine(), deliveries, in_flight_of)
    except (DataError, IntegrityError) as exc:
        raise PermanentError(f"the database refused a value: {_first_line(exc)}", "bad_value") from exc
    except (OperationalError, InterfaceError) as exc:
        raise TransientError(f"database unavailable ({_where()}): {_first_line(exc)}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise TransientError(f"database connection lost ({_where()}): {_first_line(exc)}") from exc
        raise


def _where() -> str:
    return redact_url(get_settings().database)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def in_flight_of(redis: Redis, keys: Sequence[SubscriptionKey]) -> InFlight:
    """The payloads of these subscriptions still queued (see ``worker.store``)."""
    try:
        with redis.pipeline(transaction=False) as pipe:
            for tenant, subscription_id in keys:
                pipe.zrange(inflight_key(tenant, subscription_id), 0, -1, withscores=True)
            answers = pipe.execute()
    except RedisError as exc:
        raise TransientError(f"Redis unavailable while reading in-flight payloads: {exc}") from exc
    return {
        key: [(member.decode(), float(score)) for member, score in answer]
        for key, answer in zip(keys, answers, strict=True)
        if answer
    }


def _release(redis: Redis, payloads: Sequence[Payload]) -> None:
    """Drop the in-flight marks of stored payloads; a failure here only delays a new chain's head."""
    try:
        with redis.pipeline(transaction=False) as pipe:
            for payload in payloads:
                for subscription_id in payload["subscription_ids"]:
                    pipe.zrem(inflight_key(payload["tenant"], subscription_id), payload["id"])
            pipe.execute()
    except RedisError as exc:
        logger.warning("could not release in-flight marks: %s", exc)


def _fields(payload: Payload, job: Job | None) -> dict[str, Any]:
    ids = payload["subscription_ids"]
    return {
        "tenant": payload["tenant"],
        "subscription": ids[0] if ids else None,
        "payload_id": payload["id"],
        "job_id": job.id if job is not None else None,
    }


def on_failure(
    job: Job, connection: Redis, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """RQ failure callback: a permanent failure is dead-lettered at once, not retried; record why and how often."""
    if isinstance(exc, PermanentError):
        job.retries_left = 0
        error_class = exc.error_class
    elif isinstance(exc, TransientError):
        error_class = "transient"
    elif isinstance(exc, AbandonedJobError):
        # Its worker died mid-job (RQ's registry cleanup found it).  Run it again without spending a
        # retry -- unless it keeps killing its workers (see worker.runner.MAX_ABANDONS).
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
        metrics.DEAD_LETTERED.labels(error_class).inc()
        metrics.PAYLOADS.labels("dead_lettered").inc(len(job.args[0]) if job.args else 1)


def drop_dead_executions(job: Job) -> None:
    """Forget the executions of ``job`` whose worker died (no live entry in the started registry).

    RQ looks each execution up when the job next finishes, and fails the job if one has expired meanwhile,
    which the re-run of an abandoned job would otherwise meet.
    """
    connection = job.connection
    registry = ExecutionRegistry(job_id=job.id, connection=connection)
    started = job.started_job_registry.key
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in connection.zrange(registry.key, 0, -1)]
    with connection.pipeline() as pipe:
        for execution_id in ids:
            pipe.zscore(started, f"{job.id}:{execution_id}")
        scores = pipe.execute()
    dead = [i for i, score in zip(ids, scores, strict=True) if score is None or score <= current_timestamp()]
    if dead:
        with connection.pipeline() as pipe:
            pipe.zrem(registry.key, *dead)
            for execution_id in dead:
                pipe.delete(Execution(execution_id, job.id, connection).key)
            pipe.execute()
