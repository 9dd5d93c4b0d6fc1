"""The operator's view of Microsoft Graph, as an operator uses it: ``send --graph`` against a recording HTTP
server, ``status`` and ``subscriptions list`` over Graph rows on both databases, the scrape-time metrics, the
status page's Graph section, and one round trip through a real ingress and worker."""

from __future__ import annotations

import json
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, insert, update
from starlette.exceptions import StarletteDeprecationWarning

from shared.ews import SOAP_ACTION
from shared.queues import GRAPH_REJECTED_KEY
from shared.schema import subscriptions
from shared.settings import Settings
from syncnotify import status
from syncnotify.admin.app import create_admin_app
from syncnotify.admin.page import render
from syncnotify.admin.snapshot import snapshot
from syncnotify.cli import operate
from syncnotify.metrics import QueueCollector
from syncnotify.redis_server import EmbeddedRedis
from tests.conftest import SAMPLES
from tests.graph_samples import CLIENT_STATE, GRAPH_SAMPLES, ROOM_A, ROOM_B
from tests.processes import queue_drained, run, service, service_env, wait_for
from tests.test_admin import made_up, parse_dom, sub

with warnings.catch_warnings():
    # Starlette 1.x warns at import time that its TestClient prefers httpx2 (see tests/test_ingress.py).
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

EXPIRED_ROOM = "GRAPH-EXPIRED-ROOM-C301"
REMOVED_ROOM = "GRAPH-REMOVED-ROOM-B204"
EWS_ROOM = "EWS-ROOM-101"
MAILBOX_A = "room-a101@contoso.example"
MAILBOX_B = "room-b204@contoso.example"
MAILBOX_C = "room-c301@contoso.example"
HOSTILE = "<script>alert(1)</script>"


