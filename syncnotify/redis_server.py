"""An embedded ``redis-server`` for ``syncnotify up`` on a machine where no Redis is configured."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from shared.errors import SyncNotifyError


def reachable(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except (RedisError, OSError):
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(
    data_dir: Path, port: int | None = None, appendfsync: str = "everysec"
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``redis-server`` with an append-only file in ``data_dir``; return the process and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SyncNotifyError(
            "no Redis at SYNCNOTIFY_REDIS_URL and no redis-server on PATH: install one "
            "(apt-get install redis-server) or set SYNCNOTIFY_REDIS_URL"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            appendfsync,
            "--save",
            "",
            "--logfile",
            "redis.log",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not reachable(url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SyncNotifyError(f"redis-server did not start (see {data_dir / 'redis.log'})")
        time.sleep(0.05)
    return process, url
