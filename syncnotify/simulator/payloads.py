"""Real-format EWS ``SendNotification`` bodies, as Exchange sends them (the format of ``tests/samples``).

The simulator's builder; ``tests/payloads.py`` builds the odd shapes the tests need.  Here each
subscription has its own mailbox GUID inside its watermarks, as real mailboxes do.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

from shared.ews import MESSAGES_NS, SOAP11_NS, SOAP_ACTION, TYPES_NS

CONTENT_TYPE = "text/xml; charset=utf-8"
#: The simulator's request headers, as Exchange sends them (``SOAPAction`` quoted).
HEADERS = {
    "Content-Type": CONTENT_TYPE,
    "SOAPAction": f'"{SOAP_ACTION}"',
    "User-Agent": "ExchangeServicesClient/15.20 (syncnotify simulate)",
}

CALENDAR_FOLDER_ID = "AAMkAEXAMPLECALENDARFOLDER0001AAA="
INBOX_FOLDER_ID = "AAMkAEXAMPLEINBOXFOLDER00000001AAA="
ROOT_FOLDER_ID = "AAMkAEXAMPLEMSGFOLDERROOT000001AAA="
ITEM_CHANGE_KEY = "DwAAABYAAAA1"
FOLDER_CHANGE_KEY = "AQAAAA=="
#: Event kinds that make a row (``StatusEvent`` makes none).
ROW_KINDS = ("Created", "Modified", "Deleted", "Moved", "Copied", "NewMail", "FreeBusyChanged")


def watermark(guid: bytes, counter: int) -> str:
    """A 29-byte Exchange watermark as base64 (40 characters).

    Layout, as in the samples: 4-byte little-endian version 1, the mailbox's 16-byte GUID, the mailbox
    counter as a little-endian unsigned 64-bit integer, one byte 0x01.
    """
    raw = (1).to_bytes(4, "little") + guid + counter.to_bytes(8, "little") + b"\x01"
    return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a notification; ``kind`` is ``Status`` or one of ``ROW_KINDS``."""

    kind: str
    watermark: str
    timestamp: str = ""
    item_id: str | None = None
    folder_id: str | None = None

    @property
    def makes_row(self) -> bool:
        return self.kind != "Status"


def event_xml(event: Event) -> str:
    """One ``<t:…Event>`` element; an item event unless ``folder_id`` is set."""
    name = f"{event.kind}Event"
    parts = [f"<t:{name}><t:Watermark>{escape(event.watermark)}</t:Watermark>"]
    if event.kind != "Status":
        parts.append(f"<t:TimeStamp>{event.timestamp}</t:TimeStamp>")
        if event.folder_id is not None:
            parts.append(f'<t:FolderId Id="{event.folder_id}" ChangeKey="{FOLDER_CHANGE_KEY}" />')
            parent = ROOT_FOLDER_ID
        else:
            parts.append(f'<t:ItemId Id="{event.item_id}" ChangeKey="{ITEM_CHANGE_KEY}" />')
            parent = CALENDAR_FOLDER_ID
        parts.append(f'<t:ParentFolderId Id="{parent}" ChangeKey="{FOLDER_CHANGE_KEY}" />')
        if event.kind in ("Moved", "Copied"):
            old = event.folder_id if event.folder_id is not None else event.item_id
            tag = "OldFolderId" if event.folder_id is not None else "OldItemId"
            parts.append(f'<t:{tag} Id="{old}" ChangeKey="{FOLDER_CHANGE_KEY}" />')
            parts.append(f'<t:OldParentFolderId Id="{INBOX_FOLDER_ID}" ChangeKey="{FOLDER_CHANGE_KEY}" />')
    parts.append(f"</t:{name}>")
    return "".join(parts)


def notification_body(
    subscription_id: str,
    previous_watermark: str,
    events: Sequence[Event],
    more_events: bool = False,
    server_version: str = "Exchange2016",
) -> bytes:
    """A whole POST body (UTF-8, XML declaration, SOAP 1.1) with one Success message for one subscription."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<soap11:Envelope xmlns:soap11="{SOAP11_NS}"><soap11:Header>'
        f'<t:RequestServerVersion xmlns:m="{MESSAGES_NS}" Version="{server_version}" xmlns:t="{TYPES_NS}" />'
        "</soap11:Header><soap11:Body>"
        f'<m:SendNotification xmlns:t="{TYPES_NS}" xmlns:m="{MESSAGES_NS}"><m:ResponseMessages>'
        '<m:SendNotificationResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
        f"<m:Notification><t:SubscriptionId>{escape(subscription_id)}</t:SubscriptionId>"
        f"<t:PreviousWatermark>{escape(previous_watermark)}</t:PreviousWatermark>"
        f"<t:MoreEvents>{'true' if more_events else 'false'}</t:MoreEvents>"
        + "".join(event_xml(e) for e in events)
        + "</m:Notification></m:SendNotificationResponseMessage></m:ResponseMessages></m:SendNotification>"
        "</soap11:Body></soap11:Envelope>"
    ).encode("utf-8")
