"""The operator's dead-letter tools: list, show, replay and purge (``syncnotify dlq``).

The entries' form is ``shared.store_job``'s: a failed store job carrying exactly one payload, so a replay is
RQ's own requeue, and storing stays idempotent: a replayed payload whose events are stored adds no row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from redis import Redis
from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import resolve_serializer

from shared import inflight
from shared.queues import QUEUE_NAME
from shared.store_job import dead_letters, is_dead_letter, payload_of

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
    reg = dead_letters(redis)
    if ids is not None:
        for start in range(0, len(ids), PAGE):
            for job in Job.fetch_many(list(ids[start : start + PAGE]), connection=redis):
                if job is not None and is_dead_letter(job):
                    yield job
        return
    reg.cleanup()
    start = 0
    while True:
        page = reg.get_job_ids(start, start + PAGE - 1, cleanup=False)
        if not page:
            return
        for job in Job.fetch_many(page, connection=redis):
            if job is not None and is_dead_letter(job):
                yield job
        start += len(page)


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
    if not is_dead_letter(job) or entry_id not in dead_letters(redis):
        raise LookupError(f"no dead-letter entry {entry_id!r}")
    return job


@dataclass(slots=True)
class ReplayOutcome:
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


def matching(redis: Redis, ids: Sequence[str] | None, keep: Callable[[Entry], bool]) -> Iterator[Job]:
    for job in iter_jobs(redis, ids):
        if keep(entry_of(job)):
            yield job


def replay(
    redis: Redis,
    jobs: Iterator[Job],
    retries: int,
    rate: float | None = None,
    dry_run: bool = False,
    progress: Callable[[ReplayOutcome], None] | None = None,
) -> tuple[ReplayOutcome, list[str]]:
    """Requeue ``jobs`` (at most ``rate`` a second) with fresh retries; return the outcome and the job ids.

    With ``dry_run`` nothing changes: the outcome counts what would be replayed.
    """
    outcome = ReplayOutcome()
    replayed: list[str] = []
    reg = dead_letters(redis)
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


def workers_alive(redis: Redis) -> int:
    """Workers registered on the queue now: with none, a replayed entry waits there until one starts."""
    return Worker.count(queue=Queue(QUEUE_NAME, connection=redis))


def await_outcome(
    redis: Redis,
    ids: Sequence[str],
    outcome: ReplayOutcome,
    timeout: float,
    progress: Callable[[ReplayOutcome], None] | None = None,
) -> ReplayOutcome:
    """Wait until each replayed job is stored (gone: stored jobs keep no result) or failed again."""
    reg = dead_letters(redis)
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


def purge(redis: Redis, jobs: Iterator[Job], dry_run: bool = False) -> ReplayOutcome:
    """Delete entries and their payloads' in-flight marks (nothing waits for a purged payload any more)."""
    outcome = ReplayOutcome()
    reg = dead_letters(redis)
    for job in jobs:
        outcome.selected += 1
        if dry_run:
            outcome.purged += 1
            continue
        with redis.pipeline() as pipe:
            inflight.release(pipe, [payload_of(job)])
            reg.remove(job, pipeline=pipe)
            job.delete(pipeline=pipe)
            pipe.execute()
        outcome.purged += 1
    return outcome


def counts_by_class(redis: Redis) -> dict[str, int]:
    """Entries by error class, reading only each job's meta (not its payload); changes nothing."""
    reg = dead_letters(redis)
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
