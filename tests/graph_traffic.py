"""Microsoft Graph traffic beside a fault: rooms post change notifications to the real ingress while the fault
happens (``with traffic.posting():``), then ``assert_stored_once_in_order`` counts their rows (SPEC §9).

One thread posts, so each POST is sent only after the previous one was answered: a room's changes are acked
in the order they must be numbered.  A POST carries 1–3 changes of random rooms; now and then one is posted
again after its ack, as Graph retries.  A POST that is not answered ``202`` is sent again until it is — also
after ``posting`` ends, since it may already be stored.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import Engine, func, select

from shared.schema import notifications
from syncnotify.redis_server import free_port
from syncnotify.simulator.graph_payloads import CONTENT_TYPE, Change, change_item, etag, event_id, notification_body
from tests.graph_samples import CLIENT_STATE, TENANT_ID
from tests.processes import started, wait_for, wait_http
from worker.graph import watermark

#: What ``service_env`` needs on top for the ingress to receive Graph for tenant ``Default``.
GRAPH_ENV = {"SYNCNOTIFY_GRAPH_CLIENT_STATE": CLIENT_STATE}
GRAPH_PATH = "/api/webhooks/graph?tenant=Default"
_RETRY_SECONDS = 0.2
_GIVE_UP_SECONDS = 60.0


@contextmanager
def running_ingress(env: Mapping[str, str], tmp: Path) -> Iterator[str]:
    """A real ``syncnotify ingress`` on a free port; yields its base URL."""
    port = free_port()
    command = ["ingress", "--host", "127.0.0.1", "--port", str(port)]
    with started(command, env, tmp, tmp / "ingress.log"):
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz")
        yield base


def bare_etag(tag: str | None) -> str | None:
    """The etag as the worker keys a change by: without Graph's ``W/"…"`` wrapper."""
    return None if tag is None else tag.removeprefix("W/").strip('"')


@dataclass
class _Room:
    subscription_id: str
    user_id: str
    #: Events created so far; the live ones by number, with their version (edits so far).
    created: int = 0
    live: dict[int, int] = field(default_factory=dict)
    #: Watermarks of the room's acked changes, in ack order (a retry adds nothing).
    acked: dict[str, None] = field(default_factory=dict)

    def next_change(self, rng: random.Random) -> Change:
        """A new event, an edit of a live one, or the deletion of one (Graph sends no etag with a delete)."""
        roll = rng.random()
        if not self.live or roll < 0.4:
            number, change_type = self.created, "created"
            self.created += 1
            self.live[number] = 0
        elif roll < 0.85:
            number, change_type = rng.choice(list(self.live)), "updated"
            self.live[number] += 1
        else:
            number, change_type = rng.choice(list(self.live)), "deleted"
            del self.live[number]
        tag = None if change_type == "deleted" else etag(self.subscription_id, number, self.live[number])
        return Change(self.subscription_id, self.user_id, change_type, event_id(self.subscription_id, number), tag)


class GraphTraffic:
    """Graph rooms posting to ``base_url`` while ``posting`` is entered; their acked changes are remembered."""

    def __init__(self, base_url: str, rooms: int = 8, seed: int = 1, interval: float = 0.02) -> None:
        self.url = base_url + GRAPH_PATH
        self.interval = interval
        self.rng = random.Random(seed)
        self.rooms = [_Room(str(uuid.uuid4()), f"room-{n}@contoso.example") for n in range(rooms)]
        self.posts = 0  # POSTs acked, Graph's retries included
        self._stop = threading.Event()

    @contextmanager
    def posting(self) -> Iterator[GraphTraffic]:
        """Post in a thread until the block ends; on exit, the last POST has been acked."""
        self._stop.clear()
        thread = threading.Thread(target=self._run, name="graph-traffic", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    @property
    def changes(self) -> int:
        return sum(len(room.acked) for room in self.rooms)

    def _run(self) -> None:
        last: bytes | None = None
        with httpx.Client(timeout=5, headers={"Content-Type": CONTENT_TYPE}) as client:
            while not self._stop.wait(self.interval):
                if last is not None and self.rng.random() < 0.05:
                    self._deliver(client, last)  # Graph's retry: stored already, adds no row
                    continue
                picked = [self.rng.choice(self.rooms) for _ in range(self.rng.randint(1, 3))]
                changes = [(room, room.next_change(self.rng)) for room in picked]
                last = notification_body([change_item(c, TENANT_ID, CLIENT_STATE) for _, c in changes])
                self._deliver(client, last)
                for room, change in changes:
                    room.acked[_watermark(change)] = None

    def _deliver(self, client: httpx.Client, body: bytes) -> None:
        """POST until ``202`` (Graph retries what it sees refused or unanswered)."""
        deadline = time.monotonic() + _GIVE_UP_SECONDS
        while True:
            try:
                if client.post(self.url, content=body).status_code == 202:
                    self.posts += 1
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"a Graph POST was not acked within {_GIVE_UP_SECONDS} s")
            time.sleep(_RETRY_SECONDS)

    def assert_stored_once_in_order(self, engine: Engine, timeout: float = 60) -> int:
        """Every acked change one row, ``seq`` 1…n per room in ack order, nothing else; return the row count."""
        expected = self.changes
        assert expected > 0, "no Graph change was acked during the fault"
        wait_for(lambda: _graph_rows(engine, numbered_only=True) >= expected, timeout, f"{expected} Graph rows")
        with engine.connect() as conn:
            for room in self.rooms:
                rows = conn.execute(
                    select(notifications.c.seq, notifications.c.watermark)
                    .where(notifications.c.source == "graph", notifications.c.subscription_id == room.subscription_id)
                    .order_by(notifications.c.seq)
                ).all()
                sub = room.subscription_id
                assert [r.watermark for r in rows] == list(room.acked), f"Graph {sub}: rows missing or out of order"
                assert [r.seq for r in rows] == list(range(1, len(rows) + 1)), f"Graph {sub}: seq not contiguous"
        assert _graph_rows(engine) == expected, "Graph rows nobody acked"
        return expected


def _watermark(change: Change) -> str:
    return watermark(TENANT_ID, change.subscription_id, change.change_type, change.event_id, bare_etag(change.etag))


def _graph_rows(engine: Engine, numbered_only: bool = False) -> int:
    query = select(func.count()).select_from(notifications).where(notifications.c.source == "graph")
    if numbered_only:
        query = query.where(notifications.c.seq.is_not(None))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
