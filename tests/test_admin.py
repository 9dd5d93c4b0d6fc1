"""The operator's status page (``syncnotify/admin/``), served by a real ``syncnotify admin`` process over a real
Redis and both databases, and looked at in a real headless browser: Debian's chromium.

The data is put in the way the system itself puts it: rows and subscriptions through ``worker.store``, a gap
through ``sweep``, an unsubscribe through ``syncnotify.status``, a dead-letter entry through ``syncnotify.dlq``, a
queued job through the ingress's ``enqueue_payloads`` and a spooled payload through ``ingress.spool``.  What
the browser rendered is parsed with the standard library's ``html.parser`` and checked by its structure.
"""

from __future__ import annotations

import os
import struct
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from sqlalchemy import Engine, update
from starlette.exceptions import StarletteDeprecationWarning

from ingress.spool import Spool
from shared import store_job
from shared.schema import notifications, subscriptions
from shared.settings import Settings
from shared.store_job import enqueue_payloads
from shared.types import Payload
from syncnotify.admin.app import create_admin_app
from syncnotify.admin.page import render, render_error
from syncnotify.admin.snapshot import Snapshot, by_tenant, ordered_states, rows_per_minute, snapshot
from syncnotify.redis_server import EmbeddedRedis, free_port
from syncnotify.status import Status, Subscription, unsubscribe
from tests.payloads import SUBSCRIPTION_A, SUBSCRIPTION_B, error_message, make_event, make_notification, watermark
from tests.processes import row_count, service_env, started, wait_http
from worker.parse import parse_payload
from worker.store import Delivery, store, sweep

with warnings.catch_warnings():
    # Starlette 1.x warns at import time that its TestClient prefers httpx2 (see tests/test_ingress.py).
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

CHROMIUM = Path("/usr/bin/chromium")

HOSTILE = "<script>alert(1)</script>"
STALE = "STALE-ROOM-103"
ERRORED = "ERROR-ROOM-104"
GAPPED = "GAP-ROOM-105"
RETIRED = "RETIRED-ROOM-106"
OTHER_TENANT_ROOM = "ROOM-201"

#: What the seeded data must show: tenant → subscription → (state, last seq, gaps, waiting, error code).
EXPECTED: dict[str, dict[str, tuple[str, int, int, int, str]]] = {
    "Default": {
        STALE: ("stale", 1, 0, 0, ""),
        ERRORED: ("error", 0, 0, 0, "ErrorReadEventsFailed"),
        GAPPED: ("needs_resync", 2, 1, 0, ""),
        RETIRED: ("unsubscribed", 0, 0, 0, ""),
        SUBSCRIPTION_A: ("active", 3, 0, 0, ""),
        SUBSCRIPTION_B: ("active", 2, 0, 1, ""),
        HOSTILE: ("active", 1, 0, 0, ""),
    },
    "Mandant2": {OTHER_TENANT_ROOM: ("active", 1, 0, 0, "")},
}
SUBSCRIPTION_FIELDS = {
    "tenant",
    "subscription_id",
    "state",
    "last_seen_at",
    "last_watermark",
    "last_seq",
    "gap_count",
    "error_code",
    "heartbeat_seconds",
    "waiting",
    "source",
    "expires_at",
    "mailbox",
    "renewed_at",
    "renewal_attempted_at",
    "renewal_error",
}


# --------------------------------------------------------------------------------------------------------
# The data
# --------------------------------------------------------------------------------------------------------


def deliver(engine: Engine, body: bytes, tenant: str = "Default") -> None:
    store(engine, [Delivery(uuid.uuid4().hex, tenant, datetime.now(UTC), parse_payload(body))])


def chain(engine: Engine, subscription_id: str, counters: list[int], tenant: str = "Default") -> None:
    """One notification per counter, each one Modified event, each the successor of the one before."""
    for previous, current in zip(counters, counters[1:], strict=False):
        body = make_notification(subscription_id, watermark(previous), [make_event("Modified", watermark(current))])
        deliver(engine, body, tenant)


