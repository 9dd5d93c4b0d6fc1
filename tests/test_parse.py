"""worker.parse: every recorded sample, namespaces and prefixes, document order, every error class with a
message that locates the problem, encodings, hostile XML, and a Hypothesis property that any input either
parses or raises ``PermanentError``."""

from __future__ import annotations

import base64
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import PermanentError
from tests.payloads import (
    CALENDAR_FOLDER_ID,
    INBOX_FOLDER_ID,
    ITEM_ID,
    OLD_ITEM_ID,
    ROOT_FOLDER_ID,
    SAMPLE_14_TEXT,
    SOAP11_NS,
    SOAP12_NS,
    SUBSCRIPTION_A,
    SUBSCRIPTION_B,
    envelope,
    error_message,
    error_response,
    make_event,
    make_notification,
    notification_message,
    watermark,
)
from worker import safexml
from worker.parse import (
    EVENT_KINDS,
    MESSAGES_NS,
    TYPES_NS,
    ErrorMessage,
    Event,
    Notification,
    ParsedPayload,
    parse_payload,
)

SAMPLES = Path(__file__).parent / "samples"
ERROR_CLASSES = {
    "not_xml",
    "malformed_xml",
    "dtd_forbidden",
    "not_send_notification",
    "no_subscription_id",
    "unknown_structure",
    "bad_value",
}
SEED_SUBSCRIPTION = (
    "LABkYjhwcjAxbWI2NDg1LmV1cnByZDAxLnByb2QuZXhjaGFuZ2VsYWJzLmNvbRAAAADELVfykPBZQp7Q8IIUrUfmCKn7JnqX2AgQAAAA"
    "WTlI8+A2EEqLQp01E8Pw2Q=="
)
SHORT_A = "'RVhBTVBMRS1T…'"  # SUBSCRIPTION_A as error messages show it


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def parse_sample(name: str) -> ParsedPayload:
    return parse_payload(sample(name))


def only_notification(parsed: ParsedPayload) -> Notification:
    assert parsed.errors == ()
    assert len(parsed.notifications) == 1
    return parsed.notifications[0]


def refused(body: bytes, error_class: str, *fragments: str) -> str:
    """Assert ``body`` is refused with ``error_class`` and a message holding every fragment; return it."""
    with pytest.raises(PermanentError) as info:
        parse_payload(body)
    message = str(info.value)
    assert info.value.error_class == error_class, message
    for fragment in fragments:
        assert fragment in message
    return message


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def counter(mark: str | None) -> int:
    assert mark is not None
    raw = base64.b64decode(mark)
    assert len(raw) == 29
    return int.from_bytes(raw[20:28], "little")


# --- the samples --------------------------------------------------------------------------------------------


def test_samples_directory_holds_every_recorded_sample() -> None:
    recorded = {
        "00_seed_sample",
        "00_seed_sample_malformed",
        "01_status_event",
        "02_created_event_item",
        "03_modified_event_item_and_folder",
        "04_newmail_event",
        "05_moved_event_item",
        "06_moved_event_folder",
        "07_copied_event_item",
        "08_deleted_event_item",
        "09_freebusychanged_event",
        "10_more_events_part1",
        "11_more_events_part2",
        "12_gap_detected",
        "13_retry_duplicate_of_09",
        "14_error_read_events_failed",
        "15_prefix_variant_of_02",
        "16_minimal_optional_fields_absent",
        "ok",
        "unsubscribe",
    }
    assert recorded <= {p.stem for p in SAMPLES.glob("*.xml")}


def test_00_seed_sample() -> None:
    parsed = parse_sample("00_seed_sample.xml")
    assert parsed.server_version == "Exchange2010"
    note = only_notification(parsed)
    assert note.subscription_id == SEED_SUBSCRIPTION
    assert note.previous_watermark == "AQAAAExY/dNdjDVKjtBVHKR5IOurFukhAAAAAAE="
    assert note.more_events is False
    item, folder = note.events
    assert item == Event(
        kind="Modified",
        watermark="AQAAAExY/dNdjDVKjtBVHKR5IOsoIukhAAAAAAE=",
        timestamp=utc(2020, 12, 3, 11, 3, 50),
        item_id="AQMkAGYzNDgzOTU5LTM2ZTAtNGExMC04YjQyLTlkMzUxM2MzZjBkOQBGAAADdiwJfgoT4UeFDoYZ5kbJFQcAbsZeBEfd1Eyd3oyV64JN"
        "iAAAAgENAAAAbsZeBEfd1Eyd3oyV64JNiAACUQqtogAAAA==",
        item_change_key="DwAAAA==",
        parent_folder_id="AQMkAGYzNDgzOTU5LTM2ZTAtNGExMC04YjQyLTlkMzUxM2MzZjBkOQAuAAADdiwJfgoT4UeFDoYZ5kbJFQEAbsZeBEfd1E"
        "yd3oyV64JNiAAAAgENAAAA",
    )
    assert folder.kind == "Modified" and folder.item_id is None
    assert folder.folder_id == item.parent_folder_id
    assert folder.folder_change_key == "AgAAAA=="
    assert folder.parent_folder_id is not None and folder.parent_folder_id.endswith("AAAAgEIAAAA")
    assert counter(note.previous_watermark) < counter(item.watermark) < counter(folder.watermark)


def test_00_seed_sample_malformed_is_located() -> None:
    # The SubscriptionId's closing tag lacks its '/', so expat trips over </m:Notification> (the column is
    # 1-based and points at the tag's name); the message names the element left open where it opened.
    body = sample("00_seed_sample_malformed.xml")
    message = refused(body, "malformed_xml")
    assert message == (
        "payload is not well-formed XML: mismatched tag at line 1, column 1894: "
        "<t:SubscriptionId> opened at line 1, column 785 is not closed"
    )
    assert body[1891:1910] == b"</m:Notification></"
    assert body[784:802] == b"<t:SubscriptionId>" and body[638:656] == b"<t:SubscriptionId>"


def test_01_status_event() -> None:
    note = only_notification(parse_sample("01_status_event.xml"))
    assert note.subscription_id == SUBSCRIPTION_A
    assert note.previous_watermark == watermark(1000)
    (event,) = note.events
    assert event == Event("Status", watermark(1000), None)
    assert not event.makes_row


def test_02_created_event_item_chains_from_01() -> None:
    parsed = parse_sample("02_created_event_item.xml")
    assert parsed.server_version == "Exchange2016"
    note = only_notification(parsed)
    assert note.previous_watermark == parse_sample("01_status_event.xml").notifications[0].events[-1].watermark
    created, modified = note.events
    assert created == Event(
        "Created",
        watermark(1003),
        utc(2026, 3, 2, 8, 15, 1),
        item_id=ITEM_ID,
        item_change_key="DwAAABYAAAA1",
        parent_folder_id=CALENDAR_FOLDER_ID,
    )
    assert modified == Event(
        "Modified",
        watermark(1004),
        utc(2026, 3, 2, 8, 15, 1),
        folder_id=CALENDAR_FOLDER_ID,
        folder_change_key="AgAAAB==",
        parent_folder_id=ROOT_FOLDER_ID,
    )
    assert created.makes_row and modified.makes_row


def test_03_modified_item_and_folder_with_unread_count() -> None:
    item, folder = only_notification(parse_sample("03_modified_event_item_and_folder.xml")).events
    assert (item.kind, item.item_change_key) == ("Modified", "CQAAABYAAAA7")
    assert item.item_id == "AAMkAEXAMPLEITEM000000000000000AAA="
    assert item.unread_count is None
    assert (folder.kind, folder.folder_id, folder.unread_count) == ("Modified", INBOX_FOLDER_ID, 3)
    assert folder.timestamp == utc(2026, 3, 2, 8, 20, 44)


