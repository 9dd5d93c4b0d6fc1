"""``worker.graph``: Graph change-notification bodies → changes, lifecycle events and bad items (SPEC §9).

The samples (tests/samples/graph, see their README) give the good cases; one item at a time is spoilt for the
bad ones, each of which must stay a ``BadItem`` of its own beside good items; hypothesis throws bytes, JSON
and notification-shaped items at the parser, which must answer with a payload or a ``PermanentError``, never
anything else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import PermanentError
from shared.graph import CHANGE_TYPES, LIFECYCLE_EVENTS
from tests.graph_samples import items, sample
from worker.graph import parse_graph, watermark
from worker.graph_types import BadItem, Change, EncryptedContent, GraphPayload, Lifecycle

TENANT = "5d1c7e0a-3b6f-4a92-8e41-0a7f3c9b2d18"
ROOM_A = "2b9e6f14-8c3d-4a71-9e05-d7c4a1f6b382"  # the subscriptions of rooms A-101 and B-204
ROOM_B = "71c0d8a3-5e29-4f6b-8a14-3b9e2c7d0f55"
EV1 = "AAMkADAAAAAHNuLXNhbXBsZS9yb29tLWExMDEvZXYtMDAwMQAA"  # room A's ev-0001, ev-0002, ev-0004
EV2 = "AAMkADAAAAAHNuLXNhbXBsZS9yb29tLWExMDEvZXYtMDAwMgAA"
EV4 = "AAMkADAAAAAHNuLXNhbXBsZS9yb29tLWExMDEvZXYtMDAwNAAA"
EV3 = "AAMkADAAAAAHNuLXNhbXBsZS9yb29tLWIyMDQvZXYtMDAwMwAA"  # room B's ev-0003
ETAG = "DwAAABYAAACKL0xhfT5LGaXAkebStH8IAAAAUa"  # room A's etags without their last two characters
ETAG_B = "DwAAABYAAADjt9kFFKJMj5tuXwqMLTHnAAAAIg"
EXPIRES_A = datetime(2026, 12, 8, 7, 30, 0, 447239, tzinfo=UTC)  # "…00.4472391+00:00", 7 digits cut to 6
EXPIRES_B = datetime(2026, 12, 7, 19, 5, 12, 310000, tzinfo=UTC)  # "…12.31Z"
WATERMARK = re.compile(r"graph:[0-9a-f]{64}")
WHERE = f"item 1 (subscription {ROOM_A[:8]}…)"  # how a message names the spoilt item of ``around``

ITEM_CLASSES = {"no_subscription_id", "no_resource_data", "unknown_change_type", "unknown_lifecycle_event", "bad_value"}
BODY_CLASSES = {"not_json", "not_graph_notification"}
PROPERTY = settings(
    deadline=None,
    database=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def post(*value: Any, **extra: Any) -> bytes:
    return json.dumps({"value": list(value), **extra}).encode()


def updated() -> dict[str, Any]:
    """A fresh copy of sample 03's item: room A's ev-0001 ``updated``."""
    (item,) = items("03")
    return item


def deleted() -> dict[str, Any]:
    """A fresh copy of sample 04's item: room A's ev-0002 ``deleted``, without an etag."""
    (item,) = items("04")
    return item


def only_change(body: bytes) -> Change:
    payload = parse_graph(body)
    assert (payload.lifecycle, payload.bad) == ((), ()), payload
    (change,) = payload.changes
    return change


def only_bad(item: Any) -> BadItem:
    """The bad item that ``item`` makes between two good ones (which must still parse)."""
    payload = parse_graph(post(updated(), item, deleted()))
    assert [c.index for c in payload.changes] == [0, 2], payload
    (bad,) = payload.bad
    assert bad.index == 1
    assert bad.item == item
    return bad


def refused(body: bytes) -> PermanentError:
    with pytest.raises(PermanentError) as caught:
        parse_graph(body)
    return caught.value


# --- the samples ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    changes: list[tuple[str, str, str, str | None]]  # subscription, event type, item id, etag
    lifecycle: list[tuple[str, str]]  # subscription, event


EXPECTED = {
    "02": Expected([(ROOM_A, "Created", EV1, ETAG + "Dz")], []),
    "03": Expected([(ROOM_A, "Modified", EV1, ETAG + "D5")], []),
    "04": Expected([(ROOM_A, "Deleted", EV2, None)], []),
    "05": Expected(
        [
            (ROOM_A, "Created", EV4, ETAG + "ES"),
            (ROOM_B, "Created", EV3, ETAG_B + "Ox"),
            (ROOM_A, "Modified", EV4, ETAG + "LA"),
            (ROOM_B, "Modified", EV3, ETAG_B + "PH"),
            (ROOM_B, "Modified", EV3, ETAG_B + "PH"),
        ],
        [],
    ),
    "06": Expected([(ROOM_A, "Modified", EV1, ETAG + "D5"), (ROOM_A, "Modified", EV1, ETAG + "Pk")], []),
    "07": Expected([(ROOM_A, "Deleted", EV1, None), (ROOM_B, "Deleted", EV3, None)], []),  # clientState: not ours
    "08": Expected([], [(ROOM_A, "reauthorizationRequired")]),
    "09": Expected([], [(ROOM_B, "subscriptionRemoved")]),
    "10": Expected([], [(ROOM_A, "missed"), (ROOM_B, "reauthorizationRequired")]),
}
EXPIRES = {ROOM_A: EXPIRES_A, ROOM_B: EXPIRES_B}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_samples_parse_to_their_changes_and_lifecycle_events(name: str) -> None:
    expected = EXPECTED[name]
    received = items(name)
    payload = parse_graph(sample(name))

    assert payload.bad == ()
    assert payload.validation_tokens == ()
    assert [(c.subscription_id, c.event_type, c.item_id, c.etag) for c in payload.changes] == expected.changes
    assert [(e.subscription_id, e.event) for e in payload.lifecycle] == expected.lifecycle
    for change in payload.changes:
        assert change.item == received[change.index]
        assert change.resource == received[change.index]["resource"]
        assert change.tenant_id == TENANT
        assert change.expires_at == EXPIRES[change.subscription_id]
        assert WATERMARK.fullmatch(change.watermark)
        assert (change.encrypted, change.resource_data) == (None, None)
    for event in payload.lifecycle:
        assert event.item == received[event.index]
        assert event.tenant_id == TENANT
        assert event.expires_at == EXPIRES[event.subscription_id]
    indexes = sorted([c.index for c in payload.changes] + [e.index for e in payload.lifecycle])
    assert indexes == list(range(len(received)))


def test_expiry_is_aware_utc_in_both_of_graphs_forms() -> None:
    for name in ("05", "10"):
        payload = parse_graph(sample(name))
        expiries = [c.expires_at for c in payload.changes] + [e.expires_at for e in payload.lifecycle]
        for expires_at in expiries:
            assert expires_at is not None
            assert expires_at.utcoffset() == timedelta(0)
    raw = {item["subscriptionId"]: item["subscriptionExpirationDateTime"] for item in items("05")}
    assert raw == {ROOM_A: "2026-12-08T07:30:00.4472391+00:00", ROOM_B: "2026-12-07T19:05:12.31Z"}


def test_the_verbatim_pair_in_05_shares_a_watermark_and_nothing_else_does() -> None:
    changes = parse_graph(sample("05")).changes
    marks = [c.watermark for c in changes]
    assert len(marks) == 5
    assert len(set(marks)) == 4
    assert marks[3] == marks[4]
    # the create-then-update pair of one event, and two subscriptions' changes, stay apart
    assert len({marks[0], marks[2]}) == len({marks[1], marks[3]}) == 2


def test_a_redelivery_in_06_has_the_watermark_of_03_and_the_newer_update_its_own() -> None:
    (first_delivery,) = parse_graph(sample("03")).changes
    retried, newer = parse_graph(sample("06")).changes
    assert retried.watermark == first_delivery.watermark
    assert newer.watermark != first_delivery.watermark
    (created,) = parse_graph(sample("02")).changes
    assert created.watermark not in (first_delivery.watermark, newer.watermark)


# --- watermarks -------------------------------------------------------------------------------------------


def test_a_delete_has_one_watermark_with_or_without_etag() -> None:
    without = deleted()
    with_etag = deleted()
    with_etag["resourceData"]["@odata.etag"] = 'W/"DwAAABYAAACKL0xhfT5LGaXAkebStH8IAAAAUaZZ"'
    plain, tagged = only_change(post(without)), only_change(post(with_etag))
    assert (plain.etag, tagged.etag) == (None, "DwAAABYAAACKL0xhfT5LGaXAkebStH8IAAAAUaZZ")
    assert plain.watermark == tagged.watermark
    assert watermark(TENANT, ROOM_A, "deleted", EV2, "x") == watermark(TENANT, ROOM_A, "deleted", EV2, None)
    assert watermark(TENANT, ROOM_A, "Deleted", EV2, "x") == watermark(TENANT, ROOM_A, "deleted", EV2, "")


def test_watermark_differs_with_change_type_and_every_part_of_the_identity() -> None:
    base = watermark(TENANT, ROOM_A, "updated", EV1, "e1")
    others = [
        watermark(TENANT, ROOM_A, "created", EV1, "e1"),
        watermark(TENANT, ROOM_A, "deleted", EV1, "e1"),
        watermark(None, ROOM_A, "updated", EV1, "e1"),
        watermark(TENANT, ROOM_B, "updated", EV1, "e1"),
        watermark(TENANT, ROOM_A, "updated", EV2, "e1"),
        watermark(TENANT, ROOM_A, "updated", EV1, "e2"),
        watermark(TENANT, ROOM_A, "updated", EV1, None),
    ]
    assert len({base, *others}) == 1 + len(others)
    assert all(WATERMARK.fullmatch(mark) for mark in (base, *others))

    created = updated()
    created["changeType"] = "created"
    assert only_change(post(created)).watermark != only_change(post(updated())).watermark


def test_watermark_is_case_blind_on_change_type_and_equal_for_no_tenant_and_an_empty_one() -> None:
    assert watermark(TENANT, ROOM_A, "Updated", EV1, "e") == watermark(TENANT, ROOM_A, "updated", EV1, "e")
    assert watermark(None, ROOM_A, "updated", EV1, "e") == watermark("", ROOM_A, "updated", EV1, "e")
    shouting = updated()
    shouting["changeType"] = "UPDATED"
    change = only_change(post(shouting))
    assert (change.event_type, change.watermark) == ("Modified", only_change(post(updated())).watermark)


def test_watermark_parts_cannot_run_into_each_other() -> None:
    assert watermark("ab", "c", "updated", "d", "e") != watermark("a", "bc", "updated", "d", "e")
    assert watermark("a", "b", "updated", "c\x1fd", "") != watermark("a", "b", "updated", "c", "d")
    assert watermark("a", 'b", "c', "updated", "d", "e") != watermark("a", "b", "c", "updated", "d")


def test_watermark_ignores_expiry_resource_spelling_client_state_and_other_members() -> None:
    (first,) = parse_graph(sample("03")).changes
    renewed = updated()
    renewed["subscriptionExpirationDateTime"] = "2027-01-01T00:00:00Z"
    renewed["resource"] = f"Users('8a2f4c61-7d3e-4b19-a5c0-91e6d2b47f08')/Events('{EV1}')"
    renewed["clientState"] = "another secret"
    renewed["resourceData"]["@odata.id"] = "users/elsewhere"
    renewed["id"] = "a notification id"
    change = only_change(post(renewed))
    assert change.watermark == first.watermark
    assert change.expires_at == datetime(2027, 1, 1, tzinfo=UTC)
    assert change.resource == renewed["resource"]


# --- values -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("etag", "expected"),
    [
        ('W/"DwAAABYAAAC"', "DwAAABYAAAC"),
        ('"DwAAABYAAAC"', "DwAAABYAAAC"),
        ("DwAAABYAAAC", "DwAAABYAAAC"),
        ('W/""', None),
        ("", None),
        (None, None),
    ],
)
def test_etag_loses_its_wrapper(etag: str | None, expected: str | None) -> None:
    item = updated()
    item["resourceData"]["@odata.etag"] = etag
    assert only_change(post(item)).etag == expected


def test_an_absent_etag_is_none() -> None:
    item = updated()
    del item["resourceData"]["@odata.etag"]
    assert only_change(post(item)).etag is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-08T07:30:00.4472391+00:00", EXPIRES_A),
        ("2026-12-07T19:05:12.31Z", EXPIRES_B),
        ("2026-12-07T19:05:12Z", datetime(2026, 12, 7, 19, 5, 12, tzinfo=UTC)),
        ("2026-12-08T13:00:00.9907405+05:30", datetime(2026, 12, 8, 7, 30, 0, 990740, tzinfo=UTC)),
        ("2026-12-08T07:30:00.123456789-01:00", datetime(2026, 12, 8, 8, 30, 0, 123456, tzinfo=UTC)),
    ],
)
def test_expiry_in_graphs_forms(text: str, expected: datetime) -> None:
    item = updated()
    item["subscriptionExpirationDateTime"] = text
    expires_at = only_change(post(item)).expires_at
    assert expires_at == expected
    assert expires_at is not None and expires_at.tzinfo is UTC


def test_an_absent_or_null_expiry_is_none() -> None:
    item = updated()
    del item["subscriptionExpirationDateTime"]
    assert only_change(post(item)).expires_at is None
    (lifecycle,) = items("08")
    lifecycle["subscriptionExpirationDateTime"] = None
    (event,) = parse_graph(post(lifecycle)).lifecycle
    assert event.expires_at is None


def test_a_lifecycle_item_needs_no_resource_and_a_null_lifecycle_event_is_a_change() -> None:
    (missed,) = items("10")[:1]
    missed["lifecycleEvent"] = "MISSED"
    (event,) = parse_graph(post(missed)).lifecycle
    assert (event.index, event.subscription_id, event.event) == (0, ROOM_A, "missed")
    assert event.event in LIFECYCLE_EVENTS

    change = updated()
    change["lifecycleEvent"] = None
    assert only_change(post(change)).event_type == "Modified"


def test_a_rich_item_keeps_its_encrypted_content_and_the_post_its_tokens() -> None:
    item = updated()
    content = {
        "data": "ZGF0YQ==",
        "dataKey": "a2V5",
        "dataSignature": "c2ln",
        "encryptionCertificateId": "syncnotify-2026",
        "encryptionCertificateThumbprint": "07B172DB2F2D8D4D4E1A1B4C",
    }
    item["encryptedContent"] = content
    payload = parse_graph(post(item, validationTokens=["eyJ0.one", "eyJ0.two"]))
    (change,) = payload.changes
    assert change.encrypted == EncryptedContent(
        "ZGF0YQ==", "a2V5", "c2ln", "syncnotify-2026", content["encryptionCertificateThumbprint"]
    )
    assert payload.validation_tokens == ("eyJ0.one", "eyJ0.two")
    assert change.resource_data is None  # worker.rich decrypts

    del content["encryptionCertificateThumbprint"]
    change = only_change(post(item, validationTokens=None))
    assert change.encrypted is not None and change.encrypted.thumbprint is None


def test_an_empty_value_is_an_empty_payload() -> None:
    assert parse_graph(b'{"value": []}') == GraphPayload((), (), (), ())


def test_a_byte_order_mark_is_allowed() -> None:
    assert parse_graph(b"\xef\xbb\xbf" + sample("02")) == parse_graph(sample("02"))


# --- bad items --------------------------------------------------------------------------------------------


def spoilt(**changes: Any) -> dict[str, Any]:
    """Sample 03's item with members replaced (``None``: removed); ``resourceData__id`` reaches into it."""
    item = updated()
    for key, value in changes.items():
        node = item
        *path, last = key.split("__")
        for step in path:
            node = node[step]
        name = {"odata_etag": "@odata.etag"}.get(last, last)
        if value is None:
            node.pop(name, None)
        else:
            node[name] = value
    return item


