"""Worker throughput: drain a full queue into a database, against RQ's own worker draining no-op jobs.

The queue holds what the ingress would have put there: the simulator's plan (2,000 rooms, heartbeats,
``MoreEvents`` bursts, retry duplicates) as Payload dicts in arrival order, grouped ``job_size`` to a job,
each job with the store job's options and the payloads' in-flight marks (as ``ingress.enqueue`` writes them).

To time only the draining, the workers start first on an empty queue; once they wait for work, every job
is pushed in one Redis transaction, and the clock runs from that transaction until the queue, RQ's
intermediate queue and the started-job registry are all empty.  The rows are then checked like the
simulator's (0 lost, 0 duplicated, ``seq`` 1…n in chain order).
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from redis import Redis
from rq import Queue, Worker

from bench import graph, services
from shared.queues import QUEUE_NAME, STORE_JOB
from shared.settings import Settings
from shared.store_job import add_to_queue, payloads_job
from shared.types import Payload
from syncnotify.redis_server import EmbeddedRedis, free_port
from syncnotify.simulator.graph_payloads import Change
from syncnotify.simulator.mailboxes import Mailbox, Mix, mailboxes
from syncnotify.simulator.verify import Expected, VerifyReport, expected_of, verify

NOOP_JOB = "bench.noop.noop"
TENANT = "Default"


@dataclass(frozen=True, slots=True)
class Workload:
    """A full queue's worth of payloads, and what the database must hold after it.

    ``warmup`` holds each room's first notification: drained before the clock starts, so that the timed
    ``payloads`` meet rooms that already exist, as in production (a new room's first links cost more).
    """

    warmup: list[Payload]
    payloads: list[Payload]
    #: Rows the timed payloads make.
    rows: int
    expected: list[Expected]
    #: Graph POSTs (checked by ``bench.graph.check_rows``).
    graph: bool = False


def workload(notifications: int, subscriptions: int, seed: int, mix: Mix) -> Workload:
    """The plan's posts in an arrival order the simulator could have produced (per-room order kept)."""
    fleet = mailboxes(seed, subscriptions, notifications, mix)
    rng = random.Random(f"{seed}:arrival")
    plans = {m.index: (m, m.plan()) for m in fleet if m.count}
    active = list(plans)
    warmup: list[Payload] = []
    payloads: list[Payload] = []
    base = time.time()
    timed_rows = 0

    def add(into: list[Payload], mailbox: Mailbox, body: bytes) -> None:
        into.append(
            Payload(
                id=uuid.uuid4().hex,
                tenant=TENANT,
                received_at=round(base + (len(warmup) + len(payloads)) * 1e-5, 6),
                source="127.0.0.1",
                subscription_ids=[mailbox.subscription_id],
                body=body,
            )
        )

    for mailbox, plan in plans.values():
        first = next(plan)
        add(warmup, mailbox, mailbox.render(first))
    while active:
        position = rng.randrange(len(active))
        mailbox, plan = plans[active[position]]
        while (planned := next(plan, None)) is not None:
            body = mailbox.render(planned)
            add(payloads, mailbox, body)
            timed_rows += len(planned.row_watermarks)
            if planned.duplicate:
                add(payloads, mailbox, body)
            if not planned.more_events:
                break
        if planned is None:
            active[position] = active[-1]
            active.pop()
    expected = [expected_of(m, m.count) for m in fleet]
    return Workload(warmup, payloads, timed_rows, expected)


def graph_workload(changes: int, subscriptions: int, seed: int) -> Workload:
    """About ``changes`` Graph changes of ``subscriptions`` rooms in POSTs of 1–3 changes of one room, as the
    ingress queues them, rooms interleaved at random (each room's own order kept), after a warm-up POST each."""
    rng = random.Random(f"{seed}:graph")
    fleet = graph.rooms(subscriptions, seed)
    planned: dict[graph.Room, list[list[Change]]] = {}
    for room in fleet:
        first = rng.randint(1, 3)
        timed = [room.change(k) for k in range(first, first + changes // subscriptions)]
        planned[room] = [[room.change(k) for k in range(first)]]
        planned[room] += [timed[i : i + size] for i, size in _sizes(rng, len(timed))]
    base = time.time()
    order = [(room, posts[0]) for room, posts in planned.items()]
    rest = [(room, posts[1:]) for room, posts in planned.items() if len(posts) > 1]
    while rest:
        position = rng.randrange(len(rest))
        room, posts = rest[position]
        order.append((room, posts.pop(0)))
        if not posts:
            rest[position] = rest[-1]
            rest.pop()
    payloads = [graph.payload(post, round(base + n * 1e-5, 6)) for n, (_, post) in enumerate(order)]
    made = {room: sum(len(post) for post in posts) for room, posts in planned.items()}
    expected = [graph.expected(room, made[room]) for room in fleet]
    timed_rows = sum(len(post) for _, post in order[len(fleet) :])
    return Workload(payloads[: len(fleet)], payloads[len(fleet) :], timed_rows, expected, graph=True)


def _sizes(rng: random.Random, count: int) -> list[tuple[int, int]]:
    """``(start, size)`` of consecutive POSTs of 1–3 changes covering ``count`` changes."""
    result = []
    start = 0
    while start < count:
        size = min(rng.randint(1, 3), count - start)
        result.append((start, size))
        start += size
    return result


@dataclass(frozen=True, slots=True)
class DrainResult:
    """One drain: how long, how much, how big the workers got, and whether the rows are right."""

    label: str
    workers: int
    payloads: int
    rows: int
    seconds: float
    #: Peak resident memory of each worker process, MiB.
    peak_mib: list[float]
    #: Peak of the supervising ``syncnotify worker`` process (none for RQ's own workers), MiB.
    supervisor_mib: list[float]
    #: Peak of all the processes together (PSS: shared pages counted once), MiB.
    tree_mib: float
    failed_jobs: int
    verify: VerifyReport | None

    @property
    def payloads_per_second(self) -> float:
        return self.payloads / self.seconds

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds

    @property
    def ok(self) -> bool:
        return self.failed_jobs == 0 and (self.verify is None or self.verify.ok)


def _push(redis: Redis, payloads: list[Payload], job_size: int, func: str, job_retries: int = 8) -> tuple[int, float]:
    """Push every job, as the ingress writes it, in one transaction; return (jobs, when it was sent)."""
    queue = Queue(QUEUE_NAME, connection=redis)
    settings = Settings(job_retries=job_retries)
    jobs = 0
    with redis.pipeline() as pipe:
        for start in range(0, len(payloads), job_size):
            group = payloads[start : start + job_size]
            add_to_queue(pipe, queue, payloads_job(redis, group, settings, func), group)
            jobs += 1
        sent = time.perf_counter()
        pipe.execute()
    return jobs, sent


def drained(redis: Redis) -> bool:
    queue = Queue(QUEUE_NAME, connection=redis)
    with redis.pipeline(transaction=False) as pipe:
        pipe.llen(queue.key)
        pipe.llen(queue.intermediate_queue_key)
        pipe.zcard(queue.started_job_registry.key)
        pipe.zcard(queue.scheduled_job_registry.key)
        return not any(pipe.execute())


def _wait_for_workers(redis: Redis, count: int, processes: list[object], timeout: float = 60) -> None:
    queue = Queue(QUEUE_NAME, connection=redis)
    deadline = time.monotonic() + timeout
    while Worker.count(queue=queue) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} workers did not register within {timeout} s")
        time.sleep(0.05)
    time.sleep(0.5)  # past registration, into the blocking dequeue


def worker_commands(kind: str, redis_url: str, processes: int) -> list[list[str]]:
    """``syncnotify worker --processes N`` (a supervisor and N worker processes, its metrics on a free port),
    or N of RQ's own ``rq worker`` with ``SimpleWorker``."""
    if kind == "noop":
        rq = [sys.executable, "-c", "import sys; from rq.cli import main; sys.exit(main())", "worker"]
        rq += ["-w", "rq.worker.SimpleWorker", "-u", redis_url, "--logging_level", "WARNING", QUEUE_NAME]
        return [rq] * processes
    command = [*services.SYNCNOTIFY, "worker", "--processes", str(processes)]
    return [command + ["--metrics-port", str(free_port()), "--metrics-host", "127.0.0.1"]]


def drain(
    label: str,
    redis: EmbeddedRedis,
    database_url: str,
    load: Workload,
    workers: int,
    job_size: int,
    work: Path,
    noop: bool = False,
    timeout: float = 600,
) -> DrainResult:
    """Start ``workers`` processes, push the workload, time the drain, check the rows (not for no-op jobs)."""
    client = redis.client()
    client.flushall()
    if not noop:
        services.empty_tables(database_url)
    env = services.service_env(redis.url, database_url, work / "spool")
    commands = worker_commands("noop" if noop else "store", redis.url, workers)
    processes = [services.start(c, env, work / f"{label}-{n}.log") for n, c in enumerate(commands)]
    try:
        _wait_for_workers(client, workers, list(processes))
        func = NOOP_JOB if noop else STORE_JOB
        _push(client, load.warmup, job_size, func)
        while not drained(client):
            time.sleep(0.02)
        names = {f"process-{n}": p.pid for n, p in enumerate(processes)}
        with services.MemoryWatch(names) as memory:
            _, sent = _push(client, load.payloads, job_size, func)
            deadline = time.monotonic() + timeout
            while not drained(client):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{label}: queue not drained within {timeout} s")
                if any(p.poll() is not None for p in processes):
                    raise RuntimeError(f"{label}: a worker exited (see {work})")
                time.sleep(0.005)
            seconds = time.perf_counter() - sent
        failed = Queue(QUEUE_NAME, connection=client).failed_job_registry.count
    finally:
        for process in processes:
            services.stop(process)
    # the worker processes: the children of the supervisor (not their forked RQ schedulers), or RQ's own
    peaks = [m for name in names for m in memory.children_peak_mib(name)] or [memory.peak_mib(n) for n in names]
    supervisor = [memory.peak_mib(name) for name in names] if not noop else []
    tree = sum(memory.tree_peak_mib(name) for name in names)
    check = graph.check_rows if load.graph else partial(verify, drain_timeout=30)
    report = None if noop else check(database_url, TENANT, load.expected)
    return DrainResult(
        label,
        workers,
        len(load.payloads),
        0 if noop else load.rows,
        seconds,
        peaks,
        supervisor,
        tree,
        failed,
        report,
    )
