"""EWS ``SendNotification`` payloads → typed notifications (SPEC §5): bytes in, frozen dataclasses out.

``parse_payload`` raises ``PermanentError`` and nothing else for any input.  Its ``error_class`` says what is
wrong: ``not_xml``, ``malformed_xml``, ``dtd_forbidden``, ``not_send_notification``, ``no_subscription_id``,
``unknown_structure`` or ``bad_value``; the message says where.

A pure parser: no I/O.  ``worker.safexml`` turns the bytes into xmltodict's dicts (guarded, namespace-aware,
the children of each ``Notification`` keyed ``(running number, name)`` in document order); this module reads
the envelope, its response messages, notifications and events from them.  Elements are matched by namespace
URI, never by prefix; an expected element found in another namespace is named as such, not as missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.errors import PermanentError
from worker.safexml import (
    MESSAGES_NS,
    SOAP11_NS,
    SOAP12_NS,
    TYPES_NS,
    clip,
    clip_name,
    parse_xml,
    wrong_namespace,
    xs_boolean,
    xs_datetime,
    xs_int,
)

__all__ = [
    "EVENT_KINDS",
    "MESSAGES_NS",
    "SOAP11_NS",
    "SOAP12_NS",
    "TYPES_NS",
    "ErrorMessage",
    "Event",
    "Notification",
    "ParsedPayload",
    "parse_payload",
]

#: Event element name (types namespace) → ``Event.kind``.
_EVENT_ELEMENTS = {
    "t:CopiedEvent": "Copied",
    "t:CreatedEvent": "Created",
    "t:DeletedEvent": "Deleted",
    "t:ModifiedEvent": "Modified",
    "t:MovedEvent": "Moved",
    "t:NewMailEvent": "NewMail",
    "t:FreeBusyChangedEvent": "FreeBusyChanged",
    "t:StatusEvent": "Status",
}
#: Every value ``Event.kind`` can take.
EVENT_KINDS = tuple(_EVENT_ELEMENTS.values())

_NOTIFICATION = "m:Notification"
_NOTIFICATION_CHILDREN = {
    name.partition(":")[2]: name
    for name in ("t:SubscriptionId", "t:PreviousWatermark", "t:MoreEvents", *_EVENT_ELEMENTS)
}
_ABSENT = object()  # an element that is not there, unlike an empty one (which xmltodict gives as None)
_SHORT_ID = 12


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a notification; ids are ``None`` where the element (or attribute) is absent."""

    kind: str
    watermark: str | None
    timestamp: datetime | None
    item_id: str | None = None
    item_change_key: str | None = None
    folder_id: str | None = None
    folder_change_key: str | None = None
    parent_folder_id: str | None = None
    old_item_id: str | None = None
    old_folder_id: str | None = None
    old_parent_folder_id: str | None = None
    unread_count: int | None = None

    @property
    def makes_row(self) -> bool:
        """Whether the event becomes a row of the notifications table (every kind but Status)."""
        return self.kind != "Status"


@dataclass(frozen=True, slots=True)
class Notification:
    """One ``Notification`` element: its subscription, chain link and events in document order."""

    subscription_id: str
    previous_watermark: str | None
    more_events: bool
    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """A response message whose ``ResponseClass`` is ``Error`` (or ``Warning`` without a Notification).

    ``response_code`` and ``message_text`` are ``""`` when the element is absent.
    """

    subscription_id: str | None
    response_code: str
    message_text: str


@dataclass(frozen=True, slots=True)
class ParsedPayload:
    """Everything a ``SendNotification`` POST carries, response messages in document order."""

    notifications: tuple[Notification, ...]
    errors: tuple[ErrorMessage, ...]
    server_version: str | None


def parse_payload(body: bytes) -> ParsedPayload:
    """Parse one POST body; raises ``PermanentError`` (with ``error_class``) if it is not a usable payload."""
    return _read_envelope(parse_xml(body, _NOTIFICATION))


# --- structure --------------------------------------------------------------------------------------------


