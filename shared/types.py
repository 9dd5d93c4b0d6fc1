"""What crosses the queue, and the keys both halves name subscriptions by."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NotRequired, TypedDict


class Payload(TypedDict):
    """One POST as the ingress received it; a queue job carries a list of these."""

    #: Unique id given by the ingress (hex uuid4).
    id: str
    tenant: str
    #: Receive time, seconds since the epoch (UTC), stamped before the answer was sent.
    received_at: float
    #: Client address as the ingress believed it (after trusted-proxy handling).
    source: str
    #: Subscription ids found by scanning the bytes (no DOM), in order of appearance; for Graph, those of the
    #: change items (lifecycle items make no rows and so hold nothing up).
    subscription_ids: list[str]
    #: The body exactly as received (after gzip decoding); for Graph, the JSON of the accepted items.
    body: bytes
    #: ``ews`` (SOAP, the default: jobs queued before Graph existed have no kind) or ``graph`` (JSON).
    kind: NotRequired[Literal["ews", "graph"]]


#: A subscription as the tables key it: (tenant, subscription id).
SubscriptionKey = tuple[str, str]
#: Payloads still in flight for a subscription: (payload id, receive time in epoch seconds); see ``shared.inflight``.
InFlight = Mapping[SubscriptionKey, Sequence[tuple[str, float]]]
