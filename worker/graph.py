"""Graph change-notification POSTs → typed items (SPEC §9): bytes in, ``worker.graph_types`` out.

``parse_graph`` raises ``PermanentError`` and nothing else for any input, and only when the body as a whole
is unusable: not UTF-8 JSON (``not_json``, also for JSON nested too deeply to read) or not an object with a
``value`` array and, if present, a ``validationTokens`` array of strings (``not_graph_notification``).
Every item of ``value`` that is not a usable notification becomes a ``BadItem`` instead, so that the rest of
the POST is stored and it alone is dead-lettered.  Its error's class says what is wrong —
``no_subscription_id``, ``no_resource_data``, ``unknown_change_type``, ``unknown_lifecycle_event`` or
``bad_value`` — and its message says where: ``item 2 (subscription 2b9e6f14…): changeType 'moved' is not
created, updated or deleted`` (items are numbered from 0, as ``Change.index`` is).

An item with a ``lifecycleEvent`` is a ``Lifecycle`` (it has no resource); any other is a ``Change``, which
needs a ``changeType`` and a ``resourceData`` object with an ``id``.  Rich items keep their
``encryptedContent`` as received: ``worker.rich`` checks and decrypts them.  Values are read as Graph sends
them (GRAPH.md §2.2): the etag without its ``W/"…"`` wrapper, the expiry with up to 7 fractional digits or a
``Z``, as an aware UTC datetime.  A ``null`` is taken as absent.  Strings that go into rows must be storable
(no NUL character, no lone surrogate), or the item is ``bad_value``.

A pure parser: no I/O.  ``watermark`` gives a change its stable identity (GRAPH.md §7), so that the same
change delivered again is one row.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

from shared.errors import PermanentError
from shared.graph import CHANGE_TYPES, LIFECYCLE_EVENTS
from worker.graph_types import BadItem, Change, EncryptedContent, GraphPayload, Lifecycle

__all__ = ["parse_graph", "watermark"]

_CLIP = 60  # characters of a value quoted in a message (as worker.safexml.clip)
_SHORT_ID = 8  # characters of a subscription id in a message: a GUID's first group
#: Graph writes 7 fractional digits (.NET ticks); ``datetime.fromisoformat`` reads at most 6.
_LONG_FRACTION = re.compile(r"([.,][0-9]{6})[0-9]+")
#: ``encryptedContent``'s required fields, in ``EncryptedContent``'s order; the thumbprint is optional.
_ENCRYPTED_FIELDS = ("data", "dataKey", "dataSignature", "encryptionCertificateId")
_THUMBPRINT = "encryptionCertificateThumbprint"
_LIFECYCLE_BY_LOWER = {event.lower(): event for event in LIFECYCLE_EVENTS}


def watermark(tenant_id: str | None, subscription_id: str, change_type: str, item_id: str, etag: str | None) -> str:
    """The stable identity of one change: ``graph:`` + SHA-256 hex of its tenant, subscription, change type,
    item id and etag (GRAPH.md §7).

    ``change_type`` is compared in lower case.  A ``deleted`` is keyed without its etag, as Graph may or may
    not send one.  Nothing that can differ between deliveries of one change takes part (the subscription's
    expiry, the spelling of ``resource``, the clientState).  The parts are hashed as a JSON array, so no
    value can run into the next.
    """
    kind = change_type.lower()
    parts = [tenant_id or "", subscription_id, kind, item_id, "" if kind == "deleted" else etag or ""]
    return "graph:" + hashlib.sha256(json.dumps(parts).encode("ascii")).hexdigest()


def parse_graph(body: bytes) -> GraphPayload:
    """The items of one Graph POST body, sorted into changes, lifecycle events and bad items (each in order).

    Raises ``PermanentError`` (``not_json``, ``not_graph_notification``) only if the body as a whole is
    unusable; a bad item is a ``BadItem``, never an exception.
    """
    document = _load(body)
    if not isinstance(document, dict):
        raise PermanentError(
            f"payload is {_describe(document)}, not an object with a 'value' array", "not_graph_notification"
        )
    value = document.get("value")
    if not isinstance(value, list):
        found = "has no 'value'" if value is None else f"has a 'value' that is {_describe(value)}"
        raise PermanentError(f"payload {found}; expected an array of notifications", "not_graph_notification")
    tokens = _validation_tokens(document.get("validationTokens"))
    changes: list[Change] = []
    lifecycle: list[Lifecycle] = []
    bad: list[BadItem] = []
    for index, item in enumerate(value):
        try:
            parsed = _read_item(index, item)
        except PermanentError as exc:
            bad.append(BadItem(index, _subscription_of(item), item, exc))
            continue
        if isinstance(parsed, Lifecycle):
            lifecycle.append(parsed)
        else:
            changes.append(parsed)
    return GraphPayload(tuple(changes), tuple(lifecycle), tuple(bad), tokens)


# --- the body ---------------------------------------------------------------------------------------------


def _load(body: bytes) -> Any:
    """The JSON document of ``body`` (UTF-8, a byte order mark allowed)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PermanentError(
            f"payload is not UTF-8: byte 0x{body[exc.start]:02x} at offset {exc.start} ({exc.reason})", "not_json"
        ) from None
    try:
        return json.loads(text)
    except RecursionError:
        raise PermanentError("payload is JSON nested too deeply to read", "not_json") from None
    except ValueError as exc:  # json.JSONDecodeError, or an integer of too many digits
        raise PermanentError(f"payload is not JSON: {exc}", "not_json") from None


