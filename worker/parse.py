"""EWS ``SendNotification`` payloads → typed notifications (SPEC §5): bytes in, frozen dataclasses out.

``parse_payload`` raises ``PermanentError`` and nothing else for any input.  Its ``error_class`` says what is
wrong: ``not_xml``, ``malformed_xml``, ``dtd_forbidden``, ``not_send_notification``, ``no_subscription_id``,
``unknown_structure`` or ``bad_value``; the message says where.

Elements are matched by namespace URI, never by prefix.  xmltodict groups repeated children by name, which
would lose the interleaving of events of different types, so the children of every ``Notification`` are keyed
``(running number, name)``: a dict keeps insertion order, so its order is document order.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any
from xml.parsers import expat

import xmltodict

from shared.errors import PermanentError

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

SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
MESSAGES_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"
TYPES_NS = "http://schemas.microsoft.com/exchange/services/2006/types"

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
_ABSENT = object()  # an element that is not there, unlike an empty one (which xmltodict gives as None)
_SHORT_ID = 12
_MAX_DATETIME = 64  # longer text is no xs:dateTime a datetime can hold; also keeps the cache small
_CLIP = 60
_INT32 = range(-(2**31), 2**31)
_XML_SPACE = b" \t\r\n"
_UTF8_BOM = b"\xef\xbb\xbf"
_ENCODING_ERRORS = frozenset(
    expat.errors.codes[message]
    for message in (expat.errors.XML_ERROR_UNKNOWN_ENCODING, expat.errors.XML_ERROR_INCORRECT_ENCODING)
)
# xs:dateTime, ASCII digits only (\d would also take other scripts' digits).
_DATETIME = re.compile(
    r"(-?[0-9]{4,})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?"
)
_XS_INT = re.compile(r"[+-]?[0-9]+")
_XS_BOOLEAN = {"true": True, "1": True, "false": False, "0": False}


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
    return _read_envelope(_parse_xml(body))


# --- XML --------------------------------------------------------------------------------------------------


class _NamespaceMap(dict[str, str]):
    """Known namespace URIs → short names; any other URI stays whole in braces, so never passes for one."""

    def __missing__(self, uri: str) -> str:
        return "{" + uri + "}"


_NAMESPACES = _NamespaceMap({SOAP11_NS: "soap", SOAP12_NS: "soap", MESSAGES_NS: "m", TYPES_NS: "t"})


class _DoctypeFound(Exception):
    """Raised from expat's DOCTYPE handler, before any of the DTD is read."""


def _refuse_doctype(name: str, *_: object) -> None:
    # A plain function: a closure over the parser would make a reference cycle that only the GC frees.
    raise _DoctypeFound(name)


class _GuardedExpat:
    """Stands in for the expat module xmltodict uses: its parsers refuse any DOCTYPE at its first byte."""

    @staticmethod
    def ParserCreate(encoding: str | None = None, namespace_separator: str | None = None) -> Any:
        parser = expat.ParserCreate(encoding, namespace_separator)
        parser.StartDoctypeDeclHandler = _refuse_doctype
        return parser


def _ordering_postprocessor() -> Callable[[list[tuple[str, Any]], Any, Any], tuple[Any, Any]]:
    """Key each child element of a Notification ``(n, name)``, n rising, so dict order is document order."""
    counter = itertools.count()

    def postprocess(path: list[tuple[str, Any]], key: Any, value: Any) -> tuple[Any, Any]:
        # path ends with the element being added; its attributes and text come with other keys.
        if len(path) > 1 and path[-2][0] == _NOTIFICATION and key == path[-1][0]:
            return (next(counter), key), value
        return key, value

    return postprocess


