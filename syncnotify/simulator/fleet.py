"""``syncnotify simulate``: an Exchange server fleet posting push notifications, for load and for trust.

Like Exchange, each subscription posts its next notification only after the previous one was answered 200
(sequential per subscription), while many subscriptions post in parallel over ``connections`` keep-alive
connections; a free connection takes a random ready subscription, so a subscription's posts travel over
different connections.  A notification with ``MoreEvents=true`` is followed at once, on the same connection,
by its next part.  A share of notifications is posted a second time right after the 200 (Exchange's retry of
an answer it did not see).  An answer other than 200 or a broken connection is retried after
``retry_delay`` seconds, at most ``max_attempts`` times; then that subscription gives up, as Exchange's does.

With ``verify`` (a database URL), it then waits until the database holds everything that was acknowledged
and checks: 0 lost, 0 duplicated, ``seq`` 1…n per subscription in watermark-chain order, no gaps.

Function API: ``simulate(SimulateOptions(...)) -> SimulationReport``; command line: ``main(argv) -> int``
(exit 0 when every post was answered and the check passed, 1 otherwise, 2 on a usage error).
``add_arguments(parser)`` and ``run(args)`` let another command line (``syncnotify simulate``) embed it.
It only ever connects to the URL it is given.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection as Pipe
from multiprocessing.sharedctypes import RawArray
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from syncnotify.simulator.client import HTTPError, Target, connect, new_event_loop
from syncnotify.simulator.mailboxes import Mailbox, Mix, Planned, mailboxes

if TYPE_CHECKING:
    from syncnotify.simulator.verify import Expected, VerifyReport

DEFAULT_URL = "http://127.0.0.1:8080/Webservices/SyncNotification.svc"
#: Slots per process in the shared progress array: posts answered, posts answered 200, failures.
_SLOTS = 3


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


@dataclass(slots=True)
class _PartResult:
    """What one sending process reports back."""

    posts: int = 0
    notifications: int = 0
    duplicates_posted: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    gave_up: int = 0
    unsubscribed: int = 0
    #: Notifications acknowledged, by mailbox index.
    acknowledged: dict[int, int] = field(default_factory=dict)
    latencies: bytes = b""
    started: float = 0.0
    finished: float = 0.0


class _Subscription:
    """A mailbox's progress through its plan; posted by one connection at a time."""

    __slots__ = ("mailbox", "plan", "current", "repeat", "acknowledged", "ended")

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        self.plan = mailbox.plan()
        self.current: Planned | None = next(self.plan, None)
        self.repeat = False  # the next post is the retry duplicate of the one just acknowledged
        self.acknowledged = 0
        self.ended = False

    def advance(self) -> None:
        assert self.current is not None
        if not self.repeat:
            self.acknowledged += 1
            if self.current.duplicate:
                self.repeat = True
                return
        self.repeat = False
        self.current = next(self.plan, None)


class _Pool:
    """Subscriptions ready for their next post; a free connection takes a random one."""

    def __init__(self, subs: list[_Subscription], rng: random.Random) -> None:
        self.ready = [s for s in subs if s.current is not None]
        self.busy = 0
        self.rng = rng
        self.changed = asyncio.Event()

    async def take(self) -> _Subscription | None:
        """A ready subscription, or ``None`` once none is ready and none can become ready."""
        while not self.ready:
            if self.busy == 0:
                return None
            self.changed.clear()
            await self.changed.wait()
        index = self.rng.randrange(len(self.ready))
        self.ready[index], self.ready[-1] = self.ready[-1], self.ready[index]
        self.busy += 1
        return self.ready.pop()

    def give_back(self, sub: _Subscription) -> None:
        self.busy -= 1
        if sub.current is not None and not sub.ended:
            self.ready.append(sub)
        self.changed.set()


