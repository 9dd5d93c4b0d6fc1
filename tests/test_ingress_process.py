"""The ingress as an operator runs it (``python -m syncnotify ingress``), for what only the real server shows:
uvicorn's own handling of ``X-Forwarded-For``, the subscription id scan end to end, and how the connection
of a refused oversized body is closed."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import pytest
from redis import Redis
from rq import Queue

from shared.ews import SOAP_ACTION
from shared.queues import QUEUE_NAME, UNSUBSCRIBED_KEY
from shared.types import Payload
from syncnotify.redis_server import EmbeddedRedis, free_port
from tests.conftest import SAMPLES
from tests.payloads import SUBSCRIPTION_A, SUBSCRIPTION_ID_SHAPES
from tests.processes import service_env, started, wait_http

HEADERS = {"SOAPAction": f'"{SOAP_ACTION}"', "Content-Type": "text/xml; charset=utf-8"}
NOTIFY = "/Webservices/SyncNotification.svc"
SPEC_OK = (
    b'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
    b'<soap:Body><m:SendNotificationResult xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">'
    b"<m:SubscriptionStatus>OK</m:SubscriptionStatus></m:SendNotificationResult></soap:Body></soap:Envelope>"
)
SPEC_UNSUBSCRIBE = SPEC_OK.replace(b">OK<", b">Unsubscribe<")
SAMPLE_A = (SAMPLES / "02_created_event_item.xml").read_text()
ERROR_A = (SAMPLES / "14_error_read_events_failed.xml").read_text()
SAMPLE_B = (SAMPLES / "10_more_events_part1.xml").read_bytes()
#: In Microsoft's 2603:1026::/36 (Exchange Online), the allowed network of the forwarding tests.
EXCHANGE_ADDRESS = "2603:1026:c00::5"
OUTSIDER = "40.92.1.1"

#: Starts an ingress with these ``SYNCNOTIFY_*`` (and other) variables; yields its base URL.
IngressFactory = Callable[..., AbstractContextManager[str]]


@pytest.fixture
def ingress(redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path) -> IngressFactory:
    @contextmanager
    def start(**env: str) -> Iterator[str]:
        port = free_port()
        environment = service_env(redis_server.url, f"sqlite:///{tmp_path / 'syncnotify.db'}", tmp_path, **env)
        command = ["ingress", "--host", "127.0.0.1", "--port", str(port)]
        with started(command, environment, tmp_path, tmp_path / "ingress.log"):
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/healthz")
            yield url

    return start


def queued_sources(redis: Redis) -> list[str]:
    payloads: list[Payload] = []
    for job in Queue(QUEUE_NAME, connection=redis).get_jobs():
        (batch,) = job.args
        payloads.extend(batch)
    return [payload["source"] for payload in payloads]


def post(url: str, body: bytes, path: str = NOTIFY, **headers: str) -> httpx.Response:
    return httpx.post(url + path, content=body, headers={**HEADERS, **headers}, timeout=10)


def test_rooms_callback_path_takes_ews_notifications(ingress: IngressFactory, redis: Redis) -> None:
    with ingress(SYNCNOTIFY_TENANTS="Default,Mandant2") as url:
        plain = post(url, SAMPLE_A.encode(), "/api/webhooks/exchange")
        tenant = post(url, SAMPLE_A.encode(), "/Mandant2/api/webhooks/exchange")
        other = post(url, SAMPLE_A.encode(), "/api/webhooks/graph/exchange")
    assert plain.content == SPEC_OK and tenant.content == SPEC_OK
    assert other.status_code == 404
    tenants = [p["tenant"] for job in Queue(QUEUE_NAME, connection=redis).get_jobs() for p in job.args[0]]
    assert tenants == ["Default", "Mandant2"]


# --------------------------------------------------------------------------------------------------------
# X-Forwarded-For: believed from SYNCNOTIFY_TRUSTED_PROXIES only, never on uvicorn's say-so
# --------------------------------------------------------------------------------------------------------

#: uvicorn believes X-Forwarded-For from the addresses in this variable (default 127.0.0.1): it must not matter.
UVICORN_TRUSTS_ALL = {"FORWARDED_ALLOW_IPS": "*"}


@pytest.mark.parametrize("forwarded", [EXCHANGE_ADDRESS, OUTSIDER, f"{EXCHANGE_ADDRESS}, {OUTSIDER}"])
def test_forwarded_for_from_an_untrusted_local_peer_does_not_make_it_allowed(
    forwarded: str, ingress: IngressFactory, redis: Redis
) -> None:
    env = {"SYNCNOTIFY_TRUSTED_PROXIES": "", "SYNCNOTIFY_ALLOWED_NETWORKS": "2603:1026::/36", **UVICORN_TRUSTS_ALL}
    with ingress(**env) as url:
        response = post(url, SAMPLE_A.encode(), **{"X-Forwarded-For": forwarded})
    assert response.status_code == 403, response.text
    assert "127.0.0.1" in response.text  # the peer is the source, not an address from the header
    assert queued_sources(redis) == []


def test_forwarded_for_from_an_untrusted_local_peer_is_ignored(ingress: IngressFactory, redis: Redis) -> None:
    env = {"SYNCNOTIFY_TRUSTED_PROXIES": "", "SYNCNOTIFY_ALLOWED_NETWORKS": "127.0.0.0/8", **UVICORN_TRUSTS_ALL}
    with ingress(**env) as url:
        response = post(url, SAMPLE_A.encode(), **{"X-Forwarded-For": OUTSIDER})
    assert response.status_code == 200, response.text
    assert response.content == SPEC_OK
    assert queued_sources(redis) == ["127.0.0.1"]


def test_forwarded_for_from_a_trusted_proxy_is_believed(ingress: IngressFactory, redis: Redis) -> None:
    env = {"SYNCNOTIFY_TRUSTED_PROXIES": "127.0.0.1/32", "SYNCNOTIFY_ALLOWED_NETWORKS": "2603:1026::/36"}
    with ingress(**env) as url:
        allowed = post(url, SAMPLE_A.encode(), **{"X-Forwarded-For": EXCHANGE_ADDRESS})
        refused = post(url, SAMPLE_A.encode(), **{"X-Forwarded-For": OUTSIDER})
        direct = post(url, SAMPLE_A.encode())
    assert allowed.status_code == 200, allowed.text
    assert refused.status_code == 403 and OUTSIDER in refused.text, refused.text
    assert direct.status_code == 403 and "127.0.0.1" in direct.text, direct.text
    assert queued_sources(redis) == [EXCHANGE_ADDRESS]


# --------------------------------------------------------------------------------------------------------
# Unsubscribe: the scan finds the SubscriptionId in every shape the worker's parser accepts
# --------------------------------------------------------------------------------------------------------


def test_unsubscribed_subscription_is_answered_unsubscribe_in_every_shape(
    ingress: IngressFactory, redis: Redis
) -> None:
    redis.sadd(UNSUBSCRIBED_KEY, SUBSCRIPTION_A)  # read by the ingress as it starts
    with ingress() as url:
        answers = {name: post(url, body) for name, body in SUBSCRIPTION_ID_SHAPES.items()}
        other = post(url, SAMPLE_B)
    wrong = {name: (r.status_code, r.content[-80:]) for name, r in answers.items() if r.content != SPEC_UNSUBSCRIBE}
    assert wrong == {}
    assert all(r.status_code == 200 for r in answers.values())
    assert other.content == SPEC_OK
    assert len(queued_sources(redis)) == len(SUBSCRIPTION_ID_SHAPES) + 1  # acked means stored, Unsubscribe or not


# --------------------------------------------------------------------------------------------------------
# A refused body: the answer arrives even at a client that writes its whole body before it reads
# --------------------------------------------------------------------------------------------------------

LIMIT = 1_048_576
OVERSIZED = b"<a>" + b"x" * (3 * LIMIT) + b"</a>"


def _request(body: bytes, *, chunked: bool = False, soap_action: str = SOAP_ACTION, extra: str = "") -> bytes:
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    head = (
        f"POST {NOTIFY} HTTP/1.1\r\nHost: ingress\r\nContent-Type: text/xml; charset=utf-8\r\n"
        f'SOAPAction: "{soap_action}"\r\n{framing}\r\n{extra}\r\n'
    ).encode()
    if not chunked:
        return head + body
    size = 64 * 1024
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return head + b"".join(parts) + b"0\r\n\r\n"


def _send_all_then_read(port: int, request: bytes) -> bytes:
    """Write the whole request (as a naive client does), only then read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):  # ECONNRESET here is the bug
            received += chunk
    return received


