"""Prometheus metrics of the ingress process."""

from __future__ import annotations

from functools import cache

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

REGISTRY = CollectorRegistry()
CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUESTS = Counter(
    "syncnotify_ingress_requests",
    "Notification posts answered, by HTTP status",
    ["status"],
    registry=REGISTRY,
)
ENQUEUE_SECONDS = Histogram(
    "syncnotify_ingress_enqueue_seconds",
    "Time from request to durable payload, by where it went (queue or spool)",
    ["target"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
GRAPH_ITEMS = Counter(
    "syncnotify_graph_notifications",
    "Graph items accepted (their clientState matched) and queued, by kind (change or lifecycle)",
    ["kind"],
    registry=REGISTRY,
)
GRAPH_REJECTED = Counter(
    "syncnotify_graph_rejected",
    "Graph items or posts refused, by reason (client_state: an item without a matching clientState)",
    ["reason"],
    registry=REGISTRY,
)
GRAPH_LIFECYCLE = Counter(
    "syncnotify_graph_lifecycle_events",
    "Graph lifecycle notifications accepted, by lifecycleEvent",
    ["event"],
    registry=REGISTRY,
)
GRAPH_VALIDATIONS = Counter("syncnotify_graph_validations", "Graph validation handshakes answered", registry=REGISTRY)
SPOOL_BACKLOG = Gauge("syncnotify_ingress_spool_backlog", "Payloads waiting in this process's spool", registry=REGISTRY)


@cache
def requests(status: int) -> Counter:
    """``REQUESTS`` of one status (looked up once: ``labels`` costs more than the increment)."""
    return REQUESTS.labels(str(status))


@cache
def enqueue_seconds(target: str) -> Histogram:
    """``ENQUEUE_SECONDS`` of one target (``queue`` or ``spool``)."""
    return ENQUEUE_SECONDS.labels(target)


def render() -> bytes:
    return generate_latest(REGISTRY)
