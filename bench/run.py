"""``make bench``: the issue's three measurements, each next to its baseline from the same run.

1. Ingress (one process) against a bare FastAPI route and a naive parse-and-insert receiver, all three with
   the ingress's uvicorn settings: requests/s and p50/p99 at 64 connections (``wrk`` where installed, else
   our own generator), every payload checked to be on Redis; then p99 at a steady 2,000 posts/s over 256
   connections (the simulator, open loop), against the bare route at the same rate.
2. Worker (one process, then two): notifications/s and events/s drained from a full queue into SQLite and
   into PostgreSQL, against RQ's own ``SimpleWorker`` draining no-op jobs of the same payloads.
3. Soak: the simulator through ingress, queue and two workers into PostgreSQL; rows verified; drain time,
   ingress p99 during the burst, peak memory of the ingress and of each worker.

Everything runs on services of its own (a redis-server with ``appendfsync everysec`` on a free port, a
PostgreSQL database created and dropped on ``SYNCNOTIFY_BENCH_PG``, SQLite files in a temporary folder),
all removed at the end, also on Ctrl-C or SIGTERM.  ``--quick`` is a smaller run; ``--write`` records the
figures in ``bench/RESULTS.md`` (the section of that mode only).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from bench import graph, load, services
from bench.report import Figure, machine, markdown_section, number, ratio, text_table, write_section
from bench.workers import DrainResult, Workload, drain, graph_workload, workload
from syncnotify.redis_server import EmbeddedRedis, free_port
from syncnotify.simulator.fleet import simulate
from syncnotify.simulator.mailboxes import Mix
from syncnotify.simulator.options import SimulateOptions, SimulationReport

RESULTS = Path(__file__).parent / "RESULTS.md"
CONNECTIONS = 64
#: MB per MiB (the targets are in MB).
MIB = 1.048576
PATH = "/Webservices/SyncNotification.svc"


@dataclass(frozen=True, slots=True)
class Config:
    """Sizes of one run (``FULL`` or ``QUICK``)."""

    mode: str
    load_seconds: float
    compare_seconds: float
    steady_rate: float
    steady_seconds: float
    steady_connections: int
    worker_notifications: int
    worker_subscriptions: int
    job_size: int
    soak_notifications: int
    soak_subscriptions: int
    soak_connections: int
    soak_db: str
    generator: str
    seed: int
    #: Graph POSTs per second beside the soak's EWS posts.
    soak_graph_rate: float = 400
    soak_drain_timeout: float = 900


FULL = Config("full", 15, 5, 2000, 15, 256, 20_000, 2000, 20, 100_000, 2000, CONNECTIONS, "postgresql", "auto", 5)
QUICK = replace(
    FULL,
    mode="quick",
    load_seconds=5,
    compare_seconds=3,
    steady_seconds=5,
    worker_notifications=5_000,
    soak_notifications=10_000,
    soak_subscriptions=500,
)


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass
class Run:
    """What the sections share: the services, the scratch folder, the figures and notes gathered."""

    config: Config
    work: Path
    redis: EmbeddedRedis
    postgres: str
    sqlite: str
    figures: list[Figure]
    notes: list[str]

    def env(self, database: str) -> dict[str, str]:
        return services.service_env(
            self.redis.url, database, self.work / "spool", SYNCNOTIFY_GRAPH_CLIENT_STATE=graph.CLIENT_STATE
        )

    @contextmanager
    def serve(self, name: str, command: Sequence[str], database: str) -> Iterator[tuple[str, int]]:
        """A receiver on a free port; yields its base URL (``http://host:port``) and pid."""
        port = free_port()
        with services.running([*command, "--port", str(port)], self.env(database), self.work / f"{name}.log") as p:
            services.wait_http(f"http://127.0.0.1:{port}/healthz", p)
            yield f"http://127.0.0.1:{port}", p.pid


def steady(url: str, config: Config, seed: int) -> SimulationReport:
    """The simulator at ``steady_rate`` posts/s (open loop) over ``steady_connections``."""
    options = SimulateOptions(
        url=url,
        subscriptions=2000,
        notifications=int(config.steady_rate * config.steady_seconds),
        connections=config.steady_connections,
        rate=config.steady_rate,
        seed=seed,
        progress_every=0,
    )
    return simulate(options, say=None)


def ingress_section(run: Run) -> None:
    cfg = run.config
    section = "Ingress, one process"
    generator = cfg.generator if cfg.generator != "auto" else ("wrk" if load.wrk_available() else "raw")
    python = [sys.executable, "-m", "bench.baselines"]
    _say(f"ingress: bare route ({generator}, {CONNECTIONS} connections, {cfg.load_seconds:.0f} s)")
    with run.serve("bare", [*python, "bare", "--host", "127.0.0.1"], run.sqlite) as (base, _):
        url = base + PATH
        bare = load.measure(url, CONNECTIONS, cfg.load_seconds, run.work, generator)
        compared = []
        for kind in ("wrk", "raw", "httpx"):
            if kind == "wrk" and not load.wrk_available():
                continue
            _say(f"ingress: load generator {kind} against the bare route")
            compared.append(load.measure(url, CONNECTIONS, cfg.compare_seconds, run.work, kind))
        _say(f"ingress: bare route at a steady {cfg.steady_rate:.0f} posts/s")
        bare_steady = steady(url, cfg, cfg.seed)
    services.empty_tables(run.postgres)
    _say("ingress: naive receiver (parse + insert into PostgreSQL in the request)")
    with run.serve("naive", [*python, "naive", "--host", "127.0.0.1"], run.postgres) as (base, _):
        naive = load.measure(base + PATH, CONNECTIONS, cfg.load_seconds, run.work, generator)
    naive_rows = _row_count(run.postgres)
    services.empty_tables(run.postgres)
    redis = run.redis.client()
    redis.flushall()
    _say("ingress: syncnotify ingress")
    command = [*services.SYNCNOTIFY, "ingress", "--host", "127.0.0.1", "--processes", "1"]
    with run.serve("ingress", command, run.sqlite) as (base, pid), services.MemoryWatch({"ingress": pid}) as memory:
        url = base + PATH
        ingress = load.measure(url, CONNECTIONS, cfg.load_seconds, run.work, generator)
        stored = int(redis.zcard(f"syncnotify:inflight:Default:{load.LOAD_SUBSCRIPTION}"))
        jobs = int(redis.llen("rq:queue:syncnotify"))
        redis.flushall()
        graph_generator = "raw" if generator == "httpx" else generator
        _say(f"ingress: syncnotify ingress, Graph POSTs ({graph_generator})")
        graph_load = load.measure(base + graph.PATH, CONNECTIONS, cfg.load_seconds, run.work, graph_generator, "graph")
        graph_stored = int(redis.zcard(f"syncnotify:inflight:Default:{load.GRAPH_LOAD_SUBSCRIPTION}"))
        redis.flushall()
        _say(f"ingress: syncnotify ingress at a steady {cfg.steady_rate:.0f} posts/s")
        ingress_steady = steady(url, cfg, cfg.seed + 1)
    redis.flushall()

    _versus_bare(run, section, ingress, bare, 0.7)
    add = run.figures.append
    add(
        Figure(
            section,
            "requests/s vs naive receiver",
            number(ingress.rps),
            f"naive {number(naive.rps)} (p50 {naive.p50_ms:.1f} ms, p99 {naive.p99_ms:.1f} ms)",
            ratio(ingress.rps, naive.rps),
        )
    )
    add(
        Figure(
            section,
            "payloads on Redis after the load",
            f"{stored:,} stored",
            f"{ingress.ok:,} answered 200",
            "",
            f"= answered (+ ≤ {CONNECTIONS} in flight at the end)",
            0 <= stored - ingress.ok <= CONNECTIONS and ingress.errors == 0,
        )
    )
    add(
        Figure(
            section,
            "naive receiver: rows in PostgreSQL",
            f"{naive_rows:,} rows",
            f"{naive.ok:,} answered 200",
            "",
            "",
            None,
        )
    )
    add(
        Figure(
            section,
            f"posts per queue job at {CONNECTIONS} connections",
            f"{stored / max(jobs, 1):.1f}",
            f"{jobs:,} jobs",
        )
    )
    add(
        Figure(
            section,
            f"p99 at a steady {cfg.steady_rate:,.0f} posts/s, {cfg.steady_connections} connections",
            f"{ingress_steady.percentile(99) * 1000:.2f} ms",
            f"bare {bare_steady.percentile(99) * 1000:.2f} ms",
            ratio(ingress_steady.percentile(99), bare_steady.percentile(99)),
            "< 5 ms",
            ingress_steady.percentile(99) < 0.005 and ingress_steady.ok,
        )
    )
    add(
        Figure(
            section,
            "  (p50 / achieved rate)",
            f"{ingress_steady.percentile(50) * 1000:.2f} ms / {ingress_steady.rate:,.0f}/s",
            f"bare {bare_steady.percentile(50) * 1000:.2f} ms / {bare_steady.rate:,.0f}/s",
        )
    )
    add(Figure(section, "ingress peak memory (RSS) under load", f"{memory.peak_mib('ingress'):.0f} MiB"))
    _graph_post_figures(run, bare, ingress, graph_load, graph_stored)
    for result in compared:
        add(
            Figure(
                "Load generators against the bare route",
                f"{result.generator}, {CONNECTIONS} connections",
                f"{number(result.rps)} req/s",
                f"p99 {result.p99_ms:.1f} ms",
                ratio(result.rps, compared[0].rps),
            )
        )
    how = (
        "wrk 2 threads, Lua script posting a distinct real-format body per request"
        if generator == "wrk"
        else "own raw asyncio HTTP/1.1 client, 2 processes"
    )
    run.notes.append(
        f"Ingress load generator: **{generator}** ({how}); steady-rate figures come from the simulator's "
        "open-loop pacing (raw client, 2,000 rooms, 5 % duplicates)."
    )
    run.notes.append(
        "Naive receiver: the product's parser + one INSERT per request into PostgreSQL, in the thread pool."
    )


def _versus_bare(run: Run, section: str, measured: load.LoadResult, bare: load.LoadResult, rps_target: float) -> None:
    """Requests/s (at least ``rps_target`` × the bare route's), p50 and p99 (at most 2× the bare route's)."""
    add = run.figures.append
    add(
        Figure(
            section,
            f"requests/s at {CONNECTIONS} connections",
            number(measured.rps),
            f"bare route {number(bare.rps)}",
            ratio(measured.rps, bare.rps),
            f"≥ {rps_target:.2f}× bare",
            measured.rps >= rps_target * bare.rps,
        )
    )
    add(
        Figure(
            section,
            "p50 latency",
            f"{measured.p50_ms:.2f} ms",
            f"bare {bare.p50_ms:.2f} ms",
            ratio(measured.p50_ms, bare.p50_ms),
        )
    )
    add(
        Figure(
            section,
            "p99 latency",
            f"{measured.p99_ms:.2f} ms",
            f"bare {bare.p99_ms:.2f} ms",
            ratio(measured.p99_ms, bare.p99_ms),
            "≤ 2× bare",
            measured.p99_ms <= 2 * bare.p99_ms,
        )
    )


def _graph_post_figures(
    run: Run, bare: load.LoadResult, ews: load.LoadResult, posts: load.LoadResult, stored: int
) -> None:
    """The Graph POST path of the same ingress process, against the same bare route (SPEC §9)."""
    section = "Ingress, one process: Graph POST (1–3 changes)"
    _versus_bare(run, section, posts, bare, 0.8)
    add = run.figures.append
    add(
        Figure(
            section, "requests/s vs EWS POSTs", number(posts.rps), f"EWS {number(ews.rps)}", ratio(posts.rps, ews.rps)
        )
    )
    add(
        Figure(
            section,
            "Graph payloads on Redis after the load",
            f"{stored:,} stored",
            f"{posts.ok:,} answered 202",
            "",
            f"= answered (+ ≤ {CONNECTIONS} in flight at the end)",
            0 <= stored - posts.ok <= CONNECTIONS and posts.errors == 0,
        )
    )


def _row_count(database: str) -> int:
    from sqlalchemy import func, select

    from shared.schema import notifications
    from syncnotify.simulator.verify import engine_for

    engine = engine_for(database)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(notifications)).scalar_one())
    finally:
        engine.dispose()