def _validation_tokens(tokens: Any) -> tuple[str, ...]:
    """``validationTokens``: absent or null is none; anything but an array of strings spoils the POST."""
    if tokens is None:
        return ()
    if not isinstance(tokens, list):
        raise PermanentError(
            f"payload's 'validationTokens' is {_describe(tokens)}, not an array of strings", "not_graph_notification"
        )
    for number, token in enumerate(tokens):
        if not isinstance(token, str):
            raise PermanentError(
                f"payload's 'validationTokens' item {number} is {_describe(token)}, not a string",
                "not_graph_notification",
            )
    return tuple(tokens)


# --- one item ---------------------------------------------------------------------------------------------


def _read_item(index: int, item: Any) -> Change | Lifecycle:
    if not isinstance(item, dict):
        raise PermanentError(f"item {index} is {_describe(item)}, not an object", "bad_value")
    subscription_id = _subscription_id(index, item)
    where = f"item {index} (subscription {_short(subscription_id)})"
    tenant_id = _string(item, "tenantId", where) or None
    expires_at = _expiry(item.get("subscriptionExpirationDateTime"), where)
    event = item.get("lifecycleEvent")
    if event is not None:
        known = _LIFECYCLE_BY_LOWER.get(event.lower()) if isinstance(event, str) else None
        if known is None:
            raise PermanentError(
                f"{where}: lifecycleEvent {_describe(event)} is not one of {', '.join(LIFECYCLE_EVENTS)}",
                "unknown_lifecycle_event",
            )
        return Lifecycle(index, subscription_id, known, tenant_id, expires_at, item)
    return _read_change(index, item, subscription_id, tenant_id, expires_at, where)


def _subscription_id(index: int, item: dict[str, Any]) -> str:
    value = item.get("subscriptionId")
    if value is None:
        raise PermanentError(f"item {index} has no subscriptionId", "no_subscription_id")
    if not isinstance(value, str):
        raise PermanentError(f"item {index}: subscriptionId is {_describe(value)}, not a string", "no_subscription_id")
    if not value.strip():
        raise PermanentError(f"item {index}: subscriptionId is empty", "no_subscription_id")
    _storable(value, "subscriptionId", f"item {index}")
    return value


def _subscription_of(item: Any) -> str | None:
    """A bad item's subscription id, if it has a usable one."""
    value = item.get("subscriptionId") if isinstance(item, dict) else None
    if not isinstance(value, str) or not value.strip() or _unstorable(value):
        return None
    return value


def _read_change(
    index: int,
    item: dict[str, Any],
    subscription_id: str,
    tenant_id: str | None,
    expires_at: datetime | None,
    where: str,
) -> Change:
    change_type = _change_type(item.get("changeType"), where)
    resource_data = item.get("resourceData")
    if not isinstance(resource_data, dict):
        found = "no resourceData" if resource_data is None else f"resourceData {_describe(resource_data)}"
        raise PermanentError(f"{where}: the {change_type} change has {found}; expected an object", "no_resource_data")
    item_id = resource_data.get("id")
    if not isinstance(item_id, str) or not item_id.strip():
        found = "no id" if item_id is None else f"id {_describe(item_id)}"
        raise PermanentError(f"{where}: resourceData has {found}; expected the item's id", "no_resource_data")
    _storable(item_id, "resourceData.id", where)
    etag = _etag(resource_data.get("@odata.etag"), where)
    return Change(
        index=index,
        subscription_id=subscription_id,
        event_type=CHANGE_TYPES[change_type],
        tenant_id=tenant_id,
        resource=_string(item, "resource", where),
        item_id=item_id,
        etag=etag,
        expires_at=expires_at,
        watermark=watermark(tenant_id, subscription_id, change_type, item_id, etag),
        item=item,
        encrypted=_encrypted(item.get("encryptedContent"), where),
    )


