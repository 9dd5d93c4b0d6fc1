"""Bad input and hostile clients (SPEC §4, §8): each gets a clear answer, nothing acked is lost, the worker
never crashes, hangs or grows without bound, and slow clients cannot starve Exchange's posts."""

from __future__ import annotations

import gzip
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis
from rq import Queue
from sqlalchemy import Engine, func, select

from shared import store_job
from shared.ews import SOAP_ACTION
from shared.queues import QUEUE_NAME
from shared.schema import notifications
from syncnotify import dlq
from syncnotify.redis_server import EmbeddedRedis, free_port
from tests.conftest import SAMPLES, Reliability
from tests.payloads import SUBSCRIPTION_A, make_event, make_notification, watermark
from tests.processes import children_of, db_name, queue_drained, service_env, started, wait_for, wait_http

HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": SOAP_ACTION}
GOOD = (SAMPLES / "02_created_event_item.xml").read_bytes()


def _deep(levels: int) -> bytes:
    return b'<?xml version="1.0"?>' + b"<a>" * levels + b"</a>" * levels


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]><lolz>&lol9;</lolz>"""
EXTERNAL_ENTITY = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + GOOD.split(b"?>", 1)[
    1
].replace(b"<t:SubscriptionId>", b"<t:SubscriptionId>&x;", 1)

#: (name, body, headers or None for Exchange's, expected: status for a refusal, or the dead-letter error
#: class for a payload acked and then refused by the worker, or "stored" for one that must be stored)
CORPUS: list[tuple[str, bytes, dict[str, str] | None, int | str]] = [
    ("empty body", b"", None, 400),
    ("wrong SOAPAction", GOOD, {"Content-Type": "text/xml", "SOAPAction": "urn:Other"}, 400),
    ("no SOAPAction", GOOD, {"Content-Type": "text/xml"}, 400),
    ("JSON content type", GOOD, {"Content-Type": "application/json", "SOAPAction": SOAP_ACTION}, 415),
    ("oversized body", b"<a>" + b"x" * 2_000_000 + b"</a>", None, 413),
    ("gzip bomb", gzip.compress(b" " * 50_000_000), {**HEADERS, "Content-Encoding": "gzip"}, 413),
    ("not gzip at all", GOOD, {**HEADERS, "Content-Encoding": "gzip"}, 400),
    ("not XML", b"hello, I am not XML", None, "not_xml"),
    ("truncated", GOOD[: len(GOOD) // 2], None, "malformed_xml"),
    ("seed sample as printed", (SAMPLES / "00_seed_sample_malformed.xml").read_bytes(), None, "malformed_xml"),
    ("billion laughs", BILLION_LAUGHS, None, "dtd_forbidden"),
    ("external entity", EXTERNAL_ENTITY, None, "dtd_forbidden"),
    ("deep nesting", _deep(100_000), None, "not_send_notification"),
    ("non-UTF-8 bytes", GOOD.replace(b"EXAMPLEITEM", b"EXAMPLE\xff\xfeITEM", 1), None, "malformed_xml"),
    ("lying encoding declaration", GOOD.replace(b'encoding="utf-8"', b'encoding="utf-32"', 1), None, "not_xml"),
    ("SOAP fault, not a notification", (SAMPLES / "ok.xml").read_bytes(), None, "not_send_notification"),
    (
        "unknown event type from a newer Exchange",
        make_notification(SUBSCRIPTION_A, watermark(1), [make_event("Future", watermark(2))]),
        None,
        "unknown_structure",
    ),
    (
        "number where text belongs, and text where a number belongs",
        make_notification(SUBSCRIPTION_A, watermark(1), [make_event("Modified", watermark(2), unread_count="lots")]),
        None,
        "bad_value",
    ),
    (
        "huge attribute value",
        GOOD.replace(b'ChangeKey="DwAAABYAAAA1"', b'ChangeKey="' + b"A" * 900_000 + b'"', 1),
        None,
        "stored",
    ),
    (
        "UTF-8 byte order mark",
        b"\xef\xbb\xbf" + (SAMPLES / "10_more_events_part1.xml").read_bytes(),
        None,
        "stored",
    ),
]


@pytest.fixture
def pipeline(
    redis_server: EmbeddedRedis, redis: Redis, database_url: str, tmp_path: Path
) -> Iterator[tuple[str, int, dict[str, str]]]:
    """Ingress and worker processes: (notification URL, the worker process's pid, environment)."""
    port = free_port()
    env = service_env(redis_server.url, database_url, tmp_path, SYNCNOTIFY_REQUEST_TIMEOUT_SECONDS="2")
    log = tmp_path / "services.log"
    with (
        started(["ingress", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path, log),
        started(["worker", "--metrics-port", "0"], env, tmp_path, log) as worker,
    ):
        wait_http(f"http://127.0.0.1:{port}/healthz")
        wait_for(lambda: bool(children_of(worker.pid)), 10, "the worker process")
        yield f"http://127.0.0.1:{port}/Webservices/SyncNotification.svc", children_of(worker.pid)[0], env


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_hostile_corpus_gets_clear_answers_and_loses_nothing(
    pipeline: tuple[str, int, dict[str, str]],
    redis: Redis,
    engine: Engine,
    database_url: str,
    reliability: Reliability,
) -> None:
    url, worker_pid, _env = pipeline
    acked: dict[str, int | str] = {}
    with httpx.Client(timeout=30) as client:
        for name, body, headers, expected in CORPUS:
            response = client.post(url, content=body, headers=headers or HEADERS)
            if isinstance(expected, int):
                assert response.status_code == expected, f"{name}: {response.status_code} {response.text}"
                assert response.text and len(response.text) < 200 and "\n" not in response.text.strip(), name
            else:
                assert response.status_code == 200, f"{name}: {response.status_code} {response.text}"
                acked[name] = expected
    dead = [e for e in acked.values() if e != "stored"]
    wait_for(
        lambda: queue_drained(redis) and store_job.dead_letters(redis).get_job_count(cleanup=False) == len(dead),
        60,
        "every acked payload stored or dead-lettered",
    )
    classes = sorted(e.error_class for e in dlq.entries(redis))
    assert classes == sorted(dead)
    for entry in dlq.entries(redis):
        assert entry.message and len(entry.message) < 500  # says what and where, in a line
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(notifications)).scalar_one()
    assert rows == 4  # the two payloads that must be stored, two events each
    assert Path(f"/proc/{worker_pid}").exists(), "the worker survived the corpus"
    peak = _peak_rss_mb(worker_pid)
    assert peak < 250, f"worker peak memory {peak:.0f} MB"
    refused = sum(1 for *_, e in CORPUS if isinstance(e, int))
    reliability.append(
        (
            f"hostile and malformed payloads ({db_name(database_url)})",
            f"{len(CORPUS)} kinds, once each",
            f"{refused} refused with 4xx, {len(dead)} dead-lettered with a located reason",
            f"nothing acked lost; worker peak {peak:.0f} MB",
        )
    )


def test_slow_and_idle_clients_do_not_starve_exchange(pipeline: tuple[str, int, dict[str, str]]) -> None:
    url, _pid, _env = pipeline
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    hostile: list[socket.socket] = []
    try:
        for i in range(600):
            sock = socket.create_connection((host, int(port)))
            if i % 3 == 1:  # slow headers
                sock.sendall(b"POST /Webservices/SyncNotification.svc HTTP/1.1\r\nHost: x\r\n")
            elif i % 3 == 2:  # slow body
                sock.sendall(
                    b"POST /Webservices/SyncNotification.svc HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                    b"SOAPAction: " + SOAP_ACTION.encode() + b"\r\nContent-Length: 5000\r\n\r\n<a>"
                )
            hostile.append(sock)
        with httpx.Client(timeout=5) as client:  # Exchange, meanwhile
            for n in range(50):
                body = make_notification(
                    f"slow-{uuid.uuid4().hex}", watermark(n), [make_event("Created", watermark(n + 1))]
                )
                assert client.post(url, content=body, headers=HEADERS).status_code == 200
        # and the server drops the hostile connections once they outlast the request timeout (2 s here)
        deadline = time.monotonic() + 10
        for sock in hostile:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            data = sock.recv(4096)
            assert data == b"" or data.startswith(b"HTTP/1.1 4"), data[:80]
    finally:
        for sock in hostile:
            sock.close()


_bodies = st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda cut, junk: GOOD[:cut] + junk, st.integers(0, len(GOOD)), st.binary(max_size=40)),
)
_headers = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from(["text/xml", "application/soap+xml", "text/plain", "", "text/xml; charset=x"]),
        "SOAPAction": st.sampled_from([SOAP_ACTION, f'"{SOAP_ACTION}"', "", "x" * 300]),
        "Content-Encoding": st.sampled_from(["gzip", "identity", "br", "x-gzip"]),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_bodies, headers=_headers, path=st.sampled_from(["/Webservices/SyncNotification.svc", "/x/y", "/?a"]))
def test_any_request_gets_a_clear_answer_never_a_server_error(
    ingress_client: tuple[object, Redis], body: bytes, headers: dict[str, str], path: str
) -> None:
    client, redis = ingress_client
    before = _queued(redis)
    response = client.post(path, content=body, headers=headers)  # type: ignore[attr-defined]
    assert response.status_code in {200, 400, 404, 413, 415}, response.status_code
    assert _queued(redis) == before + (response.status_code == 200)  # acked means queued, refused means not


def _queued(redis: Redis) -> int:
    return sum(job.meta.get("payloads", 0) for job in Queue(QUEUE_NAME, connection=redis).get_jobs())


@pytest.fixture
def ingress_client(redis_server: EmbeddedRedis, redis: Redis, tmp_path: Path) -> Iterator[tuple[object, Redis]]:
    from shared.settings import Settings
    from tests.test_ingress import running  # the in-process app with its lifespan, as the ingress tests use it

    settings = Settings(redis_url=redis_server.url, spool_dir=tmp_path / "spool", max_body_bytes=4096)
    with running(settings) as client:
        yield client, redis
