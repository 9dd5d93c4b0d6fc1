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

Function API: ``simulate(SimulateOptions(...)) -> SimulationReport`` (``syncnotify.simulator.options``); the
command line is ``syncnotify simulate`` (``syncnotify.cli.tools``).  It only ever connects to the URL it is given.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from multiprocessing.sharedctypes import RawArray
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from syncnotify.simulator.client import HTTPError, Target, connect, new_event_loop
from syncnotify.simulator.mailboxes import Mailbox, Mix, Planned, mailboxes
from syncnotify.simulator.options import SimulateOptions, SimulationReport

if TYPE_CHECKING:
    from syncnotify.simulator.verify import Expected

#: Slots per process in the shared progress array: posts answered, posts answered 200, failures.
_SLOTS = 3


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
