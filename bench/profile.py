"""Where the time goes: ``python -m bench.profile ingress|worker`` (needs ``py-spy``: ``pip install py-spy``).

- ``ingress``: the ingress and the bare route under the same ``wrk`` load (64 connections), each sampled by
  ``py-spy record --gil`` (only the thread holding the GIL: where the one core's CPU goes).  Prints, for
  each, the functions with the most samples on the stack (inclusive) and at its top (self).
- ``worker``: one ``syncnotify worker --burst`` draining a full queue (the bench's workload), once under
  ``cProfile`` (deterministic; per-call costs) and once under ``py-spy record --idle`` (wall clock,
  waiting on the database included).  Prints the top functions and the cost per notification.

Profilers slow what they watch; compare shares within one profile, not these timings with ``make bench``.
"""

from __future__ import annotations

import argparse
import io
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from bench import load, services
from bench.workers import _push, drained, workload
from shared.queues import STORE_JOB
from syncnotify.redis_server import free_port
from syncnotify.simulator.mailboxes import Mix

PATH = "/Webservices/SyncNotification.svc"


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return found


def collapsed_summary(path: Path, top: int = 25, focus: str = "") -> str:
    """Top functions of a py-spy ``--format raw`` (collapsed stacks) file: inclusive and self shares.

    With ``focus``, only stacks with a frame containing it count (e.g. the worker's main thread, not its
    idle helper threads).
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        if focus and focus not in stack:
            continue
        frames = [_short(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples", "", "inclusive (on the stack):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", "self (at the top of the stack):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` → ``func (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"


def profile_ingress(work: Path, seconds: int) -> str:
    out = []
    with services.redis_server(work / "redis") as redis:
        env = services.service_env(redis.url, f"sqlite:///{work / 'p.db'}", work / "spool")
        targets = {
            "ingress": [*services.SYNCNOTIFY, "ingress", "--host", "127.0.0.1"],
            "bare": [sys.executable, "-m", "bench.baselines", "bare", "--host", "127.0.0.1"],
        }
        for name, command in targets.items():
            redis.client().flushall()
            port = free_port()
            raw = work / f"{name}.collapsed"
            with services.running([*command, "--port", str(port)], env, work / f"{name}.log") as process:
                services.wait_http(f"http://127.0.0.1:{port}/healthz", process)
                spy = _attach(process.pid, raw, "--gil", duration=seconds)
                result = load.measure(f"http://127.0.0.1:{port}{PATH}", 64, seconds, work, "auto")
                spy.wait(60)
            out.append(f"=== {name}: {result.rps:,.0f} req/s under the profiler, p99 {result.p99_ms:.1f} ms")
            out.append(collapsed_summary(raw) if raw.exists() else "(no profile written)")
            out.append("")
    return "\n".join(out)


def profile_worker(work: Path, database: str, notifications: int, job_size: int) -> str:
    load_ = workload(notifications, 2000, 11, Mix())
    out = [
        f"workload: {len(load_.payloads):,} payloads ({load_.rows:,} rows), {job_size} payloads a job, "
        f"after {len(load_.warmup):,} first notifications (untimed)"
    ]
    with services.redis_server(work / "redis") as redis:
        sqlite: AbstractContextManager[str] = nullcontext(f"sqlite:///{work / 'profile.db'}")
        with services.postgres_database() if database == "postgresql" else sqlite as url:
            services.migrate(url, redis.url, work)
            env = services.service_env(redis.url, url, work / "spool")
            for how in ("cprofile", "py-spy"):
                services.empty_tables(url)
                client = redis.client()
                client.flushall()
                _push(client, load_.warmup, job_size, STORE_JOB)  # the rooms' first links, not profiled
                burst = [*services.SYNCNOTIFY, "worker", "--child", "--burst"]
                with services.running(burst, env, work / "warmup.log") as process:
                    process.wait(600)
                _push(client, load_.payloads, job_size, STORE_JOB)
                output = work / f"worker.{how}"
                # ``--child`` is the worker process itself (``syncnotify worker`` supervises such children)
                command = [*services.SYNCNOTIFY, "worker", "--child", "--burst"]
                if how == "cprofile":
                    command = [sys.executable, "-m", "cProfile", "-o", str(output), "-m", "syncnotify", *command[3:]]
                started = time.perf_counter()
                with services.running(command, env, work / f"worker-{how}.log") as process:
                    spy = _attach(process.pid, output, "--idle") if how == "py-spy" else None
                    process.wait(1200)
                    if spy is not None:
                        spy.wait(60)
                seconds = time.perf_counter() - started
                if not drained(client):
                    raise RuntimeError(f"the worker did not drain the queue (see {work})")
                per = seconds / len(load_.payloads) * 1e6
                out.append(f"=== {how}: {seconds:.1f} s wall for the burst ({per:,.0f} µs per notification)")
                if how == "cprofile":
                    out.append(_pstats_summary(output, len(load_.payloads)))
                else:
                    out.append("main thread only (the RQ work loop), idle included:")
                    out.append(collapsed_summary(output, focus="run_worker"))
                out.append("")
    return "\n".join(out)


def _attach(pid: int, output: Path, mode: str, duration: int | None = None) -> subprocess.Popen[bytes]:
    """``py-spy record`` attached to ``pid`` (until it exits, or for ``duration`` seconds)."""
    command = [_py_spy(), "record", "--pid", str(pid), mode, "--rate", "250", "--format", "raw", "-o", str(output)]
    if duration is not None:
        command += ["--duration", str(duration)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _pstats_summary(path: Path, notifications: int, top: int = 30) -> str:
    text = io.StringIO()
    stats = pstats.Stats(str(path), stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    keys = {
        "store_payloads (the job)": "store_payloads",
        "parse_payload": "parse_payload",
        "store (SQL)": "store",
        "_in_flight (Redis)": "_in_flight",
        "_release (Redis)": "_release",
        "perform_job (RQ)": "perform_job",
        "execute_job (RQ)": "execute_job",
    }
    raw = stats.stats  # type: ignore[attr-defined]
    lines = [f"per notification ({notifications:,}):"]
    for label, function in keys.items():
        found = [value for key, value in raw.items() if key[2] == function]
        if found:
            cumulative = max(value[3] for value in found)
            lines.append(f"  {label:28s} {cumulative / notifications * 1e6:8.0f} µs  ({cumulative:.2f} s)")
    return "\n".join(lines) + "\n" + text.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("what", choices=("ingress", "worker"))
    parser.add_argument("--seconds", type=int, default=15, help="ingress: seconds of load per target")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite", help="worker: database")
    parser.add_argument("--notifications", type=int, default=10_000, help="worker: notifications on the queue")
    parser.add_argument("--job-size", type=int, default=20, help="worker: payloads a job")
    parser.add_argument("--out", type=Path, help="keep the raw profiles in this folder")
    args = parser.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="syncnotify-profile-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.what == "ingress":
            print(profile_ingress(work, args.seconds))
        else:
            print(profile_worker(work, args.db, args.notifications, args.job_size))
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