def encrypted(**changes: Any) -> dict[str, Any]:
    content: dict[str, Any] = {
        "data": "ZGF0YQ==",
        "dataKey": "a2V5",
        "dataSignature": "c2ln",
        "encryptionCertificateId": "syncnotify-2026",
    }
    content.update(changes)
    return {key: value for key, value in content.items() if value is not None}


BAD_ITEMS: list[tuple[str, dict[str, Any], str, str]] = [
    # name, item, class, message (``WHERE`` stands for the item's place)
    ("no changeType", spoilt(changeType=None), "unknown_change_type", "no changeType is not created"),
    ("moved", spoilt(changeType="moved"), "unknown_change_type", "changeType 'moved' is not created, updated or"),
    ("comma list", spoilt(changeType="created,updated"), "unknown_change_type", "'created,updated' is not"),
    ("numeric changeType", spoilt(changeType=3), "unknown_change_type", "changeType the number 3 is not"),
    (
        "no resourceData",
        spoilt(resourceData=None),
        "no_resource_data",
        "the updated change has no resourceData; expected an object",
    ),
    (
        "resourceData text",
        spoilt(resourceData="x"),
        "no_resource_data",
        "change has resourceData 'x'; expected an object",
    ),
    ("no id", spoilt(resourceData__id=None), "no_resource_data", "resourceData has no id"),
    ("empty id", spoilt(resourceData__id=""), "no_resource_data", "resourceData has id ''"),
    ("numeric id", spoilt(resourceData__id=7), "no_resource_data", "resourceData has id the number 7"),
    ("vanished", spoilt(lifecycleEvent="vanished"), "unknown_lifecycle_event", "lifecycleEvent 'vanished' is not"),
    ("lifecycle array", spoilt(lifecycleEvent=[]), "unknown_lifecycle_event", "lifecycleEvent an array is not"),
    ("resource number", spoilt(resource=42), "bad_value", "resource is the number 42, not a string"),
    ("tenant object", spoilt(tenantId={}), "bad_value", "tenantId is an object, not a string"),
    ("etag number", spoilt(resourceData__odata_etag=1), "bad_value", "resourceData.@odata.etag is the number 1"),
    ("expiry text", spoilt(subscriptionExpirationDateTime="soon"), "bad_value", "'soon' is not an ISO 8601"),
    ("expiry number", spoilt(subscriptionExpirationDateTime=1.5), "bad_value", "is the number 1.5, not a string"),
    ("naive expiry", spoilt(subscriptionExpirationDateTime="2026-12-08T07:30:00"), "bad_value", "no UTC offset"),
    ("expiry 24:60", spoilt(subscriptionExpirationDateTime="2026-12-08T24:60:00Z"), "bad_value", "not an ISO"),
    ("expiry too early", spoilt(subscriptionExpirationDateTime="0001-01-01T00:00:00+01:00"), "bad_value", "range"),
    ("expiry too late", spoilt(subscriptionExpirationDateTime="9999-12-31T23:59:59-01:00"), "bad_value", "range"),
    ("encrypted text", spoilt(encryptedContent="x"), "bad_value", "encryptedContent is 'x', not an object"),
    ("no dataKey", spoilt(encryptedContent=encrypted(dataKey=None)), "bad_value", "encryptedContent has no dataKey"),
    (
        "two missing",
        spoilt(encryptedContent=encrypted(data="", encryptionCertificateId=None)),
        "bad_value",
        "encryptedContent has no data, encryptionCertificateId",
    ),
    (
        "numeric signature",
        spoilt(encryptedContent=encrypted(dataSignature=5)),
        "bad_value",
        "encryptedContent.dataSignature is the number 5, not a string",
    ),
    (
        "thumbprint array",
        spoilt(encryptedContent=encrypted(encryptionCertificateThumbprint=[])),
        "bad_value",
        "encryptedContent.encryptionCertificateThumbprint is an array",
    ),
    ("NUL in id", spoilt(resourceData__id="ev\x00"), "bad_value", "resourceData.id 'ev\\x00' contains a NUL"),
    ("surrogate etag", spoilt(resourceData__odata_etag="\ud800"), "bad_value", "'\\ud800' contains a lone surrogate"),
]


