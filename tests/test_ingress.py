"""The HTTP ingress (SPEC §4), in-process, against a real redis-server (never a mock).

Each test builds its ``Settings`` explicitly, runs ``create_app(settings)`` under Starlette's ``TestClient``
used as a context manager (so the lifespan starts and stops the ``Enqueuer``), and then looks at what really
reached Redis (the RQ queue ``syncnotify`` and the in-flight sorted sets) or the spool directory.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import ipaddress
import resource
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from rq import Queue
from rq.job import Job
from starlette.exceptions import StarletteDeprecationWarning
from starlette.types import Message

from ingress import soap
from ingress.app import create_app
from shared.ews import SOAP_ACTION, TYPES_NS
from shared.queues import QUEUE_NAME, UNSUBSCRIBED_KEY, inflight_key
from shared.settings import Settings
from shared.types import Payload
from syncnotify.redis_server import EmbeddedRedis, free_port
from tests.conftest import SAMPLES
from tests.payloads import (
    SUBSCRIPTION_A,
    SUBSCRIPTION_B,
    SUBSCRIPTION_ID_SHAPES,
    make_event,
    make_notification,
    watermark,
)

with warnings.catch_warnings():
    # Starlette 1.x warns at import time that its TestClient prefers httpx2 to httpx; the project pins
    # httpx, and the warning (an error under ``filterwarnings = error``) says nothing about the ingress.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

# --------------------------------------------------------------------------------------------------------
# The contract, copied from SPEC §4 (not from the code under test)
# --------------------------------------------------------------------------------------------------------

SPEC_OK = (
    b'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
    b'<soap:Body><m:SendNotificationResult xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">'
    b"<m:SubscriptionStatus>OK</m:SubscriptionStatus></m:SendNotificationResult></soap:Body></soap:Envelope>"
)
SPEC_UNSUBSCRIBE = SPEC_OK.replace(b">OK<", b">Unsubscribe<")
ANSWER_CONTENT_TYPE = "text/xml; charset=utf-8"

NOTIFY = "/Webservices/SyncNotification.svc"
#: Headers Exchange sends with a SOAP 1.1 SendNotification.
EXCHANGE_HEADERS: dict[str, str] = {"SOAPAction": f'"{SOAP_ACTION}"', "Content-Type": "text/xml; charset=utf-8"}
PEER_IP = "203.0.113.5"
PEER = (PEER_IP, 50000)

#: The subscription id of the seed's samples (00_*).
SEED_SUBSCRIPTION = (
    "LABkYjhwcjAxbWI2NDg1LmV1cnByZDAxLnByb2QuZXhjaGFuZ2VsYWJzLmNvbRAAAADELVfykPBZQp7Q8IIUrUfmCKn7JnqX2AgQAAAA"
    "WTlI8+A2EEqLQp01E8Pw2Q=="
)
#: The recorded notification samples (ok.xml and unsubscribe.xml are answers, not notifications).
SAMPLE_FILES = sorted(SAMPLES.glob("[0-9][0-9]_*.xml"))
MALFORMED_SEED = SAMPLES / "00_seed_sample_malformed.xml"

#: A reverse proxy in front of the ingress (the tests trust 10.0.0.0/8 when they trust proxies).
PROXY = ("10.1.2.3", 40000)
#: ``max_body_bytes`` of the size tests.
LIMIT = 4096
#: Headers that fail the SOAPAction and the content-type checks (for the order of the checks).
WRONG_ACTION = {"SOAPAction": "urn:wrong"}
WRONG_TYPE = {"Content-Type": "application/json"}


def expected_subscription(sample: Path) -> str:
    """The subscription id each recorded sample is about (read off the files by hand)."""
    if sample.name.startswith("00_"):
        return SEED_SUBSCRIPTION
    if sample.name.startswith(("10_", "11_")):
        return SUBSCRIPTION_B
    return SUBSCRIPTION_A


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(settings_env: pytest.MonkeyPatch, redis_server: EmbeddedRedis, tmp_path: Path) -> SettingsFactory:
    """Settings for one ingress: the fixture's Redis, a spool in tmp, tenant ``Default``; override anything."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_server.url,
            "spool_dir": tmp_path / "spool",
            "tenants": ["Default"],
            "admin_networks": [ipaddress.ip_network(f"{PEER_IP}/32")],  # the tests' peer may read /metrics
        }
        values.update(overrides)
        return Settings(**values)

    return make


@contextmanager
def running(settings: Settings, client: tuple[str, int] = PEER) -> Iterator[TestClient]:
    """The ingress app with its lifespan (the Enqueuer) running, and a client posting from ``client``."""
    with TestClient(create_app(settings), client=client) as test_client:
        yield test_client


