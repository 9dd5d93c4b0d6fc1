"""Real syncnotify processes for end-to-end tests: started as an operator would, stopped with signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from redis import Redis
from rq import Queue, Worker
from sqlalchemy import Engine, func, select

from shared.queues import QUEUE_NAME
from shared.schema import notifications
from syncnotify.redis_server import free_port

SYNCNOTIFY = [sys.executable, "-m", "syncnotify"]


def service_env(redis_url: str, database_url: str, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCNOTIFY_")}
    env.update(
        SYNCNOTIFY_REDIS_URL=redis_url,
        SYNCNOTIFY_DATABASE_URL=database_url,
        SYNCNOTIFY_SPOOL_DIR=str(tmp / "spool"),
        SYNCNOTIFY_GAP_TIMEOUT_SECONDS="3",
        PYTHONPATH=str(Path(__file__).parent.parent),
    )
    env.update(extra)
    return env


def run(args: list[str], env: Mapping[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(SYNCNOTIFY + args, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def spawn(args: list[str], env: Mapping[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start a long-running ``syncnotify`` command, its output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(SYNCNOTIFY + args, env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it does not stop in 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def started(args: list[str], env: Mapping[str, str], cwd: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A long-running ``syncnotify`` command, stopped on exit."""
    process = spawn(args, env, cwd, log)
    try:
        yield process
    finally:
        stop(process)


def wait_for(condition: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def wait_http(url: str, timeout: float = 30) -> None:
    def up() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout, f"{url} to answer")


def queue_drained(redis: Redis) -> bool:
    queue = Queue(QUEUE_NAME, connection=redis)
    # cleanup=False: a test must not do the registry maintenance the workers are being tested on
    return (
        queue.count == 0
        and redis.llen(queue.intermediate_queue_key) == 0  # taken by a worker, not yet started
        and queue.started_job_registry.get_job_count(cleanup=False) == 0
        and queue.scheduled_job_registry.get_job_count(cleanup=False) == 0
    )


def queue_state(redis: Redis) -> str:
    """Where the queue's jobs are, for a test that gave up waiting for it to drain."""
    queue = Queue(QUEUE_NAME, connection=redis)
    scheduled = queue.scheduled_job_registry
    due = [(job_id, scheduled.get_scheduled_time(job_id)) for job_id in scheduled.get_job_ids(cleanup=False)[:5]]
    return (
        f"queued {queue.count}, taken but not started {redis.llen(queue.intermediate_queue_key)}, started "
        f"{queue.started_job_registry.get_job_ids(cleanup=False)[:5]}, scheduled (retries) {due}, "
        f"workers {[w.name for w in Worker.all(queue=queue)]}"
    )


def wait_drained(redis: Redis, timeout: float, what: str) -> None:
    """Wait for the queue to drain; if it does not, say where its jobs are."""
    try:
        wait_for(lambda: queue_drained(redis), timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {queue_state(redis)}") from None


def row_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(notifications)).scalar_one())


def children_of(pid: int) -> list[int]:
    """Direct child process ids of ``pid`` (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def started_jobs(redis: Redis) -> int:
    return int(Queue(QUEUE_NAME, connection=redis).started_job_registry.get_job_count(cleanup=False))


def db_name(database_url: str) -> str:
    """How a figure names the database it was measured on."""
    return "PostgreSQL" if database_url.startswith("postgresql") else "SQLite"


@contextmanager
def service(env: Mapping[str, str], tmp: Path, workers: int = 1, port: int | None = None) -> Iterator[str]:
    """A real ingress (on ``port``, else a free one) and ``workers`` real worker processes on ``env``; yields the
    ingress's base URL."""
    port = port or free_port()
    log = tmp / "services.log"
    with started(["ingress", "--host", "127.0.0.1", "--port", str(port)], env, tmp, log), ExitStack() as stack:
        for _ in range(workers):
            stack.enter_context(started(["worker", "--metrics-port", "0"], env, tmp, log))
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz")
        yield url
