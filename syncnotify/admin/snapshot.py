"""What the status page shows, read in one go: the queue, workers, dead-letter queue, spool, throughput, the Graph
side (subscriptions by state, the rooms whose subscriptions expire first, refused items) and every room's
subscription, grouped by tenant.  No HTML here (``page.py`` renders it); ``as_json`` is ``/status.json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from redis import Redis
from sqlalchemy import Engine, func, literal_column, select
from sqlalchemy.sql.expression import case

from shared.schema import notifications
from syncnotify.status import Status, Subscription, collect, expiring, list_subscriptions

#: At most this many subscriptions are listed per tenant (the worst first); the page says when it cut.
ROWS_PER_TENANT = 500
#: Throughput is shown for each of the last this many minutes.
THROUGHPUT_MINUTES = 15
#: At most this many Graph subscriptions are listed by expiry, the soonest first (SPEC §10).
EXPIRING_ROWS = 10
#: States in the order the page shows their counts (others follow, by name).
STATE_ORDER = (
    "stale",
    "expired",
    "error",
    "reauthorization_required",
    "renewal_failed",
    "needs_resync",
    "removed",
    "unsubscribed",
    "active",
)
#: The states the banner counts as needing an operator.  ``removed`` is not one: syncnotify replaces such a
#: subscription itself, and the retired row stays for good as ROOMS' sign to resync that room.
ATTENTION_STATES = frozenset(
    {"stale", "expired", "error", "reauthorization_required", "renewal_failed", "needs_resync"}
)


@dataclass(frozen=True, slots=True)
class TenantView:
    """One tenant's subscriptions as the page lists them: at most ``ROWS_PER_TENANT``, the worst first."""

    tenant: str
    total: int
    by_state: dict[str, int]
    subscriptions: list[Subscription]

    @property
    def truncated(self) -> bool:
        return len(self.subscriptions) < self.total

    @property
    def has_graph(self) -> bool:
        """Whether the table needs the Graph columns (source, expiry): an EWS-only tenant's stay as they were."""
        return any(s.source == "graph" for s in self.subscriptions)

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "total": self.total,
            "shown": len(self.subscriptions),
            "by_state": self.by_state,
            "subscriptions": [s.as_json() for s in self.subscriptions],
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the page shows, read at ``generated_at``."""

    generated_at: datetime
    status: Status
    #: Rows stored in each of the last minutes, the most recent minute first.
    per_minute: list[int]
    tenants: list[TenantView]
    #: Live Graph subscriptions, the soonest to expire first, at most ``EXPIRING_ROWS``.
    expiring: list[Subscription] = field(default_factory=list)

    def rows_in_last(self, minutes: int) -> int:
        return sum(self.per_minute[:minutes])

    @property
    def needing_attention(self) -> int:
        """Subscriptions (of all tenants) that are stale, errored or need a resync."""
        return sum(n for state, n in self.status.subscriptions_by_state.items() if state in ATTENTION_STATES)

    def as_json(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.isoformat(),
            "status": self.status_json(),
            "throughput": {
                "per_minute": self.per_minute,
                "last_1_min": self.rows_in_last(1),
                "last_5_min": self.rows_in_last(5),
                "last_15_min": self.rows_in_last(15),
            },
            "tenants": [t.as_json() for t in self.tenants],
        }

    def status_json(self) -> dict[str, Any]:
        """``Status.as_json`` with the Graph rooms by expiry (``status.graph.expiring``), as the page lists them."""
        document = self.status.as_json()
        document["graph"]["expiring"] = [s.as_json() for s in self.expiring]
        return document


def rows_per_minute(engine: Engine, now: datetime, minutes: int = THROUGHPUT_MINUTES) -> list[int]:
    """Rows stored (``notifications.stored_at``) in each of the last ``minutes`` minutes, the latest first.

    One query on SQLite and PostgreSQL alike: each row's minute is a CASE over bound timestamps (no
    dialect's date functions), grouped in an outer query.  Rows stamped after ``now`` (a worker whose
    clock runs ahead) count in the latest minute.
    """
    stored_at = notifications.c.stored_at
    edges = [now - timedelta(minutes=i + 1) for i in range(minutes)]
    minute = case(*[(stored_at >= edge, literal_column(str(i))) for i, edge in enumerate(edges)])
    recent = select(minute.label("minute")).where(stored_at >= edges[-1]).subquery()
    query = select(recent.c.minute, func.count().label("rows")).group_by(recent.c.minute)
    counts = [0] * minutes
    with engine.connect() as conn:
        for row in conn.execute(query):
            if row.minute is not None:
                counts[int(row.minute)] = int(row.rows)
    return counts


def by_tenant(subs: Iterable[Subscription], limit: int = ROWS_PER_TENANT) -> list[TenantView]:
    """Group ``subs`` (in the order to show) by tenant, keeping the first ``limit`` of each."""
    groups: dict[str, list[Subscription]] = {}
    for sub in subs:
        groups.setdefault(sub.tenant, []).append(sub)
    views = []
    for tenant in sorted(groups, key=lambda t: (t.casefold(), t)):
        group = groups[tenant]
        states: dict[str, int] = {}
        for sub in group:
            states[sub.state] = states.get(sub.state, 0) + 1
        views.append(TenantView(tenant, len(group), ordered_states(states), group[:limit]))
    return views


def snapshot(
    engine: Engine, redis: Redis, spool_dir: Path, now: datetime | None = None, limit: int = ROWS_PER_TENANT
) -> Snapshot:
    """Read everything the page shows; raises ``RedisError``, ``SQLAlchemyError`` or ``OSError`` unchanged."""
    now = now or datetime.now(UTC)
    subs = list_subscriptions(engine, now=now)
    status = collect(engine, redis, spool_dir, now=now, subs=subs)
    status.subscriptions_by_state = ordered_states(status.subscriptions_by_state)
    graph = status.graph
    status.graph = replace(graph, by_state=ordered_states(graph.by_state))
    first = expiring(subs)[:EXPIRING_ROWS]
    return Snapshot(now, status, rows_per_minute(engine, now), by_tenant(subs, limit), first)


def ordered_states(counts: dict[str, int]) -> dict[str, int]:
    """``counts`` in ``STATE_ORDER``, unknown states after the known ones, by name."""
    known = [s for s in STATE_ORDER if s in counts]
    return {s: counts[s] for s in known + sorted(set(counts) - set(known))}