def post(
    client: TestClient,
    body: bytes | Iterator[bytes],
    path: str = NOTIFY,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """POST ``body`` the way Exchange does (its headers unless ``headers`` replaces them)."""
    response: httpx.Response = client.post(
        path, content=body, headers=dict(EXCHANGE_HEADERS if headers is None else headers)
    )
    return response


def notification(n: int, subscription_id: str = SUBSCRIPTION_A) -> bytes:
    """A distinct, realistic notification body: one Created event at watermark ``n + 1``."""
    return make_notification(subscription_id, watermark(n), [make_event("Created", watermark(n + 1))])


def queued_jobs(redis: Redis) -> list[Job]:
    return Queue(QUEUE_NAME, connection=redis).get_jobs()


def queued_payloads(redis: Redis) -> list[Payload]:
    """Every payload on the queue, job after job, in queue order."""
    payloads: list[Payload] = []
    for job in queued_jobs(redis):
        (batch,) = job.args
        payloads.extend(batch)
    return payloads


def spool_files(settings: Settings) -> list[Path]:
    return sorted(settings.spool_dir.glob("*.spool")) if settings.spool_dir.is_dir() else []


def assert_ok(response: httpx.Response, expected: bytes = SPEC_OK) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == ANSWER_CONTENT_TYPE
    assert response.content == expected


def assert_rejected(response: httpx.Response, status: int) -> None:
    """A 4xx/5xx with a short plain-text reason."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("text/plain")
    reason = response.text.strip()
    assert reason, "the rejection carries no reason"
    assert len(reason) < 300 and "\n" not in reason and "<" not in reason, reason


def assert_nothing_stored(redis: Redis, settings: Settings) -> None:
    """Nothing queued, no in-flight mark, nothing spooled."""
    assert Queue(QUEUE_NAME, connection=redis).count == 0
    assert redis.keys("syncnotify:inflight:*") == []
    assert spool_files(settings) == []


def requests_by_status(client: TestClient) -> dict[str, float]:
    """``syncnotify_ingress_requests`` from ``/metrics``, by status label."""
    response = client.get("/metrics")
    assert response.status_code == 200
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name == "syncnotify_ingress_requests":
            for sample in family.samples:
                if sample.name == "syncnotify_ingress_requests_total":
                    counts[sample.labels["status"]] = sample.value
    return counts


def metric_value(client: TestClient, name: str) -> float | None:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def chunks(body: bytes, size: int = 1000) -> Iterator[bytes]:
    """``body`` as a stream, so httpx sends it chunked, without Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def gzip_bomb(decoded_size: int) -> bytes:
    """A gzip body that decodes to ``decoded_size`` bytes (a notification, then zeros), built in pieces."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as f:
        head = notification(1000)
        f.write(head)
        left = decoded_size - len(head)
        zeros = bytes(1 << 20)
        while left > 0:
            f.write(zeros[:left])
            left -= len(zeros)
    return out.getvalue()


def nowhere() -> str:
    """A Redis URL with nothing listening."""
    return f"redis://127.0.0.1:{free_port()}/0"


@contextmanager
def redis_later(directory: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server for a free port, not started: nothing listens there until the test calls ``start()``."""
    directory.mkdir()
    server = EmbeddedRedis(directory, free_port(), appendonly=False)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Make every write of this process stop at file offset ``limit`` (as a full disk would, mid-write).

    CPython ignores SIGXFSZ, so a write that crosses the limit is cut short and the next one fails (EFBIG).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


async def post_concurrently(app: FastAPI, bodies: list[bytes]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app, client=PEER)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await asyncio.gather(*(client.post(NOTIFY, content=b, headers=EXCHANGE_HEADERS) for b in bodies))


def post_all_at_once(settings: Settings, bodies: list[bytes]) -> list[httpx.Response]:
    """POST ``bodies`` concurrently on the event loop that runs the app's lifespan (and so its Enqueuer)."""
    app = create_app(settings)
    with TestClient(app, client=PEER) as client:
        assert client.portal is not None
        return client.portal.call(post_concurrently, app, bodies)


# --------------------------------------------------------------------------------------------------------
# 1. Acked means queued: the raw body, byte for byte, with its metadata and in-flight marks
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        NOTIFY,
        "/Default/WebServices/syncnotification.svc",
        NOTIFY + "?Default",
        NOTIFY + "?tenant=Default",
    ],
    ids=["plain", "tenant-segment-other-case", "bare-query-key", "tenant-query"],
)
def test_every_sample_is_acked_and_queued_byte_for_byte(
    path: str, make_settings: SettingsFactory, redis: Redis
) -> None:
    settings = make_settings()
    bodies = [sample.read_bytes() for sample in SAMPLE_FILES]
    assert len(bodies) == 18  # 00, 00 malformed, 01 … 16
    with running(settings) as client:
        before = time.time()
        for body in bodies:
            assert_ok(post(client, body, path))
        after = time.time()

    payloads = queued_payloads(redis)
    assert [p["body"] for p in payloads] == bodies  # byte for byte, in arrival order
    assert len({p["id"] for p in payloads}) == len(bodies)
    for sample, payload in zip(SAMPLE_FILES, payloads, strict=True):
        assert payload["tenant"] == "Default"
        assert isinstance(payload["received_at"], float)
        assert before <= payload["received_at"] <= after
        assert payload["source"] == PEER_IP
        subscription = expected_subscription(sample)
        assert payload["subscription_ids"] == [subscription], sample.name
        score = redis.zscore(inflight_key("Default", subscription), payload["id"])
        assert score == payload["received_at"], sample.name
    assert [p["received_at"] for p in payloads] == sorted(p["received_at"] for p in payloads)
    assert len(queued_jobs(redis)) == len(bodies)  # a lone post is written at once, never waiting for company
    assert spool_files(settings) == []


def test_malformed_seed_sample_is_acked_and_queued_without_a_dom(make_settings: SettingsFactory, redis: Redis) -> None:
    body = MALFORMED_SEED.read_bytes()
    assert b"==<t:SubscriptionId>" in body  # the broken closing tag: no XML parser would accept it
    with running(make_settings()) as client:
        assert_ok(post(client, body))
    (payload,) = queued_payloads(redis)
    assert payload["body"] == body
    assert payload["subscription_ids"] == [SEED_SUBSCRIPTION]
    assert redis.zscore(inflight_key("Default", SEED_SUBSCRIPTION), payload["id"]) == payload["received_at"]