def test_04_newmail_with_created() -> None:
    created, newmail = only_notification(parse_sample("04_newmail_event.xml")).events
    assert (created.kind, newmail.kind) == ("Created", "NewMail")
    assert created.item_id == newmail.item_id == "AAMkAEXAMPLEITEM000000000000002AAA="
    assert newmail.parent_folder_id == INBOX_FOLDER_ID
    assert counter(created.watermark) < counter(newmail.watermark)


def test_05_moved_item() -> None:
    (moved,) = only_notification(parse_sample("05_moved_event_item.xml")).events
    assert moved == Event(
        "Moved",
        "AQAAADucWg5BfQpPmx4SNFZ4kKsEBAAAAAAAAAE=",
        utc(2026, 3, 2, 9, 5, 10),
        item_id="AAMkAEXAMPLEITEM000000000000001BBB=",
        item_change_key="DwAAABYAAAA3",
        parent_folder_id="AAMkAEXAMPLEDELETEDITEMS0000001AAA=",
        old_item_id=ITEM_ID,
        old_parent_folder_id=CALENDAR_FOLDER_ID,
    )


def test_06_moved_folder() -> None:
    (moved,) = only_notification(parse_sample("06_moved_event_folder.xml")).events
    assert moved.kind == "Moved"
    assert moved.item_id is None and moved.old_item_id is None
    assert moved.folder_id == moved.old_folder_id == "AAMkAEXAMPLESUBFOLDER0000000001AAA="
    assert moved.parent_folder_id == "AAMkAEXAMPLEARCHIVEFOLDER000001AAA="
    assert moved.old_parent_folder_id == ROOT_FOLDER_ID


def test_07_copied_item() -> None:
    (copied,) = only_notification(parse_sample("07_copied_event_item.xml")).events
    assert copied.kind == "Copied"
    assert copied.item_id == "AAMkAEXAMPLEITEM000000000000002CCC="
    assert copied.old_item_id == "AAMkAEXAMPLEITEM000000000000002AAA="
    assert copied.old_parent_folder_id == INBOX_FOLDER_ID
    assert copied.timestamp == utc(2026, 3, 2, 9, 7, 30)


def test_08_deleted_item() -> None:
    (deleted,) = only_notification(parse_sample("08_deleted_event_item.xml")).events
    assert (deleted.kind, deleted.item_id) == ("Deleted", "AAMkAEXAMPLEITEM000000000000001BBB=")
    assert deleted.parent_folder_id == "AAMkAEXAMPLEDELETEDITEMS0000001AAA="


def test_09_freebusychanged_and_13_its_duplicate() -> None:
    parsed = parse_sample("09_freebusychanged_event.xml")
    (event,) = only_notification(parsed).events
    assert (event.kind, event.item_id) == ("FreeBusyChanged", "AAMkAEXAMPLEITEM000000000000003AAA=")
    assert parse_sample("13_retry_duplicate_of_09.xml") == parsed


def test_10_and_11_more_events() -> None:
    first = only_notification(parse_sample("10_more_events_part1.xml"))
    second = only_notification(parse_sample("11_more_events_part2.xml"))
    assert first.subscription_id == second.subscription_id == SUBSCRIPTION_B
    assert first.more_events is True and second.more_events is False
    assert [e.kind for e in first.events] == ["Created", "Modified"]
    assert second.previous_watermark == first.events[-1].watermark
    assert [e.kind for e in second.events] == ["Deleted"]


def test_12_gap_parses_like_any_notification() -> None:
    # The gap is the store's business: PreviousWatermark is not 09's last Watermark.
    note = only_notification(parse_sample("12_gap_detected.xml"))
    last_of_09 = parse_sample("09_freebusychanged_event.xml").notifications[0].events[-1].watermark
    assert note.previous_watermark != last_of_09
    assert [e.kind for e in note.events] == ["Modified"]


def test_14_error_read_events_failed() -> None:
    parsed = parse_sample("14_error_read_events_failed.xml")
    assert parsed.notifications == ()
    assert parsed.server_version == "Exchange2013"
    assert parsed.errors == (
        ErrorMessage(
            subscription_id=SUBSCRIPTION_A,
            response_code="ErrorReadEventsFailed",
            message_text=SAMPLE_14_TEXT,
        ),
    )


def test_15_prefix_variant_equals_02() -> None:
    assert parse_sample("15_prefix_variant_of_02.xml") == parse_sample("02_created_event_item.xml")


def test_16_minimal_optional_fields_absent() -> None:
    note = only_notification(parse_sample("16_minimal_optional_fields_absent.xml"))
    assert note == Notification(SUBSCRIPTION_A, None, False, (Event("Status", None, None),))


@pytest.mark.parametrize("name", ["ok.xml", "unsubscribe.xml"])
def test_our_own_answers_are_not_notifications(name: str) -> None:
    refused(sample(name), "not_send_notification", "<m:SendNotificationResult>", "not <m:SendNotification>")


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in SAMPLES.glob("[0-9]*.xml") if "malformed" not in p.name and "14_" not in p.name),
)
def test_sample_invariants(name: str) -> None:
    for note in parse_sample(name).notifications:
        for event in note.events:
            assert event.kind in EVENT_KINDS
            if event.watermark is not None:
                counter(event.watermark)  # 29 bytes, as SPEC §7 describes
            if event.makes_row:
                assert event.timestamp is not None and event.timestamp.utcoffset() == timedelta(0)
                assert (event.item_id is None) != (event.folder_id is None)


# --- the payload builders -----------------------------------------------------------------------------------


def test_watermark_builder_matches_the_samples() -> None:
    assert watermark(1000) == "AQAAADucWg5BfQpPmx4SNFZ4kKvoAwAAAAAAAAE="
    assert watermark(5000) == "AQAAADucWg5BfQpPmx4SNFZ4kKuIEwAAAAAAAAE="
    assert counter(watermark(2**63)) == 2**63


def test_builders_reproduce_sample_02() -> None:
    body = make_notification(
        SUBSCRIPTION_A,
        watermark(1000),
        [
            make_event("Created", watermark(1003), item_id=ITEM_ID),
            make_event(
                "Modified",
                watermark(1004),
                folder_id=CALENDAR_FOLDER_ID,
                folder_change_key="AgAAAB==",
                parent_folder_id=ROOT_FOLDER_ID,
            ),
        ],
    )
    assert parse_payload(body) == parse_sample("02_created_event_item.xml")


def test_error_builder_reproduces_sample_14() -> None:
    assert parse_payload(error_message(SUBSCRIPTION_A)) == parse_sample("14_error_read_events_failed.xml")


# --- document order, several messages -----------------------------------------------------------------------


def test_interleaved_event_types_keep_document_order() -> None:
    kinds = ["Created", "Modified", "Created", "Status", "Deleted", "Created", "Moved", "NewMail", "Modified"]
    events = [make_event(kind, watermark(101 + i)) for i, kind in enumerate(kinds)]
    # A comment between events must not disturb anything.
    events.insert(3, "<!-- between events -->")
    note = only_notification(parse_payload(make_notification(SUBSCRIPTION_A, watermark(100), events)))
    assert [e.kind for e in note.events] == kinds
    assert [counter(e.watermark) for e in note.events] == list(range(101, 101 + len(kinds)))


