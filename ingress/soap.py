"""What Exchange sends and what it expects back, without building a DOM."""

from __future__ import annotations

import re

SOAP_ACTION = "http://schemas.microsoft.com/exchange/services/2006/messages/SendNotification"
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
#: A payload naming more subscriptions than this is unusual; the rest are left to the worker.
MAX_SCANNED_IDS = 32


def scan_subscription_ids(body: bytes) -> list[str]:
    """The distinct subscription ids in ``body``, in order of appearance, found by a byte scan.

    Garbage yields an empty list or garbage ids: the worker, which parses for real, decides.
    """
    found: dict[str, None] = {}
    matches = sorted([*_ELEMENT_FORM.finditer(body), *_ATTRIBUTE_FORM.finditer(body)], key=re.Match.start)
    for match in matches:
        found[match.group(1).decode("ascii", "replace")] = None
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