def _read_envelope(doc: Any) -> ParsedPayload:
    if not isinstance(doc, dict) or not doc:
        raise PermanentError("payload has no root element", "not_send_notification")
    root = next(iter(doc))
    if root != "soap:Envelope":
        raise PermanentError(
            f"payload is not a SOAP envelope: its root element is <{clip_name(root)}>", "not_send_notification"
        )
    envelope = doc[root]
    if not isinstance(envelope, dict):
        raise PermanentError("SOAP envelope is empty", "not_send_notification")
    body = envelope.get("soap:Body")
    if not isinstance(body, dict):
        misplaced = _misplaced(envelope, "soap:Body")
        if misplaced:
            raise PermanentError(f"SOAP envelope: {misplaced}", "not_send_notification")
        raise PermanentError("SOAP envelope has no Body (or it is empty)", "not_send_notification")
    send = body.get("m:SendNotification", _ABSENT)
    if send is _ABSENT:
        misplaced = _misplaced(body, "m:SendNotification")
        if misplaced:
            raise PermanentError(f"SOAP Body: {misplaced}", "not_send_notification")
        found = ", ".join(f"<{clip_name(k)}>" for k in _element_names(body))
        raise PermanentError(f"SOAP Body holds {found or 'nothing'}, not <m:SendNotification>", "not_send_notification")
    notifications: list[Notification] = []
    errors: list[ErrorMessage] = []
    for number, message in enumerate(_response_messages(_one(send, "SendNotification", "SOAP Body")), 1):
        read = _read_message(message, f"response message {number}")
        if isinstance(read, Notification):
            notifications.append(read)
        else:
            errors.append(read)
    return ParsedPayload(tuple(notifications), tuple(errors), _server_version(envelope))


def _response_messages(send: Any) -> list[Any]:
    """The ``SendNotificationResponseMessage``s of a ``SendNotification``, at least one."""
    messages = send.get("m:ResponseMessages", _ABSENT) if isinstance(send, dict) else _ABSENT
    if messages is _ABSENT:
        misplaced = _misplaced(send, "m:ResponseMessages")
        found = f": {misplaced}" if misplaced else " has no ResponseMessages"
        raise PermanentError(f"SendNotification{found}", "unknown_structure")
    messages = _one(messages, "ResponseMessages", "SendNotification")
    listed: list[Any] = []
    for key in _element_names(messages if isinstance(messages, dict) else {}):
        value = messages[key]
        if key == "m:SendNotificationResponseMessage":
            listed = value if isinstance(value, list) else [value]
            continue
        wrong = wrong_namespace(key, "m:SendNotificationResponseMessage")
        if wrong:
            raise PermanentError(f"ResponseMessages: {wrong}", "unknown_structure")
        raise PermanentError(f"ResponseMessages holds an unexpected <{clip_name(key)}>", "unknown_structure")
    if not listed:
        raise PermanentError("ResponseMessages holds no SendNotificationResponseMessage", "unknown_structure")
    return listed


def _read_message(message: Any, where: str) -> Notification | ErrorMessage:
    if not isinstance(message, dict):
        raise PermanentError(f"{where} is empty", "unknown_structure")
    response_class = _attribute(message, "@ResponseClass")
    notification = _one(message.get(_NOTIFICATION, _ABSENT), "Notification", where)
    if response_class in ("Success", "Warning") and notification is _ABSENT:
        misplaced = _misplaced(message, _NOTIFICATION)
        if misplaced:
            raise PermanentError(f"{where}: {misplaced}", "unknown_structure")
    if response_class == "Error" or (response_class == "Warning" and notification is _ABSENT):
        return _read_error(message, notification, where)
    if response_class in ("Success", "Warning"):
        if notification is _ABSENT:
            raise PermanentError(f"{where} (ResponseClass Success) has no Notification", "unknown_structure")
        return _read_notification(notification, where)
    found = "no ResponseClass" if response_class is None else f"ResponseClass {clip(response_class)!r}"
    raise PermanentError(f"{where} has {found}; expected Success, Warning or Error", "unknown_structure")


def _server_version(envelope: dict[Any, Any]) -> str | None:
    """``RequestServerVersion/@Version`` from the SOAP header or ``None``; the header never makes it fail."""
    header = envelope.get("soap:Header")
    version = header.get("t:RequestServerVersion") if isinstance(header, dict) else None
    value = version.get("@Version") if isinstance(version, dict) else None
    return (value.strip() or None) if isinstance(value, str) else None