def test_header_elements_after_events_do_not_change_event_order() -> None:
    body = envelope(
        '<m:SendNotificationResponseMessage ResponseClass="Success"><m:Notification>'
        + make_event("Modified", watermark(2))
        + f"<t:SubscriptionId>{SUBSCRIPTION_A}</t:SubscriptionId>"
        + make_event("Created", watermark(3))
        + "<t:MoreEvents>true</t:MoreEvents>"
        + make_event("Modified", watermark(4))
        + "</m:Notification></m:SendNotificationResponseMessage>"
    )
    note = only_notification(parse_payload(body))
    assert [e.kind for e in note.events] == ["Modified", "Created", "Modified"]
    assert note.more_events is True


def test_several_response_messages_in_one_post() -> None:
    body = envelope(
        notification_message(SUBSCRIPTION_A, watermark(1), [make_event("Created", watermark(2))]),
        error_response(SUBSCRIPTION_B, "ErrorMissedNotificationEvents", "Missed some"),
        notification_message(SUBSCRIPTION_B, watermark(7), [make_event("Deleted", watermark(8))], True),
    )
    parsed = parse_payload(body)
    assert [n.subscription_id for n in parsed.notifications] == [SUBSCRIPTION_A, SUBSCRIPTION_B]
    assert parsed.notifications[1].more_events is True
    assert parsed.errors == (ErrorMessage(SUBSCRIPTION_B, "ErrorMissedNotificationEvents", "Missed some"),)


def test_problem_in_second_message_is_located() -> None:
    body = envelope(
        notification_message(SUBSCRIPTION_B, None, [make_event("Created", watermark(2))]),
        notification_message(SUBSCRIPTION_A, None, [make_event("Created", watermark(3)), make_event("Modified", None)]),
    )
    refused(body, "unknown_structure", f"response message 2, event 2 (ModifiedEvent) of subscription {SHORT_A}")


def test_warning_class_is_a_notification_if_it_carries_one() -> None:
    body = envelope(
        notification_message(SUBSCRIPTION_A, None, [make_event("Created", watermark(2))], response_class="Warning"),
        '<m:SendNotificationResponseMessage ResponseClass="Warning"><m:MessageText>slow</m:MessageText>'
        "<m:ResponseCode>ErrorServerBusy</m:ResponseCode></m:SendNotificationResponseMessage>",
    )
    parsed = parse_payload(body)
    assert [n.subscription_id for n in parsed.notifications] == [SUBSCRIPTION_A]
    assert parsed.errors == (ErrorMessage(None, "ErrorServerBusy", "slow"),)


def test_error_message_takes_subscription_id_from_its_notification() -> None:
    body = envelope(
        '<m:SendNotificationResponseMessage ResponseClass="Error"><m:ResponseCode>ErrorSubscriptionNotFound'
        f"</m:ResponseCode><m:Notification><t:SubscriptionId> {SUBSCRIPTION_B} </t:SubscriptionId>"
        "</m:Notification></m:SendNotificationResponseMessage>"
    )
    assert parse_payload(body).errors == (ErrorMessage(SUBSCRIPTION_B, "ErrorSubscriptionNotFound", ""),)


def test_error_message_without_any_subscription_id() -> None:
    parsed = parse_payload(error_message(None, "ErrorInternalServerError"))
    assert parsed.errors == (ErrorMessage(None, "ErrorInternalServerError", SAMPLE_14_TEXT),)


# --- namespaces, not prefixes -------------------------------------------------------------------------------

DEFAULT_NAMESPACES = f"""<?xml version="1.0" encoding="utf-8"?>
<Envelope xmlns="{SOAP11_NS}">
  <Header><RequestServerVersion xmlns="http://schemas.microsoft.com/exchange/services/2006/types"
    Version="Exchange2016"/></Header>
  <Body>
    <SendNotification xmlns="http://schemas.microsoft.com/exchange/services/2006/messages">
      <ResponseMessages>
        <SendNotificationResponseMessage ResponseClass="Success">
          <ResponseCode>NoError</ResponseCode>
          <Notification>
            <SubscriptionId xmlns="http://schemas.microsoft.com/exchange/services/2006/types"
              >{SUBSCRIPTION_A}</SubscriptionId>
            <PreviousWatermark xmlns="http://schemas.microsoft.com/exchange/services/2006/types"
              >{watermark(1000)}</PreviousWatermark>
            <MoreEvents xmlns="http://schemas.microsoft.com/exchange/services/2006/types">false</MoreEvents>
            <CreatedEvent xmlns="http://schemas.microsoft.com/exchange/services/2006/types">
              <Watermark>{watermark(1003)}</Watermark>
              <TimeStamp>2026-03-02T08:15:01Z</TimeStamp>
              <ItemId Id="{ITEM_ID}" ChangeKey="DwAAABYAAAA1"/>
              <ParentFolderId Id="{CALENDAR_FOLDER_ID}" ChangeKey="AgAAAA=="/>
            </CreatedEvent>
            <ModifiedEvent xmlns="http://schemas.microsoft.com/exchange/services/2006/types">
              <Watermark>{watermark(1004)}</Watermark>
              <TimeStamp>2026-03-02T08:15:01Z</TimeStamp>
              <FolderId Id="{CALENDAR_FOLDER_ID}" ChangeKey="AgAAAB=="/>
              <ParentFolderId Id="{ROOT_FOLDER_ID}" ChangeKey="AQAAAA=="/>
            </ModifiedEvent>
          </Notification>
        </SendNotificationResponseMessage>
      </ResponseMessages>
    </SendNotification>
  </Body>
</Envelope>
""".encode()


def rename_prefix(body: bytes, old: str, new: str) -> bytes:
    return re.sub(rb"(</?|xmlns:)" + old.encode() + rb"([:=])", rb"\g<1>" + new.encode() + rb"\g<2>", body)


def test_default_namespaces_equal_02() -> None:
    assert parse_payload(DEFAULT_NAMESPACES) == parse_sample("02_created_event_item.xml")


@pytest.mark.parametrize(("old", "new"), [("soap11", "s"), ("soap11", "soap"), ("m", "msg"), ("t", "typ")])
def test_any_prefix_equals_02(old: str, new: str) -> None:
    body = rename_prefix(sample("02_created_event_item.xml"), old, new)
    assert f"<{new}:".encode() in body
    assert parse_payload(body) == parse_sample("02_created_event_item.xml")


def test_soap_1_2_envelope_equals_02() -> None:
    body = sample("02_created_event_item.xml").replace(SOAP11_NS.encode(), SOAP12_NS.encode())
    assert parse_payload(body) == parse_sample("02_created_event_item.xml")


def test_builder_prefixes() -> None:
    events = [make_event("Created", watermark(2))]
    expected = parse_payload(make_notification(SUBSCRIPTION_A, watermark(1), events))
    for prefix in ("s", "soap", ""):
        assert parse_payload(make_notification(SUBSCRIPTION_A, watermark(1), events, prefix=prefix)) == expected


def test_right_prefix_wrong_namespace_is_not_accepted() -> None:
    types = b"http://schemas.microsoft.com/exchange/services/2006/types"
    body = sample("02_created_event_item.xml").replace(types, b"urn:not-ews-types")
    refused(
        body,
        "unknown_structure",
        "response message 1: SubscriptionId is in namespace 'urn:not-ews-types', "
        "expected 'http://schemas.microsoft.com/exchange/services/2006/types'",
    )
    envelope_wrong = sample("02_created_event_item.xml").replace(SOAP11_NS.encode(), b"urn:not-soap")
    refused(envelope_wrong, "not_send_notification", "not a SOAP envelope")


