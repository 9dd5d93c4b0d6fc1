"""The RQ job: parse each queued payload, store the batch, release the in-flight marks.

A job carries several payloads (all posts the ingress gathered into one Redis write).  They are stored in
one database transaction; a payload that cannot be stored fails alone: it is split off into a job of its
own, which fails with a located ``PermanentError`` and so lands, by itself, in RQ's failed-job registry
(the dead-letter queue).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from types import TracebackType
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Callback, Queue
from rq.job import Job, get_current_job
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError

from shared.errors import PermanentError, TransientError
from shared.queues import FAILURE_CALLBACK, JOB_TIMEOUT_SECONDS, QUEUE_NAME, STORE_JOB, inflight_key
from shared.schema import make_engine
from shared.settings import get_settings, redact_url
from shared.types import Payload
from worker.parse import parse_payload
from worker.store import Delivery, InFlight, StoreResult, SubscriptionKey, store

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


def store_payloads(payloads: list[Payload]) -> dict[str, int]:
    """Store ``payloads``; raise ``PermanentError`` if a lone payload is bad, ``TransientError`` to be retried."""
    redis = _connection()
    deliveries: list[Delivery] = []
    bad: list[tuple[Payload, PermanentError]] = []
    for payload in payloads:
        try:
            parsed = parse_payload(payload["body"])
        except PermanentError as exc:
            bad.append((payload, exc))
            continue
        received = datetime.fromtimestamp(payload["received_at"], UTC)
        deliveries.append(Delivery(payload["id"], payload["tenant"], received, parsed))

    result, failed = _store_isolating(deliveries, _in_flight(redis, deliveries))
    bad += [(p, failed[p["id"]]) for p in payloads if p["id"] in failed]
    if len(payloads) == 1 and bad:
        payload, error = bad[0]
        logger.warning("payload %s fails permanently: %s", payload["id"], error, extra=_fields(payload))
        raise error
    for payload, error in bad:
        _split_off(redis, payload, error)
    _release(redis, [p for p in payloads if p["id"] not in {b[0]["id"] for b in bad}])
    logger.info(
        "stored %d rows from %d payloads (%d duplicates, %d gaps)",
        result.rows,
        len(payloads) - len(bad),
        result.duplicates,
        result.gaps,
    )
    return {
        "rows": result.rows,
        "duplicates": result.duplicates,
        "gaps": result.gaps,
        "dead_lettered": len(bad),
    }


def _store_isolating(
    deliveries: Sequence[Delivery], in_flight: InFlight
) -> tuple[StoreResult, dict[str, PermanentError]]:
    """Store all in one transaction; if the data of one breaks it, store one by one to find the culprits."""
    try:
        return _store(deliveries, in_flight), {}
    except PermanentError as exc:
        if len(deliveries) == 1:
            return StoreResult(), {deliveries[0].payload_id: exc}
    total, failed = StoreResult(), {}
    for delivery in deliveries:
        try:
            total.add(_store([delivery], in_flight))
        except PermanentError as exc:
            failed[delivery.payload_id] = exc
    return total, failed


def _store(deliveries: Sequence[Delivery], in_flight: InFlight) -> StoreResult:
    """``store`` with database errors sorted into transient (retry the job) and permanent (this data)."""
    try:
        return store(engine(), deliveries, in_flight)
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


def _in_flight(redis: Redis, deliveries: Sequence[Delivery]) -> InFlight:
    """Payloads of the new subscriptions in ``deliveries`` that are still queued (see ``worker.store``)."""
    keys: list[SubscriptionKey] = sorted(
        {(d.tenant, n.subscription_id) for d in deliveries for n in d.parsed.notifications}
    )
    if not keys:
        return {}
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


def _split_off(redis: Redis, payload: Payload, exc: PermanentError) -> None:
    """Give a bad payload a job of its own, which fails alone into the dead-letter queue."""
    current = get_current_job()
    failure_ttl = current.failure_ttl if current is not None else get_settings().dlq_retention_days * 86400
    logger.warning("payload %s split off for the dead-letter queue: %s", payload["id"], exc, extra=_fields(payload))
    Queue(QUEUE_NAME, connection=redis).enqueue(
        STORE_JOB,
        args=([payload],),
        job_timeout=JOB_TIMEOUT_SECONDS,
        result_ttl=0,
        failure_ttl=failure_ttl,
        on_failure=Callback(FAILURE_CALLBACK),
        meta={"tenants": [payload["tenant"]], "payloads": 1, "split_from": current.id if current else None},
    )


def _fields(payload: Payload) -> dict[str, Any]:
    ids = payload["subscription_ids"]
    return {"tenant": payload["tenant"], "subscription": ids[0] if ids else None, "payload_id": payload["id"]}


def on_failure(
    job: Job, connection: Redis, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """RQ failure callback: a permanent failure is dead-lettered at once, not retried; record why."""
    if isinstance(exc, PermanentError):
        job.retries_left = 0
        job.meta["error_class"] = exc.error_class
    elif isinstance(exc, TransientError):
        job.meta["error_class"] = "transient"
    else:
        job.meta["error_class"] = exc_type.__name__
    job.meta["error"] = str(exc)
    job.save_meta()  # type: ignore[no-untyped-call]