def test_error_sample_subscription_id_is_scanned_from_message_xml(make_settings: SettingsFactory, redis: Redis) -> None:
    body = (SAMPLES / "14_error_read_events_failed.xml").read_bytes()
    assert b"<t:SubscriptionId>" not in body
    with running(make_settings()) as client:
        assert_ok(post(client, body))
    (payload,) = queued_payloads(redis)
    assert payload["subscription_ids"] == [SUBSCRIPTION_A]
    assert redis.zscore(inflight_key("Default", SUBSCRIPTION_A), payload["id"]) == payload["received_at"]


# --------------------------------------------------------------------------------------------------------
# 2. Tenants
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tenants", "path", "expected"),
    [
        (["Default", "Acme"], "/Acme/Webservices/SyncNotification.svc", "Acme"),
        (["Default", "Acme"], "/acme/WEBSERVICES/syncnotification.SVC", "Acme"),
        (["Default", "Acme"], NOTIFY + "?acme", "Acme"),
        (["Default", "Acme"], NOTIFY + "?tenant=ACME", "Acme"),
        (["Default", "Acme"], NOTIFY + "?Acme&tenant=Default", "Acme"),  # the bare key comes first
        (["Default", "Acme"], NOTIFY, "Default"),
        (["default", "Acme"], NOTIFY, "default"),  # the configured spelling, also for the fallback
        (["*"], "/AnyCorp/Webservices/SyncNotification.svc", "AnyCorp"),
        (["*"], NOTIFY + "?tenant=Other", "Other"),
        (["*"], NOTIFY, "Default"),
        (["Default", "Acme"], "/api/webhooks/exchange", "Default"),  # ROOMS' own EWS callback path
        (["Default", "Acme"], "/Acme/api/webhooks/exchange", "Acme"),
        (["Default", "Acme"], "/API/Webhooks/Exchange/?acme", "Acme"),
    ],
)
def test_tenant_is_resolved_to_its_configured_spelling(
    tenants: list[str], path: str, expected: str, make_settings: SettingsFactory, redis: Redis
) -> None:
    with running(make_settings(tenants=tenants)) as client:
        assert_ok(post(client, notification(1000), path))
    (payload,) = queued_payloads(redis)
    assert payload["tenant"] == expected
    assert redis.zscore(inflight_key(expected, SUBSCRIPTION_A), payload["id"]) == payload["received_at"]


@pytest.mark.parametrize(
    ("tenants", "path"),
    [
        (["Default", "Acme"], "/Other/Webservices/SyncNotification.svc"),
        (["Default", "Acme"], NOTIFY + "?Other"),
        (["Default", "Acme"], NOTIFY + "?tenant=Other"),
        (["Acme"], NOTIFY),  # no tenant given means Default, which this ingress does not know
    ],
)
def test_unknown_tenant_gets_404_and_nothing_is_stored(
    tenants: list[str], path: str, make_settings: SettingsFactory, redis: Redis
) -> None:
    settings = make_settings(tenants=tenants)
    with running(settings) as client:
        response = post(client, notification(1000), path)
    assert_rejected(response, 404)
    assert "tenant" in response.text
    assert_nothing_stored(redis, settings)


def test_post_to_another_path_gets_404(make_settings: SettingsFactory, redis: Redis) -> None:
    settings = make_settings()
    with running(settings) as client:
        for path in ("/", "/Webservices/Other.svc", "/a/b/Webservices/SyncNotification.svc"):
            assert post(client, notification(1000), path).status_code == 404, path
    assert_nothing_stored(redis, settings)


# --------------------------------------------------------------------------------------------------------
# 3. The checks, their answers, their order; none of them enqueues anything
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "peer", "status"),
    [
        (["203.0.113.0/24"], "203.0.113.5", 200),
        (["198.51.100.0/24", "203.0.113.0/24"], "203.0.113.5", 200),
        (["198.51.100.0/24"], "203.0.113.5", 403),
        (["2001:db8::/32"], "2001:db8::17", 200),
        (["2001:db8::/32"], "2001:db9::17", 403),
        (["2001:db8::/32"], "203.0.113.5", 403),  # an IPv4 peer is in no IPv6 network
        (["203.0.113.0/24", "2001:db8::/32"], "2001:db8:1::1", 200),
    ],
)
def test_source_must_be_in_allowed_networks(
    allowed: list[str], peer: str, status: int, make_settings: SettingsFactory, redis: Redis
) -> None:
    settings = make_settings(allowed_networks=allowed)
    with running(settings, client=(peer, 443)) as client:
        response = post(client, notification(1000))
    if status == 200:
        assert_ok(response)
        (payload,) = queued_payloads(redis)
        assert payload["source"] == peer
    else:
        assert_rejected(response, 403)
        assert peer in response.text
        assert_nothing_stored(redis, settings)