def test_namespace_uri_equal_to_a_short_name_is_not_mistaken_for_it() -> None:
    # The parser's own short names ("t", "m", "soap") must not be reachable by declaring them as URIs.
    types = b"http://schemas.microsoft.com/exchange/services/2006/types"
    body = sample("02_created_event_item.xml").replace(types, b"t")
    refused(body, "unknown_structure", "response message 1: SubscriptionId is in namespace 't', expected 'http")


# --- error classes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "payload is empty"),
        (b" \r\n\t ", "payload is empty"),
        (b"\xef\xbb\xbf  \n", "payload is empty"),
        (b'{"SubscriptionId": "x"}', 'payload is not XML: it starts with b\'{"SubscriptionId"'),
        (b"SubscriptionId=RVhB", "payload is not XML: it starts with b'SubscriptionId=RVhB'"),
        (b"\x00\x01\x02\x03", "payload is not XML"),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "payload is not XML"),  # still gzipped
    ],
)
def test_not_xml(body: bytes, fragment: str) -> None:
    refused(body, "not_xml", fragment)


@pytest.mark.parametrize(
    ("declared", "fragment"),
    [
        ("utf-16", "payload cannot be decoded: encoding specified in XML declaration is incorrect"),
        ("no-such-charset", "payload declares an encoding that cannot be used"),
        ("utf-32", "payload declares an encoding that cannot be used"),
        ("rot13", "payload declares an encoding that cannot be used"),
        ("idna", "payload declares an encoding that cannot be used"),
        ("cp500", "payload cannot be decoded: unknown encoding"),
    ],
)
def test_lying_or_unusable_encoding_declaration(declared: str, fragment: str) -> None:
    body = sample("02_created_event_item.xml").replace(b'encoding="utf-8"', f'encoding="{declared}"'.encode())
    refused(body, "not_xml", fragment)


def test_truncated_payload_is_called_truncated_and_names_the_innermost_open_element() -> None:
    body = sample("02_created_event_item.xml")[:1000]
    assert body.count(b"\n") == 13 and body.splitlines()[13].startswith(b"            <t:PreviousWatermark>")
    message = refused(body, "malformed_xml")
    assert message == (
        "payload is truncated at line 14, column 67: <t:PreviousWatermark> opened at line 14, column 13 is never closed"
    )


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"<a><b></a>", "mismatched tag at line 1, column 9"),  # 1-based; expat points at the name
        (b"<a>\n<b>caf\xe9</b></a>", "not well-formed (invalid token) at line 2"),  # Latin-1 in UTF-8
        (b"<a>&xxe;</a>", "undefined entity at line 1, column 4"),
        (b"<a/><b/>", "junk after document element at line 1, column 5"),
        (b"<a x='1' x='2'/>", "duplicate attribute"),
        (b"<a:b/>", "unbound prefix"),
        (b"<?xml version='1.0'?>", "no element found"),
    ],
)
def test_malformed_xml(body: bytes, fragment: str) -> None:
    refused(body, "malformed_xml", "payload is not well-formed XML: ", fragment)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>
