"""The worker's own dead-letter write: one payload of a job of several, failed alone (form: ``shared.store_job``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job

from shared import inflight
from shared.errors import PermanentError, SyncNotifyError
from shared.settings import get_settings
from shared.store_job import dead_letter as write_dead_letter
from shared.types import Payload
from worker import metrics

logger = logging.getLogger(__name__)


def dead_letter(
    redis: Redis, job: Job | None, payload: Payload, error: SyncNotifyError, entry_id: str | None = None
) -> None:
    """Put ``payload`` of ``job`` into the dead-letter queue with why, counted and logged."""
    error_class = error.error_class if isinstance(error, PermanentError) else "transient"
    attempts = int(job.meta.get("attempts", 0)) + 1 if job is not None else 1
    retention = job.failure_ttl if job is not None and job.failure_ttl else get_settings().dlq_retention_days * 86400
    entry = write_dead_letter(redis, payload, error_class, str(error), attempts, retention, entry_id)
    release_dead_lettered(redis, [payload])
    metrics.DEAD_LETTERED.labels(error_class).inc()
    metrics.PAYLOADS.labels("dead_lettered").inc()
    logger.warning(
        "payload %s dead-lettered as %s (%s): %s",
        payload["id"],
        entry.id,
        error_class,
        error,
        extra=log_fields(payload, job),
    )


def release_marks(redis: Redis, payloads: Sequence[Payload]) -> None:
    """Drop the in-flight marks of payloads that are stored or dead-lettered: nothing is to wait for them."""
    try:
        with redis.pipeline(transaction=False) as pipe:
            inflight.release(pipe, payloads)
            pipe.execute()
    except RedisError as exc:  # only delays the rooms' next rows, until the sweeper's gap timeout
        logger.warning("could not release in-flight marks: %s", exc)


def release_dead_lettered(redis: Redis, payloads: Sequence[Payload]) -> None:
    """Drop the in-flight marks of dead-lettered Graph payloads: every later POST of their rooms would wait for
    them (up to the gap timeout, then as a gap).  An EWS payload keeps its marks: its room's later
    notifications are chained by watermark and never wait for it, and a replay in any order must still find
    the new subscription's head by them (SPEC §7)."""
    release_marks(redis, [p for p in payloads if p.get("kind") == "graph"])


def graph_item_payload(payload: Payload, index: int, subscription_id: str | None, item: Any, tokens: Any) -> Payload:
    """A dead letter's payload for one bad item of a Graph POST: the item as received (and, for a rich item,
    the POST's ``validationTokens``), to be replayed as a first delivery would be stored (SPEC §9)."""
    document: dict[str, Any] = {"value": [item]}
    if tokens and isinstance(item, dict) and "encryptedContent" in item:
        document["validationTokens"] = list(tokens)
    return Payload(
        id=f"{payload['id']}-{index}",
        tenant=payload["tenant"],
        received_at=payload["received_at"],
        source=payload["source"],
        subscription_ids=[subscription_id] if subscription_id else [],
        body=json.dumps(document, separators=(",", ":")).encode(),
        kind="graph",
    )


def log_fields(payload: Payload, job: Job | None) -> dict[str, Any]:
    """The stable log fields of a payload (SPEC §8): tenant, subscription, payload and job ids."""
    ids = payload["subscription_ids"]
    return {
        "tenant": payload["tenant"],
        "subscription": ids[0] if ids else None,
        "payload_id": payload["id"],
        "job_id": job.id if job is not None else None,
    }
