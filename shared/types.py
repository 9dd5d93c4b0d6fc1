"""What crosses the queue."""

from __future__ import annotations

from typing import TypedDict


class Payload(TypedDict):
    """One POST as the ingress received it; a queue job carries a list of these."""

    #: Unique id given by the ingress (hex uuid4).
    id: str
    tenant: str
    #: Receive time, seconds since the epoch (UTC), stamped before the answer was sent.
    received_at: float
    #: Client address as the ingress believed it (after trusted-proxy handling).
    source: str
    #: Subscription ids found by scanning the bytes (no DOM), in order of appearance.
    subscription_ids: list[str]
    #: The body exactly as received (after gzip decoding).
    body: bytes
