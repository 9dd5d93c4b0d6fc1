"""The workers' one scrape target: the sum of every worker process's metrics, plus gauges read at scrape time."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, multiprocess, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis import Redis
from rq import Queue, Worker
from sqlalchemy import Engine

from shared.queues import QUEUE_NAME
from shared.schema import SOURCES
from syncnotify import status


class QueueCollector:
    """Read at scrape time: the queue, the dead-letter queue, the subscriptions by shown state (and source),
    Graph's soonest expiry, and the Graph items that every ingress refused (kept in Redis)."""

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
        now = datetime.now(UTC)
        subs = status.list_subscriptions(self.engine, now=now)
        yield from subscription_families(subs)
        yield from graph_families(subs, status.graph_rejected(self.redis), now)


def subscription_families(subs: list[status.Subscription]) -> Iterator[Metric]:
    """``syncnotify_subscriptions{state}`` (both sources, as the dashboards read it) and
    ``syncnotify_subscriptions_by_source{source,state}``; every state and source has a series, zero or not."""
    by_state = GaugeMetricFamily("syncnotify_subscriptions", "Subscriptions by shown state", labels=["state"])
    by_source = GaugeMetricFamily(
        "syncnotify_subscriptions_by_source",
        "Subscriptions by source (ews, graph) and shown state",
        labels=["source", "state"],
    )
    counts = {(source, state): 0 for source in SOURCES for state in status.SHOWN_STATES}
    for sub in subs:
        counts[sub.source, sub.state] = counts.get((sub.source, sub.state), 0) + 1
    totals: dict[str, int] = {}
    for (source, state), count in sorted(counts.items()):
        by_source.add_metric([source, state], count)
        totals[state] = totals.get(state, 0) + count
    for state, count in sorted(totals.items()):
        by_state.add_metric([state], count)
    yield by_state
    yield by_source


def graph_families(subs: list[status.Subscription], rejected: dict[str, int], now: datetime) -> Iterator[Metric]:
    """Seconds until the first live Graph subscription expires (no sample without one; below zero once one has
    expired: its renewal failed), and the Graph refusals of every ingress, from the Redis hash.

    The refusals have a name of their own: each ingress process serves its own
    ``syncnotify_graph_rejected_total``, which ``sum()`` adds up; this one is already the total of all of them.
    """
    expiry = GaugeMetricFamily(
        "syncnotify_graph_subscription_expiry_seconds",
        "Seconds until the live Graph subscription that expires first does (negative: it has expired)",
    )
    first = status.expiring(subs)
    if first and first[0].expires_at is not None:
        expiry.add_metric([], (first[0].expires_at - now).total_seconds())
    yield expiry
    refused = CounterMetricFamily(
        "syncnotify_graph_rejected_recorded",
        "Graph items or posts refused by every ingress, by reason, as recorded in Redis",
        labels=["reason"],
    )
    for reason, count in sorted(rejected.items()):
        refused.add_metric([reason], count)
    yield refused


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
