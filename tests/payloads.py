"""Builders of EWS ``SendNotification`` POST bodies for tests, in the format of the recorded ``samples/``.

Typical use::

    body = make_notification(SUBSCRIPTION_A, watermark(1000), [
        make_event("Created", watermark(1001), item_id="AAMk…"),
        make_event("Modified", watermark(1002), folder_id=CALENDAR_FOLDER_ID, unread_count=3),
    ])

``make_event`` returns one event element as text; ``make_notification`` and ``error_message`` return whole
bodies as bytes.  For several response messages in one POST, join ``notification_message`` and
``error_response`` fragments with ``envelope``.  Every value is XML-escaped, so any string may be passed.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from ingress.soap import scan_subscription_ids
from shared.ews import MESSAGES_NS, SOAP11_NS, SOAP12_NS, TYPES_NS
from shared.types import Payload
from syncnotify.simulator.payloads import watermark as mailbox_watermark

__all__ = [
    "CALENDAR_FOLDER_ID",
    "INBOX_FOLDER_ID",
    "ITEM_ID",
    "OLD_ITEM_ID",
    "ROOT_FOLDER_ID",
    "SAMPLE_14_TEXT",
    "SOAP11_NS",
    "SOAP12_NS",
    "SUBSCRIPTION_A",
    "SUBSCRIPTION_B",
    "TIMESTAMP",
    "WATERMARK_GUID",
    "SUBSCRIPTION_ID_SHAPES",
    "chained_payloads",
    "envelope",
    "error_message",
    "error_response",
    "make_event",
    "make_notification",
    "notification_message",
    "watermark",
]


#: The subscription ids of the samples (room 101 and room 102).
SUBSCRIPTION_A = "RVhBTVBMRS1TVUJTQ1JJUFRJT04tQTo6bWJ4LXJvb20tMTAxQGV4YW1wbGUuY29t"
SUBSCRIPTION_B = "RVhBTVBMRS1TVUJTQ1JJUFRJT04tQjo6bWJ4LXJvb20tMTAyQGV4YW1wbGUuY29t"
#: Ids used by the samples.
ITEM_ID = "AAMkAEXAMPLEITEM000000000000001AAA="
OLD_ITEM_ID = "AAMkAEXAMPLEITEM000000000000000AAA="
CALENDAR_FOLDER_ID = "AAMkAEXAMPLECALENDARFOLDER0001AAA="
INBOX_FOLDER_ID = "AAMkAEXAMPLEINBOXFOLDER00000001AAA="
ROOT_FOLDER_ID = "AAMkAEXAMPLEMSGFOLDERROOT000001AAA="
TIMESTAMP = "2026-03-02T08:15:01Z"
#: The mailbox GUID inside the samples' watermarks.
WATERMARK_GUID = bytes.fromhex("3b9c5a0e417d0a4f9b1e1234567890ab")

#: Sample 14's MessageText.
SAMPLE_14_TEXT = "Events for this subscription can't be retrieved. The subscription must be recreated."

_ID_CHANGE_KEYS = {"item": "DwAAABYAAAA1", "folder": "AQAAAA=="}


def watermark(n: int) -> str:
    """A realistic 29-byte Exchange watermark for mailbox counter ``n``, as base64 (40 characters).

    Layout, as in the samples: 4-byte little-endian version 1, the 16-byte ``WATERMARK_GUID``, the counter as
    a little-endian unsigned 64-bit integer, one byte 0x01.  ``watermark(1000)`` is sample 01's watermark.
    """
    return mailbox_watermark(WATERMARK_GUID, n)


def make_event(
    kind: str,
    watermark: str | None,
    *,
    timestamp: str | None = TIMESTAMP,
    item_id: str | None = None,
    item_change_key: str | None = _ID_CHANGE_KEYS["item"],
    folder_id: str | None = None,
    folder_change_key: str | None = _ID_CHANGE_KEYS["folder"],
    parent_folder_id: str | None = CALENDAR_FOLDER_ID,
    old_item_id: str | None = None,
    old_folder_id: str | None = None,
    old_parent_folder_id: str | None = None,
    unread_count: int | str | None = None,
    extra: str = "",
) -> str:
    """One ``<t:{kind}Event>`` element; ``kind`` as in ``Event.kind`` ("Created"), or any name for a bad one.

    ``None`` leaves an element out.  Non-Status events get ``ItemId=ITEM_ID`` when neither ``item_id`` nor
    ``folder_id`` is given; Moved and Copied events get an old id of the same variant (``OLD_ITEM_ID`` or
    the folder id) and ``OldParentFolderId=INBOX_FOLDER_ID`` unless given.  A StatusEvent has only its
    Watermark.  ``extra`` is raw XML appended inside the element.
    """
    name = kind if kind.endswith("Event") else kind + "Event"
    parts = [f"<t:{name}>"]
    if watermark is not None:
        parts.append(_text_element("Watermark", watermark))
    if name != "StatusEvent":
        if item_id is None and folder_id is None:
            item_id = ITEM_ID
        if name in ("MovedEvent", "CopiedEvent") and old_item_id is None and old_folder_id is None:
            if item_id is not None:
                old_item_id = OLD_ITEM_ID
            else:
                old_folder_id = folder_id
            old_parent_folder_id = old_parent_folder_id or INBOX_FOLDER_ID
        if timestamp is not None:
            parts.append(_text_element("TimeStamp", timestamp))
        if folder_id is not None:
            parts.append(_id_element("FolderId", folder_id, folder_change_key))
        if item_id is not None:
            parts.append(_id_element("ItemId", item_id, item_change_key))
        if parent_folder_id is not None:
            parts.append(_id_element("ParentFolderId", parent_folder_id, _ID_CHANGE_KEYS["folder"]))
        if old_folder_id is not None:
            parts.append(_id_element("OldFolderId", old_folder_id, _ID_CHANGE_KEYS["folder"]))
        if old_item_id is not None:
            parts.append(_id_element("OldItemId", old_item_id, _ID_CHANGE_KEYS["item"]))
        if old_parent_folder_id is not None:
            parts.append(_id_element("OldParentFolderId", old_parent_folder_id, _ID_CHANGE_KEYS["folder"]))
        if unread_count is not None:
            parts.append(_text_element("UnreadCount", str(unread_count)))
    parts.append(extra)
    parts.append(f"</t:{name}>")
    return "".join(parts)


def notification_message(
    subscription_id: str | None,
    previous_watermark: str | None,
    events: Sequence[str] = (),
    more_events: bool | None = False,
    *,
    response_class: str = "Success",
) -> str:
    """One ``SendNotificationResponseMessage`` with a Notification; ``None`` leaves an element out."""
    parts = [
        f'<m:SendNotificationResponseMessage ResponseClass="{_attr(response_class)}">'
        "<m:ResponseCode>NoError</m:ResponseCode><m:Notification>"
    ]
    if subscription_id is not None:
        parts.append(_text_element("SubscriptionId", subscription_id))
    if previous_watermark is not None:
        parts.append(_text_element("PreviousWatermark", previous_watermark))
    if more_events is not None:
        parts.append(_text_element("MoreEvents", "true" if more_events else "false"))
    parts.extend(events)
    parts.append("</m:Notification></m:SendNotificationResponseMessage>")
    return "".join(parts)


def error_response(
    subscription_id: str | None,
    code: str = "ErrorReadEventsFailed",
    message_text: str = SAMPLE_14_TEXT,
) -> str:
    """One ``ResponseClass="Error"`` message shaped like sample 14: the subscription id only in MessageXml."""
    message_xml = (
        f'<m:MessageXml><t:Value Name="SubscriptionId">{escape(subscription_id)}</t:Value></m:MessageXml>'
        if subscription_id is not None
        else ""
    )
    return (
        '<m:SendNotificationResponseMessage ResponseClass="Error">'
        f"<m:MessageText>{escape(message_text)}</m:MessageText>"
        f"<m:ResponseCode>{escape(code)}</m:ResponseCode>"
        f"<m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{message_xml}"
        "</m:SendNotificationResponseMessage>"
    )


def envelope(
    *messages: str,
    prefix: str = "soap11",
    soap_ns: str = SOAP11_NS,
    server_version: str | None = "Exchange2016",
) -> bytes:
    """A whole POST body (UTF-8, with XML declaration) holding ``messages`` in ``ResponseMessages``.

    ``prefix`` is the SOAP envelope's prefix ("soap11", "s", "soap"; "" declares it as default namespace).
    """
    p = f"{prefix}:" if prefix else ""
    xmlns = f"xmlns:{prefix}" if prefix else "xmlns"
    header = (
        f'<{p}Header><t:RequestServerVersion xmlns:m="{MESSAGES_NS}" Version="{_attr(server_version)}" '
        f'xmlns:t="{TYPES_NS}" /></{p}Header>'
        if server_version is not None
        else ""
    )
    text = (
        f'<?xml version="1.0" encoding="utf-8"?><{p}Envelope {xmlns}="{soap_ns}">{header}<{p}Body>'
        f'<m:SendNotification xmlns:t="{TYPES_NS}" xmlns:m="{MESSAGES_NS}"><m:ResponseMessages>'
        + "".join(messages)
        + f"</m:ResponseMessages></m:SendNotification></{p}Body></{p}Envelope>"
    )
    return text.encode("utf-8")


def make_notification(
    subscription_id: str | None,
    previous_watermark: str | None,
    events: Sequence[str] = (),
    more_events: bool | None = False,
    prefix: str = "soap11",
    *,
    server_version: str | None = "Exchange2016",
) -> bytes:
    """A whole POST body: one Success message for ``subscription_id`` with ``events`` (from make_event)."""
    return envelope(
        notification_message(subscription_id, previous_watermark, events, more_events),
        prefix=prefix,
        server_version=server_version,
    )


def error_message(
    subscription_id: str | None,
    code: str = "ErrorReadEventsFailed",
    *,
    prefix: str = "soap11",
    server_version: str | None = "Exchange2013",
) -> bytes:
    """A whole POST body with one ``ResponseClass="Error"`` message, like sample 14."""
    return envelope(error_response(subscription_id, code), prefix=prefix, server_version=server_version)


def _text_element(name: str, text: str) -> str:
    return f"<t:{name}>{escape(text)}</t:{name}>"


def _attr(value: str) -> str:
    return escape(value, {'"': "&quot;"})


def _id_element(name: str, id_: str, change_key: str | None) -> str:
    change = f' ChangeKey="{_attr(change_key)}"' if change_key is not None else ""
    return f'<t:{name} Id="{_attr(id_)}"{change} />'


def chained_payloads(chains: dict[str, int], tenant: str = "Default", seed: int = 0) -> list[Payload]:
    """Queue-ready payloads: ``chains[sub]`` chained notifications for each subscription, interleaved.

    Stamped in arrival (= chain) order, one event each of a random kind (heartbeats included).
    """
    rng = random.Random(seed)
    bodies = []
    for sub, length in chains.items():
        for n in range(length):
            kind = rng.choice(["Created", "Modified", "Deleted", "Status"])
            bodies.append((sub, n, make_notification(sub, watermark(n), [make_event(kind, watermark(n + 1))])))
    bodies.sort(key=lambda b: b[1])  # round-robin across subscriptions, each in its chain order
    start = time.time()
    return [
        Payload(
            id=uuid.uuid4().hex,
            tenant=tenant,
            received_at=start + i / 1000,
            source="127.0.0.1",
            subscription_ids=scan_subscription_ids(body),
            body=body,
        )
        for i, (_sub, _n, body) in enumerate(bodies)
    ]


_SAMPLE_A_TEXT = (Path(__file__).parent / "samples" / "02_created_event_item.xml").read_text()
_ERROR_A_TEXT = (Path(__file__).parent / "samples" / "14_error_read_events_failed.xml").read_text()


def _as_utf16(text: str) -> str:
    return text.replace('encoding="utf-8"', 'encoding="utf-16"')


#: Subscription A's notification in shapes the worker's parser accepts, beyond the samples' own.
SUBSCRIPTION_ID_SHAPES: dict[str, bytes] = {
    "default namespace": _SAMPLE_A_TEXT.replace(
        f"<t:SubscriptionId>{SUBSCRIPTION_A}</t:SubscriptionId>",
        f'<SubscriptionId xmlns="{TYPES_NS}">{SUBSCRIPTION_A}</SubscriptionId>',
    ).encode(),
    "prefixed, with an attribute": _SAMPLE_A_TEXT.replace(
        f"<t:SubscriptionId>{SUBSCRIPTION_A}", f'<t:SubscriptionId xmlns:t="{TYPES_NS}" >{SUBSCRIPTION_A}'
    ).encode(),
    "CDATA": _SAMPLE_A_TEXT.replace(f">{SUBSCRIPTION_A}<", f"><![CDATA[{SUBSCRIPTION_A}]]><").encode(),
    "CDATA and white space": _SAMPLE_A_TEXT.replace(
        f">{SUBSCRIPTION_A}<", f">\n  <![CDATA[ {SUBSCRIPTION_A} ]]>\n<"
    ).encode(),
    "character reference": _SAMPLE_A_TEXT.replace(f">{SUBSCRIPTION_A}<", f">&#82;{SUBSCRIPTION_A[1:]}<").encode(),
    "UTF-16 LE with BOM": b"\xff\xfe" + _as_utf16(_SAMPLE_A_TEXT).encode("utf-16-le"),
    "UTF-16 BE with BOM": b"\xfe\xff" + _as_utf16(_SAMPLE_A_TEXT).encode("utf-16-be"),
    "UTF-16 LE declared": _as_utf16(_SAMPLE_A_TEXT).encode("utf-16-le"),
    "UTF-16 BE declared": _as_utf16(_SAMPLE_A_TEXT).encode("utf-16-be"),
    "error form with an attribute": _ERROR_A_TEXT.replace(
        'Name="SubscriptionId">', f'Name="SubscriptionId" xmlns:t="{TYPES_NS}">'
    ).encode(),
    "error form, CDATA": _ERROR_A_TEXT.replace(
        f'"SubscriptionId">{SUBSCRIPTION_A}', f'"SubscriptionId"><![CDATA[{SUBSCRIPTION_A}]]>'
    ).encode(),
    "error form, UTF-16": _as_utf16(_ERROR_A_TEXT).encode("utf-16"),
}