@pytest.mark.parametrize(
    ("item", "error_class", "message"), [case[1:] for case in BAD_ITEMS], ids=[c[0] for c in BAD_ITEMS]
)
def test_a_bad_item_is_a_located_bad_item_beside_good_ones(
    item: dict[str, Any], error_class: str, message: str
) -> None:
    bad = only_bad(item)
    assert bad.error.error_class == error_class
    assert bad.subscription_id == ROOM_A
    assert str(bad.error).startswith(WHERE + ": "), str(bad.error)
    assert message in str(bad.error), str(bad.error)


@pytest.mark.parametrize(
    ("item", "error_class", "message"),
    [
        (spoilt(subscriptionId=None), "no_subscription_id", "item 1 has no subscriptionId"),
        (spoilt(subscriptionId=""), "no_subscription_id", "item 1: subscriptionId is empty"),
        (spoilt(subscriptionId="  "), "no_subscription_id", "item 1: subscriptionId is empty"),
        (spoilt(subscriptionId=42), "no_subscription_id", "item 1: subscriptionId is the number 42, not a string"),
        (spoilt(subscriptionId=[ROOM_A]), "no_subscription_id", "item 1: subscriptionId is an array, not a string"),
        (spoilt(subscriptionId="a\x00b"), "bad_value", "item 1: subscriptionId 'a\\x00b' contains a NUL character"),
        (1, "bad_value", "item 1 is the number 1, not an object"),
        (None, "bad_value", "item 1 is null, not an object"),
        ("text", "bad_value", "item 1 is 'text', not an object"),
        ([updated()], "bad_value", "item 1 is an array, not an object"),
    ],
)
def test_an_item_without_a_usable_subscription_is_named_by_its_index(item: Any, error_class: str, message: str) -> None:
    bad = only_bad(item)
    assert (bad.error.error_class, str(bad.error), bad.subscription_id) == (error_class, message, None)


