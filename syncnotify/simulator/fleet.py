"""``syncnotify simulate``: an Exchange server fleet, or Microsoft Graph, posting notifications, for load and trust.

A player (``syncnotify.simulator.play``) knows the protocol: ``EwsPlayer`` posts each mailbox's watermark
chain, ``GraphPlayer`` batches rooms' changes into JSON POSTs.  Here, as both servers do, a subscription
posts its next notification only after the previous one was taken (sequential per subscription), while many
subscriptions post in parallel over ``connections`` keep-alive connections; a free connection takes a random
ready subscription, so a subscription's posts travel over different connections.  An answer that is not
taken (EWS: 200, Graph: 2xx) or a broken connection is retried after ``retry_delay`` seconds, then twice as
long each time (at most ``MAX_RETRY_DELAY``), ``max_attempts`` posts in all; then the subscriptions of that
post give up, as Exchange's do (Graph retries for 4 hours).

With ``verify`` (a database URL), it then waits until the database holds everything that was acknowledged
and checks: 0 lost, 0 duplicated, ``seq`` 1…n per subscription in the order sent, no gaps but those of
Graph's ``missed`` events, and (Graph) the states the lifecycle events set.

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

from syncnotify.simulator.client import Connection, HTTPError, connect, new_event_loop
from syncnotify.simulator.options import SimulateOptions, SimulationReport
from syncnotify.simulator.play import GAVE_UP, UNSUBSCRIBED, Player, Pool

if TYPE_CHECKING:
    from syncnotify.simulator.verify import Expected

#: Slots per process in the shared progress array: posts answered, posts taken, failures.
_SLOTS = 3
#: The longest wait between two attempts of one post (seconds).
MAX_RETRY_DELAY = 300.0


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
    #: Steps acknowledged, by subscription index.
    acknowledged: dict[int, int] = field(default_factory=dict)
    latencies: bytes = b""
    started: float = 0.0
    finished: float = 0.0


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


def backoff(first: float, attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (from 1): ``first``, doubled each time, capped."""
    return min(first * 2.0 ** (attempt - 1), MAX_RETRY_DELAY)


def player_for(options: SimulateOptions, seed: int, slot: int = 0) -> Player[Any]:
    """The player of ``options`` (Graph or EWS); ``slot`` seeds its per-process choices."""
    if options.graph:
        from syncnotify.simulator.graph_player import GraphPlayer

        return GraphPlayer(options, seed, slot)
    from syncnotify.simulator.ews_player import EwsPlayer

    return EwsPlayer(options, seed)


async def _drive(
    options: SimulateOptions, seed: int, indices: Sequence[int], share: float, slots: Any, slot: int
) -> _PartResult:
    """Send the plans of subscriptions ``indices`` over ``share`` of the connections and of the rate."""
    player = player_for(options, seed, slot)
    subs = player.subscriptions(indices)
    pool: Pool[Any] = Pool(subs, random.Random(f"{seed}:pool:{slot}"))
    pacer = _Pacer(options.rate * share)
    result = _PartResult()
    latencies = array("d")
    connections = max(1, round(options.connections * share))

    async def connection() -> None:
        conns: dict[str, Connection] = {}

        async def send(endpoint: str, body: bytes, items: int, redelivery: bool = False) -> bytes | None:
            if endpoint not in conns:
                conns[endpoint] = connect(options.client, player.targets[endpoint], options.timeout)
            conn = conns[endpoint]
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
                    if player.accepted(status):
                        slots[slot * _SLOTS + 1] += 1
                        if redelivery:
                            result.duplicates_posted += items
                        else:
                            result.notifications += items
                        return answer
                if attempt < options.max_attempts:
                    await asyncio.sleep(backoff(options.retry_delay, attempt))
            return None

        try:
            while (sub := await pool.take()) is not None:
                try:
                    await player.turn(sub, pool, send)
                finally:
                    pool.give_back(sub)
            await player.finish(send)
        finally:
            for conn in conns.values():
                await conn.close()

    result.started = time.time()
    await asyncio.gather(*(connection() for _ in range(connections)))
    result.finished = time.time()
    result.acknowledged = {sub.index: sub.acknowledged for sub in subs}
    result.gave_up = sum(1 for sub in subs if sub.ended == GAVE_UP)
    result.unsubscribed = sum(1 for sub in subs if sub.ended == UNSUBSCRIBED)
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


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def simulate(options: SimulateOptions, say: Callable[[str], None] | None = _say) -> SimulationReport:
    """Send the plan to ``options.url`` (and verify when asked); ``say`` gets progress lines (``None``: quiet).

    Raises ``ValueError`` for options that cannot be played."""
    if options.via is not None:
        from syncnotify.simulator.via_fake import through_fake

        options = through_fake(options)
    if options.subscriptions < 1 or options.notifications < 1 or options.connections < 1:
        raise ValueError("subscriptions, notifications and connections must be at least 1")
    if not 0 <= options.duplicates <= 1 or not 0 <= options.heartbeats + options.bursts <= 1:
        raise ValueError("duplicates, heartbeats and bursts are fractions between 0 and 1")
    if options.max_attempts < 1 or options.lifecycle < 0:
        raise ValueError("max attempts must be at least 1, lifecycle at least 0")
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(1, 10**9)
    player = player_for(options, seed)
    processes = options.processes or os.cpu_count() or 1
    processes = max(1, min(processes, options.subscriptions, options.connections))
    parts = [list(range(p, options.subscriptions, processes)) for p in range(processes)]
    slots = RawArray("q", _SLOTS * processes)
    report = SimulationReport(seed=seed, url=next(iter(player.targets.values())).url)
    report.planned = player.planned()
    if say:
        say(
            f"simulate{' --graph' if options.graph else ''}: {options.subscriptions} subscriptions, "
            f"{report.planned} notifications, {options.connections} connections, {processes} processes, "
            f"{options.client} client, rate {options.rate or 'max'}, seed {seed} → {report.url}"
        )

    def show(started: float) -> None:
        answered = sum(slots[i * _SLOTS] for i in range(processes))
        taken = sum(slots[i * _SLOTS + 1] for i in range(processes))
        failed = sum(slots[i * _SLOTS + 2] for i in range(processes))
        elapsed = time.monotonic() - started
        if say:
            say(
                f"  {elapsed:6.1f} s: {answered:,} posts answered ({report.planned:,} notifications to send), "
                f"{taken:,} taken, {failed} connection failures, {answered / max(elapsed, 1e-9):,.0f}/s"
            )

    started = time.monotonic()
    if processes == 1:
        results = [_run_in_process(options, seed, parts[0], slots, show if say else None)]
    else:
        results = _run_in_children(options, seed, parts, slots, show if say else None)
    report.seconds = time.monotonic() - started
    expected: list[Expected] = []
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
        if options.verify:
            expected.extend(player.expected(i, n) for i, n in result.acknowledged.items())
    if say:
        say(f"sent {report.posts:,} posts in {report.seconds:.1f} s ({report.rate:,.0f}/s)")
    if options.verify:
        from syncnotify.simulator.verify import verify  # SQLAlchemy only when checking: keeps the command quick

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