@pytest.mark.parametrize(
    "headers",
    [
        {"SOAPAction": f'"{SOAP_ACTION}"', "Content-Type": "text/xml; charset=utf-8"},
        {"SOAPAction": SOAP_ACTION, "Content-Type": "text/xml"},
        {"SOAPAction": f' "{SOAP_ACTION}" ', "Content-Type": "TEXT/XML; charset=UTF-8"},
        {"Content-Type": f'application/soap+xml; charset=utf-8; action="{SOAP_ACTION}"'},
        {"Content-Type": f"application/soap+xml;action={SOAP_ACTION}"},
        {"SOAPAction": f'"{SOAP_ACTION}"', "Content-Type": "application/soap+xml; charset=utf-8"},
    ],
    ids=["quoted", "unquoted", "spaced-uppercase-type", "soap12-action", "soap12-unquoted", "soap11-on-soap12"],
)
def test_accepted_soap_action_and_content_type_forms(
    headers: dict[str, str], make_settings: SettingsFactory, redis: Redis
) -> None:
    body = notification(1000)
    with running(make_settings()) as client:
        assert_ok(post(client, body, headers=headers))
    assert [p["body"] for p in queued_payloads(redis)] == [body]


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/xml; charset=utf-8"},
        {"SOAPAction": "", "Content-Type": "text/xml"},
        {
            "SOAPAction": '"http://schemas.microsoft.com/exchange/services/2006/messages/GetEvents"',
            "Content-Type": "text/xml",
        },
        {"SOAPAction": SOAP_ACTION + "X", "Content-Type": "text/xml"},
        {"Content-Type": 'application/soap+xml; action="urn:other"'},
        {"Content-Type": "application/soap+xml; charset=utf-8"},
    ],
    ids=["missing", "empty", "other-operation", "suffix", "soap12-other", "soap12-missing"],
)
def test_missing_or_wrong_soap_action_gets_400(
    headers: dict[str, str], make_settings: SettingsFactory, redis: Redis
) -> None:
    settings = make_settings()
    with running(settings) as client:
        response = post(client, notification(1000), headers=headers)
    assert_rejected(response, 400)
    assert "SOAPAction" in response.text
    assert_nothing_stored(redis, settings)


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "text/plain", "application/xml", "multipart/form-data"]
)
def test_wrong_content_type_gets_415(content_type: str | None, make_settings: SettingsFactory, redis: Redis) -> None:
    settings = make_settings()
    headers = {"SOAPAction": SOAP_ACTION}
    if content_type is not None:
        headers["Content-Type"] = content_type
    with running(settings) as client:
        response = post(client, notification(1000), headers=headers)
    assert_rejected(response, 415)
    assert_nothing_stored(redis, settings)


def test_empty_body_gets_400(make_settings: SettingsFactory, redis: Redis) -> None:
    settings = make_settings()
    with running(settings) as client:
        response = post(client, b"")
        gzipped_empty = post(client, gzip.compress(b""), headers={**EXCHANGE_HEADERS, "Content-Encoding": "gzip"})
    assert_rejected(response, 400)
    assert "empty" in response.text
    assert_rejected(gzipped_empty, 400)
    assert_nothing_stored(redis, settings)


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "chunked"])
def test_body_over_the_limit_gets_413(with_length: bool, make_settings: SettingsFactory, redis: Redis) -> None:
    settings = make_settings(max_body_bytes=LIMIT)
    body = notification(1000).ljust(LIMIT + 1, b" ")
    with running(settings) as client:
        response = post(client, body if with_length else chunks(body))
    assert_rejected(response, 413)
    assert_nothing_stored(redis, settings)


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "chunked"])
def test_body_of_exactly_the_limit_is_accepted(with_length: bool, make_settings: SettingsFactory, redis: Redis) -> None:
    body = notification(1000).ljust(LIMIT, b" ")
    with running(make_settings(max_body_bytes=LIMIT)) as client:
        assert_ok(post(client, body if with_length else chunks(body)))
    assert [p["body"] for p in queued_payloads(redis)] == [body]


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "GZIP"])
def test_gzip_body_is_decoded_and_stored_as_xml(encoding: str, make_settings: SettingsFactory, redis: Redis) -> None:
    body = (SAMPLES / "02_created_event_item.xml").read_bytes()
    headers = {**EXCHANGE_HEADERS, "Content-Encoding": encoding}
    with running(make_settings()) as client:
        assert_ok(post(client, gzip.compress(body), headers=headers))
    (payload,) = queued_payloads(redis)
    assert payload["body"] == body
    assert payload["subscription_ids"] == [SUBSCRIPTION_A]


def test_gzip_decoding_to_exactly_the_limit_is_accepted(make_settings: SettingsFactory, redis: Redis) -> None:
    body = notification(1000).ljust(LIMIT, b" ")
    headers = {**EXCHANGE_HEADERS, "Content-Encoding": "gzip"}
    with running(make_settings(max_body_bytes=LIMIT)) as client:
        assert_ok(post(client, gzip.compress(body), headers=headers))
    assert [p["body"] for p in queued_payloads(redis)] == [body]


@pytest.mark.parametrize(
    ("limit", "decoded_size"),
    [(LIMIT, LIMIT + 1), (LIMIT, 3 * 1024 * 1024), (1_048_576, 200 * 1024 * 1024)],
    ids=["one-byte-over", "bomb-small-limit", "bomb-default-limit"],
)
def test_gzip_decoding_past_the_limit_gets_413(
    limit: int, decoded_size: int, make_settings: SettingsFactory, redis: Redis
) -> None:
    settings = make_settings(max_body_bytes=limit)
    compressed = gzip_bomb(decoded_size)
    assert len(compressed) < limit  # small on the wire: only decoding makes it too large
    headers = {**EXCHANGE_HEADERS, "Content-Encoding": "gzip"}
    with running(settings) as client:
        response = post(client, compressed, headers=headers)
    assert_rejected(response, 413)
    assert_nothing_stored(redis, settings)


@pytest.mark.parametrize(
    "body",
    [b"this is not gzip", gzip.compress(notification(1000))[:-12], gzip.compress(notification(1000))[:40]],
    ids=["garbage", "no-trailer", "truncated"],
)
def test_invalid_gzip_gets_400(body: bytes, make_settings: SettingsFactory, redis: Redis) -> None:
    settings = make_settings()
    headers = {**EXCHANGE_HEADERS, "Content-Encoding": "gzip"}
    with running(settings) as client:
        response = post(client, body, headers=headers)
    assert_rejected(response, 400)
    assert "gzip" in response.text
    assert_nothing_stored(redis, settings)