class _Pacer:
    """Spreads posts evenly at ``rate`` per second (open loop: a late post does not delay the schedule)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next: float | None = None

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.perf_counter()
        if self.next is None:
            self.next = now
        slot = self.next
        self.next += self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


async def _drive(
    options: SimulateOptions, seed: int, indices: Sequence[int], share: float, slots: Any, slot: int
) -> _PartResult:
    """Send the plans of mailboxes ``indices`` over ``share`` of the connections and of the rate."""
    mix = Mix(options.heartbeats, options.bursts, options.duplicates)
    fleet = mailboxes(seed, options.subscriptions, options.notifications, mix)
    subs = [_Subscription(fleet[i]) for i in indices]
    pool = _Pool(subs, random.Random(f"{seed}:pool:{slot}"))
    pacer = _Pacer(options.rate * share)
    target = Target(_url_with_tenant(options.url, options.tenant))
    result = _PartResult()
    latencies = array("d")
    connections = max(1, round(options.connections * share))

    async def post(conn: Any, sub: _Subscription) -> bool:
        """Post ``sub``'s current body until it is answered 200; ``False`` if the subscription gave up."""
        assert sub.current is not None
        body = sub.mailbox.render(sub.current)
        for attempt in range(1, options.max_attempts + 1):
            await pacer.wait()
            started = time.perf_counter()
            try:
                status, answer = await conn.post(body)
            except HTTPError:
                result.failures += 1
                slots[slot * _SLOTS + 2] += 1
            else:
                latencies.append(time.perf_counter() - started)
                result.posts += 1
                result.statuses[str(status)] += 1
                slots[slot * _SLOTS] += 1
                if status == 200:
                    slots[slot * _SLOTS + 1] += 1
                    if b"Unsubscribe" in answer:
                        result.unsubscribed += 1
                        sub.ended = True
                    return True
            if attempt < options.max_attempts:
                await asyncio.sleep(options.retry_delay)
        result.gave_up += 1
        sub.ended = True
        return False

    async def connection() -> None:
        conn = connect(options.client, target, options.timeout)
        try:
            while (sub := await pool.take()) is not None:
                try:
                    while sub.current is not None and not sub.ended:
                        repeat = sub.repeat
                        more = sub.current.more_events  # its retry duplicate, then its next part, follow at once
                        if not await post(conn, sub):
                            break
                        if repeat:
                            result.duplicates_posted += 1
                        else:
                            result.notifications += 1
                        sub.advance()
                        if not more:  # a MoreEvents part is followed at once by the next one
                            break
                finally:
                    pool.give_back(sub)
        finally:
            await conn.close()

    result.started = time.time()
    await asyncio.gather(*(connection() for _ in range(connections)))
    result.finished = time.time()
    result.acknowledged = {sub.mailbox.index: sub.acknowledged for sub in subs}
    result.latencies = latencies.tobytes()
    return result


def _run_part(
    options: SimulateOptions, seed: int, indices: Sequence[int], share: float, slots: Any, slot: int
) -> _PartResult:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_drive(options, seed, indices, share, slots, slot))


def _child(
    options: SimulateOptions, seed: int, indices: Sequence[int], share: float, slots: Any, slot: int, pipe: Pipe
) -> None:
    try:
        pipe.send(_run_part(options, seed, indices, share, slots, slot))
    except KeyboardInterrupt:
        pass
    finally:
        pipe.close()


def _url_with_tenant(url: str, tenant: str) -> str:
    parts = urlsplit(url)
    names_tenant = parts.query or parts.path.strip("/").lower().count("/") >= 2
    return url if names_tenant else f"{url}?{tenant}"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def simulate(options: SimulateOptions, say: Callable[[str], None] | None = _say) -> SimulationReport:
    """Send the plan to ``options.url`` (and verify when asked); ``say`` gets progress lines (``None``: quiet)."""
    if options.subscriptions < 1 or options.notifications < 1 or options.connections < 1:
        raise ValueError("subscriptions, notifications and connections must be at least 1")
    if not 0 <= options.duplicates <= 1 or not 0 <= options.heartbeats + options.bursts <= 1:
        raise ValueError("duplicates, heartbeats and bursts are fractions between 0 and 1")
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(1, 10**9)
    processes = options.processes or os.cpu_count() or 1
    processes = max(1, min(processes, options.subscriptions, options.connections))
    parts = [list(range(p, options.subscriptions, processes)) for p in range(processes)]
    slots = RawArray("q", _SLOTS * processes)
    report = SimulationReport(seed=seed, url=_url_with_tenant(options.url, options.tenant))
    total_posts = options.notifications
    if say:
        say(
            f"simulate: {options.subscriptions} subscriptions, {options.notifications} notifications, "
            f"{options.connections} connections, {processes} processes, {options.client} client, "
            f"rate {options.rate or 'max'}, seed {seed} → {report.url}"
        )

    def show(started: float) -> None:
        answered = sum(slots[i * _SLOTS] for i in range(processes))
        ok = sum(slots[i * _SLOTS + 1] for i in range(processes))
        failed = sum(slots[i * _SLOTS + 2] for i in range(processes))
        elapsed = time.monotonic() - started
        if say:
            say(
                f"  {elapsed:6.1f} s: {answered:,} posts answered (~{total_posts:,} + duplicates), "
                f"{ok:,} with 200, {failed} connection failures, {answered / max(elapsed, 1e-9):,.0f}/s"
            )

    started = time.monotonic()
    if processes == 1:
        results = [_run_in_process(options, seed, parts[0], slots, show if say else None)]
    else:
        results = _run_in_children(options, seed, parts, slots, show if say else None)
    report.seconds = time.monotonic() - started
    from syncnotify.simulator.verify import (  # SQLAlchemy only when checking: keeps the command quick to start
        expected_of,
        verify,
    )

    expected: list[Expected] = []
    mix = Mix(options.heartbeats, options.bursts, options.duplicates)
    fleet = mailboxes(seed, options.subscriptions, options.notifications, mix)
    for result in results:
        report.posts += result.posts
        report.notifications += result.notifications
        report.duplicates_posted += result.duplicates_posted
        report.statuses.update(result.statuses)
        report.failures += result.failures
        report.gave_up += result.gave_up
        report.unsubscribed += result.unsubscribed
        report.acknowledged += sum(result.acknowledged.values())
        report.latencies.frombytes(result.latencies)
        expected.extend(expected_of(fleet[i], n) for i, n in result.acknowledged.items())
    report.planned = options.notifications
    if say:
        say(f"sent {report.posts:,} posts in {report.seconds:.1f} s ({report.rate:,.0f}/s)")
    if options.verify:
        if say:
            say(f"verify: waiting up to {options.drain_timeout:.0f} s for the database to hold every row …")
        report.verify = verify(options.verify, options.tenant, expected, options.drain_timeout, say)
    return report


