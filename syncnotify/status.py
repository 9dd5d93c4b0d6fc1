"""What operators see: the queue, the workers, the dead-letter queue, the spool and the subscriptions, EWS and
Microsoft Graph alike (with Graph's expiries and the items the ingresses refused).

Used by ``syncnotify status``, ``syncnotify subscriptions``, the admin status page and the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import Engine, func, select, update

from ingress.spool import count_records
from shared.queues import GRAPH_REJECTED_KEY, QUEUE_NAME, UNSUBSCRIBED_KEY
from shared.schema import RETIRED_STATES, SUBSCRIPTION_STATES, chain_links, insert_new, subscriptions
from shared.types import Payload
from syncnotify import dlq

#: A subscription silent for this many of its usual heartbeat intervals is shown as stale …
STALE_FACTOR = 3
#: … but never before this long a silence (a freshly seen subscription has learned no interval yet).
STALE_MIN_SECONDS = 15 * 60
#: Without a learned interval, Exchange's longest StatusFrequency (1440 min) plus its retries is the bound.
STALE_UNKNOWN_SECONDS = 26 * 3600

#: A Graph subscription past its ``expires_at`` is dead at Graph, whatever its row says; it is shown so.
EXPIRED = "expired"
#: Every state a subscription can be shown in: the stored ones, and ``expired`` (never stored).
SHOWN_STATES = (*SUBSCRIPTION_STATES, EXPIRED)
#: The order of the list: the stale and troubled first, the retired next, the healthy last.
STATE_RANK = {
    "stale": 0,
    EXPIRED: 0,
    "error": 1,
    "reauthorization_required": 1,
    "renewal_failed": 1,
    "needs_resync": 2,
    "removed": 3,
    "unsubscribed": 3,
    "active": 4,
}


@dataclass(frozen=True, slots=True)
class Subscription:
    tenant: str
    subscription_id: str
    state: str
    last_seen_at: datetime | None
    last_watermark: str | None
    last_seq: int
    gap_count: int
    error_code: str | None
    heartbeat_seconds: float | None
    waiting: int
    source: str = "ews"
    #: Graph only: when Graph drops the subscription unless it is renewed.
    expires_at: datetime | None = None
    #: Graph only: the room mailbox, which links a removed subscription to the one that replaced it.
    mailbox: str | None = None
    #: Graph subscriptions syncnotify keeps (SPEC §10): the last grant, the last attempt and why it failed.
    renewed_at: datetime | None = None
    renewal_attempted_at: datetime | None = None
    renewal_error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "subscription_id": self.subscription_id,
            "state": self.state,
            "last_seen_at": self.last_seen_at.isoformat() if self.last_seen_at else None,
            "last_watermark": self.last_watermark,
            "last_seq": self.last_seq,
            "gap_count": self.gap_count,
            "error_code": self.error_code,
            "heartbeat_seconds": self.heartbeat_seconds,
            "waiting": self.waiting,
            "source": self.source,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "mailbox": self.mailbox,
            "renewed_at": self.renewed_at.isoformat() if self.renewed_at else None,
            "renewal_attempted_at": self.renewal_attempted_at.isoformat() if self.renewal_attempted_at else None,
            "renewal_error": self.renewal_error,
        }


def stale_after(heartbeat_seconds: float | None) -> timedelta:
    """How long a subscription may be silent before it is shown as ``stale``."""
    if heartbeat_seconds is None:
        return timedelta(seconds=STALE_UNKNOWN_SECONDS)
    return timedelta(seconds=max(STALE_MIN_SECONDS, STALE_FACTOR * heartbeat_seconds))


def shown_state(state: str, last_seen_at: datetime | None, heartbeat_seconds: float | None, now: datetime) -> str:
    """``stale`` for an active EWS subscription silent for much longer than usual, else the stored state."""
    if state == "active" and last_seen_at is not None and now - last_seen_at > stale_after(heartbeat_seconds):
        return "stale"
    return state


def shown_graph_state(state: str, expires_at: datetime | None, now: datetime) -> str:
    """``expired`` for a Graph subscription not retired whose expiry has passed, else the stored state.

    Graph sends no heartbeat, so silence says nothing (a quiet room is silent for weeks); the expiry is what
    tells a dead Graph subscription, one that the renewal did not keep alive.
    """
    if state not in RETIRED_STATES and expires_at is not None and expires_at <= now:
        return EXPIRED
    return state


def _shown(row: Any, now: datetime) -> str:
    if row.source == "graph":
        return shown_graph_state(row.state, row.expires_at, now)
    return shown_state(row.state, row.last_seen_at, row.heartbeat_seconds, now)


def list_subscriptions(
    engine: Engine,
    tenant: str | None = None,
    state: str | None = None,
    now: datetime | None = None,
    source: str | None = None,
) -> list[Subscription]:
    """Subscriptions with their shown state, the stale and troubled ones first, then by last seen; only those
    of ``tenant``, in shown ``state``, from ``source`` (``ews`` or ``graph``) when given."""
    now = now or datetime.now(UTC)
    waiting = (
        select(chain_links.c.tenant, chain_links.c.subscription_id, func.count().label("waiting"))
        .where(chain_links.c.waiting_since.is_not(None))
        .group_by(chain_links.c.tenant, chain_links.c.subscription_id)
        .subquery()
    )
    query = select(subscriptions, func.coalesce(waiting.c.waiting, 0).label("waiting")).outerjoin(
        waiting,
        (waiting.c.tenant == subscriptions.c.tenant) & (waiting.c.subscription_id == subscriptions.c.subscription_id),
    )
    if tenant is not None:
        query = query.where(func.lower(subscriptions.c.tenant) == tenant.lower())
    if source is not None:
        query = query.where(subscriptions.c.source == source)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    result = [
        Subscription(
            tenant=r.tenant,
            subscription_id=r.subscription_id,
            state=_shown(r, now),
            last_seen_at=r.last_seen_at,
            last_watermark=r.last_watermark,
            last_seq=r.last_seq,
            gap_count=r.gap_count,
            error_code=r.error_code,
            heartbeat_seconds=r.heartbeat_seconds,
            waiting=r.waiting,
            source=r.source,
            expires_at=r.expires_at,
            mailbox=r.mailbox,
            renewed_at=r.renewed_at,
            renewal_attempted_at=r.renewal_attempted_at,
            renewal_error=r.renewal_error,
        )
        for r in rows
    ]
    if state is not None:
        result = [s for s in result if s.state == state]
    oldest = datetime.min.replace(tzinfo=UTC)
    result.sort(key=lambda s: (STATE_RANK.get(s.state, 5), s.last_seen_at or oldest, s.tenant, s.subscription_id))
    return result


def unsubscribe(engine: Engine, redis: Redis, subscription_ids: Iterable[str], tenant: str = "Default") -> int:
    """From now on the ingress answers ``Unsubscribe`` for these; their rows say ``unsubscribed``.

    Returns how many subscription rows changed (ids never seen get a row under ``tenant``).
    """
    ids = list(subscription_ids)
    redis.sadd(UNSUBSCRIBED_KEY, *ids)
    with engine.begin() as conn:
        changed = conn.execute(
            update(subscriptions).where(subscriptions.c.subscription_id.in_(ids)).values(state="unsubscribed")
        ).rowcount
        conn.execute(
            insert_new(conn, subscriptions),
            [
                {"tenant": tenant, "subscription_id": s, "last_seq": 0, "state": "unsubscribed", "gap_count": 0}
                for s in ids
            ],
        )
    return int(changed)


def expiring(subs: Iterable[Subscription]) -> list[Subscription]:
    """The Graph subscriptions that still have an expiry to meet (not retired), the soonest first."""
    live = [s for s in subs if s.source == "graph" and s.expires_at is not None and s.state not in RETIRED_STATES]
    never = datetime.max.replace(tzinfo=UTC)  # not reached: ``live`` has an expiry each
    return sorted(live, key=lambda s: (s.expires_at or never, s.tenant, s.subscription_id))


def graph_rejected(redis: Redis) -> dict[str, int]:
    """Graph items and posts refused by every ingress since the count began, by reason (``client_state`` …)."""
    counts = redis.hgetall(GRAPH_REJECTED_KEY)
    return {_text(key): int(value) for key, value in sorted(counts.items())}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class GraphStatus:
    """The Graph side at a glance: subscriptions by shown state, the one that expires first, refusals."""

    by_state: dict[str, int] = field(default_factory=dict)
    #: The live Graph subscription whose expiry comes first (None: there is none).
    soonest: Subscription | None = None
    rejected: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_state.values())

    @property
    def in_use(self) -> bool:
        """Whether there is anything Graph to show: a Graph subscription or a refused Graph post."""
        return bool(self.by_state or self.rejected)

    def as_json(self) -> dict[str, Any]:
        soonest = self.soonest
        return {
            "subscriptions": {"total": self.total, "by_state": self.by_state},
            "soonest_expiry": None
            if soonest is None or soonest.expires_at is None
            else {
                "expires_at": soonest.expires_at.isoformat(),
                "tenant": soonest.tenant,
                "subscription_id": soonest.subscription_id,
                "mailbox": soonest.mailbox,
                "state": soonest.state,
            },
            "rejected": {"total": sum(self.rejected.values()), "by_reason": self.rejected},
        }


def graph_status(subs: Iterable[Subscription], rejected: dict[str, int]) -> GraphStatus:
    """``GraphStatus`` of the Graph ones among ``subs``, with ``rejected`` (from ``graph_rejected``)."""
    graph = [s for s in subs if s.source == "graph"]
    by_state: dict[str, int] = {}
    for sub in graph:
        by_state[sub.state] = by_state.get(sub.state, 0) + 1
    first = expiring(graph)
    return GraphStatus(by_state, first[0] if first else None, rejected)


@dataclass(slots=True)
class Status:
    queue_depth: int
    oldest_queued_seconds: float | None
    workers: int
    scheduled_retries: int
    dead_letter: dict[str, int]
    spool_backlog: int
    subscriptions_by_state: dict[str, int]
    gaps: int
    waiting_links: int
    extra: dict[str, Any] = field(default_factory=dict)
    graph: GraphStatus = field(default_factory=GraphStatus)

    def as_json(self) -> dict[str, Any]:
        return {
            "queue_depth": self.queue_depth,
            "oldest_queued_seconds": self.oldest_queued_seconds,
            "workers": self.workers,
            "scheduled_retries": self.scheduled_retries,
            "dead_letter": {"total": sum(self.dead_letter.values()), "by_error_class": self.dead_letter},
            "spool_backlog": self.spool_backlog,
            "subscriptions": {
                "by_state": self.subscriptions_by_state,
                "gaps": self.gaps,
                "waiting": self.waiting_links,
            },
            "graph": self.graph.as_json(),
        }


def oldest_queued_seconds(redis: Redis, queue: Queue) -> float | None:
    """Age of the payload at the head of the queue (the ingress's receive time), or None if empty."""
    for job_id in queue.get_job_ids(0, 1):
        try:
            job = Job.fetch(job_id, connection=redis)
        except NoSuchJobError:  # taken and finished between the two reads: the queue moved on
            return oldest_queued_seconds(redis, queue)
        payloads: list[Payload] = job.args[0] if job.args else []
        if payloads:
            return max(0.0, time.time() - min(p["received_at"] for p in payloads))
    return None


def collect(
    engine: Engine, redis: Redis, spool_dir: Path, now: datetime | None = None, subs: list[Subscription] | None = None
) -> Status:
    """The operator's overview; pass ``subs`` (from ``list_subscriptions``) when you have them already."""
    queue = Queue(QUEUE_NAME, connection=redis)
    if subs is None:
        subs = list_subscriptions(engine, now=now)
    by_state: dict[str, int] = {}
    for sub in subs:
        by_state[sub.state] = by_state.get(sub.state, 0) + 1
    return Status(
        queue_depth=queue.count,
        oldest_queued_seconds=oldest_queued_seconds(redis, queue),
        workers=len(Worker.all(queue=queue)),
        scheduled_retries=queue.scheduled_job_registry.get_job_count(cleanup=False),
        dead_letter=dlq.counts_by_class(redis),
        spool_backlog=count_records(spool_dir),  # every ingress process on this host
        subscriptions_by_state=by_state,
        gaps=sum(s.gap_count for s in subs),
        waiting_links=sum(s.waiting for s in subs),
        graph=graph_status(subs, graph_rejected(redis)),
    )
