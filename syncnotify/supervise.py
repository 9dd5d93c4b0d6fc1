"""The process supervisor behind ``syncnotify up`` and ``syncnotify worker --processes N``: keep children
running, restart one that dies, and on SIGINT / SIGTERM stop them all, giving each time to finish its work."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

#: How long the children get to finish their current work once told to stop; then they are killed.
STOP_GRACE_SECONDS = 30

#: A child that dies is started again after this pause (crash loops are slowed, not stopped).
RESTART_DELAY_SECONDS = 1.0


@dataclass
class Child:
    """A process kept running: started at once, and again with the same command if it dies."""

    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, env=self.env)

    @property
    def name(self) -> str:
        """The command without ``python -m syncnotify``: ``'worker --child'``."""
        return " ".join(self.command[3:] if self.command[1:3] == ["-m", "syncnotify"] else self.command)


def supervise(children: list[Child], after: Sequence[subprocess.Popen[bytes]] = ()) -> int:
    """Keep the children running until SIGINT or SIGTERM; then stop them, and then the ``after`` processes
    (what the children need to the end, such as an embedded Redis). Returns the exit status, 0."""
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stopping:
        for child in children:
            if child.process.poll() is not None and not stopping:
                code = child.process.returncode
                sys.stderr.write(f"syncnotify: {child.name} exited with {code}; starting it again\n")
                time.sleep(RESTART_DELAY_SECONDS)
                child.start()
        time.sleep(0.2)
    stop([child.process for child in children])
    stop(list(after))
    return 0


def stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to all at once, then wait for each; kill those still running after ``STOP_GRACE_SECONDS``."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
