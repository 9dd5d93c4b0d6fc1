"""Graph change notifications, parsed: what ``worker.graph`` makes of a POST's JSON (SPEC §9)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.errors import PermanentError


@dataclass(frozen=True, slots=True)
class EncryptedContent:
    """A rich item's ``encryptedContent``, its strings as received (base64 where Graph sends base64)."""

    data: str
    data_key: str
    data_signature: str
    certificate_id: str
    thumbprint: str | None


@dataclass(frozen=True, slots=True)
class Change:
    """One change notification: one row (SPEC §9's table)."""

    index: int  # position in ``value``
    subscription_id: str
    event_type: str  # Created / Modified / Deleted
    tenant_id: str | None
    resource: str | None
    item_id: str
    etag: str | None  # without its W/"…" wrapper
    expires_at: datetime | None
    watermark: str  # the change's stable identity: "graph:" + SHA-256 hex (see ``worker.graph.watermark``)
    item: dict[str, Any]  # the item as received, for its dead letter
    encrypted: EncryptedContent | None = None
    resource_data: str | None = None  # the decrypted resource JSON, once ``worker.rich`` has done its work


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """One lifecycle notification: a subscription's state changes, no row."""

    index: int
    subscription_id: str
    event: str  # one of shared.graph.LIFECYCLE_EVENTS
    tenant_id: str | None
    expires_at: datetime | None
    item: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadItem:
    """An item that is not a usable notification: dead-lettered alone, with why."""

    index: int
    subscription_id: str | None
    item: Any  # as received (any JSON value)
    error: PermanentError


@dataclass(frozen=True, slots=True)
class GraphPayload:
    """A POST's items sorted into what they are, each kind in ``value`` order."""

    changes: tuple[Change, ...]
    lifecycle: tuple[Lifecycle, ...]
    bad: tuple[BadItem, ...]
    validation_tokens: tuple[str, ...]
