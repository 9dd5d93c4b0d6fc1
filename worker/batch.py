"""The payloads of one or more jobs stored together: parse, one transaction, bad payloads split off.

A job carries several payloads (all posts the ingress gathered into one Redis write), and a worker may run
several waiting jobs together (see ``worker.batching``).  Their payloads are stored in one database
transaction; a payload that cannot be stored fails alone, as its own dead letter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError

from shared import inflight
from shared.errors import PermanentError, TransientError
from shared.schema import make_engine
from shared.settings import get_settings, redact_url
from shared.types import InFlight, Payload, SubscriptionKey
from worker import metrics
from worker.deadletter import dead_letter, graph_item_payload, log_fields, release_marks
from worker.decrypt import load_keys
from worker.graph import parse_graph
from worker.graph_types import BadItem, GraphPayload
from worker.parse import ParsedPayload, parse_payload
from worker.rich import resolve
from worker.store import Delivery, InFlightOf, StoreResult, store
from worker.tokens import TokenValidator

logger = logging.getLogger(__name__)

#: One queued job and its payloads (``None``: the payloads are stored outside any job).
JobPayloads = tuple[Job | None, list[Payload]]


@lru_cache(maxsize=1)
def engine() -> Engine:
    """This process's engine, made on first use (after any fork)."""
    return make_engine(get_settings().database)


@lru_cache(maxsize=1)
def _token_validator() -> TokenValidator | None:
    """This process's validator of rich notifications' tokens (its JWKS cache lives as long as the process)."""
    settings = get_settings()
    audiences = settings.graph_audiences
    return TokenValidator(settings.graph_jwks_url, audiences) if audiences else None


@lru_cache(maxsize=1)
def _decryption_keys() -> dict[str, Any]:
    return load_keys(get_settings().graph_decryption_keys)


def parse(payload: Payload) -> ParsedPayload | GraphPayload:
    """The payload's notifications, EWS or Graph by its kind; ``PermanentError`` if it has none to give.

    A Graph payload's rich items are checked and decrypted here (their tokens' keys may need fetching:
    ``TransientError`` if that fails).
    """
    if payload.get("kind", "ews") == "graph":
        return resolve(parse_graph(payload["body"]), _token_validator(), _decryption_keys())
    return parse_payload(payload["body"])


@dataclass(slots=True)
class BatchOutcome:
    """What storing the payloads of one or more jobs came to."""

    result: StoreResult = field(default_factory=StoreResult)
    #: payloads that can never be stored, each with why (to be dead-lettered alone)
    bad: list[tuple[Job | None, Payload, PermanentError]] = field(default_factory=list)
    #: set when the database or Redis was away: then nothing was stored
    transient: TransientError | None = None
    #: jobs of one bad payload: each fails through RQ, as its own dead letter (see ``run``)
    failing: list[tuple[Job | None, PermanentError]] = field(default_factory=list)
    #: unusable items of stored Graph payloads: each becomes a dead letter of its own
    bad_items: list[tuple[Job | None, Payload, GraphPayload, BadItem]] = field(default_factory=list)
    dead_lettered: int = 0

    def summary(self) -> dict[str, int]:
        rows, duplicates, gaps = self.result.rows, self.result.duplicates, self.result.gaps
        return {"rows": rows, "duplicates": duplicates, "gaps": gaps, "dead_lettered": self.dead_lettered}


