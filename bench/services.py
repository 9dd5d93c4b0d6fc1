"""The services a benchmark run owns: its redis-server, its PostgreSQL database, SQLite files, processes.

Everything here is a context manager or is registered with one, so a run that ends in any way (an error,
Ctrl-C, SIGTERM) stops its processes and drops its database.  Child processes run in their own session
(Ctrl-C reaches only the bench, which then stops them in order) and get SIGTERM should the bench die
without cleaning up (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from syncnotify.redis_server import EmbeddedRedis

REPO = Path(__file__).resolve().parent.parent
SYNCNOTIFY = [sys.executable, "-m", "syncnotify"]
PG_ADMIN_URL = os.environ.get("SYNCNOTIFY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def service_env(redis_url: str, database_url: str, spool: Path, **extra: str) -> dict[str, str]:
    """The environment of a syncnotify process: this run's Redis and database, nothing from the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCNOTIFY_")}
    env.update(
        SYNCNOTIFY_REDIS_URL=redis_url,
        SYNCNOTIFY_DATABASE_URL=database_url,
        SYNCNOTIFY_SPOOL_DIR=str(spool),
        SYNCNOTIFY_LOG_LEVEL="WARNING",
        PYTHONPATH=str(REPO),
    )
    env.update(extra)
    return env


def start(command: Sequence[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` with its output appended to ``log``; the caller must ``stop`` it."""
    with log.open("ab") as out:
        return subprocess.Popen(
            list(command),
            env=dict(env),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def stop(process: subprocess.Popen[bytes], grace: float = 30.0) -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds; return the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextmanager
def running(command: Sequence[str], env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = start(command, env, log)
    try:
        yield process
    finally:
        stop(process)


def wait_http(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers 200; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before {url} answered")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout} s")
        time.sleep(0.1)


@contextmanager
def redis_server(directory: Path) -> Iterator[EmbeddedRedis]:
    """This run's redis-server: append-only file with ``appendfsync everysec``, as in production."""
    server = EmbeddedRedis(directory, appendfsync="everysec")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def redis_version(server: EmbeddedRedis) -> str:
    return str(server.client().info("server")["redis_version"])


@contextmanager
def postgres_database(admin_url: str = PG_ADMIN_URL, keep: bool = False) -> Iterator[str]:
    """A fresh database on the admin URL's server, dropped afterwards unless ``keep``; yields its URL."""
    name = f"syncnotify_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        if keep:
            print(f"kept the database {base}/{name}", file=sys.stderr)
        else:
            with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_version(admin_url: str = PG_ADMIN_URL) -> str:
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        row = admin.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def migrate(database_url: str, redis_url: str, work: Path) -> None:
    """``syncnotify db upgrade``, as an operator runs it."""
    env = service_env(redis_url, database_url, work / "spool")
    done = subprocess.run(SYNCNOTIFY + ["db", "upgrade"], env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"db upgrade failed: {done.stderr.strip()}")


def empty_tables(database_url: str) -> None:
    """Remove every row the product wrote (between measurements on one database)."""
    from sqlalchemy import text

    from syncnotify.simulator.verify import engine_for

    engine = engine_for(database_url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("TRUNCATE notifications, subscriptions, chain_links RESTART IDENTITY"))
            else:
                for table in ("notifications", "subscriptions", "chain_links"):
                    conn.execute(text(f"DELETE FROM {table}"))
    finally:
        engine.dispose()


def process_tree(pid: int) -> list[tuple[int, int]]:
    """``(pid, parent pid)`` of ``pid`` (parent 0) and all its descendants (``/proc/<pid>/task/*/children``)."""
    found = [(pid, 0)]
    for current, _ in found:
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as f:
                    found.extend((int(child), current) for child in f.read().split())
            except OSError:
                continue
    return found


def status_kib(pid: int, field_name: str, table: str = "status") -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) or of another table such as
    ``smaps_rollup`` (``Pss``); 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/{table}") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class MemoryWatch:
    """Samples the memory of process trees every ``interval`` seconds, in a thread.

    ``pids`` names the roots; their descendants are found again at every sample, so children started later
    (a supervisor's workers, RQ's forked scheduler) are watched too.  Per process, the peak is the largest of
    its sampled ``VmRSS`` and its ``VmHWM`` (the kernel's high-water mark, so a peak between samples counts).
    For a whole tree, RSS would count the pages a forked child shares with its parent twice, so the tree's
    peak is the largest sampled sum of ``Pss`` (each shared page divided among its sharers).
    """

    pids: dict[str, int]
    interval: float = 0.25
    _process: dict[tuple[str, int], int] = field(default_factory=dict)
    _parent: dict[tuple[str, int], int] = field(default_factory=dict)
    _tree: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        for name, root in self.pids.items():
            total = 0
            for pid, parent in process_tree(root):
                rss, hwm = status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")
                if rss or hwm:
                    key = (name, pid)
                    self._process[key] = max(self._process.get(key, 0), rss, hwm)
                    self._parent[key] = parent
                    total += status_kib(pid, "Pss", "smaps_rollup")
            self._tree[name] = max(self._tree.get(name, 0), total)

    def __enter__(self) -> MemoryWatch:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def peak_mib(self, name: str) -> float:
        """Peak RSS of the root process of tree ``name``."""
        return self._process.get((name, self.pids[name]), 0) / 1024

    def children_peak_mib(self, name: str) -> list[float]:
        """Peak RSS of each direct child of the root of tree ``name`` (a supervisor's workers), by pid."""
        root = self.pids[name]
        return [
            kib / 1024 for key, kib in sorted(self._process.items()) if key[0] == name and self._parent[key] == root
        ]

    def tree_peak_mib(self, name: str) -> float:
        """Peak of the summed PSS of tree ``name``: what the whole tree really held, children included."""
        return self._tree.get(name, 0) / 1024
