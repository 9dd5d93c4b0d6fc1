"""A worker process: an RQ worker on the queue, plus a sweeper thread that closes gaps in time."""

from __future__ import annotations

import logging
import threading

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from sqlalchemy.exc import SQLAlchemyError

from shared.errors import TransientError
from shared.queues import QUEUE_NAME
from shared.settings import get_settings
from worker import metrics
from worker.batch import engine, in_flight_of
from worker.batching import BatchWorker
from worker.store import sweep

logger = logging.getLogger(__name__)


def sweep_once(redis: Redis) -> None:
    """One pass of the sweeper; failures are logged and tried again on the next pass."""
    try:
        result = sweep(engine(), get_settings().gap_timeout_seconds, lambda keys: in_flight_of(redis, keys))
        if result.gaps:
            metrics.GAPS.inc(result.gaps)
            logger.warning("sweeper recorded %d gaps", result.gaps)
    except (SQLAlchemyError, RedisError, TransientError) as exc:
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


def run_worker(burst: bool = False) -> None:
    """Work the queue until stopped (or, with ``burst``, until it is empty)."""
    settings = get_settings()
    redis = Redis.from_url(settings.redis)
    sweeper = Sweeper(redis, interval=min(5.0, settings.gap_timeout_seconds / 4))
    if not burst:
        sweeper.start()
    queue = Queue(QUEUE_NAME, connection=redis)
    worker = BatchWorker(
        [queue],
        connection=redis,
        abandon_after=settings.abandoned_after_seconds,
        batch_payloads=settings.batch_max,
    )
    try:
        # RQ logs three lines a job at INFO; ours says what was stored, so RQ speaks from WARNING up
        rq_level = "WARNING" if settings.log_level == "INFO" else settings.log_level
        worker.work(burst=burst, with_scheduler=True, logging_level=rq_level)
    finally:
        sweeper.stopped.set()
        if burst:
            sweep_once(redis)