def _run_in_process(
    options: SimulateOptions, seed: int, indices: Sequence[int], slots: Any, show: Callable[[float], None] | None
) -> _PartResult:
    started = time.monotonic()

    async def with_progress() -> _PartResult:
        task = asyncio.create_task(_drive(options, seed, indices, 1.0, slots, 0))
        while show and options.progress_every > 0:
            done, _ = await asyncio.wait({task}, timeout=options.progress_every)
            if done:
                break
            show(started)
        return await task

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(with_progress())


def _run_in_children(
    options: SimulateOptions,
    seed: int,
    parts: list[list[int]],
    slots: Any,
    show: Callable[[float], None] | None,
) -> list[_PartResult]:
    context = multiprocessing.get_context("spawn")
    started = time.monotonic()
    children = []
    for number, indices in enumerate(parts):
        receive, send = context.Pipe(duplex=False)
        share = len(indices) / options.subscriptions
        process = context.Process(
            target=_child, args=(options, seed, indices, share, slots, number, send), name=f"simulate-{number}"
        )
        process.start()
        send.close()
        children.append((process, receive))
    try:
        results = []
        for process, receive in children:
            while not receive.poll(options.progress_every or 1.0):
                if not process.is_alive() and not receive.poll(0):
                    raise RuntimeError(f"sending process {process.name} died with exit code {process.exitcode}")
                if show and options.progress_every > 0:
                    show(started)
            results.append(receive.recv())
            process.join()
        return results
    finally:
        for process, _ in children:
            if process.is_alive():
                process.terminate()
                process.join(5)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line options (for ``syncnotify simulate`` or ``python -m syncnotify.simulator.fleet``)."""
    d = SimulateOptions()
    parser.add_argument("--url", default=d.url, help=f"callback URL to post to (default {d.url})")
    parser.add_argument("--subscriptions", type=int, default=d.subscriptions, help="rooms (default %(default)s)")
    parser.add_argument(
        "--notifications", type=int, default=d.notifications, help="distinct notifications in all (default %(default)s)"
    )
    parser.add_argument("--connections", type=int, default=d.connections, help="keep-alive connections (default 64)")
    parser.add_argument("--duplicates", type=float, default=d.duplicates, help="share posted twice (default 0.05)")
    parser.add_argument("--rate", type=float, default=d.rate, help="posts/s in all, 0 = as fast as possible")
    parser.add_argument("--tenant", default=d.tenant, help="tenant of the rows, added as ?TENANT to a bare URL")
    parser.add_argument("--seed", type=int, default=None, help="seed of the plan (default: random, printed)")
    parser.add_argument("--verify", metavar="DATABASE_URL", help="after sending, wait for the drain and check rows")
    parser.add_argument("--processes", type=int, default=d.processes, help="sending processes, 0 = one per CPU")
    parser.add_argument("--client", choices=("raw", "httpx"), default=d.client, help="HTTP client (default raw)")
    parser.add_argument("--heartbeats", type=float, default=d.heartbeats, help="share of StatusEvent heartbeats")
    parser.add_argument("--bursts", type=float, default=d.bursts, help="share of MoreEvents bursts (two parts each)")
    parser.add_argument("--timeout", type=float, default=d.timeout, help="seconds to wait for an answer")
    parser.add_argument(
        "--retry-delay", type=float, default=d.retry_delay, help="seconds before a retry (Exchange: 30)"
    )
    parser.add_argument("--max-attempts", type=int, default=d.max_attempts, help="posts of one notification at most")
    parser.add_argument("--drain-timeout", type=float, default=d.drain_timeout, help="seconds to wait for the rows")
    parser.add_argument("--progress-every", type=float, default=d.progress_every, help="seconds between progress")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document on stdout")


def options_from(args: argparse.Namespace) -> SimulateOptions:
    names = SimulateOptions.__dataclass_fields__
    return SimulateOptions(**{name: getattr(args, name) for name in names if hasattr(args, name)})


def run(args: argparse.Namespace) -> int:
    """Run a parsed command line; 0 when all was acknowledged and verified, 1 otherwise, 2 on a bad option."""
    import json

    try:
        options = options_from(args)
        report = simulate(options)
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(report.summary())
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simulate", description=(__doc__ or "").split("\n\n")[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