def test_multi_member_gzip_is_stored_whole_or_refused(make_settings: SettingsFactory, redis: Redis) -> None:
    body = (SAMPLES / "02_created_event_item.xml").read_bytes()
    head, tail = body[: len(body) // 2], body[len(body) // 2 :]
    compressed = gzip.compress(head) + gzip.compress(tail)
    assert gzip.decompress(compressed) == body
    headers = {**EXCHANGE_HEADERS, "Content-Encoding": "gzip"}
    with running(make_settings()) as client:
        response = post(client, compressed, headers=headers)
    if response.status_code == 200:
        assert [p["body"] for p in queued_payloads(redis)] == [body]  # acked means stored, whole
    else:
        assert_rejected(response, 400)
        assert Queue(QUEUE_NAME, connection=redis).count == 0


def test_unsupported_content_encoding_is_refused(make_settings: SettingsFactory, redis: Redis) -> None:
    settings = make_settings()
    headers = {**EXCHANGE_HEADERS, "Content-Encoding": "br"}
    with running(settings) as client:
        response = post(client, notification(1000), headers=headers)
    assert_rejected(response, 415)
    assert_nothing_stored(redis, settings)


@pytest.mark.parametrize(
    ("peer", "path", "headers", "body", "status"),
    [
        # every check failing at once: the first one (source address) answers
        ("198.51.100.7", "/Other" + NOTIFY, {**WRONG_ACTION, **WRONG_TYPE}, b"", 403),
        # address allowed: unknown tenant comes before a wrong SOAPAction, content type and body
        (PEER_IP, "/Other" + NOTIFY, {**WRONG_ACTION, **WRONG_TYPE}, b"", 404),
        # SOAPAction comes before the content type and the body
        (PEER_IP, NOTIFY, {**WRONG_ACTION, **WRONG_TYPE}, b"", 400),
        # content type comes before an empty or oversized body
        (PEER_IP, NOTIFY, {"SOAPAction": SOAP_ACTION, **WRONG_TYPE}, b"", 415),
        (PEER_IP, NOTIFY, {"SOAPAction": SOAP_ACTION, **WRONG_TYPE}, notification(1000).ljust(LIMIT + 1, b" "), 415),
        # a forbidden network with only a wrong SOAPAction
        ("198.51.100.7", NOTIFY, {**EXCHANGE_HEADERS, **WRONG_ACTION}, notification(1000), 403),
    ],
    ids=["all-wrong", "tenant-first", "action-before-type", "type-before-empty", "type-before-size", "403-vs-400"],
)
def test_checks_run_in_spec_order(
    peer: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    make_settings: SettingsFactory,
    redis: Redis,
) -> None:
    settings = make_settings(allowed_networks=["203.0.113.0/24"], max_body_bytes=LIMIT)
    with running(settings, client=(peer, 443)) as client:
        response = post(client, body, path, headers={**EXCHANGE_HEADERS, **headers})
    assert_rejected(response, status)
    assert_nothing_stored(redis, settings)


def test_client_gone_mid_body_gets_no_answer_and_stores_nothing(make_settings: SettingsFactory, redis: Redis) -> None:
    settings = make_settings()
    app = create_app(settings)
    sent: list[Message] = []
    body = notification(1000)
    first: Message = {"type": "http.request", "body": body[:100], "more_body": True}
    messages: Iterator[Message] = iter([first, {"type": "http.disconnect"}])

    async def receive() -> Message:
        return next(messages)

    async def send(message: Message) -> None:
        sent.append(message)

    async def post_then_vanish() -> None:
        headers = [(name.lower().encode(), value.encode()) for name, value in EXCHANGE_HEADERS.items()]
        scope = {"type": "http", "method": "POST", "path": NOTIFY, "query_string": b"", "headers": headers}
        await app({**scope, "client": PEER}, receive, send)

    with TestClient(app, client=PEER) as client:
        assert client.portal is not None
        client.portal.call(post_then_vanish)
        assert_ok(post(client, body))  # and the next post is served as usual
    assert sent == []
    assert [p["body"] for p in queued_payloads(redis)] == [body]


# --------------------------------------------------------------------------------------------------------
# 4. X-Forwarded-For, believed only from trusted proxies
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("forwarded_for", "status", "source"),
    [
        ("203.0.113.9", 200, "203.0.113.9"),
        ("198.51.100.7", 403, None),  # the forwarded client is outside the allowed networks
        ("203.0.113.9, 10.9.9.9", 200, "203.0.113.9"),  # a chain of trusted proxies is skipped
        ("203.0.113.9, 198.51.100.7", 403, None),  # a client cannot hide behind an address put in front
        ("", 403, None),  # no forwarded client: the proxy itself is the source, and it is not allowed
    ],
)
def test_forwarded_for_from_a_trusted_proxy_is_the_source(
    forwarded_for: str, status: int, source: str | None, make_settings: SettingsFactory, redis: Redis
) -> None:
    settings = make_settings(allowed_networks=["203.0.113.0/24"], trusted_proxies=["10.0.0.0/8"])
    with running(settings, client=PROXY) as client:
        response = post(client, notification(1000), headers={**EXCHANGE_HEADERS, "X-Forwarded-For": forwarded_for})
    if status == 200:
        assert_ok(response)
        (payload,) = queued_payloads(redis)
        assert payload["source"] == source
    else:
        assert_rejected(response, 403)
        assert_nothing_stored(redis, settings)