# --------------------------------------------------------------------------------------------------------
# send --graph, against a server that records what it was sent
# --------------------------------------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """What a tiny HTTP server got, and what it answers (status and body) to every POST."""

    url: str
    answer: tuple[int, bytes] = (202, b"")
    received: list[Received] = field(default_factory=list)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """A local HTTP server in a thread, recording each request; 202 with an empty body unless told otherwise."""
    box: list[Recorder] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            box[0].received.append(Received("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            code, answer = box[0].answer
            self.send_response(code)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.append(Recorder(f"http://127.0.0.1:{server.server_address[1]}"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_send_graph_posts_each_file_as_graph_does(recorder: Recorder, tmp_path: Path) -> None:
    files = [GRAPH_SAMPLES / "02-event-created.json", GRAPH_SAMPLES / "08-lifecycle-reauthorization-required.json"]
    url = recorder.url + "/api/webhooks/graph?tenant=contoso"
    sent = run(["send", "--graph", *map(str, files), "--url", url], {}, tmp_path)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sent.stdout.splitlines() == [f"{f}: 202 Accepted" for f in files]
    assert [r.body for r in recorder.received] == [f.read_bytes() for f in files]  # byte for byte, in order
    for request in recorder.received:
        assert (request.method, request.path) == ("POST", "/api/webhooks/graph?tenant=contoso")
        assert request.headers["content-type"] == "application/json; charset=utf-8"
        assert request.headers["user-agent"].startswith("Microsoft-Graph-Change-Notifications/")
        assert "soapaction" not in request.headers


@pytest.mark.parametrize(
    ("answer", "printed"),
    [
        ((415, b"content type must be application/json\n"), "415 content type must be application/json"),
        ((503, b""), "503 Service Unavailable"),  # no body: the status's name
        ((200, b""), "200 OK"),  # Graph wants 202; a 200 is not what syncnotify answers
    ],
)
def test_send_graph_fails_on_any_answer_but_202(
    recorder: Recorder, tmp_path: Path, answer: tuple[int, bytes], printed: str
) -> None:
    recorder.answer = answer
    file = GRAPH_SAMPLES / "03-event-updated.json"
    sent = run(["send", "--graph", str(file), "--url", recorder.url + "/api/webhooks/graph"], {}, tmp_path)
    assert sent.returncode == 1
    assert sent.stdout.splitlines() == [f"{file}: {printed}"]
    assert len(recorder.received) == 1


def test_send_without_graph_still_posts_as_exchange_does(recorder: Recorder, tmp_path: Path) -> None:
    ok = (
        b'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
        b"<soap:Body><m:SendNotificationResult><m:SubscriptionStatus>OK</m:SubscriptionStatus>"
        b"</m:SendNotificationResult></soap:Body></soap:Envelope>"
    )
    recorder.answer = (200, ok)
    file = SAMPLES / "02_created_event_item.xml"
    sent = run(["send", str(file), "--url", recorder.url + "/Webservices/SyncNotification.svc"], {}, tmp_path)
    assert sent.returncode == 0 and sent.stdout.splitlines() == [f"{file}: 200 OK"]
    (request,) = recorder.received
    assert request.headers["content-type"] == "text/xml; charset=utf-8"
    assert request.headers["soapaction"] == f'"{SOAP_ACTION}"'
    assert request.body == file.read_bytes()


# --------------------------------------------------------------------------------------------------------
# status and subscriptions list over Graph rows (both databases)
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    now: datetime
    expires: dict[str, datetime]


def seed_graph(engine: Engine, redis: Redis) -> Seeded:
    """One EWS room and four Graph ones: active, reauthorization_required, active but past its expiry (shown
    ``expired``) and removed (retired: its old expiry is no one's concern); four refusals in Redis."""
    now = datetime.now(UTC).replace(microsecond=0)
    expires = {
        ROOM_A: now + timedelta(days=5, minutes=30),
        ROOM_B: now + timedelta(days=2, minutes=30),
        EXPIRED_ROOM: now - timedelta(hours=3, minutes=10),
        REMOVED_ROOM: now - timedelta(days=10),
    }
    graph = [
        ("contoso", ROOM_A, "active", MAILBOX_A),
        ("contoso", ROOM_B, "reauthorization_required", MAILBOX_B),
        ("contoso", EXPIRED_ROOM, "active", MAILBOX_C),
        ("contoso", REMOVED_ROOM, "removed", MAILBOX_B),
    ]
    rows: list[dict[str, Any]] = [
        {
            "tenant": tenant,
            "subscription_id": subscription_id,
            "state": state,
            "source": "graph",
            "mailbox": mailbox,
            "resource": f"users/{mailbox}/events",
            "expires_at": expires[subscription_id],
            "last_seen_at": now - timedelta(days=9),  # Graph has no heartbeat: never "stale" for silence
            "last_seq": 0,
            "gap_count": 0,
            **dict.fromkeys(("renewed_at", "renewal_attempted_at", "renewal_error")),
            "renewal_failures": 0,
        }
        for tenant, subscription_id, state, mailbox in graph
    ]
    # the upkeep's record: room A renewed an hour ago; the expired one failing for a while
    rows[0] |= {"renewed_at": now - timedelta(hours=1), "renewal_attempted_at": now - timedelta(hours=1)}
    rows[2] |= {
        "renewed_at": now - timedelta(days=3),
        "renewal_attempted_at": now - timedelta(minutes=10),
        "renewal_error": "tenant 'contoso': the client secret is wrong",
        "renewal_failures": 7,
    }
    ews = {"tenant": "Default", "subscription_id": EWS_ROOM, "state": "active", "last_seq": 3, "gap_count": 0}
    with engine.begin() as conn:
        conn.execute(insert(subscriptions), rows)
        conn.execute(insert(subscriptions), [{**ews, "last_seen_at": now - timedelta(minutes=1)}])
    redis.hset(GRAPH_REJECTED_KEY, mapping={"client_state": 3, "not_json": 1})
    return Seeded(now, expires)


def cli_json(env: dict[str, str], tmp: Path, *args: str) -> Any:
    result = run([*args, "--json"], env, tmp)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def table_rows(text: str) -> list[dict[str, str]]:
    """``subscriptions list`` as {column: cell}: columns are two or more spaces apart, cells hold single ones."""
    lines = text.splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    return [dict(zip(header, re.split(r"\s{2,}", line.strip()), strict=True)) for line in lines[1:]]


@pytest.fixture
def seeded(
    engine: Engine, redis: Redis, redis_server: EmbeddedRedis, database_url: str, tmp_path: Path
) -> tuple[Seeded, dict[str, str]]:
    return seed_graph(engine, redis), service_env(redis_server.url, database_url, tmp_path)


def test_status_shows_graph_subscriptions_soonest_expiry_and_refusals(
    seeded: tuple[Seeded, dict[str, str]], engine: Engine, tmp_path: Path
) -> None:
    data, env = seeded
    document = cli_json(env, tmp_path, "status")
    assert document["subscriptions"]["by_state"] == {
        "active": 2,
        "expired": 1,
        "reauthorization_required": 1,
        "removed": 1,
    }
    graph = document["graph"]
    assert graph["subscriptions"] == {
        "total": 4,
        "by_state": {"active": 1, "expired": 1, "reauthorization_required": 1, "removed": 1},
    }
    soonest = graph["soonest_expiry"]
    assert datetime.fromisoformat(soonest.pop("expires_at")) == data.expires[EXPIRED_ROOM]
    assert soonest == {"tenant": "contoso", "subscription_id": EXPIRED_ROOM, "mailbox": MAILBOX_C, "state": "expired"}
    assert graph["rejected"] == {"total": 4, "by_reason": {"client_state": 3, "not_json": 1}}

    text = run(["status"], env, tmp_path)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    iso = data.expires[EXPIRED_ROOM].isoformat(timespec="seconds")
    assert lines[-2] == (
        "graph              4 subscriptions (active 1, expired 1, reauthorization_required 1, removed 1); "
        f"expired 3 h 10 min ago ({MAILBOX_C}, {iso})"
    )
    assert lines[-1] == "graph rejected     4 (client_state 3, not_json 1)"
    assert "subscriptions      active 2, expired 1, reauthorization_required 1, removed 1;" in text.stdout

    # renewed or replaced: the soonest expiry is now one still ahead
    with engine.begin() as conn:
        conn.execute(
            update(subscriptions).where(subscriptions.c.subscription_id == EXPIRED_ROOM).values(state="removed")
        )
    again = run(["status"], env, tmp_path).stdout.splitlines()
    iso = data.expires[ROOM_B].isoformat(timespec="seconds")
    assert again[-2].endswith(f"; soonest expiry in 2 d ({MAILBOX_B}, {iso})")


def test_status_without_graph_says_none(
    engine: Engine, redis: Redis, redis_server: EmbeddedRedis, database_url: str, tmp_path: Path
) -> None:
    env = service_env(redis_server.url, database_url, tmp_path)
    document = cli_json(env, tmp_path, "status")
    assert document["graph"] == {
        "subscriptions": {"total": 0, "by_state": {}},
        "soonest_expiry": None,
        "rejected": {"total": 0, "by_reason": {}},
    }
    lines = run(["status"], env, tmp_path).stdout.splitlines()
    assert lines[-2:] == ["graph              none", "graph rejected     0 (none)"]


def test_subscriptions_list_shows_source_expiry_and_mailbox(
    seeded: tuple[Seeded, dict[str, str]], tmp_path: Path
) -> None:
    data, env = seeded
    graph = cli_json(env, tmp_path, "subscriptions", "list", "--source", "graph")
    # the troubled first (expired, reauthorization_required), the retired next, the healthy last
    assert [(s["subscription_id"], s["state"]) for s in graph] == [
        (EXPIRED_ROOM, "expired"),
        (ROOM_B, "reauthorization_required"),
        (REMOVED_ROOM, "removed"),
        (ROOM_A, "active"),
    ]
    for one in graph:
        assert one["source"] == "graph" and one["tenant"] == "contoso"
        assert datetime.fromisoformat(one["expires_at"]) == data.expires[one["subscription_id"]]
    assert [s["mailbox"] for s in graph] == [MAILBOX_C, MAILBOX_B, MAILBOX_B, MAILBOX_A]

    (ews,) = cli_json(env, tmp_path, "subscriptions", "list", "--source", "ews")
    assert (ews["subscription_id"], ews["source"], ews["expires_at"], ews["mailbox"]) == (EWS_ROOM, "ews", None, None)
    expired = cli_json(env, tmp_path, "subscriptions", "list", "--state", "expired")
    assert [s["subscription_id"] for s in expired] == [EXPIRED_ROOM]
    both = cli_json(
        env, tmp_path, "subscriptions", "list", "--tenant", "CONTOSO", "--state", "reauthorization_required"
    )
    assert [s["subscription_id"] for s in both] == [ROOM_B]

    listed = run(["subscriptions", "list"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    header = listed.stdout.splitlines()[0].split("  ")
    assert [h.strip() for h in header if h.strip()][:6] == [
        "TENANT",
        "SUBSCRIPTION",
        "STATE",
        "SOURCE",
        "LAST SEEN",
        "EXPIRES",
    ]
    rows = {r["SUBSCRIPTION"]: r for r in table_rows(listed.stdout)}
    assert (rows[ROOM_A]["SOURCE"], rows[ROOM_A]["EXPIRES"], rows[ROOM_A]["MAILBOX"]) == ("graph", "in 5 d", MAILBOX_A)
    assert (rows[EXPIRED_ROOM]["STATE"], rows[EXPIRED_ROOM]["EXPIRES"]) == ("expired", "3 h 10 min ago")
    assert (rows[EWS_ROOM]["SOURCE"], rows[EWS_ROOM]["EXPIRES"], rows[EWS_ROOM]["MAILBOX"]) == ("ews", "-", "-")

    bad = run(["subscriptions", "list", "--source", "exchange"], env, tmp_path)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_the_clis_state_choices_are_the_shown_states() -> None:
    """The parser spells the shown states itself (so that it loads no rq); they must not drift apart."""
    assert operate.SUBSCRIPTION_STATES == list(status.SHOWN_STATES)


# --------------------------------------------------------------------------------------------------------
# Metrics (the workers' scrape target)
# --------------------------------------------------------------------------------------------------------


def scraped(engine: Engine, redis: Redis) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """QueueCollector's samples as {(name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in QueueCollector(redis, engine).collect()
        for s in family.samples
    }


def test_metrics_count_subscriptions_by_source_and_mirror_the_refusals(engine: Engine, redis: Redis) -> None:
    seed_graph(engine, redis)
    samples = scraped(engine, redis)

    def value(name: str, **labels: str) -> float:
        return samples[name, tuple(sorted(labels.items()))]

    # both sources together, as the dashboards read it: the label set is unchanged
    assert value("syncnotify_subscriptions", state="active") == 2
    assert value("syncnotify_subscriptions", state="expired") == 1
    assert value("syncnotify_subscriptions", state="stale") == 0
    assert value("syncnotify_subscriptions_by_source", source="graph", state="active") == 1
    assert value("syncnotify_subscriptions_by_source", source="graph", state="reauthorization_required") == 1
    assert value("syncnotify_subscriptions_by_source", source="graph", state="removed") == 1
    assert value("syncnotify_subscriptions_by_source", source="ews", state="active") == 1
    assert value("syncnotify_subscriptions_by_source", source="ews", state="removed") == 0  # every series exists
    # the expired room is the soonest (the removed one, ten days past, no longer counts)
    assert -(3 * 3600 + 10 * 60 + 60) < value("syncnotify_graph_subscription_expiry_seconds") <= -(3 * 3600 + 10 * 60)
    assert value("syncnotify_graph_rejected_recorded_total", reason="client_state") == 3
    assert value("syncnotify_graph_rejected_recorded_total", reason="not_json") == 1


def test_metrics_without_graph_have_no_expiry_sample(engine: Engine, redis: Redis) -> None:
    names = {name for name, _ in scraped(engine, redis)}
    assert "syncnotify_graph_subscription_expiry_seconds" not in names
    assert not any(name.startswith("syncnotify_graph_rejected_recorded") for name in names)
    assert "syncnotify_subscriptions_by_source" in names


# --------------------------------------------------------------------------------------------------------
# The status page
# --------------------------------------------------------------------------------------------------------


def test_status_page_has_a_graph_section(
    engine: Engine, redis: Redis, redis_server: EmbeddedRedis, database_url: str, tmp_path: Path
) -> None:
    data = seed_graph(engine, redis)
    with engine.begin() as conn:  # a hostile mailbox is text on the page, never markup
        conn.execute(update(subscriptions).where(subscriptions.c.subscription_id == ROOM_A).values(mailbox=HOSTILE))
    settings = Settings(
        redis_url=redis_server.url, database_url=database_url, spool_dir=tmp_path / "spool", _env_file=None
    )
    with TestClient(create_admin_app(settings)) as client:
        document = client.get("/status.json").json()
        page = client.get("/")
    graph = document["status"]["graph"]
    assert graph["rejected"]["by_reason"] == {"client_state": 3, "not_json": 1}
    assert [s["subscription_id"] for s in graph["expiring"]] == [EXPIRED_ROOM, ROOM_B, ROOM_A]  # soonest first
    assert graph["soonest_expiry"]["subscription_id"] == EXPIRED_ROOM

    assert page.status_code == 200
    assert "<script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    dom = parse_dom(page.text)
    assert "2 subscriptions need attention" in dom.by_id("banner").text  # expired, reauthorization_required
    section = dom.by_id("graph")
    assert section.find("h2").text == "Microsoft Graph 4 subscriptions"
    assert [li.text for li in dom.by_id("graph-states").find_all("li")] == [
        "expired 1",
        "reauthorization_required 1",
        "removed 1",
        "active 1",
    ]
    expiry = dom.by_id("graph-expiry")
    assert expiry.attrs["class"] == "expiry bad"
    assert expiry.text == f"Expired 3 h 10 min ago : {MAILBOX_C} (contoso)"
    assert expiry.find("time").attrs["datetime"] == data.expires[EXPIRED_ROOM].isoformat(timespec="seconds")
    assert dom.by_id("graph-rejected").text == "Refused by the ingress: 4 ( client_state 3, not_json 1)"
    table = dom.by_id("graph-expiring")
    headings = ["Room", "Tenant", "Subscription", "State", "Expires", "Last renewal", "Outcome"]
    assert [th.text for th in table.find_all("th")] == headings
    rows = [[td.text for td in tr.find_all("td")] for tr in table.find("tbody").find_all("tr")]
    failing = "tenant 'contoso': the client secret is wrong"
    assert rows == [
        [MAILBOX_C, "contoso", EXPIRED_ROOM, "expired", "3 h 10 min ago", "3 d ago", failing],
        [MAILBOX_B, "contoso", ROOM_B, "reauthorization_required", "in 2 d", "—", "—"],
        [HOSTILE, "contoso", ROOM_A, "active", "in 5 d", "1 h ago", "ok"],
    ]
    # the Graph tenant's table has the Graph columns; the EWS-only tenant's stays as it was
    contoso = dom.find("section", **{"data-tenant": "contoso"})
    headings = [th.text for th in contoso.find("thead").find_all("th")]
    assert headings[:4] == ["Subscription", "State", "Source", "Expires"]
    default = dom.find("section", **{"data-tenant": "Default"})
    assert "Source" not in [th.text for th in default.find("thead").find_all("th")]


def test_status_page_soonest_expiry_ahead_and_no_graph_section_without_graph(
    engine: Engine, redis: Redis, tmp_path: Path
) -> None:
    assert 'id="graph"' not in render(made_up([sub("EWS-1")]))  # an EWS-only system's page is as it was

    seed_graph(engine, redis)
    with engine.begin() as conn:
        conn.execute(
            update(subscriptions).where(subscriptions.c.subscription_id == EXPIRED_ROOM).values(state="removed")
        )
    dom = parse_dom(render(snapshot(engine, redis, tmp_path / "spool")))
    expiry = dom.by_id("graph-expiry")
    assert expiry.attrs["class"] == "expiry" and expiry.text == f"Soonest expiry in 2 d : {MAILBOX_B} (contoso)"


# --------------------------------------------------------------------------------------------------------
# Through a real ingress and worker
# --------------------------------------------------------------------------------------------------------


def with_expiry(name: str, expires: datetime, tmp: Path) -> Path:
    """A copy of a Graph sample whose items expire at ``expires`` (the samples' fixed date would pass one day)."""
    document = json.loads((GRAPH_SAMPLES / name).read_text())
    for item in document["value"]:
        if "subscriptionExpirationDateTime" in item:
            item["subscriptionExpirationDateTime"] = expires.isoformat()
    path = tmp / name
    path.write_text(json.dumps(document))
    return path


def test_send_graph_to_the_real_ingress_shows_in_status_and_list(
    redis_server: EmbeddedRedis, redis: Redis, database_url: str, tmp_path: Path
) -> None:
    env = service_env(
        redis_server.url,
        database_url,
        tmp_path,
        SYNCNOTIFY_TENANTS="contoso",
        SYNCNOTIFY_GRAPH_CLIENT_STATE=CLIENT_STATE,
    )
    expires = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    files = [
        with_expiry("02-event-created.json", expires, tmp_path),
        with_expiry("08-lifecycle-reauthorization-required.json", expires, tmp_path),
        GRAPH_SAMPLES / "07-wrong-clientstate.json",  # two items refused, still 202
    ]
    with service(env, tmp_path) as url:
        sent = run(
            ["send", "--graph", *map(str, files), "--url", f"{url}/api/webhooks/graph?tenant=contoso"], env, tmp_path
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert sent.stdout.splitlines() == [f"{f}: 202 Accepted" for f in files]

        def graph() -> dict[str, Any]:
            document: dict[str, Any] = cli_json(env, tmp_path, "status")["graph"]
            return document

        wait_for(lambda: queue_drained(redis) and graph()["rejected"]["total"] == 2, 30, "the items stored, counted")
        wait_for(lambda: graph()["subscriptions"]["total"] == 1, 30, "room A's subscription")
    shown = graph()
    assert shown["subscriptions"]["by_state"] == {"reauthorization_required": 1}
    assert shown["rejected"]["by_reason"] == {"client_state": 2}
    assert shown["soonest_expiry"]["subscription_id"] == ROOM_A
    assert datetime.fromisoformat(shown["soonest_expiry"]["expires_at"]) == expires
    (listed,) = cli_json(env, tmp_path, "subscriptions", "list", "--source", "graph")
    assert (listed["subscription_id"], listed["tenant"], listed["source"]) == (ROOM_A, "contoso", "graph")
    assert cli_json(env, tmp_path, "subscriptions", "list", "--source", "ews") == []