def test_bad_items_keep_value_order_and_the_subscription_of_a_short_id_is_shown_whole() -> None:
    first = spoilt(changeType="moved", subscriptionId="sub-1")
    second = spoilt(resourceData=None, subscriptionId="sub-2")
    payload = parse_graph(post(first, updated(), second, *items("10")))
    assert [(b.index, b.subscription_id, b.error.error_class) for b in payload.bad] == [
        (0, "sub-1", "unknown_change_type"),
        (2, "sub-2", "no_resource_data"),
    ]
    assert str(payload.bad[0].error).startswith("item 0 (subscription sub-1): changeType 'moved'")
    assert [c.index for c in payload.changes] == [1]
    assert [e.index for e in payload.lifecycle] == [3, 4]


def test_long_values_are_clipped_in_messages() -> None:
    bad = only_bad(spoilt(changeType="x" * 10_000, subscriptionId="s" * 10_000))
    message = str(bad.error)
    assert len(message) < 200, message
    assert message.startswith("item 1 (subscription ssssssss…): changeType 'xxxx")
    assert "…'" in message
    assert bad.subscription_id == "s" * 10_000


def test_an_unprintable_subscription_id_is_quoted_in_messages() -> None:
    bad = only_bad(spoilt(subscriptionId="a\nb", changeType="moved"))
    assert str(bad.error).startswith("item 1 (subscription 'a\\nb'): ")


