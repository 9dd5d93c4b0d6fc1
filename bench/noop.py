"""The job the RQ baseline drains: takes the same arguments as the store job and does nothing."""

from __future__ import annotations

from typing import Any


def noop(payloads: list[Any]) -> None:
    """Nothing: what is left of a job is RQ's own cost (dequeue, unpickle, bookkeeping)."""
    return None