def test_forwarded_for_from_an_untrusted_peer_is_ignored(make_settings: SettingsFactory, redis: Redis) -> None:
    """A spoofed header from outside neither opens the allowed networks nor changes the recorded source."""
    settings = make_settings(allowed_networks=["203.0.113.0/24"], trusted_proxies=["10.0.0.0/8"])
    spoofed = {**EXCHANGE_HEADERS, "X-Forwarded-For": "203.0.113.9"}
    with running(settings, client=("198.51.100.7", 40000)) as client:
        response = post(client, notification(1000), headers=spoofed)
    assert_rejected(response, 403)
    assert "198.51.100.7" in response.text
    assert_nothing_stored(redis, settings)

    with running(make_settings(trusted_proxies=["10.0.0.0/8"])) as client:  # no allowed list: all may post
        assert_ok(post(client, notification(1000), headers={**EXCHANGE_HEADERS, "X-Forwarded-For": "192.0.2.1"}))
    (payload,) = queued_payloads(redis)
    assert payload["source"] == PEER_IP


def test_forwarded_for_is_ignored_without_trusted_proxies(make_settings: SettingsFactory, redis: Redis) -> None:
    with running(make_settings(), client=PROXY) as client:
        assert_ok(post(client, notification(1000), headers={**EXCHANGE_HEADERS, "X-Forwarded-For": "192.0.2.1"}))
    (payload,) = queued_payloads(redis)
    assert payload["source"] == PROXY[0]


# --------------------------------------------------------------------------------------------------------
# 5. Unsubscribe
# --------------------------------------------------------------------------------------------------------


def test_unsubscribed_subscription_is_answered_unsubscribe(make_settings: SettingsFactory, redis: Redis) -> None:
    assert soap.UNSUBSCRIBE == SPEC_UNSUBSCRIBE
    sample_a = (SAMPLES / "02_created_event_item.xml").read_bytes()
    error_a = (SAMPLES / "14_error_read_events_failed.xml").read_bytes()
    sample_b = (SAMPLES / "10_more_events_part1.xml").read_bytes()
    with running(make_settings()) as client:
        assert_ok(post(client, sample_a))
        redis.sadd(UNSUBSCRIBED_KEY, SUBSCRIPTION_A)

        answers: list[bytes] = []

        def answered_unsubscribe() -> bool:
            response = post(client, sample_a)
            assert response.status_code == 200
            answers.append(response.content)
            return response.content != SPEC_OK

        assert wait_until(answered_unsubscribe, timeout=5.0, interval=0.2), "the ingress never saw the unsubscribe"
        assert_ok(post(client, sample_a), SPEC_UNSUBSCRIBE)
        response = post(client, error_a)  # the id only in MessageXml
        assert_ok(response, SPEC_UNSUBSCRIBE)
        assert "<m:SubscriptionStatus>Unsubscribe</m:SubscriptionStatus>" in response.text
        assert_ok(post(client, sample_b))  # other subscriptions are still OK
    assert answers[-1] == SPEC_UNSUBSCRIBE
    # an unsubscribed subscription's posts are still stored: acked means stored
    assert len(queued_payloads(redis)) == 1 + len(answers) + 3


@pytest.mark.parametrize("shape", list(SUBSCRIPTION_ID_SHAPES))
def test_scan_finds_the_subscription_id_in_every_shape_the_parser_accepts(shape: str) -> None:
    from worker.parse import parse_payload

    body = SUBSCRIPTION_ID_SHAPES[shape]
    assert SUBSCRIPTION_A in repr(parse_payload(body))  # the worker reads this id from it: so must the scan
    assert soap.scan_subscription_ids(body) == [SUBSCRIPTION_A]


@pytest.mark.parametrize(
    "body",
    [
        f"<t:SubscriptionId/>{SUBSCRIPTION_A}".encode(),  # an empty element: the text after it is not its id
        f'<t:SubscriptionId xmlns:t="{TYPES_NS}"/> {SUBSCRIPTION_A}'.encode(),
        f"<t:SubscriptionIdX>{SUBSCRIPTION_A}</t:SubscriptionIdX>".encode(),
        b"<t:SubscriptionId><![CDATA[]]></t:SubscriptionId>",
        b"<t:SubscriptionId>  </t:SubscriptionId>",
        b"\xff\xfe",
        b"",
    ],
)
def test_scan_finds_no_id_where_there_is_none(body: bytes) -> None:
    assert soap.scan_subscription_ids(body) == []


def test_scan_of_mixed_shapes_keeps_document_order() -> None:
    body = (
        f'<SubscriptionId xmlns="{TYPES_NS}">{SUBSCRIPTION_B}</SubscriptionId>'
        f"<t:SubscriptionId><![CDATA[{SUBSCRIPTION_A}]]></t:SubscriptionId>"
        f'<t:Value Name="SubscriptionId" xmlns:t="{TYPES_NS}">{SUBSCRIPTION_B}</t:Value>'
    ).encode()
    assert soap.scan_subscription_ids(body) == [SUBSCRIPTION_B, SUBSCRIPTION_A]


@pytest.mark.parametrize(
    "body",
    [
        b"<SubscriptionId " * 60_000,  # start tags that never end
        (b"<SubscriptionId " + b"a" * 500) * 2_000,
        b"SubscriptionId" * 70_000,
        b"<" * 1_000_000,
        "<x>SubscriptionId</x>".encode("utf-16") * 20_000,
    ],
    ids=["unclosed tags", "long unclosed tags", "bare names", "angle brackets", "UTF-16 names"],
)
def test_scan_of_a_hostile_body_stays_fast(body: bytes) -> None:
    started = time.perf_counter()
    assert soap.scan_subscription_ids(body) == []
    assert time.perf_counter() - started < 1.0  # ~0.1 s at worst on a loaded CI machine


def test_server_never_lets_uvicorn_rewrite_the_client_address(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from ingress import server

    options: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: options.update(kwargs))
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    server.serve("127.0.0.1", 8080, 1, "info")
    assert options["proxy_headers"] is False
    assert options["forwarded_allow_ips"] == []
    for name in ("proxy_headers", "forwarded_allow_ips"):
        with pytest.raises(ValueError, match=name):
            server.serve("127.0.0.1", 8080, 1, "info", **{name: True})


