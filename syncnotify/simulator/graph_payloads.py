"""Microsoft Graph change-notification bodies as Graph posts them (the format of ``tests/samples/graph``).

The one Graph builder of the simulator, the benchmark and the tests; what a body yields in rows is the
worker's business (``worker.graph.watermark`` names each row).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

CONTENT_TYPE = "application/json"
EVENT_TYPE = "#Microsoft.Graph.Event"
#: The simulator's request headers, as Graph sends them.
HEADERS = {"Content-Type": CONTENT_TYPE, "User-Agent": "Microsoft-Graph-Change-Notifications/1.0 (syncnotify simulate)"}


def event_id(room: str, number: int) -> str:
    """A stable Exchange-like item id (``AAMkAD…``) for a room's ``number``-th event."""
    raw = hashlib.sha256(f"{room}/{number}".encode()).digest()[:24]
    return "AAMkAD" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def etag(room: str, number: int, version: int) -> str:
    """The event's ``@odata.etag`` after ``version`` edits (a new one per update, as Exchange's change key)."""
    raw = hashlib.sha256(f"{room}/{number}/{version}".encode()).digest()[:20]
    return f'W/"{base64.b64encode(raw).decode("ascii")}"'


def expiry(now: datetime | None = None, minutes: int = 4230) -> str:
    """``subscriptionExpirationDateTime`` as Graph writes it (seven fractional digits, ``+00:00``)."""
    moment = (now or datetime.now(UTC)) + timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f0+00:00")


@dataclass(frozen=True, slots=True)
class Change:
    """One change of one room's event; ``etag`` is ``None`` for ``deleted`` (Graph sends none)."""

    subscription_id: str
    user_id: str
    change_type: str
    event_id: str
    etag: str | None

    @property
    def resource(self) -> str:
        return f"Users/{self.user_id}/Events/{self.event_id}"


def change_item(change: Change, tenant_id: str, client_state: str, expires: str | None = None) -> dict[str, Any]:
    """One ``value`` item for ``change`` (a basic notification: ``resourceData`` without the event)."""
    data: dict[str, Any] = {"@odata.type": EVENT_TYPE, "@odata.id": change.resource, "id": change.event_id}
    if change.etag is not None:
        data["@odata.etag"] = change.etag
    return {
        "subscriptionId": change.subscription_id,
        "subscriptionExpirationDateTime": expires or expiry(),
        "changeType": change.change_type,
        "resource": change.resource,
        "resourceData": data,
        "clientState": client_state,
        "tenantId": tenant_id,
    }


def lifecycle_item(
    subscription_id: str, event: str, tenant_id: str, client_state: str, expires: str | None = None
) -> dict[str, Any]:
    """One lifecycle ``value`` item (``reauthorizationRequired``, ``subscriptionRemoved``, ``missed``)."""
    return {
        "subscriptionId": subscription_id,
        "subscriptionExpirationDateTime": expires or expiry(),
        "lifecycleEvent": event,
        "clientState": client_state,
        "tenantId": tenant_id,
    }


def notification_body(items: Sequence[dict[str, Any]]) -> bytes:
    """A POST body: ``{"value": [...]}``."""
    return json.dumps({"value": list(items)}, separators=(",", ":")).encode()