def payload(body: bytes, subscription_ids: list[str]) -> Payload:
    return Payload(
        id=uuid.uuid4().hex,
        tenant="Default",
        received_at=round(time.time(), 6),
        source="203.0.113.5",
        subscription_ids=subscription_ids,
        body=body,
    )


def seed(engine: Engine, redis: Redis, redis_url: str, database_url: str, spool_dir: Path) -> None:
    """Everything of ``EXPECTED``, one dead-letter entry, one queued job and one spooled payload."""
    chain(engine, SUBSCRIPTION_A, [1000, 1001, 1002, 1003])
    two_events = [make_event("Created", watermark(2001)), make_event("Modified", watermark(2002))]
    deliver(engine, make_notification(SUBSCRIPTION_B, watermark(2000), two_events))
    chain(engine, HOSTILE, [3000, 3001])
    chain(engine, STALE, [4000, 4001])
    chain(engine, OTHER_TENANT_ROOM, [5000, 5001], tenant="Mandant2")
    deliver(engine, error_message(ERRORED))
    # A gap: 6002 never comes, so the notification after it waits, and the sweeper numbers it anyway.
    chain(engine, GAPPED, [6000, 6001])
    chain(engine, GAPPED, [6002, 6003])
    time.sleep(0.05)
    assert sweep(engine, gap_timeout=0.01).gaps == 1
    # A notification of B that waits for its predecessor (the sweeper has run: it keeps waiting).
    chain(engine, SUBSCRIPTION_B, [2005, 2006])
    unsubscribe(engine, redis, [RETIRED])
    with engine.begin() as conn:
        conn.execute(
            update(subscriptions)
            .where(subscriptions.c.subscription_id == STALE)
            .values(last_seen_at=datetime.now(UTC) - timedelta(days=3))
        )

    broken = payload(b"<?xml version='1.0'?><soap11:Envelope><broken>", [])
    store_job.dead_letter(redis, broken, "malformed_xml", "payload is not well-formed XML: mismatched tag", 1, 3600)
    settings = Settings(redis_url=redis_url, database_url=database_url, _env_file=None)
    queued = make_notification(SUBSCRIPTION_A, watermark(1003), [make_event("Modified", watermark(1004))])
    enqueue_payloads(redis, [payload(queued, [SUBSCRIPTION_A])], settings)
    spool = Spool(spool_dir)
    spool.append([payload(make_notification(SUBSCRIPTION_A, watermark(1004), []), [SUBSCRIPTION_A])])
    spool.close()


@dataclass
class Admin:
    url: str
    rows: int


@pytest.fixture
def admin(
    engine: Engine, redis: Redis, redis_server: EmbeddedRedis, database_url: str, tmp_path: Path
) -> Iterator[Admin]:
    """``syncnotify admin`` on a free port, over the seeded Redis and database."""
    env = service_env(redis_server.url, database_url, tmp_path)
    seed(engine, redis, redis_server.url, database_url, Path(env["SYNCNOTIFY_SPOOL_DIR"]))
    port = free_port()
    log = tmp_path / "admin.log"
    with started(["admin", "--port", str(port)], env, tmp_path, log):
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/healthz", timeout=20)
        except AssertionError:
            raise AssertionError(log.read_text()) from None
        yield Admin(url, row_count(engine))


