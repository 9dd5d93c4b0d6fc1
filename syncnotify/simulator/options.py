"""What ``syncnotify simulate`` is asked to do (``SimulateOptions``) and what it reports (``SimulationReport``)."""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from syncnotify.simulator.verify import VerifyReport

DEFAULT_URL = "http://127.0.0.1:8080/Webservices/SyncNotification.svc"
DEFAULT_GRAPH_URL = "http://127.0.0.1:8080/api/webhooks/graph"
#: The Entra tenant (``tenantId``) of the simulated Graph items.
DIRECTORY_TENANT = "5f0c2a9e-3b7d-4e61-9a48-c1d2e3f4a5b6"


@dataclass(frozen=True, slots=True)
class SimulateOptions:
    """What to simulate; the defaults are the issue's soak (2,000 rooms, 100,000 notifications)."""

    #: Where to post; ``None`` = ``DEFAULT_URL``, or ``DEFAULT_GRAPH_URL`` with ``graph``.
    url: str | None = None
    #: Play Microsoft Graph (JSON change notifications) instead of Exchange's EWS.
    graph: bool = False
    subscriptions: int = 2000
    #: Distinct notifications to send in all (retry duplicates come on top).
    notifications: int = 100_000
    connections: int = 64
    #: Share of notifications (Graph: of POSTs) posted twice.
    duplicates: float = 0.05
    #: Posts per second in all, 0 = as fast as answers come.
    rate: float = 0.0
    #: Tenant of the rows; added to the URL as ``?TENANT`` when the URL names none.
    tenant: str = "Default"
    #: Seed of the plan; ``None`` picks one (printed, so a run can be repeated).
    seed: int | None = None
    #: Database URL to check after sending (``sqlite:///…``, ``postgresql://…``); ``None`` skips the check.
    verify: str | None = None
    #: Sending processes (subscriptions are split between them); 0 = one per CPU.
    processes: int = 1
    #: ``raw`` (asyncio protocol, fast) or ``httpx``.
    client: str = "raw"
    #: EWS: shares of heartbeats and of ``MoreEvents`` bursts.
    heartbeats: float = 0.2
    bursts: float = 0.05
    #: Graph: the secret each item carries (one of the ingress's ``SYNCNOTIFY_GRAPH_CLIENT_STATE``).
    client_state: str | None = None
    #: Graph: the items' ``tenantId``.
    directory_tenant: str = DIRECTORY_TENANT
    #: Graph: rooms that also get a lifecycle event (``missed`` and ``reauthorizationRequired`` in turn).
    lifecycle: int = 0
    #: Graph: a fake Graph's URL (``syncnotify graph fake``) to post through: its live subscriptions are the
    #: rooms and it fills in each item's clientState, tenantId and expiry (``syncnotify.simulator.via_fake``).
    via: str | None = None
    #: Graph with ``via``: the rooms' (subscription id, mailbox), filled from the fake by ``simulate``.
    rooms: tuple[tuple[str, str], ...] = ()
    #: Graph: most items in one POST (several rooms' changes together).
    items_per_post: int = 10
    timeout: float = 30.0
    #: Seconds before the first retry of a post not taken; each further retry waits twice as long (at most
    #: 5 minutes), as Exchange and Graph back off.
    retry_delay: float = 1.0
    max_attempts: int = 5
    drain_timeout: float = 600.0
    #: Seconds between progress lines (on stderr); 0 = none.
    progress_every: float = 5.0


@dataclass(slots=True)
class SimulationReport:
    """What happened; ``ok`` when every notification was acknowledged and the check (if any) passed."""

    seed: int
    url: str
    posts: int = 0
    notifications: int = 0
    duplicates_posted: int = 0
    acknowledged: int = 0
    planned: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    gave_up: int = 0
    unsubscribed: int = 0
    seconds: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    verify: VerifyReport | None = None

    @property
    def ok(self) -> bool:
        return self.acknowledged == self.planned and (self.verify is None or self.verify.ok)

    @property
    def rate(self) -> float:
        return self.posts / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        """Latency percentile ``p`` (0–100) of the answered posts, in seconds."""
        return percentile(self.latencies, p)

    def summary(self) -> str:
        lines = [
            f"sent {self.posts} posts ({self.notifications} notifications + {self.duplicates_posted} retry "
            f"duplicates) to {self.url} in {self.seconds:.1f} s: {self.rate:,.0f} posts/s",
            f"answers {dict(sorted(self.statuses.items()))}, connection failures {self.failures}, "
            f"acknowledged {self.acknowledged}/{self.planned} notifications, gave up {self.gave_up} "
            f"subscriptions, unsubscribed {self.unsubscribed}",
            f"latency p50 {self.percentile(50) * 1000:.2f} ms, p90 {self.percentile(90) * 1000:.2f} ms, "
            f"p99 {self.percentile(99) * 1000:.2f} ms, max {self.percentile(100) * 1000:.2f} ms",
            f"seed {self.seed}",
        ]
        if self.verify is not None:
            lines.append(self.verify.summary())
            lines.extend(f"  {p}" for p in self.verify.problems)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "url": self.url,
            "posts": self.posts,
            "notifications": self.notifications,
            "duplicates_posted": self.duplicates_posted,
            "acknowledged": self.acknowledged,
            "planned": self.planned,
            "statuses": dict(self.statuses),
            "failures": self.failures,
            "gave_up": self.gave_up,
            "unsubscribed": self.unsubscribed,
            "seconds": self.seconds,
            "posts_per_second": self.rate,
            "latency_ms": {str(p): self.percentile(p) * 1000 for p in (50, 90, 99, 100)},
            "verify": None if self.verify is None else asdict(self.verify),
            "ok": self.ok,
        }


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile ``p`` (0–100) of ``values``; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]