def test_refusal_before_the_body_arrived_reads_the_rest_and_closes(
    make_settings: SettingsFactory, redis: Redis
) -> None:
    settings = make_settings(max_body_bytes=LIMIT)
    with running(settings) as client:
        declared = post(client, b"x" * (LIMIT * 3))
        # (TestClient hands the app a body in one piece: a 413 mid-body is tested on the real server)
        early = post(client, b"x" * (LIMIT * 3), headers={**EXCHANGE_HEADERS, **WRONG_ACTION})
        read_whole = post(client, b"not gzip", headers={**EXCHANGE_HEADERS, "Content-Encoding": "gzip"})
    for response, status in ((declared, 413), (early, 400)):
        assert_rejected(response, status)
        assert response.headers["connection"] == "close"  # the connection closes after the lingering read
    assert_rejected(read_whole, 400)
    assert "connection" not in read_whole.headers  # the body was all read: the connection stays open
    assert_nothing_stored(redis, settings)


# --------------------------------------------------------------------------------------------------------
# 6. GET pages, health, readiness, metrics
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "tenant"),
    [
        (NOTIFY, "Default"),
        ("/acme/webservices/syncnotification.svc", "Acme"),
        (NOTIFY + "?Acme", "Acme"),
        (NOTIFY + "?tenant=ACME", "Acme"),
        ("/acme/api/webhooks/exchange", "Acme"),
    ],
)
def test_get_shows_a_page_naming_the_tenant(path: str, tenant: str, make_settings: SettingsFactory) -> None:
    with running(make_settings(tenants=["Default", "Acme"])) as client:
        response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert f"<b>{tenant}</b>" in response.text
    assert "reachable" in response.text


def test_get_unknown_tenant_gets_404(make_settings: SettingsFactory) -> None:
    with running(make_settings(tenants=["Default", "Acme"])) as client:
        for path in ("/Other/Webservices/SyncNotification.svc", NOTIFY + "?tenant=Other"):
            response = client.get(path)
            assert_rejected(response, 404)
        assert client.get("/nothing-here").status_code == 404


def test_get_escapes_the_tenant_name(make_settings: SettingsFactory) -> None:
    with running(make_settings(tenants=["*"])) as client:
        response = client.get(NOTIFY + "?tenant=%3Cscript%3E")
    assert response.status_code == 200
    assert "<script>" not in response.text
    assert "&lt;script&gt;" in response.text


def test_healthz_and_readyz(make_settings: SettingsFactory) -> None:
    with running(make_settings()) as client:
        health = client.get("/healthz")
        assert health.status_code == 200
        ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.headers["content-type"] == "application/json"
    assert ready.json() == {"ready": True, "redis": "ok", "spool": {"writable": True, "backlog": 0}}


def test_metrics_count_requests_by_status(make_settings: SettingsFactory, redis: Redis) -> None:
    with running(make_settings()) as client:
        before = requests_by_status(client)
        assert_ok(post(client, notification(1000)))
        assert_ok(post(client, notification(1001)))
        assert post(client, notification(1002), "/Other" + NOTIFY).status_code == 404
        assert post(client, notification(1003), headers={"SOAPAction": SOAP_ACTION}).status_code == 415
        assert post(client, b"").status_code == 400
        after = requests_by_status(client)
        response = client.get("/metrics")
    delta = {status: after[status] - before.get(status, 0.0) for status in after}
    assert {status: n for status, n in delta.items() if n} == {"200": 2, "404": 1, "415": 1, "400": 1}
    assert response.headers["content-type"].startswith("text/plain")
    assert "syncnotify_ingress_enqueue_seconds" in response.text
    assert "syncnotify_ingress_spool_backlog" in response.text


# --------------------------------------------------------------------------------------------------------
# 7. Redis away: the spool takes the payload, and drains by itself once Redis is back
# --------------------------------------------------------------------------------------------------------


def test_redis_away_payload_is_spooled_and_acked(make_settings: SettingsFactory, redis: Redis) -> None:
    settings = make_settings(redis_url=nowhere())
    body = (SAMPLES / "02_created_event_item.xml").read_bytes()
    with running(settings) as client:
        assert_ok(post(client, body))
        ready = client.get("/readyz")
        backlog = metric_value(client, "syncnotify_ingress_spool_backlog")
    (spooled,) = spool_files(settings)
    data = spooled.read_bytes()
    assert data and body in data  # the raw body is in the journal, byte for byte
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "redis": "unavailable", "spool": {"writable": True, "backlog": 1}}
    assert backlog == 1
    assert Queue(QUEUE_NAME, connection=redis).count == 0  # the fixture's Redis is another server


def test_spool_drains_onto_the_queue_when_redis_comes_back(make_settings: SettingsFactory, tmp_path: Path) -> None:
    bodies = [notification(2000 + 2 * i) for i in range(5)]
    with ExitStack() as stack, redis_later(tmp_path / "late-redis") as late:
        settings = make_settings(redis_url=late.url)
        with running(settings) as client:
            for body in bodies:
                assert_ok(post(client, body))
            assert spool_files(settings)
            assert client.get("/readyz").json()["spool"]["backlog"] == len(bodies)

            late.start()
            redis = stack.enter_context(late.client())

            def drained() -> bool:
                return len(queued_payloads(redis)) >= len(bodies) and not spool_files(settings)

            assert wait_until(drained, timeout=8.0, interval=0.1), "the spool did not drain"
            time.sleep(1.5)  # another maintenance round: nothing may be drained twice
            payloads = queued_payloads(redis)
            assert [p["body"] for p in payloads] == bodies  # arrival order, each exactly once
            assert len({p["id"] for p in payloads}) == len(bodies)
            for payload in payloads:
                key = inflight_key("Default", SUBSCRIPTION_A)
                assert redis.zscore(key, payload["id"]) == payload["received_at"]

            ready = client.get("/readyz").json()
            assert ready == {"ready": True, "redis": "ok", "spool": {"writable": True, "backlog": 0}}
            late_body = notification(3000)
            assert_ok(post(client, late_body))  # and new posts go straight to the queue, after the spooled ones
            assert [p["body"] for p in queued_payloads(redis)] == [*bodies, late_body]
            assert spool_files(settings) == []