def run(redis: Redis, parts: Sequence[JobPayloads]) -> BatchOutcome:
    """Store the payloads of one or more jobs together, and dead-letter each bad payload alone.

    A job of one bad payload is not dead-lettered but listed in ``failing``: it is its own dead letter, to
    fail through RQ.  On a transient failure (``transient`` set) nothing is stored nor dead-lettered.
    """
    outcome = _parse_and_store(redis, parts)
    if outcome.transient is not None:
        return outcome
    for job, payloads in parts:
        own = [(payload, error) for j, payload, error in outcome.bad if j is job]
        if len(payloads) == 1 and own:
            payload, error = own[0]
            logger.warning("payload %s fails permanently: %s", payload["id"], error, extra=log_fields(payload, job))
            outcome.failing.append((job, error))
            continue
        for payload, error in own:
            dead_letter(redis, job, payload, error)
        outcome.dead_lettered += len(own)
    for job, payload, parsed, bad in outcome.bad_items:
        item = graph_item_payload(payload, bad.index, bad.subscription_id, bad.item, parsed.validation_tokens)
        dead_letter(redis, job, item, bad.error, entry_id=f"graph-item-{item['id']}")
        outcome.dead_lettered += 1
    return outcome


def _parse_and_store(redis: Redis, parts: Sequence[JobPayloads]) -> BatchOutcome:
    """Parse and store the payloads of ``parts`` in one transaction, then release their in-flight marks.

    Dead-letters nothing: ``run`` decides, since a job of one payload is its own dead letter.
    """
    outcome = BatchOutcome()
    deliveries: list[Delivery] = []
    items: list[tuple[Job | None, Payload, GraphPayload, BadItem]] = []
    try:
        for job, payloads in parts:
            for payload in payloads:
                try:
                    parsed = parse(payload)
                except PermanentError as exc:
                    outcome.bad.append((job, payload, exc))
                    continue
                if isinstance(parsed, GraphPayload):
                    items += [(job, payload, parsed, bad) for bad in parsed.bad]
                received = datetime.fromtimestamp(payload["received_at"], UTC)
                deliveries.append(Delivery(payload["id"], payload["tenant"], received, parsed))
        outcome.result, failed = _isolating_bad(deliveries, lambda keys: in_flight_of(redis, keys))
    except TransientError as exc:
        outcome.transient = exc
        return outcome
    payloads_by_id = {p["id"]: (job, p) for job, payloads in parts for p in payloads}
    outcome.bad += [(payloads_by_id[i][0], payloads_by_id[i][1], error) for i, error in failed.items()]
    bad_ids = {payload["id"] for _, payload, _ in outcome.bad}
    outcome.bad_items = [entry for entry in items if entry[1]["id"] not in bad_ids]
    job_ids = [job.id for job, _ in parts if job is not None]
    stored = [p for _, payloads in parts for p in payloads if p["id"] not in bad_ids]
    release_marks(redis, stored)
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


def _observe(result: StoreResult, stored: Sequence[Payload]) -> None:
    metrics.EVENTS_STORED.inc(result.rows)
    metrics.DUPLICATES.inc(result.duplicates)
    metrics.GAPS.inc(result.gaps)
    metrics.PAYLOADS.labels("stored").inc(len(stored))
    now = time.time()
    for payload in stored:
        metrics.RECEIPT_TO_ROW.observe(max(0.0, now - payload["received_at"]))


def _isolating_bad(
    deliveries: Sequence[Delivery], in_flight_of: InFlightOf
) -> tuple[StoreResult, dict[str, PermanentError]]:
    """Store all in one transaction; if the data of one breaks it, store one by one to find the culprits."""
    if not deliveries:  # every payload failed to parse: nothing to store, and no database needed
        return StoreResult(), {}
    try:
        return _classified(deliveries, in_flight_of), {}
    except PermanentError as exc:
        if len(deliveries) == 1:
            return StoreResult(), {deliveries[0].payload_id: exc}
    total, failed = StoreResult(), {}
    for delivery in deliveries:
        try:
            total.add(_classified([delivery], in_flight_of))
        except PermanentError as exc:
            failed[delivery.payload_id] = exc
    return total, failed


def _classified(deliveries: Sequence[Delivery], in_flight_of: InFlightOf) -> StoreResult:
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
    """The payloads of these subscriptions still queued (see ``worker.store``); Redis away is transient."""
    try:
        return inflight.read(redis, keys)
    except RedisError as exc:
        raise TransientError(f"Redis unavailable while reading in-flight payloads: {exc}") from exc
