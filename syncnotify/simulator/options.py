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


@dataclass(frozen=True, slots=True)
class SimulateOptions:
    """What to simulate; the defaults are the issue's soak (2,000 rooms, 100,000 notifications)."""

    url: str = DEFAULT_URL
    subscriptions: int = 2000
    #: Distinct notifications to send in all (retry duplicates come on top).
    notifications: int = 100_000
    connections: int = 64
    #: Share of notifications posted twice.
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
    heartbeats: float = 0.2
    bursts: float = 0.05
    timeout: float = 30.0
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
