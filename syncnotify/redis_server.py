"""An embedded ``redis-server``: for ``syncnotify up`` where no Redis is configured, and for tests and the bench."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
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
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedRedis:
    """A ``redis-server`` on 127.0.0.1 with its files in ``directory``; ``restart()`` keeps its append-only file."""

    directory: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = True
    #: ``always`` (tests: nothing acknowledged is lost to a kill), ``everysec`` (production's choice) or ``no``
    appendfsync: str = "everysec"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it and wait until it answers; ``SyncNotifyError`` if there is no redis-server or it won't start."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise SyncNotifyError(
                "no Redis at SYNCNOTIFY_REDIS_URL and no redis-server on PATH: install one "
                "(apt-get install redis-server) or set SYNCNOTIFY_REDIS_URL"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory.resolve())]
        command += ["--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.appendfsync]
        command += ["--logfile", "redis.log"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not reachable(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise SyncNotifyError(f"redis-server did not start (see {self.directory / 'redis.log'})")
            time.sleep(0.02)

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (Redis flushes its append-only file) or, with ``kill``, SIGKILL; then wait for it."""
        if self.process is not None and self.process.poll() is None:
            (self.process.kill if kill else self.process.terminate)()
            self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> Redis:
        return Redis.from_url(self.url)
