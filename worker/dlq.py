"""The dead-letter queue: RQ's failed-job registry of the ``syncnotify`` queue, one payload per entry.

A payload lands here when it fails permanently (at once) or transiently with its retries spent.  Each
entry is an ordinary RQ job of ``STORE_JOB`` carrying exactly one payload, so a replay is RQ's own
requeue, and storing stays idempotent: a replayed payload whose events are stored adds no row.  Entries
expire after ``SYNCNOTIFY_DLQ_RETENTION_DAYS`` (the job's ``failure_ttl``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from redis import Redis
from rq import Callback, Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import resolve_serializer

from shared.queues import FAILURE_CALLBACK, JOB_TIMEOUT_SECONDS, QUEUE_NAME, STORE_JOB, inflight_key
from shared.types import Payload

logger = logging.getLogger(__name__)

#: Entries are read this many at a time, so that 100,000 of them never sit in memory at once.
PAGE = 500


@dataclass(frozen=True, slots=True)
class Entry:
    """One dead-lettered payload, as ``dlq list`` shows it."""

    id: str
    tenant: str
    received_at: datetime
    error_class: str
    message: str
    attempts: int
    size: int
    subscription_ids: tuple[str, ...]
    failed_at: datetime | None

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "received_at": self.received_at.isoformat(),
            "error_class": self.error_class,
            "message": self.message,
            "attempts": self.attempts,
            "size": self.size,
            "subscription_ids": list(self.subscription_ids),
            "failed_at": self.failed_at.isoformat() if self.failed_at else None,
        }


@dataclass(frozen=True, slots=True)
class Filter:
    tenant: str | None = None
    error_class: str | None = None
    since: datetime | None = None

    def __call__(self, entry: Entry) -> bool:
        return (
            (self.tenant is None or entry.tenant.casefold() == self.tenant.casefold())
            and (self.error_class is None or entry.error_class == self.error_class)
            and (self.since is None or entry.received_at >= self.since)
        )


def registry(redis: Redis) -> FailedJobRegistry:
    return FailedJobRegistry(QUEUE_NAME, connection=redis)


def payload_of(job: Job) -> Payload:
    """The one payload of a dead-letter entry."""
    payloads: list[Payload] = job.args[0]
    return payloads[0]


def entry_of(job: Job) -> Entry:
    payload = payload_of(job)
    meta = job.meta
    return Entry(
        id=job.id,
        tenant=payload["tenant"],
        received_at=datetime.fromtimestamp(payload["received_at"], UTC),
        error_class=str(meta.get("error_class", "unknown")),
        message=str(meta.get("error") or _last_line(job.exc_info)),
        attempts=int(meta.get("attempts", 1)),
        size=len(payload["body"]),
        subscription_ids=tuple(payload["subscription_ids"]),
        failed_at=job.ended_at.replace(tzinfo=UTC) if job.ended_at and job.ended_at.tzinfo is None else job.ended_at,
    )


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""


def iter_jobs(redis: Redis, ids: Sequence[str] | None = None) -> Iterator[Job]:
    """The entries' jobs, oldest first, a page at a time; with ``ids``, just those (missing ones skipped)."""
    reg = registry(redis)
    if ids is not None:
        for start in range(0, len(ids), PAGE):
            for job in Job.fetch_many(list(ids[start : start + PAGE]), connection=redis):
                if job is not None and _single(job):
                    yield job
        return
    reg.cleanup()
    start = 0
    while True:
        page = reg.get_job_ids(start, start + PAGE - 1, cleanup=False)
        if not page:
            return
        for job in Job.fetch_many(page, connection=redis):
            if job is not None and _single(job):
                yield job
        start += len(page)


def _single(job: Job) -> bool:
    try:
        return job.func_name == STORE_JOB and len(job.args[0]) == 1
    except (IndexError, TypeError, AttributeError):
        return False


def entries(redis: Redis, keep: Callable[[Entry], bool] = Filter()) -> Iterator[Entry]:
    for job in iter_jobs(redis):
        entry = entry_of(job)
        if keep(entry):
            yield entry


def fetch(redis: Redis, entry_id: str) -> Job:
    """One entry's job; ``LookupError`` if there is no such dead-letter entry."""
    try:
        job = Job.fetch(entry_id, connection=redis)
    except NoSuchJobError:
        raise LookupError(f"no dead-letter entry {entry_id!r}") from None
    if not _single(job) or entry_id not in registry(redis):
        raise LookupError(f"no dead-letter entry {entry_id!r}")
    return job