def _read_error(message: dict[Any, Any], notification: Any, where: str) -> ErrorMessage:
    subscription_id = None
    if isinstance(notification, dict):
        for (_, name), value in _children(notification):
            if name == "t:SubscriptionId":
                subscription_id = _text(value, "SubscriptionId", where)
                break
    if subscription_id is None:
        extra = message.get("m:MessageXml")
        values = extra.get("t:Value") if isinstance(extra, dict) else None
        for item in values if isinstance(values, list) else [values]:
            if isinstance(item, dict) and _attribute(item, "@Name") == "SubscriptionId":
                subscription_id = _text(item, "MessageXml Value", where)
                break
    code = _text(_one(message.get("m:ResponseCode"), "ResponseCode", where), "ResponseCode", where)
    text = _text(_one(message.get("m:MessageText"), "MessageText", where), "MessageText", where)
    return ErrorMessage(subscription_id, code or "", text or "")


def _read_notification(notification: Any, where: str) -> Notification:
    if not isinstance(notification, dict):
        found = "is empty" if notification is None else "holds text instead of elements"
        raise PermanentError(f"{where}: Notification {found}; it has no SubscriptionId", "no_subscription_id")
    subscription_id: str | None = None
    previous: str | None = None
    more = False
    raw_events: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for (_, name), value in _children(notification):
        if name in _EVENT_ELEMENTS:
            raw_events.append((name, value))
            continue
        if name in seen:
            raise PermanentError(f"{where}: Notification has more than one <{name}>", "unknown_structure")
        seen.add(name)
        if name == "t:SubscriptionId":
            subscription_id = _text(value, "SubscriptionId", where)
        elif name == "t:PreviousWatermark":
            previous = _watermark(value, f"{where}: PreviousWatermark")
        elif name == "t:MoreEvents":
            more = xs_boolean(_text(value, "MoreEvents", where), f"{where}: MoreEvents")
        else:
            raise PermanentError(f"{where}: {_unknown_child(name)}", "unknown_structure")
    if subscription_id is None:
        found = "SubscriptionId is empty" if "t:SubscriptionId" in seen else "Notification has no SubscriptionId"
        raise PermanentError(f"{where}: {found}", "no_subscription_id")
    if not raw_events:
        raise PermanentError(
            f"{where}: Notification of subscription {_short(subscription_id)!r} has no events",
            "unknown_structure",
        )
    events = tuple(
        _read_event(name, value, f"{where}, event {number} ({name[2:]}) of subscription {_short(subscription_id)!r}")
        for number, (name, value) in enumerate(raw_events, 1)
    )
    return Notification(subscription_id, previous, more, events)


def _unknown_child(name: str) -> str:
    """Why ``name`` cannot be a child of a Notification: a known element in another namespace, or unknown."""
    expected = _NOTIFICATION_CHILDREN.get(name.rpartition(":")[2])
    wrong = wrong_namespace(name, expected) if expected else None
    return wrong or f"Notification holds an unknown element <{clip_name(name)}>"


def _read_event(name: str, value: Any, where: str) -> Event:
    kind = _EVENT_ELEMENTS[name]
    if value is None:
        value = {}
    elif not isinstance(value, dict):
        raise PermanentError(f"{where} holds text instead of elements", "unknown_structure")
    watermark = _watermark(_one(value.get("t:Watermark"), "Watermark", where), where)
    if kind == "Status":
        return Event(kind, watermark, None)
    if watermark is None:
        raise PermanentError(_missing(value, "t:Watermark", where), "unknown_structure")
    stamp_text = _text(_one(value.get("t:TimeStamp"), "TimeStamp", where), "TimeStamp", where)
    if stamp_text is None:
        raise PermanentError(_missing(value, "t:TimeStamp", where), "unknown_structure")
    timestamp = xs_datetime(stamp_text)
    if timestamp is None:
        raise PermanentError(f"{where}: TimeStamp {clip(stamp_text)!r} is not an xs:dateTime", "bad_value")
    item_id, item_key = _id(value, "t:ItemId", where)
    folder_id, folder_key = _id(value, "t:FolderId", where)
    if (item_id is None) == (folder_id is None):
        misplaced = None if item_id is not None else _misplaced(value, "t:ItemId") or _misplaced(value, "t:FolderId")
        if misplaced:
            raise PermanentError(f"{where}: {misplaced}", "unknown_structure")
        found = "both" if item_id is not None else "neither"
        raise PermanentError(f"{where} has {found} of ItemId and FolderId; expected one", "unknown_structure")
    unread = _text(_one(value.get("t:UnreadCount"), "UnreadCount", where), "UnreadCount", where)
    return Event(
        kind,
        watermark,
        timestamp,
        item_id=item_id,
        item_change_key=item_key,
        folder_id=folder_id,
        folder_change_key=folder_key,
        parent_folder_id=_id(value, "t:ParentFolderId", where)[0],
        old_item_id=_id(value, "t:OldItemId", where)[0],
        old_folder_id=_id(value, "t:OldFolderId", where)[0],
        old_parent_folder_id=_id(value, "t:OldParentFolderId", where)[0],
        unread_count=None if unread is None else xs_int(unread, f"{where}: UnreadCount"),
    )