def worker_section(run: Run) -> None:
    cfg = run.config
    section = "Worker"
    _say(f"worker: planning {cfg.worker_notifications:,} notifications for {cfg.worker_subscriptions:,} rooms")
    work = workload(cfg.worker_notifications, cfg.worker_subscriptions, cfg.seed, Mix())
    graph_work = graph_workload(cfg.worker_notifications, cfg.worker_subscriptions, cfg.seed)
    results: dict[str, DrainResult] = {}
    for label, queue, database, workers, noop, job_size in (
        ("noop-1", work, run.sqlite, 1, True, cfg.job_size),
        ("noop-2", work, run.sqlite, 2, True, cfg.job_size),
        ("sqlite-1", work, run.sqlite, 1, False, cfg.job_size),
        ("graph-sqlite-1", graph_work, run.sqlite, 1, False, cfg.job_size),
        ("sqlite-2", work, run.sqlite, 2, False, cfg.job_size),
        ("postgresql-1", work, run.postgres, 1, False, cfg.job_size),
        ("graph-postgresql-1", graph_work, run.postgres, 1, False, cfg.job_size),
        ("postgresql-2", work, run.postgres, 2, False, cfg.job_size),
        # a backlog of posts that arrived one at a time: a job each
        ("noop-1-single", work, run.sqlite, 1, True, 1),
        ("postgresql-1-single", work, run.postgres, 1, False, 1),
    ):
        _say(f"worker: {label} draining {len(queue.payloads):,} payloads, {job_size} a job")
        results[label] = drain(label, run.redis, database, queue, workers, job_size, run.work, noop=noop)
        _say(f"worker: {label}: {results[label].payloads_per_second:,.0f} payloads/s")
    add = run.figures.append
    noop1, noop2 = results["noop-1"], results["noop-2"]
    add(
        Figure(
            section, "RQ SimpleWorker, no-op jobs, 1 process", f"{number(noop1.payloads_per_second)} notifications/s"
        )
    )
    add(
        Figure(
            section,
            "RQ SimpleWorker, no-op jobs, 2 processes",
            f"{number(noop2.payloads_per_second)} notifications/s",
            "1 process",
            ratio(noop2.payloads_per_second, noop1.payloads_per_second),
        )
    )
    for db, goal in (("sqlite", 3000), ("postgresql", 2000)):
        one, two = results[f"{db}-1"], results[f"{db}-2"]
        name = "SQLite" if db == "sqlite" else "PostgreSQL"
        add(
            Figure(
                section,
                f"{name}, 1 process: notifications/s",
                number(one.payloads_per_second),
                f"no-op {number(noop1.payloads_per_second)}",
                ratio(one.payloads_per_second, noop1.payloads_per_second),
                f"≥ {goal:,}/s",
                one.payloads_per_second >= goal,
            )
        )
        add(Figure(section, f"{name}, 1 process: events (rows)/s", number(one.rows_per_second)))
        add(
            Figure(
                section,
                f"{name}, 2 processes: notifications/s",
                number(two.payloads_per_second),
                f"1 process {number(one.payloads_per_second)}",
                ratio(two.payloads_per_second, one.payloads_per_second),
                "≥ 1.6× one",
                two.payloads_per_second >= 1.6 * one.payloads_per_second,
            )
        )
        add(
            Figure(
                section,
                f"{name}, 2 processes: vs no-op",
                number(two.payloads_per_second),
                f"no-op 2 processes {number(noop2.payloads_per_second)}",
                ratio(two.payloads_per_second, noop2.payloads_per_second),
            )
        )
        add(Figure(section, f"{name}, 2 processes: events (rows)/s", number(two.rows_per_second)))
        checks = [r.verify.summary() for r in (one, two) if r.verify is not None and not r.verify.ok]
        add(
            Figure(
                section,
                f"{name}: rows checked (lost, duplicated, seq, order, failed jobs)",
                "all right" if one.ok and two.ok else "; ".join(checks) or "failed jobs",
                "",
                "",
                "0 discrepancies",
                one.ok and two.ok,
            )
        )
        add(
            Figure(
                section,
                f"{name}: worker peak memory (RSS)",
                f"{' / '.join(f'{m:.0f}' for m in one.peak_mib + two.peak_mib)} MiB",
                "1 process / 2 processes; all processes (PSS) " + f"{one.tree_mib:.0f} / {two.tree_mib:.0f} MiB",
            )
        )
    single, noop_single = results["postgresql-1-single"], results["noop-1-single"]
    add(
        Figure(
            section,
            "PostgreSQL, 1 process, 1 payload a job: notifications/s",
            number(single.payloads_per_second),
            f"no-op, 1 payload a job {number(noop_single.payloads_per_second)}",
            ratio(single.payloads_per_second, noop_single.payloads_per_second),
            "rows checked: 0 discrepancies",
            single.ok,
        )
    )
    run.notes.append(
        f"Worker queue: {len(work.payloads):,} payloads (the {cfg.worker_notifications:,} notifications of "
        f"{cfg.worker_subscriptions:,} rooms + retry duplicates, {work.rows:,} rows) after an untimed warm-up with "
        f"each room's first notification (rooms exist, as in production); {cfg.job_size} payloads a job; "
        "'notifications/s' counts payloads drained (duplicates included), timed from the one Redis transaction "
        "that filled the queue to the last job finished, workers already waiting."
    )
    _graph_worker_figures(run, results, graph_work)