# --- whole bodies -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error_class", "message"),
    [
        (b"", "not_json", "payload is not JSON: Expecting value: line 1 column 1 (char 0)"),
        (b'{"value": [', "not_json", "payload is not JSON: "),
        (b"\xff\xfe{\x00}\x00", "not_json", "payload is not UTF-8: byte 0xff at offset 0"),
        ('{"value": []}'.encode("utf-16"), "not_json", "payload is not UTF-8"),
        (
            b'{"value": ["\xc3"]}',
            "not_json",
            "payload is not UTF-8: byte 0xc3 at offset 12 (invalid continuation byte)",
        ),
        (b"[" * 100_000, "not_json", "payload is JSON nested too deeply to read"),
        (
            b'{"value": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
            "not_json",
            "payload is JSON nested too deeply to read",
        ),
        (b'{"value": [' + b'{"a":' * 100_000 + b"}", "not_json", "payload is JSON nested too deeply to read"),
        (b'{"value": [' + b"1" * 5000 + b"]}", "not_json", "payload is not JSON: "),
        (b"[]", "not_graph_notification", "payload is an array, not an object with a 'value' array"),
        (b'"value"', "not_graph_notification", "payload is 'value', not an object"),
        (b"null", "not_graph_notification", "payload is null, not an object"),
        (b"{}", "not_graph_notification", "payload has no 'value'; expected an array of notifications"),
        (b'{"value": null}', "not_graph_notification", "payload has no 'value'"),
        (b'{"value": {}}', "not_graph_notification", "payload has a 'value' that is an object; expected an array"),
        (b'{"Value": []}', "not_graph_notification", "payload has no 'value'"),
        (
            b'{"value": [], "validationTokens": "eyJ0"}',
            "not_graph_notification",
            "payload's 'validationTokens' is 'eyJ0', not an array of strings",
        ),
        (
            b'{"value": [], "validationTokens": ["eyJ0", 1]}',
            "not_graph_notification",
            "payload's 'validationTokens' item 1 is the number 1, not a string",
        ),
    ],
)
def test_an_unusable_body_is_refused_whole(body: bytes, error_class: str, message: str) -> None:
    error = refused(body)
    assert error.error_class == error_class
    assert str(error).startswith(message), str(error)