def dead_letter(
    redis: Redis, payload: Payload, error_class: str, message: str, attempts: int, retention_seconds: int
) -> Job:
    """Put one payload straight into the dead-letter queue (used when a batch job must fail one payload alone)."""
    job = Job.create(
        STORE_JOB,
        args=([payload],),
        connection=redis,
        timeout=JOB_TIMEOUT_SECONDS,
        result_ttl=0,
        failure_ttl=retention_seconds,
        origin=QUEUE_NAME,
        on_failure=Callback(FAILURE_CALLBACK),
        meta={"error_class": error_class, "error": message, "attempts": attempts},
        description=f"dead letter of payload {payload['id']}",
        status=JobStatus.FAILED,
    )
    job.ended_at = datetime.now(UTC)
    with redis.pipeline() as pipe:
        job.save(pipeline=pipe)
        registry(redis).add(job, ttl=retention_seconds, exc_string=f"{error_class}: {message}", pipeline=pipe)
        pipe.execute()
    return job


@dataclass(slots=True)
class Outcome:
    """What a replay or purge did; ``dlq replay`` prints it at the end."""

    selected: int = 0
    replayed: int = 0
    purged: int = 0
    skipped: int = 0
    stored: int = 0
    failed_again: int = 0
    pending: int = 0

    def as_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


def select(redis: Redis, ids: Sequence[str] | None, keep: Callable[[Entry], bool]) -> Iterator[Job]:
    for job in iter_jobs(redis, ids):
        if keep(entry_of(job)):
            yield job


def replay(
    redis: Redis,
    jobs: Iterator[Job],
    retries: int,
    rate: float | None = None,
    dry_run: bool = False,
    progress: Callable[[Outcome], None] | None = None,
) -> tuple[Outcome, list[str]]:
    """Requeue ``jobs`` (at most ``rate`` a second) with fresh retries; return the outcome and the job ids.

    With ``dry_run`` nothing changes: the outcome counts what would be replayed.
    """
    outcome = Outcome()
    replayed: list[str] = []
    reg = registry(redis)
    interval = 1 / rate if rate else 0.0
    next_at = time.monotonic()
    for job in jobs:
        outcome.selected += 1
        if dry_run:
            outcome.replayed += 1
            continue
        if interval:
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at = max(next_at, time.monotonic() - interval) + interval
        job.retries_left = retries or None  # a fresh set of attempts; requeue saves the job
        job.meta["replays"] = int(job.meta.get("replays", 0)) + 1
        try:
            reg.requeue(job)
        except InvalidJobOperation:  # gone meanwhile (purged, expired, replayed by someone else)
            outcome.skipped += 1
            continue
        outcome.replayed += 1
        replayed.append(job.id)
        if progress is not None:
            progress(outcome)
    return outcome, replayed


def await_outcome(
    redis: Redis,
    ids: Sequence[str],
    outcome: Outcome,
    timeout: float,
    progress: Callable[[Outcome], None] | None = None,
) -> Outcome:
    """Wait until each replayed job is stored (gone: stored jobs keep no result) or failed again."""
    reg = registry(redis)
    waiting = list(ids)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        still: list[str] = []
        for start in range(0, len(waiting), PAGE):
            page = waiting[start : start + PAGE]
            for job_id, job in zip(page, Job.fetch_many(page, connection=redis), strict=True):
                if job is None:
                    outcome.stored += 1
                elif job.get_status(refresh=False) == JobStatus.FAILED and job_id in reg:
                    outcome.failed_again += 1
                else:
                    still.append(job_id)
        waiting = still
        if progress is not None:
            progress(outcome)
        if waiting:
            time.sleep(0.2)
    outcome.pending = len(waiting)
    return outcome


def purge(redis: Redis, jobs: Iterator[Job], dry_run: bool = False) -> Outcome:
    """Delete entries and their payloads' in-flight marks (nothing waits for a purged payload any more)."""
    outcome = Outcome()
    reg = registry(redis)
    for job in jobs:
        outcome.selected += 1
        if dry_run:
            outcome.purged += 1
            continue
        payload = payload_of(job)
        with redis.pipeline() as pipe:
            for subscription_id in payload["subscription_ids"]:
                pipe.zrem(inflight_key(payload["tenant"], subscription_id), payload["id"])
            reg.remove(job, pipeline=pipe)
            job.delete(pipeline=pipe)
            pipe.execute()
        outcome.purged += 1
    return outcome


def counts_by_class(redis: Redis) -> dict[str, int]:
    """Entries by error class, reading only each job's meta (not its payload); changes nothing."""
    reg = registry(redis)
    serializer = resolve_serializer()
    counts: dict[str, int] = {}
    start = 0
    while page := reg.get_job_ids(start, start + PAGE - 1, cleanup=False):
        with redis.pipeline(transaction=False) as pipe:
            for job_id in page:
                pipe.hget(Job.key_for(job_id), "meta")
            metas = pipe.execute()
        for raw in metas:
            if raw is not None:
                error_class = str(serializer.loads(raw).get("error_class", "unknown"))
                counts[error_class] = counts.get(error_class, 0) + 1
        start += len(page)
    return counts


def queue(redis: Redis) -> Queue:
    return Queue(QUEUE_NAME, connection=redis)