def _change_type(value: Any, where: str) -> str:
    """``changeType`` in lower case, one of ``CHANGE_TYPES``."""
    if isinstance(value, str) and value.lower() in CHANGE_TYPES:
        return value.lower()
    found = "no changeType" if value is None else f"changeType {_describe(value)}"
    raise PermanentError(f"{where}: {found} is not created, updated or deleted", "unknown_change_type")


# --- values -----------------------------------------------------------------------------------------------


def _string(node: dict[str, Any], name: str, where: str, label: str | None = None) -> str | None:
    """An optional string member of ``node``: ``None`` if absent or null, ``bad_value`` if not a string."""
    value = node.get(name)
    if value is None:
        return None
    label = label or name
    if not isinstance(value, str):
        raise PermanentError(f"{where}: {label} is {_describe(value)}, not a string", "bad_value")
    _storable(value, label, where)
    return value


def _etag(value: Any, where: str) -> str | None:
    """``@odata.etag`` without its ``W/"…"`` wrapper (or bare quotes); ``None`` if absent or empty."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise PermanentError(f"{where}: resourceData.@odata.etag is {_describe(value)}, not a string", "bad_value")
    _storable(value, "resourceData.@odata.etag", where)
    text = value[2:] if value.startswith(("W/", "w/")) else value
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    return text or None


def _expiry(value: Any, where: str) -> datetime | None:
    """``subscriptionExpirationDateTime`` as an aware UTC datetime; ``None`` if absent."""
    if value is None:
        return None
    label = "subscriptionExpirationDateTime"
    if not isinstance(value, str):
        raise PermanentError(f"{where}: {label} is {_describe(value)}, not a string", "bad_value")
    try:
        parsed = datetime.fromisoformat(_LONG_FRACTION.sub(r"\1", value.strip()))
    except ValueError:
        raise PermanentError(
            f"{where}: {label} {_describe(value)} is not an ISO 8601 date and time", "bad_value"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise PermanentError(f"{where}: {label} {_describe(value)} has no UTC offset", "bad_value")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 and the like: no UTC datetime holds it
        raise PermanentError(f"{where}: {label} {_describe(value)} is out of range", "bad_value") from None


def _encrypted(value: Any, where: str) -> EncryptedContent | None:
    """A rich item's ``encryptedContent``, its strings as received; ``None`` if absent."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PermanentError(f"{where}: encryptedContent is {_describe(value)}, not an object", "bad_value")
    missing = [name for name in _ENCRYPTED_FIELDS if value.get(name) in (None, "")]
    if missing:
        raise PermanentError(f"{where}: encryptedContent has no {', '.join(missing)}", "bad_value")
    data, data_key, data_signature, certificate_id = (_required(value, name, where) for name in _ENCRYPTED_FIELDS)
    thumbprint = _string(value, _THUMBPRINT, where, f"encryptedContent.{_THUMBPRINT}")
    return EncryptedContent(data, data_key, data_signature, certificate_id, thumbprint)


def _required(content: dict[str, Any], name: str, where: str) -> str:
    """A field of ``encryptedContent`` that must be a string (its presence checked already)."""
    return _string(content, name, where, f"encryptedContent.{name}") or ""


def _unstorable(text: str) -> str | None:
    """Why ``text`` cannot be stored in a row (PostgreSQL text, UTF-8), or ``None`` if it can."""
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not Unicode text)"
    return None


def _storable(text: str, label: str, where: str) -> None:
    why = _unstorable(text)
    if why:
        raise PermanentError(f"{where}: {label} {_describe(text)} {why}", "bad_value")


# --- text in messages -------------------------------------------------------------------------------------


def _clip(text: str) -> str:
    """A value shortened for a message: its first 60 characters and an ellipsis."""
    return text if len(text) <= _CLIP else text[:_CLIP] + "…"


def _short(subscription_id: str) -> str:
    """A subscription id shortened for messages (its first group, for a GUID), printable."""
    short = subscription_id if len(subscription_id) <= _SHORT_ID else subscription_id[:_SHORT_ID] + "…"
    return short if short.isprintable() else repr(short)


def _describe(value: Any) -> str:
    """A JSON value as a message quotes it: a string clipped and quoted, a scalar as JSON writes it, a
    container by its kind (never walked: it may be nested deeply)."""
    if isinstance(value, str):
        return repr(_clip(value))
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {_clip(repr(value))}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"