#: (what, request, status): oversized bodies framed both ways, and a refusal by an earlier check.
REFUSED: list[tuple[str, bytes, int]] = [
    ("content-length", _request(OVERSIZED), 413),
    ("content-length, connection close", _request(OVERSIZED, extra="Connection: close\r\n"), 413),
    ("chunked", _request(OVERSIZED, chunked=True), 413),
    ("chunked, connection close", _request(OVERSIZED, chunked=True, extra="Connection: close\r\n"), 413),
    ("wrong SOAPAction", _request(OVERSIZED, soap_action="urn:other", extra="Connection: close\r\n"), 400),
]


def test_refused_body_is_answered_to_a_client_still_sending_it(ingress: IngressFactory, redis: Redis) -> None:
    with ingress(SYNCNOTIFY_MAX_BODY_BYTES=str(LIMIT)) as url:
        port = int(url.rsplit(":", 1)[1])
        for what, request, status in REFUSED:
            for attempt in range(3):  # the reset was a race; give it several chances
                try:
                    answer = _send_all_then_read(port, request)
                except OSError as exc:
                    raise AssertionError(f"{what}, attempt {attempt + 1}: {exc!r} instead of a {status}") from exc
                assert answer.startswith(f"HTTP/1.1 {status} ".encode()), (what, answer[:200])
                assert b"\r\nconnection: close\r\n" in answer.lower(), (what, answer[:200])
        assert post(url, SAMPLE_A.encode()).status_code == 200  # the server is fine afterwards
    assert len(queued_sources(redis)) == 1


def test_connection_idle_after_a_body_dropped_behind_its_answer_is_closed(ingress: IngressFactory) -> None:
    # FastAPI answers a POST to another path without reading its body; uvicorn drops the rest of it, and
    # that cancelled its keep-alive timer: the connection then stayed open, idle, for ever.
    with ingress(SYNCNOTIFY_REQUEST_TIMEOUT_SECONDS="1") as url:
        port = int(url.rsplit(":", 1)[1])
        body = b"x" * (2 * LIMIT)
        head = f"POST /elsewhere HTTP/1.1\r\nHost: ingress\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head + body)
            received = b""
            while b"not found" not in received:
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
            assert received.startswith(b"HTTP/1.1 404 ")
            sock.settimeout(5)
            assert sock.recv(65536) == b"", "the idle connection was not closed"