def _graph_worker_figures(run: Run, results: dict[str, DrainResult], work: Workload) -> None:
    """Graph changes stored per second by one process, against EWS notifications in the same run."""
    section = "Worker: Graph changes"
    add = run.figures.append
    for db in ("sqlite", "postgresql"):
        name = "SQLite" if db == "sqlite" else "PostgreSQL"
        ews, changes = results[f"{db}-1"], results[f"graph-{db}-1"]
        add(
            Figure(
                section,
                f"{name}, 1 process: Graph changes (rows)/s",
                number(changes.rows_per_second),
                f"EWS notifications/s {number(ews.payloads_per_second)}",
                ratio(changes.rows_per_second, ews.payloads_per_second),
                "≥ EWS",
                changes.rows_per_second >= ews.payloads_per_second,
            )
        )
        add(
            Figure(
                section,
                f"{name}, 1 process: Graph POSTs (payloads)/s",
                number(changes.payloads_per_second),
                f"EWS events (rows)/s {number(ews.rows_per_second)}",
            )
        )
        check = changes.verify
        add(
            Figure(
                section,
                f"{name}: Graph rows checked (lost, duplicated, seq, order, failed jobs)",
                "all right"
                if changes.ok
                else (check.summary() if check is not None and not check.ok else "failed jobs"),
                "",
                "",
                "0 discrepancies",
                changes.ok,
            )
        )
        add(Figure(section, f"{name}: worker peak memory (RSS)", f"{changes.peak_mib[0]:.0f} MiB"))
    run.notes.append(
        f"Graph worker queue: {len(work.payloads):,} POSTs of 1–3 changes of one room ({work.rows:,} changes, "
        f"{len(work.expected):,} rooms, each change a row) as the ingress queues them (`kind: graph`, the accepted "
        "items re-serialised), after an untimed warm-up with each room's first POST; timed and checked as the EWS "
        "queue is."
    )


