"""The workers' one scrape target: the sum of every worker process's metrics, plus gauges read at scrape time."""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from redis import Redis
from rq import Queue, Worker
from sqlalchemy import Engine

from shared.queues import QUEUE_NAME
from shared.schema import SUBSCRIPTION_STATES
from syncnotify import status


class QueueCollector:
    """Gauges read at scrape time: the queue, the dead-letter queue and the subscriptions by shown state."""

    def __init__(self, redis: Redis, engine: Engine) -> None:
        self.redis = redis
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        queue = Queue(QUEUE_NAME, connection=self.redis)
        yield GaugeMetricFamily("syncnotify_queue_depth", "Jobs waiting on the queue", value=queue.count)
        oldest = status.oldest_queued_seconds(self.redis, queue)
        yield GaugeMetricFamily(
            "syncnotify_queue_oldest_seconds", "Age of the oldest queued payload", value=oldest or 0.0
        )
        yield GaugeMetricFamily(
            "syncnotify_dead_letter_entries",
            "Payloads in the dead-letter queue",
            value=queue.failed_job_registry.get_job_count(cleanup=False),
        )
        yield GaugeMetricFamily("syncnotify_workers", "Workers alive", value=len(Worker.all(queue=queue)))
        by_state = GaugeMetricFamily("syncnotify_subscriptions", "Subscriptions by shown state", labels=["state"])
        counts: dict[str, int] = dict.fromkeys(SUBSCRIPTION_STATES, 0)
        for sub in status.list_subscriptions(self.engine):
            counts[sub.state] = counts.get(sub.state, 0) + 1
        for state, count in sorted(counts.items()):
            by_state.add_metric([state], count)
        yield by_state


def serve(port: int, host: str, redis: Redis, engine: Engine) -> None:
    """Serve the sum of every worker process's metrics, plus the queue gauges, on ``host:port`` (a thread).

    ``OSError`` if the port cannot be had (``errno.EADDRINUSE``: another process serves there): the caller
    says so and stops, since workers silently without metrics look dead to the monitoring.
    """
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(QueueCollector(redis, engine))
    start_http_server(port, addr=host, registry=registry)
