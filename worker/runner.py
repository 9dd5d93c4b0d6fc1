"""A worker process: an RQ worker on the queue, plus a sweeper thread that closes gaps in time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.utils import current_timestamp, now
from sqlalchemy.exc import SQLAlchemyError

from shared.queues import KEY_PREFIX, MAX_ABANDONS, QUEUE_NAME, inflight_key
from shared.settings import get_settings
from worker import metrics
from worker.jobs import drop_dead_executions, engine
from worker.store import InFlight, SubscriptionKey, sweep

logger = logging.getLogger(__name__)


def in_flight_of(redis: Redis, keys: Sequence[SubscriptionKey]) -> InFlight:
    """What is still queued for these subscriptions (see ``worker.store``)."""
    with redis.pipeline(transaction=False) as pipe:
        for tenant, subscription_id in keys:
            pipe.zrange(inflight_key(tenant, subscription_id), 0, -1, withscores=True)
        answers = pipe.execute()
    return {
        key: [(m.decode(), float(s)) for m, s in answer] for key, answer in zip(keys, answers, strict=True) if answer
    }


def sweep_once(redis: Redis) -> None:
    """One pass of the sweeper; failures are logged and tried again on the next pass."""
    try:
        result = sweep(engine(), get_settings().gap_timeout_seconds, lambda keys: in_flight_of(redis, keys))
        if result.gaps:
            metrics.GAPS.inc(result.gaps)
            logger.warning("sweeper recorded %d gaps", result.gaps)
    except (SQLAlchemyError, RedisError) as exc:
        logger.warning("sweeper could not run: %s", exc)


class Sweeper(threading.Thread):
    """Runs ``sweep`` every few seconds, so waiting rows get their ``seq`` even when nothing else arrives."""

    def __init__(self, redis: Redis, interval: float) -> None:
        super().__init__(name="sweeper", daemon=True)
        self.redis = redis
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            sweep_once(self.redis)


#: Only one worker at a time looks for abandoned jobs (the lock lasts one maintenance interval).
REAPER_LOCK_KEY = KEY_PREFIX + "reaper-lock"
#: RQ's own registry maintenance runs this often, as RQ does by default.
RQ_MAINTENANCE_SECONDS = 600


class SyncWorker(SimpleWorker):
    """RQ's SimpleWorker, with a bounded recovery of the jobs of workers that died mid-job.

    SimpleWorker runs jobs in its own process instead of forking one per job: the engine's pooled
    connections are reused across jobs, and a job (a batch of payloads) is cheap to start.

    RQ notices a job whose worker died only when the job's entry in the started registry expires, which
    it sets to a minute and a half or more, and then fails it as ``AbandonedJobError``.  Here the entry
    lives ``abandon_after`` seconds, kept fresh by a heartbeat while the job runs, and the registry
    maintenance (every ``abandon_after / 4`` seconds) puts expired jobs back at the front of the queue to
    run again: storing is idempotent, so a second run of a half-done job stores each event once.
    """

    def __init__(self, *args: Any, abandon_after: int, **kwargs: Any) -> None:
        kwargs["maintenance_interval"] = max(1, abandon_after // 4)
        super().__init__(*args, **kwargs)
        self.abandon_after = abandon_after
        self._rq_cleaned_at = -float(RQ_MAINTENANCE_SECONDS)
        # the idle loop wakes every worker_ttl - 15 s to heartbeat and run maintenance when due
        self.worker_ttl = max(16, abandon_after // 4 + 15)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.abandon_after

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(self.abandon_after / 3):
                try:
                    with self.connection.pipeline() as pipe:
                        execution.heartbeat(job.started_job_registry, self.abandon_after, pipe)
                        pipe.execute()
                except RedisError as exc:
                    logger.warning("job %s: heartbeat failed: %s", job.id, exc)

        beat = threading.Thread(target=heartbeat, name="job-heartbeat", daemon=True)
        beat.start()
        try:
            return bool(super().perform_job(job, queue, execution))
        finally:
            done.set()
            beat.join()

    def clean_registries(self) -> None:
        """Requeue abandoned jobs every ``abandon_after / 4`` s; RQ's own cleaning at its usual pace."""
        for queue in self.queues:
            # our own short lock: RQ's lasts 15 minutes, and a worker killed while holding it would
            # stop every worker's maintenance for that long
            if queue.connection.set(REAPER_LOCK_KEY, self.name, nx=True, ex=max(1, self.abandon_after // 4)):
                requeue_abandoned(queue)
        if time.monotonic() - self._rq_cleaned_at > RQ_MAINTENANCE_SECONDS:
            self._rq_cleaned_at = time.monotonic()
            super().clean_registries()  # type: ignore[no-untyped-call]
        self.last_cleaned_at = now()  # type: ignore[assignment]


def requeue_abandoned(queue: Queue) -> list[str]:
    """Put the jobs of dead workers back at the front of ``queue``; return their ids.

    A job abandoned more than ``MAX_ABANDONS`` times is left to RQ, which dead-letters it.
    """
    registry = queue.started_job_registry
    requeued = []
    for entry in registry.connection.zrangebyscore(registry.key, 0, current_timestamp()):
        job_id = registry.parse_job_id(entry)
        try:
            job = Job.fetch(job_id, connection=queue.connection)
        except NoSuchJobError:
            registry.connection.zrem(registry.key, entry)
            continue
        if job.get_status(refresh=False) != JobStatus.STARTED:
            continue  # finished or failed meanwhile: RQ's cleanup drops the entry
        abandons = int(job.meta.get("abandoned", 0)) + 1
        if abandons > MAX_ABANDONS:
            continue
        job.meta["abandoned"] = abandons
        job.started_at = None
        with queue.connection.pipeline() as pipe:
            pipe.zrem(registry.key, entry)
            queue._enqueue_job(job, pipeline=pipe, at_front=True)
            pipe.execute()
        drop_dead_executions(job)
        logger.warning("job %s was abandoned by a dead worker; running it again (%d)", job.id, abandons)
        requeued.append(job.id)
    return requeued


def run_worker(burst: bool = False) -> None:
    """Work the queue until stopped (or, with ``burst``, until it is empty)."""
    settings = get_settings()
    redis = Redis.from_url(settings.redis)
    sweeper = Sweeper(redis, interval=min(5.0, settings.gap_timeout_seconds / 4))
    if not burst:
        sweeper.start()
    queue = Queue(QUEUE_NAME, connection=redis)
    worker = SyncWorker([queue], connection=redis, abandon_after=settings.abandoned_after_seconds)
    try:
        # RQ logs three lines a job at INFO; ours says what was stored, so RQ speaks from WARNING up
        rq_level = "WARNING" if settings.log_level == "INFO" else settings.log_level
        worker.work(burst=burst, with_scheduler=True, logging_level=rq_level)
    finally:
        sweeper.stopped.set()
        if burst:
            sweep_once(redis)