"""


def test_billion_laughs_is_refused_fast() -> None:
    started = time.perf_counter()
    refused(BILLION_LAUGHS, "dtd_forbidden", "payload has a DOCTYPE ('lolz') at line 2, column 1", "refused")
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><foo>&xxe;</foo>',
        b'<!DOCTYPE foo SYSTEM "http://127.0.0.1:1/evil.dtd"><foo/>',
        b'<!DOCTYPE foo [<!ENTITY % p SYSTEM "http://127.0.0.1:1/p.dtd"> %p;]><foo/>',
        b"<!DOCTYPE soap11:Envelope><soap11:Envelope/>",
    ],
)
def test_any_doctype_is_refused(body: bytes) -> None:
    refused(body, "dtd_forbidden", "payload has a DOCTYPE", "DTDs and entities are refused")


def test_doctype_inside_a_real_notification_is_refused() -> None:
    body = sample("02_created_event_item.xml").replace(b"?>\n", b'?>\n<!DOCTYPE x [<!ENTITY e "E">]>\n', 1)
    refused(body, "dtd_forbidden", "at line 2, column 1")


# --- where a malformed body went wrong ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b"<a>\n  <b>\n  </a>",
            "payload is not well-formed XML: mismatched tag at line 3, column 5: <b> opened at line 2, column 3 "
            "is not closed",
        ),
        (
            b"<a><b><c></c></a></b>",
            "payload is not well-formed XML: mismatched tag at line 1, column 16: <b> opened at line 1, column 4 "
            "is not closed",
        ),
        (
            "<a>\n<ä>ü</b></a>".encode("utf-16"),  # columns count characters, whatever the encoding
            "payload is not well-formed XML: mismatched tag at line 2, column 7: <ä> opened at line 2, column 1 "
            "is not closed",
        ),
    ],
)
def test_mismatched_tag_names_the_element_left_open(body: bytes, message: str) -> None:
    assert refused(body, "malformed_xml") == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<a><b>x", "payload is truncated at line 1, column 8: <b> opened at line 1, column 4 is never closed"),
        (b"<a>\n<b>x</b>", "payload is truncated at line 2, column 9: <a> opened at line 1, column 1 is never closed"),
        # cut inside a tag, a CDATA section, a character: the element around it is named
        (b"<a><b", "payload is truncated at line 1, column 4: <a> opened at line 1, column 1 is never closed"),
        (b"<a><![CDATA[x", "payload is truncated at line 1, column 14: <a> opened at line 1, column 1 is never closed"),
        (
            "<a>é".encode()[:-1],
            "payload is truncated at line 1, column 4: <a> opened at line 1, column 1 is never closed",
        ),
        (b'<a x="1', "payload is truncated at line 1, column 1, before its root element opened"),
        (b"<?xml version='1.0'?><!-- x", "payload is truncated at line 1, column 22, before its root element opened"),
    ],
)
def test_truncated_body_is_called_truncated(body: bytes, message: str) -> None:
    assert refused(body, "malformed_xml") == message


def test_truncated_notification_names_where_it_was_cut() -> None:
    good = sample("00_seed_sample.xml")
    cut = good[: good.index(b"</t:Watermark>")]
    message = refused(cut, "malformed_xml")
    opened = good.index(b"<t:Watermark>") + 1
    assert message == (
        f"payload is truncated at line 1, column {len(cut) + 1}: <t:Watermark> opened at line 1, column {opened} "
        "is never closed"
    )
    # cut right after a start tag: that element is the one left open
    send = good.index(b"<m:SendNotification ")
    cut = good[: good.index(b">", send) + 1]
    assert refused(cut, "malformed_xml") == (
        f"payload is truncated at line 1, column {len(cut) + 1}: <m:SendNotification> opened at line 1, "
        f"column {send + 1} is never closed"
    )


def test_a_body_without_any_element_is_not_called_truncated() -> None:
    message = refused(b"<?xml version='1.0'?>\n", "malformed_xml")
    assert message == "payload is not well-formed XML: no element found at line 2, column 1"


def test_long_element_names_keep_their_local_name_when_clipped() -> None:
    prefix = "p" * 200
    body = f'<{prefix}:SubscriptionId xmlns:{prefix}="urn:x">x</b>'.encode()
    message = refused(body, "malformed_xml")
    assert f"<{'p' * 32}…:SubscriptionId> opened at line 1, column 1 is not closed" in message
    assert len(message) < 200
    uri = "urn:" + "u" * 500
    root = refused(f'<Envelope xmlns="{uri}"/>'.encode(), "not_send_notification")
    assert root == f"payload is not a SOAP envelope: its root element is <{{{uri[:31]}…}}:Envelope>"
    events = [make_event("Created", watermark(2)), f'<x:Extra xmlns:x="{uri}"/>']
    unknown = refused(make_notification(SUBSCRIPTION_A, None, events), "unknown_structure")
    assert unknown == f"response message 1: Notification holds an unknown element <{{{uri[:31]}…}}:Extra>"
    long_local = "L" * 100
    unknown = refused(make_notification(SUBSCRIPTION_A, None, [f"<t:{long_local}/>"]), "unknown_structure")
    assert unknown == f"response message 1: Notification holds an unknown element <t:{'L' * 60}…>"


def test_the_good_path_makes_no_second_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    def second_pass(*_: object) -> None:
        raise AssertionError("a well-formed body was parsed twice")

    monkeypatch.setattr(safexml, "_open_elements", second_pass)
    assert parse_sample("00_seed_sample.xml").notifications
    refused(b"<a>&xxe;</a>", "malformed_xml", "undefined entity at line 1, column 4")  # nor on other errors
    refused(BILLION_LAUGHS, "dtd_forbidden")


# --- an expected element elsewhere is not a missing one -----------------------------------------------------

_WRONG = "urn:wrong"


def _notification_in(
    namespace_declaration: str, name: str = "x:Notification", response_class: str = "Success"
) -> bytes:
    return envelope(
        f'<m:SendNotificationResponseMessage ResponseClass="{response_class}"><m:ResponseCode>NoError</m:ResponseCode>'
        f"<{name} {namespace_declaration}><t:SubscriptionId>{SUBSCRIPTION_A}</t:SubscriptionId>"
        f"{make_event('Created', watermark(2))}</{name}></m:SendNotificationResponseMessage>"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            _notification_in(f'xmlns:x="{_WRONG}"'),
            f"response message 1: Notification is in namespace '{_WRONG}', expected '{MESSAGES_NS}'",
        ),
        (
            _notification_in(f'xmlns:x="{_WRONG}"', response_class="Warning"),
            f"response message 1: Notification is in namespace '{_WRONG}', expected '{MESSAGES_NS}'",
        ),
        (
            _notification_in("", "t:Notification"),
            f"response message 1: Notification is in namespace '{TYPES_NS}', expected '{MESSAGES_NS}'",
        ),
        (
            _notification_in('xmlns=""', "Notification"),
            f"response message 1: Notification has no namespace, expected '{MESSAGES_NS}'",
        ),
    ],
)
def test_notification_in_a_wrong_namespace_is_named_not_missing(body: bytes, message: str) -> None:
    assert refused(body, "unknown_structure") == message


def test_elements_in_a_wrong_namespace_are_named_at_every_level() -> None:
    seed = sample("00_seed_sample.xml")
    body = seed.replace(b"<soap11:Body>", b'<w:Body xmlns:w="urn:wrong">').replace(b"</soap11:Body>", b"</w:Body>")
    assert refused(body, "not_send_notification") == (
        "SOAP envelope: Body is in namespace 'urn:wrong', expected "
        "'http://schemas.xmlsoap.org/soap/envelope/' or 'http://www.w3.org/2003/05/soap-envelope'"
    )
    body = seed.replace(b"<m:SendNotification ", b"<t:SendNotification ").replace(
        b"</m:SendNotification>", b"</t:SendNotification>"
    )
    assert refused(body, "not_send_notification") == (
        f"SOAP Body: SendNotification is in namespace '{TYPES_NS}', expected '{MESSAGES_NS}'"
    )
    body = seed.replace(b"m:ResponseMessages>", b"t:ResponseMessages>")
    assert refused(body, "unknown_structure") == (
        f"SendNotification: ResponseMessages is in namespace '{TYPES_NS}', expected '{MESSAGES_NS}'"
    )
    body = seed.replace(b"m:SendNotificationResponseMessage", b"t:SendNotificationResponseMessage")
    assert refused(body, "unknown_structure") == (
        f"ResponseMessages: SendNotificationResponseMessage is in namespace '{TYPES_NS}', expected '{MESSAGES_NS}'"
    )
    where = f"response message 1, event 1 (CreatedEvent) of subscription {SHORT_A}"
    for element in ("Watermark", "TimeStamp", "ItemId"):
        event = make_event("Created", watermark(2), item_id=ITEM_ID).replace(f"t:{element}", f"m:{element}")
        assert refused(make_notification(SUBSCRIPTION_A, None, [event]), "unknown_structure") == (
            f"{where}: {element} is in namespace '{MESSAGES_NS}', expected '{TYPES_NS}'"
        )


@pytest.mark.parametrize(
    "empty",
    ["<t:SubscriptionId/>", "<t:SubscriptionId></t:SubscriptionId>", "<t:SubscriptionId>\n \t</t:SubscriptionId>"],
)
def test_empty_subscription_id_is_called_empty_not_missing(empty: str) -> None:
    body = make_notification(SUBSCRIPTION_A, None, [make_event("Created", watermark(2))]).replace(
        f"<t:SubscriptionId>{SUBSCRIPTION_A}</t:SubscriptionId>".encode(), empty.encode()
    )
    assert refused(body, "no_subscription_id") == "response message 1: SubscriptionId is empty"


@pytest.mark.parametrize("element", ["Watermark", "TimeStamp"])
def test_empty_watermark_or_timestamp_is_called_empty_not_missing(element: str) -> None:
    event = make_event("Created", watermark(2))
    start = event.index(f"<t:{element}>")
    event = event[:start] + f"<t:{element}> </t:{element}>" + event[event.index(f"</t:{element}>") + len(element) + 5 :]
    assert refused(make_notification(SUBSCRIPTION_A, None, [event]), "unknown_structure") == (
        f"response message 1, event 1 (CreatedEvent) of subscription {SHORT_A}: {element} is empty"
    )


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"<a/>", "payload is not a SOAP envelope: its root element is <a>"),
        (b'<Envelope xmlns="urn:x"><Body/></Envelope>', "root element is <{urn:x}:Envelope>"),
        (f'<s:Envelope xmlns:s="{SOAP11_NS}"/>'.encode(), "SOAP envelope has no Body"),
        (f'<s:Envelope xmlns:s="{SOAP11_NS}"><s:Header/></s:Envelope>'.encode(), "has no Body"),
        (f'<s:Envelope xmlns:s="{SOAP11_NS}"><s:Body> </s:Body></s:Envelope>'.encode(), "has no Body"),
        (
            f'<s:Envelope xmlns:s="{SOAP11_NS}"><s:Body><s:Fault><faultcode>s:Client</faultcode></s:Fault>'
            "</s:Body></s:Envelope>".encode(),
            "SOAP Body holds <soap:Fault>, not <m:SendNotification>",
        ),
    ],
)
def test_not_send_notification(body: bytes, fragment: str) -> None:
    refused(body, "not_send_notification", fragment)


def test_no_subscription_id() -> None:
    events = [make_event("Created", watermark(2))]
    refused(
        make_notification(None, watermark(1), events),
        "no_subscription_id",
        "response message 1: Notification has no SubscriptionId",
    )
    blank = envelope(
        notification_message(SUBSCRIPTION_A, None, events),
        notification_message(" \n ", None, events),
    )
    assert refused(blank, "no_subscription_id") == "response message 2: SubscriptionId is empty"
    empty = envelope(
        '<m:SendNotificationResponseMessage ResponseClass="Success"><m:Notification/>'
        "</m:SendNotificationResponseMessage>"
    )
    assert refused(empty, "no_subscription_id") == "response message 1: Notification is empty; it has no SubscriptionId"


def test_missing_watermark_message_names_message_event_and_subscription() -> None:
    events = [
        make_event("Created", watermark(2)),
        make_event("Status", watermark(3)),
        make_event("Modified", None),
    ]
    message = refused(make_notification(SUBSCRIPTION_A, watermark(1), events), "unknown_structure")
    assert message == f"response message 1, event 3 (ModifiedEvent) of subscription {SHORT_A} has no Watermark"


def test_status_event_without_watermark_is_legal() -> None:
    note = only_notification(parse_payload(make_notification(SUBSCRIPTION_A, None, [make_event("Status", None)])))
    assert note.events == (Event("Status", None, None),)


UNKNOWN_STRUCTURE = [
    (
        [make_event("Future", watermark(2))],
        "response message 1: Notification holds an unknown element <t:FutureEvent>",
    ),
    ([], f"response message 1: Notification of subscription {SHORT_A} has no events"),
    (
        [make_event("Created", watermark(2), timestamp=None)],
        f"response message 1, event 1 (CreatedEvent) of subscription {SHORT_A} has no TimeStamp",
    ),
    (
        [make_event("Created", watermark(2), folder_id=CALENDAR_FOLDER_ID, item_id=ITEM_ID)],
        f"event 1 (CreatedEvent) of subscription {SHORT_A} has both of ItemId and FolderId; expected one",
    ),
    (
        [
            "<t:DeletedEvent><t:Watermark>x</t:Watermark><t:TimeStamp>2026-03-02T08:15:01Z</t:TimeStamp>"
            "</t:DeletedEvent>"
        ],
        "event 1 (DeletedEvent) of subscription 'RVhBTVBMRS1T…' has neither of ItemId and FolderId",
    ),
    (
        [
            "<t:CreatedEvent><t:Watermark>x</t:Watermark><t:TimeStamp>2026-03-02T08:15:01Z</t:TimeStamp>"
            '<t:ItemId ChangeKey="x"/></t:CreatedEvent>'
        ],
        "event 1 (CreatedEvent) of subscription 'RVhBTVBMRS1T…': ItemId has no Id attribute",
    ),
    (
        [make_event("Created", watermark(2), extra=f"<t:Watermark>{watermark(3)}</t:Watermark>")],
        "event 1 (CreatedEvent) of subscription 'RVhBTVBMRS1T…' has 2 Watermark elements; expected one",
    ),
    (
        [make_event("Status", None, extra="<t:Watermark><t:Counter>4</t:Counter></t:Watermark>")],
        "event 1 (StatusEvent) of subscription 'RVhBTVBMRS1T…': Watermark holds elements instead of text",
    ),
    (
        ["<t:CreatedEvent>just text</t:CreatedEvent>"],
        "event 1 (CreatedEvent) of subscription 'RVhBTVBMRS1T…' holds text instead of elements",
    ),
    (
        [make_event("Created", watermark(2)), f"<t:SubscriptionId>{SUBSCRIPTION_B}</t:SubscriptionId>"],
        "response message 1: Notification has more than one <t:SubscriptionId>",
    ),
    (
        ['<x:Extra xmlns:x="urn:x"/>'],
        "response message 1: Notification holds an unknown element <{urn:x}:Extra>",
    ),
]


@pytest.mark.parametrize(("events", "fragment"), UNKNOWN_STRUCTURE)
def test_unknown_structure(events: list[str], fragment: str) -> None:
    refused(make_notification(SUBSCRIPTION_A, watermark(1), events), "unknown_structure", fragment)


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        (
            [
                '<m:SendNotificationResponseMessage ResponseClass="Success"><m:ResponseCode>NoError'
                "</m:ResponseCode></m:SendNotificationResponseMessage>"
            ],
            "response message 1 (ResponseClass Success) has no Notification",
        ),
        (
            [notification_message(SUBSCRIPTION_A, None, [make_event("Created", watermark(2))], response_class="Maybe")],
            "response message 1 has ResponseClass 'Maybe'; expected Success, Warning or Error",
        ),
        (
            ["<m:SendNotificationResponseMessage><m:Notification/></m:SendNotificationResponseMessage>"],
            "response message 1 has no ResponseClass",
        ),
        ([], "ResponseMessages holds no SendNotificationResponseMessage"),
        (
            ["<m:GetEventsResponseMessage/>"],
            "ResponseMessages holds an unexpected <m:GetEventsResponseMessage>",
        ),
        (["<m:SendNotificationResponseMessage/>"], "response message 1 is empty"),
        (
            [
                notification_message(SUBSCRIPTION_A, None, [make_event("Created", watermark(2))]).replace(
                    "<m:Notification>", "<m:Notification></m:Notification><m:Notification>"
                )
            ],
            "response message 1 has 2 Notification elements; expected one",
        ),
    ],
)
def test_unknown_message_structure(messages: list[str], fragment: str) -> None:
    refused(envelope(*messages), "unknown_structure", fragment)


def test_send_notification_without_response_messages() -> None:
    body = (
        f'<s:Envelope xmlns:s="{SOAP11_NS}"><s:Body><m:SendNotification '
        'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"/></s:Body></s:Envelope>'
    ).encode()
    refused(body, "unknown_structure", "SendNotification has no ResponseMessages")


@pytest.mark.parametrize(
    ("unread", "fragment"),
    [
        ("three", "UnreadCount 'three' is not an integer"),
        ("3.0", "UnreadCount '3.0' is not an integer"),
        ("0x3", "UnreadCount '0x3' is not an integer"),
        ("\u0663", "is not an integer"),  # ARABIC-INDIC DIGIT THREE: int() would take it, xs:int does not
        ("2147483648", "UnreadCount '2147483648' is outside the 32-bit integer range"),
        ("-2147483649", "is outside the 32-bit integer range"),
        ("9" * 5000, "is outside the 32-bit integer range"),
    ],
)
def test_bad_unread_count(unread: str, fragment: str) -> None:
    events = [make_event("Modified", watermark(2), folder_id=INBOX_FOLDER_ID, unread_count=unread)]
    refused(
        make_notification(SUBSCRIPTION_A, watermark(1), events),
        "bad_value",
        f"response message 1, event 1 (ModifiedEvent) of subscription {SHORT_A}: ",
        fragment,
    )


@pytest.mark.parametrize(
    ("unread", "value"),
    [("2147483647", 2**31 - 1), ("-2147483648", -(2**31)), ("+5", 5), ("007", 7), ("\n 3 \t", 3), ("0", 0)],
)
def test_good_unread_count(unread: str, value: int) -> None:
    events = [make_event("Modified", watermark(2), folder_id=INBOX_FOLDER_ID, unread_count=unread)]
    assert (
        only_notification(parse_payload(make_notification(SUBSCRIPTION_A, None, events))).events[0].unread_count
        == value
    )


@pytest.mark.parametrize(
    "stamp",
    [
        "yesterday",
        "2026-02-30T08:15:01Z",
        "2026-03-02 08:15:01Z",
        "2026-03-02",
        "20260302T081501Z",
        "2026-03-02T08:15Z",
        "2026-03-02T25:00:00Z",
        "2026-03-02T24:00:01Z",
        "2026-03-02T08:15:01+15:00",
        "2026-03-02T08:15:01+01:60",
        "2026-03-02T08:15:01 Z",
        "0000-01-01T00:00:00Z",
        "10000-01-01T00:00:00Z",
        "9999-12-31T23:00:00-05:00",
        "\u0662026-03-02T08:15:01Z",
        "2026-03-02T08:15:01." + "1" * 100 + "Z",
    ],
)
def test_bad_timestamp(stamp: str) -> None:
    events = [make_event("Created", watermark(2), timestamp=stamp)]
    refused(
        make_notification(SUBSCRIPTION_A, None, events),
        "bad_value",
        f"event 1 (CreatedEvent) of subscription {SHORT_A}: TimeStamp ",
        "is not an xs:dateTime",
    )


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-03-02T08:15:01Z", utc(2026, 3, 2, 8, 15, 1)),
        ("  2026-03-02T08:15:01Z\n", utc(2026, 3, 2, 8, 15, 1)),
        ("2026-03-02T08:15:01.1234567Z", utc(2026, 3, 2, 8, 15, 1, 123456)),
        ("2026-03-02T08:15:01.5Z", utc(2026, 3, 2, 8, 15, 1, 500000)),
        ("2026-03-02T10:15:01+02:00", utc(2026, 3, 2, 8, 15, 1)),
        ("2026-03-01T23:45:01-08:30", utc(2026, 3, 2, 8, 15, 1)),
        ("2026-03-02T08:15:01+00:00", utc(2026, 3, 2, 8, 15, 1)),
        ("2026-03-02T08:15:01", utc(2026, 3, 2, 8, 15, 1)),  # no zone: Exchange means UTC
        ("2026-03-01T24:00:00Z", utc(2026, 3, 2)),
        ("2024-02-29T00:00:00Z", utc(2024, 2, 29)),
    ],
)
def test_good_timestamp_is_aware_utc(stamp: str, expected: datetime) -> None:
    events = [make_event("Created", watermark(2), timestamp=stamp)]
    event = only_notification(parse_payload(make_notification(SUBSCRIPTION_A, None, events))).events[0]
    assert event.timestamp == expected
    assert event.timestamp is not None and event.timestamp.tzinfo is UTC


@pytest.mark.parametrize(("text", "value"), [("true", True), ("1", True), (" false ", False), ("0", False)])
def test_more_events_booleans(text: str, value: bool) -> None:
    body = make_notification(SUBSCRIPTION_A, None, [make_event("Status", None)]).replace(
        b"<t:MoreEvents>false<", f"<t:MoreEvents>{text}<".encode()
    )
    assert only_notification(parse_payload(body)).more_events is value


@pytest.mark.parametrize("text", ["yes", "TRUE", "False", "2"])
def test_more_events_not_a_boolean(text: str) -> None:
    body = make_notification(SUBSCRIPTION_A, None, [make_event("Status", None)]).replace(
        b"<t:MoreEvents>false<", f"<t:MoreEvents>{text}<".encode()
    )
    refused(body, "bad_value", f"response message 1: MoreEvents '{text}' is not a boolean")


def test_more_events_absent_means_false() -> None:
    body = make_notification(SUBSCRIPTION_A, None, [make_event("Status", None)], more_events=None)
    assert only_notification(parse_payload(body)).more_events is False


def test_watermark_with_inner_whitespace_is_a_bad_value() -> None:
    events = [make_event("Created", "AQAAAD ucWg5B")]
    refused(
        make_notification(SUBSCRIPTION_A, None, events),
        "bad_value",
        "watermark 'AQAAAD ucWg5B' contains whitespace",
    )
    refused(
        make_notification(SUBSCRIPTION_A, "a\nb", events),
        "bad_value",
        "response message 1: PreviousWatermark",
    )


# --- values, encodings and hostile shapes -------------------------------------------------------------------


def test_whitespace_around_values_is_stripped() -> None:
    body = make_notification(
        f"\n   {SUBSCRIPTION_A}\t",
        f" {watermark(1)}\r\n",
        [
            make_event(
                "Moved",
                f"\n{watermark(2)} ",
                item_id=f"  {ITEM_ID} ",
                item_change_key=" ck ",
                old_item_id=f" {OLD_ITEM_ID}",
            )
        ],
    )
    note = only_notification(parse_payload(body))
    assert note.subscription_id == SUBSCRIPTION_A
    assert note.previous_watermark == watermark(1)
    (event,) = note.events
    assert (event.watermark, event.item_id, event.item_change_key) == (watermark(2), ITEM_ID, "ck")
    assert event.old_item_id == OLD_ITEM_ID


def test_numbers_and_markup_where_text_belongs_stay_text() -> None:
    body = make_notification("12345", "0", [make_event("Created", "42", item_id="7", item_change_key="1.5")])
    note = only_notification(parse_payload(body))
    assert (note.subscription_id, note.previous_watermark) == ("12345", "0")
    assert (note.events[0].watermark, note.events[0].item_id, note.events[0].item_change_key) == (
        "42",
        "7",
        "1.5",
    )
    escaped = make_notification("<&>\"'", None, [make_event("Created", "w<1>", item_id='a"b')])
    note = only_notification(parse_payload(escaped))
    assert note.subscription_id == "<&>\"'"
    assert (note.events[0].watermark, note.events[0].item_id) == ("w<1>", 'a"b')


def test_cdata_and_attributes_on_text_elements() -> None:
    body = make_notification(SUBSCRIPTION_A, None, [make_event("Created", watermark(2))]).replace(
        f"<t:Watermark>{watermark(2)}</t:Watermark>".encode(),
        f'<t:Watermark xmlns:x="urn:x" x:note="n"><![CDATA[{watermark(2)}]]></t:Watermark>'.encode(),
    )
    assert only_notification(parse_payload(body)).events[0].watermark == watermark(2)


def test_unknown_child_elements_of_an_event_are_ignored() -> None:
    # A newer Exchange may add fields to known events; only unknown *event types* would lose data.
    events = [
        make_event("Created", watermark(2), extra='<t:ItemClass>IPM.Appointment</t:ItemClass><x:Y xmlns:x="urn:x"/>')
    ]
    plain = [make_event("Created", watermark(2))]
    assert parse_payload(make_notification(SUBSCRIPTION_A, None, events)) == parse_payload(
        make_notification(SUBSCRIPTION_A, None, plain)
    )


def test_utf8_bom() -> None:
    body = b"\xef\xbb\xbf" + sample("02_created_event_item.xml")
    assert parse_payload(body) == parse_sample("02_created_event_item.xml")


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16(codec: str) -> None:
    text = sample("03_modified_event_item_and_folder.xml").decode().replace('encoding="utf-8"', 'encoding="utf-16"')
    body = text.encode(codec)
    if codec == "utf-16-le":
        body = b"\xff\xfe" + body
    if codec == "utf-16-be":
        body = b"\xfe\xff" + body
    assert parse_payload(body) == parse_sample("03_modified_event_item_and_folder.xml")


def test_utf16_without_declaration_or_bom() -> None:
    text = '<?xml version="1.0"?>' + sample("01_status_event.xml").decode().split("?>", 1)[1]
    assert parse_payload(text.encode("utf-16-le")) == parse_sample("01_status_event.xml")


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le"])
def test_utf16_bytes_declaring_utf8_are_refused_cleanly(codec: str) -> None:
    refused(
        sample("01_status_event.xml").decode().encode(codec),
        "not_xml",
        "payload cannot be decoded: encoding specified in XML declaration is incorrect",
    )


@pytest.mark.parametrize("declared", ["iso-8859-1", "us-ascii", "windows-1252"])
def test_other_honest_encodings(declared: str) -> None:
    body = sample("02_created_event_item.xml").replace(b'encoding="utf-8"', f'encoding="{declared}"'.encode())
    assert parse_payload(body) == parse_sample("02_created_event_item.xml")


def test_non_ascii_utf8_values() -> None:
    note = only_notification(parse_payload(make_notification("Raum-Zürich-☃", None, [make_event("Status", None)])))
    assert note.subscription_id == "Raum-Zürich-☃"


def test_huge_attribute_value_is_fine() -> None:
    big = "A" * 2_000_000
    events = [make_event("Created", watermark(2), item_id=big)]
    assert only_notification(parse_payload(make_notification(SUBSCRIPTION_A, None, events))).events[0].item_id == big


def test_long_values_are_clipped_in_messages() -> None:
    message = refused(
        make_notification("S" * 10_000, None, [make_event("Created", watermark(2), timestamp="T" * 10_000)]),
        "bad_value",
        "subscription 'SSSSSSSSSSSS…'",
    )
    assert len(message) < 300


@pytest.mark.parametrize("where", ["header", "event", "root"])
def test_deep_nesting_never_escapes_as_recursion_error(where: str) -> None:
    depth = 200_000
    nest = "<x>" * depth + "</x>" * depth
    if where == "root":
        body = nest.encode()
    elif where == "header":
        body = sample("02_created_event_item.xml").replace(b"</soap11:Header>", nest.encode() + b"</soap11:Header>")
    else:
        body = make_notification(SUBSCRIPTION_A, None, [make_event("Created", watermark(2), extra=nest)])
    started = time.perf_counter()
    if where == "root":
        refused(body, "not_send_notification", "its root element is <x>")
    else:  # unknown elements in the header or inside an event are ignored, however deep
        assert len(only_notification(parse_payload(body)).events) == (2 if where == "header" else 1)
    assert time.perf_counter() - started < 10


def test_many_events_keep_order_and_scale() -> None:
    kinds = [EVENT_KINDS[i % 7] for i in range(5000)]
    events = [make_event(kind, watermark(i + 1)) for i, kind in enumerate(kinds)]
    note = only_notification(parse_payload(make_notification(SUBSCRIPTION_A, watermark(0), events)))
    assert [e.kind for e in note.events] == kinds
    assert [counter(e.watermark) for e in note.events] == list(range(1, 5001))


def test_parse_is_fast() -> None:
    # Generous bound (typical is ~0.1 ms): catches pathological slowness, not noise.
    body = sample("02_created_event_item.xml")
    started = time.perf_counter()
    for _ in range(200):
        parse_payload(body)
    assert (time.perf_counter() - started) / 200 < 0.005


# --- property: anything in, ParsedPayload or PermanentError out ---------------------------------------------

SAMPLE_BODIES = [p.read_bytes() for p in sorted(SAMPLES.glob("*.xml"))]
PROPERTY = settings(
    deadline=timedelta(milliseconds=500),
    database=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow],
)


def parses_or_refuses(body: bytes) -> None:
    try:
        parsed = parse_payload(body)
    except PermanentError as exc:
        assert exc.error_class in ERROR_CLASSES
        assert str(exc)
        return
    for note in parsed.notifications:
        assert note.subscription_id and note.events
        for event in note.events:
            assert event.kind in EVENT_KINDS
            if event.makes_row:
                assert event.watermark and event.timestamp is not None
                assert event.timestamp.tzinfo is UTC
                assert (event.item_id is None) != (event.folder_id is None)
            if event.unread_count is not None:
                assert -(2**31) <= event.unread_count < 2**31


@st.composite
def mutated_samples(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLE_BODIES)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "duplicate"]))
        if operation == "truncate":
            del data[at:]
        elif operation == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif operation == "insert":
            junk = draw(
                st.one_of(
                    st.binary(max_size=16),
                    st.sampled_from(
                        [
                            b"<",
                            b">",
                            b"&",
                            b"</t:Watermark>",
                            b"<t:FutureEvent/>",
                            b"<!DOCTYPE x>",
                            b"\x00",
                            b"\xff",
                            b"]]>",
                            b"<![CDATA[",
                            b"<?pi?>",
                            b'"',
                            b"<t:StatusEvent/>",
                            b"<t:UnreadCount>x</t:UnreadCount>",
                        ]
                    ),
                )
            )
            data[at:at] = junk
        elif operation == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif operation == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 256))]
    return bytes(data)


# Text that XML can carry (no control characters or surrogates), so that most payloads are well-formed.
XML_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=12)
WEIRD = st.one_of(
    st.none(),
    XML_TEXT,
    st.sampled_from(["", " ", "3", "-1", "2147483648", "true", "x y", "2026-13-02T08:15:01Z", "&amp;"]),
)
EXTRAS = st.sampled_from(
    [
        "",
        f"<t:Watermark>{watermark(9)}</t:Watermark>",
        "<t:ItemId/>",
        '<t:FolderId Id=""/>',
        "<t:Foo><t:Bar/></t:Foo>",
        "text",
        "<!-- c -->",
        "<t:TimeStamp/>",
        "<t:UnreadCount><t:X/></t:UnreadCount>",
        '<t:OldItemId Id="o"/>',
    ]
)


@st.composite
def events(draw: st.DrawFn) -> str:
    """Mostly valid events of every kind; one in five has random (often invalid) fields."""
    if draw(st.integers(0, 4)):
        return make_event(
            draw(st.sampled_from(EVENT_KINDS)),
            watermark(draw(st.integers(0, 2**64 - 1))),
            timestamp=draw(st.sampled_from(["2026-03-02T08:15:01Z", "2026-03-02T10:15:01.5+02:00"])),
            folder_id=draw(st.sampled_from([None, CALENDAR_FOLDER_ID])),
            unread_count=draw(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1))),
        )
    return make_event(
        draw(st.sampled_from([*EVENT_KINDS, "Future"])),
        draw(WEIRD),
        timestamp=draw(WEIRD),
        item_id=draw(WEIRD),
        item_change_key=draw(WEIRD),
        folder_id=draw(WEIRD),
        parent_folder_id=draw(WEIRD),
        old_item_id=draw(WEIRD),
        unread_count=draw(WEIRD),
        extra=draw(EXTRAS),
    )


@st.composite
def response_messages(draw: st.DrawFn) -> str:
    """Mostly Success messages with events, sometimes Warning/Error/odd ones."""
    if draw(st.integers(0, 3)):
        subscription = draw(st.one_of(st.sampled_from([SUBSCRIPTION_A, SUBSCRIPTION_B]), WEIRD))
        return notification_message(
            subscription,
            draw(st.one_of(st.just(watermark(1)), WEIRD)),
            draw(st.lists(events(), min_size=1, max_size=4)),
            draw(st.one_of(st.none(), st.booleans())),
            response_class=draw(st.sampled_from(["Success", "Success", "Warning", "Error", "Other"])),
        )
    return error_response(draw(WEIRD), draw(XML_TEXT), draw(XML_TEXT))


@st.composite
def structured_payloads(draw: st.DrawFn) -> bytes:
    return envelope(
        *draw(st.lists(response_messages(), min_size=1, max_size=3)),
        prefix=draw(st.sampled_from(["soap11", "s", ""])),
        soap_ns=draw(st.sampled_from([SOAP11_NS, SOAP12_NS, SOAP12_NS, "urn:x"])),
        server_version=draw(st.one_of(st.just("Exchange2016"), WEIRD)),
    )


@PROPERTY
@given(st.binary(max_size=2048))
def test_property_arbitrary_bytes(body: bytes) -> None:
    parses_or_refuses(body)


@PROPERTY
@given(
    st.sampled_from([b"<", b"<?xml version='1.0'?>", b"\xef\xbb\xbf<", b"\xff\xfe<\x00", b"<a>"]),
    st.binary(max_size=1024),
)
def test_property_bytes_that_start_like_xml(prefix: bytes, rest: bytes) -> None:
    parses_or_refuses(prefix + rest)


@PROPERTY
@given(mutated_samples())
def test_property_mutated_samples(body: bytes) -> None:
    parses_or_refuses(body)


@PROPERTY
@given(structured_payloads())
def test_property_structured_payloads(body: bytes) -> None:
    parses_or_refuses(body)