# --------------------------------------------------------------------------------------------------------
# A DOM from html.parser
# --------------------------------------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join("".join(c if isinstance(c, str) else " " + c.text + " " for c in self.children).split())

    def iter(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        return [n for n in self.iter() if n.tag == tag and all(n.attrs.get(k) == v for k, v in attrs.items())]

    def find(self, tag: str, **attrs: str) -> Node:
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, f"expected one <{tag} {attrs}>, found {len(found)}"
        return found[0]

    def by_id(self, element_id: str) -> Node:
        found = [n for n in self.iter() if n.attrs.get("id") == element_id]
        assert len(found) == 1, f"expected one element with id {element_id!r}, found {len(found)}"
        return found[0]


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse_dom(text: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(text)
    builder.close()
    return builder.root


def subscription_rows(dom: Node, tenant: str) -> list[dict[str, str]]:
    """The rows of a tenant's table, as {column heading: cell text}, plus the row's state attribute."""
    section = dom.find("section", **{"data-tenant": tenant})
    table = section.find("table")
    headings = [th.text.lower() for th in table.find("thead").find_all("th")]
    rows = []
    for tr in table.find("tbody").find_all("tr"):
        cells = [td.text for td in tr.find_all("td")]
        rows.append({"data-state": tr.attrs["data-state"], **dict(zip(headings, cells, strict=True))})
    return rows


# --------------------------------------------------------------------------------------------------------
# The browser
# --------------------------------------------------------------------------------------------------------


def chromium_or_skip() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; CI must run the browser test (make test installs it)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    return CHROMIUM


def browse(chromium: Path, url: str, tmp: Path) -> tuple[str, Path]:
    """The DOM chromium rendered for ``url``, and a 1280×900 screenshot of it (two browsers in parallel)."""

    def browser(name: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                str(chromium),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",  # containers give /dev/shm 64 MB
                f"--user-data-dir={tmp / name}",
                *args,
                url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HOME": str(tmp)},
        )

    screenshot = tmp / "page.png"
    dumping = browser("profile-dom", "--dump-dom")
    shooting = browser("profile-shot", f"--screenshot={screenshot}", "--window-size=1280,900")
    try:
        dom, dom_err = dumping.communicate(timeout=60)
        _, shot_err = shooting.communicate(timeout=60)
    finally:
        for process in (dumping, shooting):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert dumping.returncode == 0 and dom.strip(), f"chromium --dump-dom failed: {dom_err[-2000:]}"
    assert shooting.returncode == 0 and screenshot.exists(), f"chromium --screenshot failed: {shot_err[-2000:]}"
    return dom, screenshot


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# --------------------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------------------


def test_status_page_in_a_real_browser(admin: Admin, tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    text, screenshot = browse(chromium, admin.url + "/", tmp_path)
    dom = parse_dom(text)

    # a page the browser rendered from our HTML, refreshing itself, with no script anywhere
    assert dom.find("title").text == "syncnotify status"
    assert dom.find("meta", **{"http-equiv": "refresh"}).attrs["content"] == "10"
    assert dom.find_all("script") == []

    # the summary
    assert dom.by_id("queue-value").text == "1"
    assert dom.by_id("workers-value").text == "0"
    assert dom.by_id("retries-value").text == "0"
    assert dom.by_id("spool-value").text == "1"
    assert dom.by_id("dead-letter-value").text == "1"
    assert [li.text for li in dom.by_id("dead-letter-classes").find_all("li")] == ["malformed_xml 1"]
    assert [li.text for li in dom.by_id("subscription-states").find_all("li")] == [
        "stale 1",
        "error 1",
        "needs_resync 1",
        "unsubscribed 1",
        "active 4",
    ]
    assert dom.by_id("subscription-gaps").text == "1 gap · 1 waiting"
    assert dom.by_id("throughput-totals").text == (f"1 min {admin.rows} · 5 min {admin.rows} · 15 min {admin.rows}")
    bars = dom.by_id("throughput-bars").find_all("span")
    assert len(bars) == 15 and bars[-1].attrs["style"] == "height:100%" and bars[0].attrs["style"] == "height:0%"
    assert "3 subscriptions need attention" in dom.by_id("banner").text

    # per tenant: every subscription with its state and numbers; the stale and troubled ones first
    assert [s.attrs["data-tenant"] for s in dom.find_all("section", **{"class": "tenant"})] == ["Default", "Mandant2"]
    for tenant, expected in EXPECTED.items():
        rows = subscription_rows(dom, tenant)
        shown = {
            r["subscription"]: (r["state"], int(r["last seq"]), int(r["gaps"]), int(r["waiting"]), r["error"])
            for r in rows
        }
        assert shown == expected
        assert all(r["data-state"] == r["state"] for r in rows)
    rows = subscription_rows(dom, "Default")
    states = [r["state"] for r in rows]
    assert states[:4] == ["stale", "error", "needs_resync", "unsubscribed"]
    assert states[4:] == ["active"] * 3
    assert rows[0]["subscription"] == STALE and rows[0]["last seen"] == "3 d ago"
    section = dom.find("section", **{"data-tenant": "Default"})
    assert [p.text for p in section.find("p", **{"class": "states"}).find_all("span")] == [
        "stale 1",
        "error 1",
        "needs_resync 1",
        "unsubscribed 1",
        "active 3",
    ]

    # last seen: relative text, the exact time in the title
    stale_time = section.find("tbody").find_all("tr")[0].find("time")
    seen = datetime.fromisoformat(stale_time.attrs["title"])
    assert timedelta(days=3) <= datetime.now(UTC) - seen < timedelta(days=3, minutes=5)
    assert stale_time.attrs["datetime"] == stale_time.attrs["title"]
    never = next(r for r in rows if r["subscription"] == RETIRED)
    assert never["last seen"] == "never"

    # the hostile subscription id is text, shown as it is, never markup
    codes = [code for code in section.find_all("code") if code.text == HOSTILE]
    assert len(codes) == 1 and all(isinstance(c, str) for c in codes[0].children)
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text

    # the screenshot: a real PNG of the requested size, not a blank page
    assert png_size(screenshot) == (1280, 900)
    assert screenshot.stat().st_size > 30_000


def test_status_json_and_no_public_path(admin: Admin) -> None:
    with httpx.Client(base_url=admin.url, timeout=10) as client:
        answer = client.get("/status.json")
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        data = answer.json()
        assert set(data) == {"generated_at", "status", "throughput", "tenants"}
        assert datetime.fromisoformat(data["generated_at"]).tzinfo is not None
        status = data["status"]
        assert status["queue_depth"] == 1 and status["workers"] == 0 and status["scheduled_retries"] == 0
        assert status["dead_letter"] == {"total": 1, "by_error_class": {"malformed_xml": 1}}
        assert status["spool_backlog"] == 1
        assert status["subscriptions"] == {
            "by_state": {"stale": 1, "error": 1, "needs_resync": 1, "unsubscribed": 1, "active": 4},
            "gaps": 1,
            "waiting": 1,
        }
        throughput = data["throughput"]
        assert len(throughput["per_minute"]) == 15 and throughput["per_minute"][0] == admin.rows
        assert throughput["last_1_min"] == throughput["last_5_min"] == throughput["last_15_min"] == admin.rows
        assert [t["tenant"] for t in data["tenants"]] == ["Default", "Mandant2"]
        for tenant in data["tenants"]:
            expected = EXPECTED[tenant["tenant"]]
            assert tenant["total"] == tenant["shown"] == len(tenant["subscriptions"]) == len(expected)
            for sub in tenant["subscriptions"]:
                assert set(sub) == SUBSCRIPTION_FIELDS and sub["tenant"] == tenant["tenant"]
                shown = (sub["state"], sub["last_seq"], sub["gap_count"], sub["waiting"], sub["error_code"] or "")
                assert shown == expected[sub["subscription_id"]]
            assert [s["state"] for s in tenant["subscriptions"]] == [v[0] for v in expected.values()]

        assert client.get("/healthz").json() == {"status": "alive"}
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script
        assert page.headers["cache-control"] == "no-store"

        # the admin side never takes notifications
        headers = {"SOAPAction": "SendNotification", "Content-Type": "text/xml; charset=utf-8"}
        body = make_notification(SUBSCRIPTION_A, watermark(1003), [])
        for path in ("/Webservices/SyncNotification.svc", "/Default/Webservices/SyncNotification.svc", "/"):
            assert client.post(path, content=body, headers=headers).status_code in (404, 405), path
        assert client.get("/Webservices/SyncNotification.svc").status_code == 404


def test_redis_away_is_said_on_the_page(database_url: str, tmp_path: Path) -> None:
    away = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    settings = Settings(redis_url=away, database_url=database_url, spool_dir=tmp_path / "spool", _env_file=None)
    with TestClient(create_admin_app(settings)) as client:
        page = client.get("/")
        assert page.status_code == 503
        dom = parse_dom(page.text)
        assert dom.find("p", **{"class": "banner bad"}).text.startswith("Cannot read Redis: ConnectionError")
        assert dom.find("meta", **{"http-equiv": "refresh"}).attrs["content"] == "10"  # it comes back by itself
        answer = client.get("/status.json")
        assert answer.status_code == 503 and answer.json()["error"].startswith("Cannot read Redis")
        assert client.get("/healthz").status_code == 200
        assert "hunter2" not in page.text + answer.text


def test_long_tenants_are_cut_with_a_note(engine: Engine, redis: Redis, database_url: str, tmp_path: Path) -> None:
    seed(engine, redis, "redis://unused", database_url, tmp_path / "spool")
    snap = snapshot(engine, redis, tmp_path / "spool", limit=3)
    default = next(t for t in snap.tenants if t.tenant == "Default")
    assert default.total == 7 and len(default.subscriptions) == 3 and default.truncated
    dom = parse_dom(render(snap))
    rows = subscription_rows(dom, "Default")
    assert [r["state"] for r in rows] == ["stale", "error", "needs_resync"]
    section = dom.find("section", **{"data-tenant": "Default"})
    assert section.find("p", **{"class": "note"}).text.startswith("Showing the first 3 of 7 subscriptions")
    other = dom.find("section", **{"data-tenant": "Mandant2"})
    assert other.find_all("p", **{"class": "note"}) == []


def test_rows_per_minute_on_both_databases(engine: Engine) -> None:
    chain(engine, SUBSCRIPTION_A, list(range(1000, 1011)))  # 10 rows
    now = datetime.now(UTC)
    moved = {1002: 2.5, 1003: 2.5, 1004: 14.5, 1005: 20.0, 1006: -0.5}  # minutes ago (-0.5: a clock ahead)
    with engine.begin() as conn:
        for counter, minutes in moved.items():
            conn.execute(
                update(notifications)
                .where(notifications.c.watermark == watermark(counter))
                .values(stored_at=now - timedelta(minutes=minutes))
            )
    counts = rows_per_minute(engine, now)
    assert counts == [6, 0, 2] + [0] * 11 + [1]  # 1005 is older than 15 minutes


def test_age_of_the_oldest_queued_payload(engine: Engine, redis: Redis, tmp_path: Path) -> None:
    settings = Settings(_env_file=None)
    body = make_notification(SUBSCRIPTION_A, watermark(1003), [make_event("Modified", watermark(1004))])
    queued = payload(body, [SUBSCRIPTION_A])
    queued["received_at"] -= 90
    enqueue_payloads(redis, [queued], settings)
    age = snapshot(engine, redis, tmp_path / "spool").status.oldest_queued_seconds
    assert age is not None and 90 <= age < 120


# --------------------------------------------------------------------------------------------------------
# The page from a made-up snapshot (no database, no Redis, no browser)
# --------------------------------------------------------------------------------------------------------

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
#: Markup, an attribute's quote and an entity's ampersand: all of it must reach the reader as text.
HOSTILE_TEXT = "<script>alert(1)</script> \"quoted\" & 'single'"


def made_up(subs: list[Subscription], per_minute: list[int] | None = None, **status: Any) -> Snapshot:
    by_state: dict[str, int] = {}
    for one in subs:
        by_state[one.state] = by_state.get(one.state, 0) + 1
    quiet = Status(0, None, 1, 0, {}, 0, ordered_states(by_state), 0, 0)
    return Snapshot(NOW, replace(quiet, **status), per_minute or [0] * 15, by_tenant(subs))


def sub(subscription_id: str, state: str = "active", tenant: str = "Default", error: str | None = None) -> Subscription:
    return Subscription(tenant, subscription_id, state, NOW - timedelta(minutes=4), None, 1, 0, error, 60.0, 0)


@pytest.mark.parametrize("n", [1, 3])
def test_counts_agree_with_their_nouns_and_verbs(n: int) -> None:
    subs = [sub(f"ROOM-{i}", state="stale") for i in range(n)]
    snap = made_up(
        subs,
        per_minute=[n] + [0] * 14,
        queue_depth=n,
        oldest_queued_seconds=90.0,
        scheduled_retries=n,
        dead_letter={"malformed_xml": n},
        spool_backlog=n,
        gaps=n,
        waiting_links=n,
    )
    dom = parse_dom(render(snap))
    s, verb_s = ("", "s") if n == 1 else ("s", "")  # "1 payload waits", "3 payloads wait"
    assert dom.by_id("banner").text == (
        f"{n} subscription{s} need{verb_s} attention; {n} payload{s} in the dead-letter queue; "
        f"{n} payload{s} wait{verb_s} in the spool."
    )
    assert dom.by_id("queue-oldest").text == f"job{s}; the oldest payload waits 1 min 30 s"
    assert dom.by_id("retries").find("p").text == f"job{s} waiting to retry"
    assert dom.by_id("spool").find("p").text == f"payload{s} waiting for Redis"
    assert dom.by_id("subscription-gaps").text == f"{n} gap{s} · {n} waiting"
    assert dom.by_id("subscriptions").find("small").text == f"{n} in 1 tenant"
    assert dom.find("section", **{"data-tenant": "Default"}).find("small").text == f"{n} subscription{s}"
    assert dom.by_id("throughput-bars").find_all("span")[-1].attrs["title"] == f"{n} row{s} 0–1 min ago"


def test_one_attention_needing_subscription_among_others() -> None:
    snap = made_up([sub("ROOM-1", state="error", error="ErrorReadEventsFailed"), sub("ROOM-2"), sub("ROOM-3")])
    banner = parse_dom(render(snap)).by_id("banner")
    assert banner.attrs["class"] == "banner attention"
    assert banner.text == "1 subscription needs attention."


def test_hostile_text_is_escaped_everywhere_it_is_shown() -> None:
    snap = made_up(
        [sub(HOSTILE_TEXT, state="error", tenant=HOSTILE_TEXT, error=HOSTILE_TEXT)],
        dead_letter={HOSTILE_TEXT: 1},
    )
    page = render(snap)
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt; &#34;quoted&#34; &amp; &#39;single&#39;"
    assert "<script>" not in page and page.count(escaped) >= 5  # id, tenant (attribute, heading), error, class
    dom = parse_dom(page)
    assert dom.find_all("script") == []
    section = dom.find("section", **{"data-tenant": HOSTILE_TEXT})  # the attribute round-trips, quotes and all
    assert section.find("h2").text == f"Tenant {HOSTILE_TEXT} 1 subscription"
    row = subscription_rows(dom, HOSTILE_TEXT)[0]
    assert row["subscription"] == row["error"] == HOSTILE_TEXT
    assert [li.text for li in dom.by_id("dead-letter-classes").find_all("li")] == [f"{HOSTILE_TEXT} 1"]
    # the page's own markup and its style sheet are not escaped
    assert '<section class="tenant" data-tenant=' in page and '"Liberation Sans"' in dom.find("style").text

    error_page = render_error(f"Cannot read Redis: ConnectionError: {HOSTILE_TEXT}")
    assert "<script>" not in error_page and escaped in error_page
    assert parse_dom(error_page).find("p", **{"class": "banner bad"}).text.endswith(HOSTILE_TEXT)


def test_the_real_status_page_says_one_subscription_needs_attention(
    engine: Engine, redis_server: EmbeddedRedis, database_url: str, tmp_path: Path
) -> None:
    """Through ``syncnotify admin``: one room in error among two is '1 subscription needs attention'."""
    received = datetime.now(UTC)
    bodies = [make_notification(SUBSCRIPTION_A, watermark(1), [make_event("Created", watermark(2))])]
    bodies.append(error_message(SUBSCRIPTION_B))
    deliveries = [Delivery(uuid.uuid4().hex, "Default", received, parse_payload(body)) for body in bodies]
    store(engine, deliveries)
    env = service_env(redis_server.url, database_url, tmp_path)
    port = free_port()
    with started(["admin", "--port", str(port)], env, tmp_path, tmp_path / "admin.log"):
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=20)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert page.status_code == 200
    banner = parse_dom(page.text).by_id("banner")
    assert banner.text == "No worker is running; 1 subscription needs attention."  # none was started