def soak_section(run: Run) -> None:
    cfg = run.config
    section = f"Soak: {cfg.soak_notifications:,} notifications, {cfg.soak_subscriptions:,} rooms, 2 worker processes"
    database = run.postgres if cfg.soak_db == "postgresql" else run.sqlite
    services.empty_tables(database)
    run.redis.client().flushall()
    env = run.env(database)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = base + PATH
    ingress_cmd = [*services.SYNCNOTIFY, "ingress", "--host", "127.0.0.1", "--port", str(port), "--processes", "1"]
    worker_cmd = [*services.SYNCNOTIFY, "worker", "--processes", "2"]
    worker_cmd += ["--metrics-port", str(free_port()), "--metrics-host", "127.0.0.1"]
    _say(f"soak: {cfg.soak_notifications:,} notifications through ingress and 2 workers into {cfg.soak_db}")
    with (
        services.running(ingress_cmd, env, run.work / "soak-ingress.log") as ingress,
        services.running(worker_cmd, env, run.work / "soak-workers.log") as workers,
    ):
        services.wait_http(f"http://127.0.0.1:{port}/healthz", ingress)
        with services.MemoryWatch({"ingress": ingress.pid, "workers": workers.pid}) as memory:
            options = SimulateOptions(
                url=url,
                subscriptions=cfg.soak_subscriptions,
                notifications=cfg.soak_notifications,
                connections=cfg.soak_connections,
                duplicates=0.05,
                seed=cfg.seed,
                verify=database,
                drain_timeout=cfg.soak_drain_timeout,
                progress_every=10,
            )
            graph_options = SimulateOptions(
                url=base + graph.PATH,
                graph=True,
                client_state=graph.CLIENT_STATE,
                subscriptions=cfg.soak_subscriptions // 4,
                notifications=cfg.soak_notifications // 4,
                connections=8,
                rate=cfg.soak_graph_rate,
                items_per_post=3,
                duplicates=0.05,
                seed=cfg.seed + 1,
                verify=database,
                drain_timeout=cfg.soak_drain_timeout,
                progress_every=0,
            )
            with ThreadPoolExecutor(1) as pool:  # beside the EWS rooms, on the same ingress and workers
                graph_run = pool.submit(simulate, graph_options, None)
                report = simulate(options, say=lambda text: _say("soak: " + text.strip()))
                graph_report = graph_run.result()
    check = report.verify
    assert check is not None
    add = run.figures.append
    add(
        Figure(
            section,
            "lost / duplicated / seq 1..n in chain order / gaps",
            f"{check.lost} / {check.duplicated} / {'yes' if check.in_order else 'NO'} / {check.gaps}",
            f"{check.stored_rows:,} of {check.expected_rows:,} rows",
            "",
            "0 / 0 / yes / 0",
            report.ok,
        )
    )
    add(
        Figure(
            section,
            "posts sent (notifications + retry duplicates)",
            f"{report.posts:,} in {report.seconds:.1f} s",
            f"{report.rate:,.0f} posts/s",
        )
    )
    add(Figure(section, "time to drain after the last post", f"{check.drain_seconds:.1f} s"))
    total = report.seconds + check.drain_seconds
    add(
        Figure(
            section,
            "end to end (first post → last row)",
            f"{total:.1f} s",
            f"{report.notifications / total:,.0f} notifications/s",
        )
    )
    add(
        Figure(
            section,
            "ingress latency during the burst p50 / p99",
            f"{report.percentile(50) * 1000:.1f} / {report.percentile(99) * 1000:.1f} ms",
        )
    )
    peak = memory.peak_mib("ingress")
    add(Figure(section, "ingress peak memory (RSS)", f"{peak:.0f} MiB", "", "", "< 150 MB", peak * MIB < 150))
    for number_, peak in enumerate(memory.children_peak_mib("workers"), start=1):
        name = f"worker process {number_} peak memory (RSS)"
        add(Figure(section, name, f"{peak:.0f} MiB", "", "", "< 250 MB", peak * MIB < 250))
    add(
        Figure(
            section,
            "syncnotify worker --processes 2, all processes (PSS)",
            f"{memory.tree_peak_mib('workers'):.0f} MiB",
            f"supervisor alone {memory.peak_mib('workers'):.0f} MiB RSS",
        )
    )
    _graph_soak_figures(run, section, graph_report)
    if not report.ok:
        run.notes.append("Soak discrepancies: " + "; ".join(check.problems[:5]))


