"""Guarded XML for the EWS parser: bytes → xmltodict's nested dicts, and the XML Schema values it reads.

``parse_xml`` refuses any DOCTYPE before reading it (so no DTD, no entities), maps the namespaces EWS uses to
short names (``soap``, ``m``, ``t``; any other URI stays whole in braces, ``{urn:x}:Name``) and keys the children
of the ordered element ``(running number, name)``: xmltodict groups repeated children by name, which would lose
the interleaving of events of different types, and a dict keeps insertion order, so its order is document order.

Every failure is a ``PermanentError`` whose message says where.  expat notices a missing end tag only where the
next one does not match, or at the end of the body; the message then also names the element left open and
where it opened, found by a second, tracking pass over the failing body (none on the good path).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any
from xml.parsers import expat

import xmltodict

from shared.errors import PermanentError
from shared.ews import MESSAGES_NS, SOAP11_NS, SOAP12_NS, TYPES_NS

__all__ = [
    "MESSAGES_NS",
    "NAMESPACES",
    "SOAP11_NS",
    "SOAP12_NS",
    "TYPES_NS",
    "clip",
    "clip_name",
    "parse_xml",
    "wrong_namespace",
    "xs_boolean",
    "xs_datetime",
    "xs_int",
]

CLIP = 60
_CLIP_URI = 32  # of a clipped element name's namespace part, before the ellipsis
_MAX_DATETIME = 64  # longer text is no xs:dateTime a datetime can hold; also keeps the cache small
_INT32 = range(-(2**31), 2**31)
_XML_SPACE = b" \t\r\n"
_UTF8_BOM = b"\xef\xbb\xbf"


def _codes(*messages: str) -> frozenset[int]:
    return frozenset(expat.errors.codes[message] for message in messages)


_ENCODING_ERRORS = _codes(expat.errors.XML_ERROR_UNKNOWN_ENCODING, expat.errors.XML_ERROR_INCORRECT_ENCODING)
_MISMATCH = _codes(expat.errors.XML_ERROR_TAG_MISMATCH)
# expat raises these only when the body ends where more must follow.
_AT_END = _codes(
    expat.errors.XML_ERROR_NO_ELEMENTS,
    expat.errors.XML_ERROR_UNCLOSED_TOKEN,
    expat.errors.XML_ERROR_UNCLOSED_CDATA_SECTION,
    expat.errors.XML_ERROR_PARTIAL_CHAR,
)
_NO_ELEMENTS = _codes(expat.errors.XML_ERROR_NO_ELEMENTS)
_LOCATED = _MISMATCH | _AT_END  # the errors whose message names the element left open
# xs:dateTime, ASCII digits only (\d would also take other scripts' digits).
_DATETIME = re.compile(
    r"(-?[0-9]{4,})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?"
)
_XS_INT = re.compile(r"[+-]?[0-9]+")
_XS_BOOLEAN = {"true": True, "1": True, "false": False, "0": False}


class _NamespaceMap(dict[str, str]):
    """Known namespace URIs → short names; any other URI stays whole in braces, so never passes for one."""

    def __missing__(self, uri: str) -> str:
        return "{" + uri + "}"


NAMESPACES = _NamespaceMap({SOAP11_NS: "soap", SOAP12_NS: "soap", MESSAGES_NS: "m", TYPES_NS: "t"})
#: Short name → the namespace URI(s) it stands for, as messages quote them.
_URIS = {"m": repr(MESSAGES_NS), "t": repr(TYPES_NS), "soap": f"{SOAP11_NS!r} or {SOAP12_NS!r}"}


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


def _ordering_postprocessor(ordered: str) -> Callable[[list[tuple[str, Any]], Any, Any], tuple[Any, Any]]:
    """Key each child element of ``ordered`` elements ``(n, name)``, n rising, so dict order is document order."""
    counter = itertools.count()

    def postprocess(path: list[tuple[str, Any]], key: Any, value: Any) -> tuple[Any, Any]:
        # path ends with the element being added; its attributes and text come with other keys.
        if len(path) > 1 and path[-2][0] == ordered and key == path[-1][0]:
            return (next(counter), key), value
        return key, value

    return postprocess


def parse_xml(body: bytes, ordered: str) -> Any:
    """Bytes → xmltodict's nested dicts, children of ``ordered`` elements keyed ``(n, name)``.

    Raises ``PermanentError`` with class ``not_xml``, ``malformed_xml`` or ``dtd_forbidden``.
    """
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
            namespaces=NAMESPACES,
            postprocessor=_ordering_postprocessor(ordered),
        )
    except _DoctypeFound as exc:
        raise PermanentError(
            f"payload has a DOCTYPE ({clip(str(exc))!r}){_position(body, b'<!DOCTYPE')}; DTDs and entities are refused",
            "dtd_forbidden",
        ) from exc
    except expat.ExpatError as exc:
        if exc.code in _ENCODING_ERRORS:
            raise PermanentError(f"payload cannot be decoded: {expat.ErrorString(exc.code)}", "not_xml") from exc
        raise PermanentError(_malformed(body, exc), "malformed_xml") from exc
    except (LookupError, ValueError) as exc:
        # pyexpat hands encodings it does not know to Python's codecs, which raise these for names that
        # are not single-byte text encodings ("utf-32", "rot13", "foo").
        raise PermanentError(f"payload declares an encoding that cannot be used: {exc}", "not_xml") from exc
    except RecursionError as exc:
        raise PermanentError("payload is nested too deeply", "malformed_xml") from exc


# --- where a malformed body went wrong ----------------------------------------------------------------------

#: An open element as the tracking pass saw it: (name as written, line, 1-based column of its "<").
_Open = tuple[str, int, int]


class _Tracker:
    """The elements open at each point of an expat pass; ``stack[-1]`` is the innermost."""

    def __init__(self, parser: Any) -> None:
        self.parser: Any = parser
        self.stack: list[_Open] = []

    def start(self, name: str, _attributes: object) -> None:
        self.stack.append((name, self.parser.CurrentLineNumber, self.parser.CurrentColumnNumber + 1))

    def end(self, _name: str) -> None:
        self.stack.pop()


def _open_elements(body: bytes, failure: expat.ExpatError) -> list[_Open] | None:
    """The elements open where ``failure`` happened, from a pass that meets the same error at the same place.

    Without namespace processing, so names come as written (``t:SubscriptionId``); that cannot change where a
    mismatch or the end is met, and if the pass fails elsewhere anyway its stack is not used.
    """
    parser = expat.ParserCreate()
    tracker = _Tracker(parser)
    parser.StartDoctypeDeclHandler = _refuse_doctype
    parser.StartElementHandler = tracker.start
    parser.EndElementHandler = tracker.end
    try:
        parser.Parse(body, True)
    except expat.ExpatError as exc:
        same = (exc.code, exc.lineno, exc.offset) == (failure.code, failure.lineno, failure.offset)
        return tracker.stack if same else None
    except (_DoctypeFound, LookupError, ValueError):
        return None
    finally:
        tracker.parser = None  # breaks the parser ↔ handler cycle
    return None


def _malformed(body: bytes, exc: expat.ExpatError) -> str:
    where = f"line {exc.lineno}, column {exc.offset + 1}"
    generic = f"payload is not well-formed XML: {expat.ErrorString(exc.code)} at {where}"
    if exc.code not in _LOCATED:
        return generic
    stack = _open_elements(body, exc)
    if stack is None or (not stack and exc.code in _NO_ELEMENTS | _MISMATCH):
        return generic
    if not stack:
        return f"payload is truncated at {where}, before its root element opened"
    name, line, column = stack[-1]
    opened = f"<{clip_name(name)}> opened at line {line}, column {column}"
    if exc.code in _MISMATCH:
        return f"{generic}: {opened} is not closed"
    return f"payload is truncated at {where}: {opened} is never closed"


def _position(body: bytes, needle: bytes) -> str:
    """Where ``needle`` first occurs, as text to append to a message; empty if not found (e.g. in UTF-16)."""
    offset = body.find(needle)
    if offset < 0:
        return ""
    line = body.count(b"\n", 0, offset) + 1
    column = offset - (body.rfind(b"\n", 0, offset) + 1) + 1
    return f" at line {line}, column {column}"


# --- text in messages ---------------------------------------------------------------------------------------


def clip(text: str) -> str:
    """A value shortened for a message: its first 60 characters and an ellipsis."""
    return text if len(text) <= CLIP else text[:CLIP] + "…"


def wrong_namespace(found: str, expected: str) -> str | None:
    """If element ``found`` has the local name of ``expected`` (``m:Notification``) in another namespace: a
    message saying so (``Notification is in namespace 'urn:x', expected '…'``); else ``None``."""
    head, _, local = found.rpartition(":")
    short, _, expected_local = expected.partition(":")
    if found == expected or local != expected_local:
        return None
    if not head:
        where = "has no namespace"
    elif head.startswith("{"):
        where = f"is in namespace {clip(head[1:-1])!r}"
    else:
        where = f"is in namespace {_URIS.get(head, repr(head))}"
    return f"{local} {where}, expected {_URIS[short]}"


def clip_name(name: str) -> str:
    """An element name shortened for a message so that its local name survives.

    ``{urn:x}:Name`` (as xmltodict spells an unknown namespace) or ``prefix:Name``: the namespace or prefix is
    cut in its middle, keeping its closing brace; only a local name longer than the limit is itself clipped.
    """
    if len(name) <= CLIP:
        return name
    head, colon, local = name.rpartition(":")
    if head.startswith("{") and not head.endswith("}"):  # a colon inside the URI, and no local name after it
        head, colon, local = "", "", name
    local = clip(local)
    if len(head) > _CLIP_URI:
        head = head[:_CLIP_URI] + "…" + ("}" if head.endswith("}") else "")
    return head + colon + local


# --- XML Schema values --------------------------------------------------------------------------------------


def xs_int(text: str, where: str) -> int:
    """An xs:int; ``bad_value`` if ``text`` is not one (``where`` names the element in the message)."""
    if _XS_INT.fullmatch(text):
        try:
            number = int(text)
        except ValueError:  # more digits than int() will convert
            number = 2**31
        if number in _INT32:
            return number
        raise PermanentError(f"{where} {clip(text)!r} is outside the 32-bit integer range", "bad_value")
    raise PermanentError(f"{where} {clip(text)!r} is not an integer", "bad_value")


def xs_boolean(text: str | None, where: str) -> bool:
    """An xs:boolean, ``False`` if absent; ``bad_value`` if ``text`` is not one."""
    if text is None:
        return False
    if text not in _XS_BOOLEAN:
        raise PermanentError(f"{where} {clip(text)!r} is not a boolean", "bad_value")
    return _XS_BOOLEAN[text]


def xs_datetime(text: str) -> datetime | None:
    """An xs:dateTime as an aware UTC datetime (no zone given means UTC), or ``None`` if it is not one."""
    return _xs_datetime(text) if len(text) <= _MAX_DATETIME else None


@lru_cache(maxsize=256)
def _xs_datetime(text: str) -> datetime | None:
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