# --- properties -------------------------------------------------------------------------------------------


def check(body: bytes) -> GraphPayload | None:
    """Parse ``body``: a payload that accounts for every item, or ``None`` for a ``PermanentError`` of a
    body's class; any other exception fails the test.  Every message must be loggable (UTF-8)."""
    try:
        payload = parse_graph(body)
    except PermanentError as exc:
        assert exc.error_class in BODY_CLASSES, exc
        str(exc).encode("utf-8")
        return None
    value = json.loads(body.decode("utf-8-sig"))["value"]
    parsed: list[Change | Lifecycle | BadItem] = [*payload.changes, *payload.lifecycle, *payload.bad]
    assert sorted(p.index for p in parsed) == list(range(len(value)))
    for part in (payload.changes, payload.lifecycle, payload.bad):
        assert [p.index for p in part] == sorted(p.index for p in part)
    for change in payload.changes:
        assert change.event_type in CHANGE_TYPES.values()
        assert WATERMARK.fullmatch(change.watermark)
        assert change.expires_at is None or change.expires_at.tzinfo is UTC
        assert json.dumps(change.item) == json.dumps(value[change.index])  # as received (NaN != NaN)
    for event in payload.lifecycle:
        assert event.event in LIFECYCLE_EVENTS
    for bad in payload.bad:
        assert bad.error.error_class in ITEM_CLASSES, bad
        assert str(bad.error).startswith(f"item {bad.index}"), bad
        str(bad.error).encode("utf-8")
    return payload


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(["", "created", "updated", "deleted", "missed", ROOM_A, 'W/"x"', "2026-12-08T07:30:00Z"]),
    st.sampled_from(["\ud800", "a\x00b", "\u202e", "x" * 200]),  # lone surrogate, NUL, bidi, long
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=12,
)
OFFSETS = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda minutes: timezone(timedelta(minutes=minutes)))
EXPIRY_TEXTS = st.one_of(
    st.datetimes(timezones=OFFSETS).map(datetime.isoformat),
    st.datetimes().map(datetime.isoformat),
    st.sampled_from(["2026-12-08T07:30:00.4472391+00:00", "2026-12-07T19:05:12.31Z", "2026-12-08T07:30:00.1234567Z"]),
    st.text(max_size=40),
)
RESOURCE_DATA = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(st.just(EV1), st.text(max_size=20), JSON_SCALARS),
            "@odata.etag": st.one_of(st.just('W/"DwAAAB"'), st.text(max_size=12), JSON_SCALARS),
            "@odata.type": st.just("#Microsoft.Graph.Event"),
        },
    ),
    JSON_VALUES,
)
ENCRYPTED = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            name: st.one_of(st.text(max_size=12), JSON_SCALARS)
            for name in (
                "data",
                "dataKey",
                "dataSignature",
                "encryptionCertificateId",
                "encryptionCertificateThumbprint",
            )
        },
    ),
    JSON_VALUES,
)
#: The members of a notification, each with values good and bad.
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "subscriptionId": st.one_of(st.sampled_from([ROOM_A, ROOM_B]), st.text(max_size=20), JSON_VALUES),
    "subscriptionExpirationDateTime": st.one_of(EXPIRY_TEXTS, JSON_SCALARS),
    "changeType": st.one_of(st.sampled_from([*CHANGE_TYPES, "Updated", "moved"]), JSON_SCALARS),
    "resource": st.one_of(st.text(max_size=30), JSON_SCALARS),
    "resourceData": RESOURCE_DATA,
    "clientState": st.one_of(st.text(max_size=20), JSON_SCALARS),
    "tenantId": st.one_of(st.just(TENANT), st.text(max_size=20), JSON_SCALARS),
    "lifecycleEvent": st.one_of(st.sampled_from([*LIFECYCLE_EVENTS, "vanished"]), st.none(), JSON_SCALARS),
    "encryptedContent": st.one_of(st.none(), ENCRYPTED),
}
ITEMS = st.fixed_dictionaries({}, optional=FIELDS)