def _parse_xml(body: bytes) -> Any:
    """Bytes → xmltodict's nested dicts, or ``PermanentError`` (not_xml, malformed_xml, dtd_forbidden)."""
    head = body[:2]
    # UTF-16, with a BOM or without one; expat detects both by itself.
    if head not in (b"\xff\xfe", b"\xfe\xff", b"<\x00", b"\x00<"):
        text = body[3:] if body.startswith(_UTF8_BOM) else body
        text = text.lstrip(_XML_SPACE)
        if not text:
            raise PermanentError("payload is empty", "not_xml")
        if text[:1] != b"<":
            raise PermanentError(f"payload is not XML: it starts with {text[:24]!r}", "not_xml")
    try:
        return xmltodict.parse(
            body,
            expat=_GuardedExpat,
            process_namespaces=True,
            namespaces=_NAMESPACES,
            postprocessor=_ordering_postprocessor(),
        )
    except _DoctypeFound as exc:
        raise PermanentError(
            f"payload has a DOCTYPE ({_clip(str(exc))!r}){_position(body, b'<!DOCTYPE')}; "
            "DTDs and entities are refused",
            "dtd_forbidden",
        ) from exc
    except expat.ExpatError as exc:
        reason = expat.ErrorString(exc.code)
        if exc.code in _ENCODING_ERRORS:
            raise PermanentError(f"payload cannot be decoded: {reason}", "not_xml") from exc
        raise PermanentError(
            f"payload is not well-formed XML: {reason} at line {exc.lineno}, column {exc.offset + 1}",
            "malformed_xml",
        ) from exc
    except (LookupError, ValueError) as exc:
        # pyexpat hands encodings it does not know to Python's codecs, which raise these for names that
        # are not single-byte text encodings ("utf-32", "rot13", "foo").
        raise PermanentError(f"payload declares an encoding that cannot be used: {exc}", "not_xml") from exc
    except RecursionError as exc:
        raise PermanentError("payload is nested too deeply", "malformed_xml") from exc


# --- structure --------------------------------------------------------------------------------------------


def _read_envelope(doc: Any) -> ParsedPayload:
    if not isinstance(doc, dict) or not doc:
        raise PermanentError("payload has no root element", "not_send_notification")
    root = next(iter(doc))
    if root != "soap:Envelope":
        raise PermanentError(
            f"payload is not a SOAP envelope: its root element is <{_clip(root)}>", "not_send_notification"
        )
    envelope = doc[root]
    if not isinstance(envelope, dict):
        raise PermanentError("SOAP envelope is empty", "not_send_notification")
    body = envelope.get("soap:Body")
    if not isinstance(body, dict):
        raise PermanentError("SOAP envelope has no Body (or it is empty)", "not_send_notification")
    send = body.get("m:SendNotification", _ABSENT)
    if send is _ABSENT:
        found = ", ".join(f"<{_clip(k)}>" for k in body if isinstance(k, str) and not k.startswith(("@", "#")))
        raise PermanentError(f"SOAP Body holds {found or 'nothing'}, not <m:SendNotification>", "not_send_notification")
    send = _one(send, "SendNotification", "SOAP Body")
    messages = send.get("m:ResponseMessages", _ABSENT) if isinstance(send, dict) else _ABSENT
    if messages is _ABSENT:
        raise PermanentError("SendNotification has no ResponseMessages", "unknown_structure")
    messages = _one(messages, "ResponseMessages", "SendNotification")
    if not isinstance(messages, dict):
        messages = {}
    listed: list[Any] = []
    for key, value in messages.items():
        if key == "m:SendNotificationResponseMessage":
            listed = value if isinstance(value, list) else [value]
        elif isinstance(key, str) and not key.startswith(("@", "#")):
            raise PermanentError(f"ResponseMessages holds an unexpected <{_clip(key)}>", "unknown_structure")
    if not listed:
        raise PermanentError("ResponseMessages holds no SendNotificationResponseMessage", "unknown_structure")

    notifications: list[Notification] = []
    errors: list[ErrorMessage] = []
    for number, message in enumerate(listed, 1):
        where = f"response message {number}"
        if not isinstance(message, dict):
            raise PermanentError(f"{where} is empty", "unknown_structure")
        response_class = _attribute(message, "@ResponseClass")
        notification = _one(message.get(_NOTIFICATION, _ABSENT), "Notification", where)
        if response_class == "Error" or (response_class == "Warning" and notification is _ABSENT):
            errors.append(_read_error(message, notification, where))
        elif response_class in ("Success", "Warning"):
            if notification is _ABSENT:
                raise PermanentError(f"{where} (ResponseClass Success) has no Notification", "unknown_structure")
            notifications.append(_read_notification(notification, where))
        else:
            found = "no ResponseClass" if response_class is None else f"ResponseClass {_clip(response_class)!r}"
            raise PermanentError(f"{where} has {found}; expected Success, Warning or Error", "unknown_structure")
    return ParsedPayload(tuple(notifications), tuple(errors), _server_version(envelope))


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
        raise PermanentError(f"{where}: Notification has no SubscriptionId", "no_subscription_id")
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
            text = _text(value, "MoreEvents", where)
            if text is not None:
                if text not in _XS_BOOLEAN:
                    raise PermanentError(f"{where}: MoreEvents {_clip(text)!r} is not a boolean", "bad_value")
                more = _XS_BOOLEAN[text]
        else:
            raise PermanentError(f"{where}: Notification holds an unknown element <{_clip(name)}>", "unknown_structure")
    if subscription_id is None:
        raise PermanentError(f"{where}: Notification has no SubscriptionId", "no_subscription_id")
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
        raise PermanentError(f"{where} has no Watermark", "unknown_structure")
    stamp_text = _text(_one(value.get("t:TimeStamp"), "TimeStamp", where), "TimeStamp", where)
    if stamp_text is None:
        raise PermanentError(f"{where} has no TimeStamp", "unknown_structure")
    timestamp = _xs_datetime(stamp_text) if len(stamp_text) <= _MAX_DATETIME else None
    if timestamp is None:
        raise PermanentError(f"{where}: TimeStamp {_clip(stamp_text)!r} is not an xs:dateTime", "bad_value")
    item_id, item_key = _id(value, "t:ItemId", where)
    folder_id, folder_key = _id(value, "t:FolderId", where)
    if (item_id is None) == (folder_id is None):
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
        unread_count=None if unread is None else _xs_int(unread, f"{where}: UnreadCount"),
    )


