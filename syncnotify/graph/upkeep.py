"""The workers' upkeep of Graph subscriptions: renewed, reauthorized, re-created with no command (SPEC §10).

Every worker process runs an ``Upkeep`` thread; each pass reads the rooms' rows, asks ``manager.plan`` what
each needs, and does it under the room's Redis lock, so however many workers run, one acts on a room at a
time.  The lock expires by itself, so a worker killed mid-renewal holds nobody up for long.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections import defaultdict
from datetime import UTC, datetime

from prometheus_client import Counter
from redis import Redis
from redis.exceptions import LockError, RedisError
from redis.lock import Lock
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from shared.queues import KEY_PREFIX
from syncnotify.graph import manager, rooms
from syncnotify.graph.manager import Clients, Outcome
from syncnotify.graph.rooms import Room

logger = logging.getLogger(__name__)

UPKEEP = Counter(
    "syncnotify_graph_upkeep_total",
    "Renewals, reauthorizations and re-creations of Graph subscriptions, by outcome (ok, failed).",
    ["action", "outcome"],
)

#: How long a room's lock lives unless released: a tenth of its lifetime, within these bounds.
LOCK_SECONDS = (10.0, 120.0)


def room_lock_key(tenant: str, mailbox: str) -> str:
    return f"{KEY_PREFIX}graph:room:{tenant}:{mailbox.lower()}"


def room_lock(redis: Redis, tenant: str, mailbox: str, seconds: float) -> Lock:
    """The room's lock, living ``seconds`` unless released; take it with ``acquire(token=holder())``."""
    lock: Lock = redis.lock(room_lock_key(tenant, mailbox), timeout=seconds, blocking=False)
    return lock


def _lock_seconds(room: Room) -> float:
    lifetime = room.lifetime.total_seconds() / 10 if room.lifetime else LOCK_SECONDS[1]
    return min(max(lifetime, LOCK_SECONDS[0]), LOCK_SECONDS[1])


def holder() -> str:
    """The lock's value: who holds a room (``host:pid:random``), for operators and for the tests that kill it."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def run_once(engine: Engine, redis: Redis, clients: Clients, now: datetime | None = None) -> list[Outcome]:
    """One pass over every room; what was done, in order."""
    now = now or datetime.now(UTC)
    by_room: dict[tuple[str, str], list[Room]] = defaultdict(list)
    for r in rooms.rooms(engine):
        by_room[r.tenant, r.mailbox.lower()].append(r)
    done = []
    for (tenant, mailbox), rows in by_room.items():
        planned = manager.plan(rows, now)
        if planned is None:
            continue
        lock = room_lock(redis, tenant, mailbox, _lock_seconds(planned[1]))
        if not lock.acquire(token=holder()):
            continue  # another worker has it in hand
        try:
            fresh = rooms.rooms(engine, tenant, [mailbox])  # it may have been done since the first read
            planned = manager.plan(fresh, now) if fresh else None
            if planned is not None:
                outcome = manager.act(engine, clients, *planned)
                UPKEEP.labels(outcome.action, "ok" if outcome.ok else "failed").inc()
                log = logger.info if outcome.ok else logger.warning
                log("graph room %s of tenant %s: %s", planned[1].mailbox, tenant, outcome.text)
                done.append(outcome)
        finally:
            try:
                lock.release()
            except LockError:
                pass  # it expired meanwhile: someone may act on the room again, which is harmless
    return done


class Upkeep(threading.Thread):
    """Runs ``run_once`` every ``interval`` seconds until stopped; a failed pass is logged and tried again."""

    def __init__(self, engine: Engine, redis: Redis, clients: Clients, interval: float) -> None:
        super().__init__(name="graph-upkeep", daemon=True)
        self.engine, self.redis, self.clients, self.interval = engine, redis, clients, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                run_once(self.engine, self.redis, self.clients)
            except (SQLAlchemyError, RedisError) as exc:
                logger.warning("graph upkeep could not run: %s", exc)
            except Exception:  # a bug in one pass must not end the upkeep of every room
                logger.exception("graph upkeep pass failed")
