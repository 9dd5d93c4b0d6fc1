"""Microsoft Graph traffic for the bench: the load generator's bodies, the worker's full queue, the soak's rooms.

Bodies come from ``syncnotify.simulator.graph_payloads``; each row's watermark from ``worker.graph``.  A room's
changes follow one stateless cycle per event (created, updated, updated, deleted), so the ``k``-th change of
a room is known without replaying the ones before it.  What the queue holds is what the ingress queues:
``ingress.graph.sort_items`` turns a POST's items into the payload body, in a ``kind: graph`` Payload.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ingress.graph import sort_items
from shared.types import Payload
from syncnotify.simulator.graph_payloads import (
    CONTENT_TYPE,
    Change,
    change_item,
    etag,
    event_id,
    expiry,
    notification_body,
)
from syncnotify.simulator.verify import Expected, VerifyReport, verify
from worker.graph import watermark

CLIENT_STATE = "bench-graph-client-state-Kp4Wz8Rn2Qv6"
TENANT_ID = "0f3b8c52-6a1d-4e97-b2c8-5d9e1a7f4b60"
PATH = "/api/webhooks/graph"
HEADERS = {"Content-Type": CONTENT_TYPE, "User-Agent": "Microsoft-Graph-ChangeNotifications/1.0 (bench)"}
#: Changes of one event, in order; the version of the etag each carries (a delete carries none).
_CYCLE = (("created", 0), ("updated", 1), ("updated", 2), ("deleted", None))
_SECRETS = (CLIENT_STATE.encode(),)
_EXPIRES = expiry()


@dataclass(frozen=True, slots=True)
class Room:
    """One room mailbox's Graph subscription."""

    subscription_id: str
    user_id: str

    def change(self, k: int) -> Change:
        """The room's ``k``-th change (from 0)."""
        number, (change_type, version) = k // len(_CYCLE), _CYCLE[k % len(_CYCLE)]
        tag = None if version is None else etag(self.subscription_id, number, version)
        return Change(self.subscription_id, self.user_id, change_type, event_id(self.subscription_id, number), tag)


def rooms(count: int, seed: int) -> list[Room]:
    return [Room(str(uuid.UUID(int=(seed << 64) + n)), f"bench-room-{n}@bench.invalid") for n in range(count)]


def items(changes: Sequence[Change]) -> list[dict[str, Any]]:
    return [change_item(c, TENANT_ID, CLIENT_STATE, _EXPIRES) for c in changes]


def body(changes: Sequence[Change]) -> bytes:
    """A Graph POST of ``changes``."""
    return notification_body(items(changes))


def row_watermark(change: Change) -> str:
    """The watermark of the row ``change`` makes (the worker keys the etag without its ``W/"…"``)."""
    tag = None if change.etag is None else change.etag.removeprefix("W/").strip('"')
    return watermark(TENANT_ID, change.subscription_id, change.change_type, change.event_id, tag)


def expected(room: Room, changes: int) -> Expected:
    """The rows of ``room`` after its first ``changes`` changes (a Graph chain keeps no watermark tail)."""
    return Expected(room.subscription_id, tuple(row_watermark(room.change(k)) for k in range(changes)), None)


def check_rows(database_url: str, tenant: str, rooms: Sequence[Expected]) -> VerifyReport:
    """``verify`` of Graph rooms once the queue is drained (the caller waits for that: with no watermark tail
    there is nothing in the tables to wait for)."""
    report = verify(database_url, tenant, rooms, drain_timeout=0)
    report.drained = True
    return report


def payload(changes: Sequence[Change], received_at: float, tenant: str = "Default") -> Payload:
    """The queue payload the ingress makes of a POST of ``changes``."""
    accepted = sort_items(items(changes), None, _SECRETS, tenant, "127.0.0.1")
    return Payload(
        id=uuid.uuid4().hex,
        tenant=tenant,
        received_at=received_at,
        source=accepted.source,
        subscription_ids=accepted.subscription_ids,
        body=accepted.body,
        kind="graph",
    )