@st.composite
def near_items(draw: st.DrawFn) -> dict[str, Any]:
    """A sample's item (a rich one now and then) with up to two members replaced or removed."""
    item: dict[str, Any] = draw(st.sampled_from([item for name in sorted(EXPECTED) for item in items(name)]))
    item = json.loads(json.dumps(item))
    if draw(st.booleans()) and "resourceData" in item:
        item["encryptedContent"] = draw(st.one_of(st.builds(encrypted), ENCRYPTED))
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=2, unique=True)):
        if draw(st.booleans()):
            item.pop(name, None)
        else:
            item[name] = draw(FIELDS[name])
    return item


@PROPERTY
@given(st.binary(max_size=2048))
def test_property_arbitrary_bytes(body: bytes) -> None:
    check(body)


@PROPERTY
@given(JSON_VALUES)
def test_property_arbitrary_json(document: Any) -> None:
    check(json.dumps(document).encode())
    check(json.dumps({"value": document}).encode())
    check(json.dumps({"value": [document], "validationTokens": document}).encode())


@PROPERTY
@given(
    st.lists(st.one_of(near_items(), near_items(), ITEMS, JSON_VALUES), max_size=6),
    st.one_of(st.none(), st.lists(st.text(max_size=8))),
)
def test_property_notification_shaped_items(value: list[Any], tokens: list[str] | None) -> None:
    payload = check(json.dumps({"value": value, "validationTokens": tokens}).encode())
    assert payload is not None
    assert payload.validation_tokens == tuple(tokens or ())


@PROPERTY
@given(st.datetimes(timezones=OFFSETS), st.integers(0, 9), st.booleans())
def test_property_expiry_with_seven_fractional_digits(moment: datetime, extra_digit: int, zulu: bool) -> None:
    iso = moment.isoformat(timespec="microseconds")  # 0001-01-01T00:00:00.000000+05:30
    offset = iso[26:]
    stamp = iso[:26] + str(extra_digit) + ("Z" if zulu and offset == "+00:00" else offset)
    payload = parse_graph(post(spoilt(subscriptionExpirationDateTime=stamp)))
    try:
        expected = moment.astimezone(UTC)
    except OverflowError:
        (bad,) = payload.bad
        assert (bad.error.error_class, "is out of range" in str(bad.error)) == ("bad_value", True)
        return
    (change,) = payload.changes
    assert change.expires_at == expected
