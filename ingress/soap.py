"""What Exchange sends and what it expects back, without building a DOM."""

from __future__ import annotations

import html
import re

from shared.ews import SOAP_ACTION

CONTENT_TYPES = ("text/xml", "application/soap+xml")
ANSWER_CONTENT_TYPE = "text/xml; charset=utf-8"


def _answer(status: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
        '<m:SendNotificationResult xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">'
        f"<m:SubscriptionStatus>{status}</m:SubscriptionStatus>"
        "</m:SendNotificationResult></soap:Body></soap:Envelope>"
    ).encode()


#: The answer that keeps a subscription alive (SPEC §4), byte for byte.
OK = _answer("OK")
#: The answer that ends a subscription an operator unsubscribed.
UNSUBSCRIBE = _answer("Unsubscribe")

# <t:SubscriptionId>…</…> with any prefix or none, and the error form <t:Value Name="SubscriptionId">…, each
# with the id after it.  Two patterns, not one with ``|``: Python's re tries an alternation at every byte of
# the body (twice the time on real payloads, ten times on a body of nothing but "SubscriptionId").
_ELEMENT_FORM = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?SubscriptionId\s*>\s*([^<\s]{1,512})")
_ATTRIBUTE_FORM = re.compile(rb"Name\s*=\s*[\"']SubscriptionId[\"']\s*>\s*([^<\s]{1,512})")
# The same, also for the rarer shapes the worker's parser accepts too: attributes on the start tag (a
# default ``xmlns="…"``; not an empty tag ``/>``) and the id in a CDATA section.  Measured on the samples
# they cost up to a quarter more, so they run only where the patterns above find nothing.  The attributes are
# ``[^<>]{0,512}``, bounded and stopping at the next tag, so a body of unclosed start tags costs a scan
# rather than a scan per tag.
_ID_ANY = rb"\s*(?:<!\[CDATA\[\s*)?([^<\s\]]{1,512})"
_ELEMENT_FORM_ANY = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?SubscriptionId(?:\s[^<>]{0,512})?(?<!/)>" + _ID_ANY)
_ATTRIBUTE_FORM_ANY = re.compile(rb"Name\s*=\s*[\"']SubscriptionId[\"'][^<>]{0,512}(?<!/)>" + _ID_ANY)
#: How UTF-16 bodies start (as the worker's parser tells them): a byte order mark, or ``<`` and a zero byte.
_UTF16_STARTS = {b"\xff\xfe": "utf-16", b"\xfe\xff": "utf-16", b"<\x00": "utf-16-le", b"\x00<": "utf-16-be"}
#: A payload naming more subscriptions than this is unusual; the rest are left to the worker.
MAX_SCANNED_IDS = 32


def scan_subscription_ids(body: bytes) -> list[str]:
    """The distinct subscription ids in ``body``, in order of appearance, found by a byte scan.

    The common shapes first; only if they find nothing, the rare ones, and UTF-16 bodies re-encoded as
    UTF-8.  Garbage yields an empty list or garbage ids: the worker, which parses for real, decides.
    """
    found = _scan(body, _ELEMENT_FORM, _ATTRIBUTE_FORM)
    if found:
        return found
    encoding = _UTF16_STARTS.get(body[:2])
    if encoding is not None:
        body = body.decode(encoding, "replace").encode("utf-8", "replace")
    elif b"SubscriptionId" not in body:  # a plain substring search, far cheaper than the patterns
        return found
    return _scan(body, _ELEMENT_FORM_ANY, _ATTRIBUTE_FORM_ANY)


def _scan(body: bytes, element_form: re.Pattern[bytes], attribute_form: re.Pattern[bytes]) -> list[str]:
    found: dict[str, None] = {}
    matches = sorted([*element_form.finditer(body), *attribute_form.finditer(body)], key=re.Match.start)
    for match in matches:
        subscription_id = match.group(1).decode("ascii", "replace")
        if "&" in subscription_id:  # a character reference (&#43; for +), which the parser resolves
            subscription_id = html.unescape(subscription_id)
        found[subscription_id] = None
        if len(found) >= MAX_SCANNED_IDS:
            break
    return list(found)


def soap_action_ok(soap_action: str | None, content_type: str) -> bool:
    """Whether the request says it is a SendNotification (SOAP 1.1 header, or SOAP 1.2 ``action=``)."""
    if soap_action is not None:
        return soap_action.strip().strip('"').strip() == SOAP_ACTION
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "action":
            return value.strip().strip('"') == SOAP_ACTION
    return False


def content_type_ok(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() in CONTENT_TYPES