# --- namespaces -------------------------------------------------------------------------------------------


def _misplaced(node: Any, expected: str) -> str | None:
    """``_wrong_namespace`` for the first child element of ``node`` that has ``expected``'s local name."""
    if not isinstance(node, dict):
        return None
    for name in _element_names(node):
        wrong = wrong_namespace(name, expected)
        if wrong:
            return wrong
    return None


def _missing(node: dict[Any, Any], expected: str, where: str) -> str:
    """The message for an element without a value: empty, in another namespace, or not there at all."""
    local = expected.partition(":")[2]
    if expected in node:
        return f"{where}: {local} is empty"
    misplaced = _misplaced(node, expected)
    return f"{where}: {misplaced}" if misplaced else f"{where} has no {local}"


# --- values -----------------------------------------------------------------------------------------------


def _element_names(node: dict[Any, Any]) -> Iterator[str]:
    """The names of ``node``'s child elements (attributes and text left out, ordered children included)."""
    for key in node:
        name = key[1] if isinstance(key, tuple) else key
        if isinstance(name, str) and not name.startswith(("@", "#")):
            yield name


def _children(notification: dict[Any, Any]) -> Iterator[tuple[tuple[int, str], Any]]:
    """The child elements of a Notification in document order (attributes and stray text left out)."""
    for key, value in notification.items():
        if isinstance(key, tuple):
            yield key, value


def _one(value: Any, label: str, where: str) -> Any:
    """The value of an element that may occur once; a list means xmltodict found it repeated."""
    if isinstance(value, list):
        raise PermanentError(f"{where} has {len(value)} {label} elements; expected one", "unknown_structure")
    return value


def _attribute(node: dict[Any, Any], key: str) -> str | None:
    value = node.get(key)
    return (value.strip() or None) if isinstance(value, str) else None


def _text(value: Any, label: str, where: str) -> str | None:
    """An element's text, stripped, ``None`` if empty; child elements where text belongs are an error."""
    if value is None or isinstance(value, str):
        return value  # xmltodict strips whitespace and turns empty text into None
    if isinstance(value, dict):
        for key in value:
            if not (isinstance(key, str) and key.startswith(("@", "#"))):
                raise PermanentError(f"{where}: {label} holds elements instead of text", "unknown_structure")
        text = value.get("#text")
        return text if isinstance(text, str) else None
    raise PermanentError(f"{where} has {len(value)} {label} elements; expected one", "unknown_structure")


def _watermark(value: Any, where: str) -> str | None:
    text = _text(value, "Watermark", where)
    # The store keeps lists of watermarks separated by whitespace; base64 never contains any.
    if text is not None and len(text.split()) > 1:
        raise PermanentError(f"{where}: watermark {clip(text)!r} contains whitespace", "bad_value")
    return text


def _id(event: dict[Any, Any], name: str, where: str) -> tuple[str | None, str | None]:
    """``(Id, ChangeKey)`` of an id element such as ``ItemId``; ``(None, None)`` if the element is absent."""
    if name not in event:
        return None, None
    label = name[2:]
    value = _one(event[name], label, where)
    if not isinstance(value, dict) or _attribute(value, "@Id") is None:
        raise PermanentError(f"{where}: {label} has no Id attribute", "unknown_structure")
    return _attribute(value, "@Id"), _attribute(value, "@ChangeKey")


def _short(subscription_id: str) -> str:
    """A subscription id shortened for messages: its first 12 characters and an ellipsis."""
    return subscription_id if len(subscription_id) <= _SHORT_ID else subscription_id[:_SHORT_ID] + "…"