def _graph_soak_figures(run: Run, section: str, sent: SimulationReport) -> None:
    """The Graph simulation that ran beside the EWS one (``syncnotify simulate --graph``)."""
    check = sent.verify
    assert check is not None
    add = run.figures.append
    add(
        Figure(
            section,
            "Graph: lost / duplicated / seq 1..n in receive order",
            f"{check.lost} / {check.duplicated} / {'yes' if check.in_order else 'NO'}",
            f"{check.stored_rows:,} of {check.expected_rows:,} rows",
            "",
            "0 / 0 / yes",
            sent.ok,
        )
    )
    add(
        Figure(
            section,
            f"Graph POSTs mixed in (changes + retry duplicates), {check.subscriptions:,} rooms",
            f"{sent.posts:,} in {sent.seconds:.1f} s",
            f"{sent.rate:,.0f} POSTs/s, {sent.notifications:,} changes",
        )
    )
    add(
        Figure(
            section,
            "Graph ingress latency p50 / p99",
            f"{sent.percentile(50) * 1000:.1f} / {sent.percentile(99) * 1000:.1f} ms",
        )
    )
    if not sent.ok:
        run.notes.append("Soak Graph discrepancies: " + "; ".join(check.problems[:5]))
    run.notes.append(
        "Soak Graph traffic: `syncnotify simulate --graph` in a thread beside the EWS simulation, on the same "
        f"ingress and workers: {check.subscriptions:,} rooms, {run.config.soak_notifications // 4:,} changes "
        f"(+5 % POSTs posted twice), at most 3 a POST, 8 connections, "
        f"paced to {run.config.soak_graph_rate:,.0f} POSTs/s; "
        "rows verified by the simulator (0 lost, 0 duplicated, seq 1..n in the order the ingress received them)."
    )