def test_spool_write_cut_short_loses_nothing_acked(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """Every payload answered 200 reaches the queue, even when the disk once took only part of a spool write."""
    first, second = notification(4000), notification(4002)
    with redis_later(tmp_path / "late-redis") as late:
        settings = make_settings(redis_url=late.url)
        with running(settings) as client:
            with file_size_limit(len(first) // 2):  # the disk is full half way through the first record
                cut_short = post(client, first)
            after = post(client, second)  # room again
            acked = [body for body, r in ((first, cut_short), (second, after)) if r.status_code == 200]
            for response in (cut_short, after):
                if response.status_code != 200:
                    assert_rejected(response, 503)
            assert second in acked
            late.start()
            assert wait_until(lambda: not spool_files(settings), timeout=5.0), "the spool did not drain"
            with late.client() as redis:
                assert [p["body"] for p in queued_payloads(redis)] == acked


# --------------------------------------------------------------------------------------------------------
# 8. Neither Redis nor spool: 503
# --------------------------------------------------------------------------------------------------------


def test_neither_redis_nor_spool_gets_503(make_settings: SettingsFactory, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    settings = make_settings(redis_url=nowhere(), spool_dir=blocker / "spool")
    with running(settings) as client:
        before = requests_by_status(client)
        response = post(client, notification(1000))
        ready = client.get("/readyz")
        after = requests_by_status(client)
    assert_rejected(response, 503)
    assert not blocker.with_name("spool").exists()
    assert ready.status_code == 503
    assert ready.json()["ready"] is False
    assert ready.json()["redis"] == "unavailable"
    assert ready.json()["spool"]["writable"] is False
    assert after["503"] - before.get("503", 0.0) == 1
    assert after.get("200", 0.0) == before.get("200", 0.0)


# --------------------------------------------------------------------------------------------------------
# 9. Group commit: concurrent posts share Redis writes, each payload exactly once
# --------------------------------------------------------------------------------------------------------


def test_concurrent_posts_share_jobs_and_each_is_queued_once(make_settings: SettingsFactory, redis: Redis) -> None:
    bodies = [notification(10_000 + 2 * i, SUBSCRIPTION_A if i % 2 else SUBSCRIPTION_B) for i in range(200)]
    for response in post_all_at_once(make_settings(), bodies):
        assert_ok(response)
    jobs = queued_jobs(redis)
    payloads = queued_payloads(redis)
    assert sorted(p["body"] for p in payloads) == sorted(bodies)  # each exactly once
    assert len({p["id"] for p in payloads}) == len(bodies)
    assert len(jobs) < len(bodies), "no two posts shared a Redis write"
    assert max(len(job.args[0]) for job in jobs) > 1
    for job in jobs:
        assert job.meta["payloads"] == len(job.args[0])
    # the queue keeps the order in which the ingress stamped the posts (SPEC §7 leans on arrival order)
    assert [p["received_at"] for p in payloads] == sorted(p["received_at"] for p in payloads)
    in_flight = [redis.zcard(inflight_key("Default", s)) for s in (SUBSCRIPTION_A, SUBSCRIPTION_B)]
    assert in_flight == [len(bodies) // 2, len(bodies) // 2]


def test_group_commit_respects_batch_max(make_settings: SettingsFactory, redis: Redis) -> None:
    bodies = [notification(20_000 + 2 * i) for i in range(100)]
    for response in post_all_at_once(make_settings(batch_max=16), bodies):
        assert_ok(response)
    jobs = queued_jobs(redis)
    assert all(1 <= len(job.args[0]) <= 16 for job in jobs)
    assert len(jobs) >= 100 / 16
    payloads = queued_payloads(redis)
    assert sorted(p["body"] for p in payloads) == sorted(bodies)
    assert [p["received_at"] for p in payloads] == sorted(p["received_at"] for p in payloads)


def test_metrics_and_readiness_detail_only_for_admin_networks(make_settings: SettingsFactory) -> None:
    settings = make_settings(admin_networks=[ipaddress.ip_network("10.0.0.0/8")])
    with running(settings) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 403 and "SYNCNOTIFY_ADMIN_NETWORKS" in refused.text
        assert client.get("/readyz").json() == {"ready": True}  # no detail for the internet
        assert client.get("/healthz").status_code == 200
    with running(settings, client=("10.1.2.3", 40000)) as admin:
        assert admin.get("/metrics").status_code == 200
        assert admin.get("/readyz").json()["redis"] == "ok"


def test_admin_networks_default_is_local_and_private_only(settings_env: pytest.MonkeyPatch) -> None:
    from shared.settings import load_settings

    networks = load_settings().admin_networks
    assert any(ipaddress.ip_address("127.0.0.1") in n for n in networks)
    assert any(ipaddress.ip_address("172.18.0.5") in n for n in networks)  # a Docker network's Prometheus
    assert not any(ipaddress.ip_address("52.96.0.1") in n for n in networks)  # an Exchange Online address
