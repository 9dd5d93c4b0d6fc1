"""Prometheus metrics of the worker processes.

Several worker processes share one scrape target: ``syncnotify worker`` points ``PROMETHEUS_MULTIPROC_DIR``
at a folder of its own before any worker imports this module, and serves the sum of all of them (see
``syncnotify.metrics``).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS_STORED = Counter("syncnotify_events_stored", "Item/folder event rows stored")
DUPLICATES = Counter("syncnotify_duplicates_dropped", "Events delivered again and dropped (already stored)")
GAPS = Counter("syncnotify_gaps", "Gaps in a watermark chain recorded after the gap timeout")
PAYLOADS = Counter("syncnotify_payloads_processed", "Payloads processed by workers, by outcome", ["outcome"])
DEAD_LETTERED = Counter(
    "syncnotify_dead_lettered", "Payloads put in the dead-letter queue, by error class", ["error_class"]
)
RECEIPT_TO_ROW = Histogram(
    "syncnotify_receipt_to_row_seconds",
    "Seconds from the ingress receiving a payload to its rows being committed",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