# --- values -----------------------------------------------------------------------------------------------


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
        raise PermanentError(f"{where}: watermark {_clip(text)!r} contains whitespace", "bad_value")
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


def _xs_int(text: str, where: str) -> int:
    if _XS_INT.fullmatch(text):
        try:
            number = int(text)
        except ValueError:  # more digits than int() will convert
            number = 2**31
        if number in _INT32:
            return number
        raise PermanentError(f"{where} {_clip(text)!r} is outside the 32-bit integer range", "bad_value")
    raise PermanentError(f"{where} {_clip(text)!r} is not an integer", "bad_value")


@lru_cache(maxsize=256)
def _xs_datetime(text: str) -> datetime | None:
    """An xs:dateTime as an aware UTC datetime (no zone given means UTC), or ``None`` if it is not one."""
    match = _DATETIME.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int(fraction[:6].ljust(6, "0")) if fraction else 0
    tz = UTC
    if zone and zone != "Z":
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if minutes > 59 or hours * 60 + minutes > 14 * 60:
            return None
        offset = timedelta(hours=hours, minutes=minutes)
        tz = timezone(-offset if zone[0] == "-" else offset)
    try:
        # 24:00:00 is the end of the day, i.e. midnight of the next.
        if hour == "24" and minute == second == "00" and not micro:
            stamp = datetime(int(year), int(month), int(day), tzinfo=tz) + timedelta(days=1)
        else:
            stamp = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz)
        return stamp.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _position(body: bytes, needle: bytes) -> str:
    """Where ``needle`` first occurs, as text to append to a message; empty if not found (e.g. in UTF-16)."""
    offset = body.find(needle)
    if offset < 0:
        return ""
    line = body.count(b"\n", 0, offset) + 1
    column = offset - (body.rfind(b"\n", 0, offset) + 1) + 1
    return f" at line {line}, column {column}"


def _short(subscription_id: str) -> str:
    """A subscription id shortened for messages: its first 12 characters and an ellipsis."""
    return subscription_id if len(subscription_id) <= _SHORT_ID else subscription_id[:_SHORT_ID] + "…"


def _clip(text: str) -> str:
    return text if len(text) <= _CLIP else text[:_CLIP] + "…"