SECTIONS = {"ingress": ingress_section, "worker": worker_section, "soak": soak_section}


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (about 3 minutes)")
    parser.add_argument("--write", action="store_true", help=f"record the figures in {RESULTS.name}")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run only this part (repeatable)")
    parser.add_argument("--generator", choices=("auto", "wrk", "raw", "httpx"), default="auto")
    parser.add_argument("--soak-db", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs) and the database")
    args = parser.parse_args(argv)
    config = replace(QUICK if args.quick else FULL, generator=args.generator, soak_db=args.soak_db)
    command = "python -m bench.run " + shlex.join(list(argv if argv is not None else sys.argv[1:]))
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    try:
        work = Path(tempfile.mkdtemp(prefix="syncnotify-bench-"))
        with services.redis_server(work / "redis") as redis, services.postgres_database(keep=args.keep) as postgres:
            sqlite = f"sqlite:///{work / 'bench.db'}"
            services.migrate(sqlite, redis.url, work)
            services.migrate(postgres, redis.url, work)
            run = Run(config, work, redis, postgres, sqlite, [], [])
            about = machine(services.redis_version(redis), services.postgres_version())
            about["load average at start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
            for name in args.only or list(SECTIONS):
                SECTIONS[name](run)
    except KeyboardInterrupt:
        print("bench: interrupted; services stopped and the database dropped", file=sys.stderr)
        return 130
    finally:
        if not args.keep and "work" in locals():
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    about["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    run.notes.append(f"Whole run: {elapsed / 60:.1f} minutes.")
    print(text_table(run.figures))
    print()
    for note in run.notes:
        print(f"- {note}")
    if args.keep:
        print(f"- logs kept in {work}")
    if args.write:
        write_section(RESULTS, config.mode, markdown_section(config.mode, command, about, run.figures, run.notes))
        print(f"wrote the {config.mode} figures to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
