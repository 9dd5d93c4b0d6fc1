"""``syncnotify``: the one command operators run (SPEC §3).

Exit status 0 on success, 1 with one line on stderr on failure, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from shared.errors import SyncNotifyError
from shared.logs import configure_logging
from shared.settings import Settings, get_settings, redact_url

#: How long ``up`` and ``worker`` wait for their children to finish their current work on Ctrl-C.
STOP_GRACE_SECONDS = 30

SOAP_ACTION = '"http://schemas.microsoft.com/exchange/services/2006/messages/SendNotification"'


def _settings() -> Settings:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from shared.db import upgrade
    from shared.schema import make_engine

    settings = _settings()
    engine = make_engine(settings.database)
    upgrade(engine)
    engine.dispose()
    print(f"database {redact_url(settings.database)} is at the latest schema")
    return 0


def cmd_ingress(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings()
    uvicorn.run(
        "ingress.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.processes,
        log_level=settings.log_level.lower(),
        log_config=None,  # keep the logging configured above (text or JSON) for uvicorn's messages too
        access_log=False,
        # Exchange keeps connections open between notifications; idle ones are closed after this.
        timeout_keep_alive=30,
        # Beyond this many open connections new ones get 503 instead of starving the ones in progress.
        limit_concurrency=4096,
        backlog=2048,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    _settings()
    if args.processes <= 1:
        from worker.runner import run_worker

        run_worker(burst=args.burst)
        return 0
    command = [sys.executable, "-m", "worker.cli", "worker", "--processes", "1"] + (["--burst"] if args.burst else [])
    return _supervise([subprocess.Popen(command) for _ in range(args.processes)])


def cmd_up(args: argparse.Namespace) -> int:
    from shared.redis_server import reachable, start_redis

    settings = _settings()
    children: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ)
    if args.embedded_redis or not reachable(settings.redis):
        if "SYNCNOTIFY_REDIS_URL" in os.environ and not args.embedded_redis:
            raise SyncNotifyError(f"Redis at {redact_url(settings.redis)} is not reachable")
        redis_process, url = start_redis(Path(".syncnotify") / "redis")
        children.append(redis_process)
        env["SYNCNOTIFY_REDIS_URL"] = url
        print(f"started an embedded redis-server at {url} (append-only file in .syncnotify/redis)", flush=True)
    migrate = subprocess.run([sys.executable, "-m", "worker.cli", "db", "upgrade"], env=env)
    if migrate.returncode != 0:
        _stop(children)
        return 1
    base = [sys.executable, "-m", "worker.cli"]
    ingress = base + ["ingress", "--host", args.host, "--port", str(args.port)]
    workers = base + ["worker", "--processes", "1"]
    services = [subprocess.Popen(ingress, env=env)] + [subprocess.Popen(workers, env=env) for _ in range(args.workers)]
    print(
        f"syncnotify is up: POST notifications to http://{args.host}:{args.port}/Webservices/SyncNotification.svc "
        f"({args.workers} workers); Ctrl-C stops it",
        flush=True,
    )
    # The embedded Redis stops last, after everything that writes to it.
    return _supervise(services, after=children)


def _supervise(processes: list[subprocess.Popen[bytes]], after: Sequence[subprocess.Popen[bytes]] = ()) -> int:
    """Wait until a child exits or we are told to stop; then stop all of them cleanly."""
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    status = 0
    while not stopping:
        for process in processes:
            if process.poll() is not None:
                print(f"process {process.args!r} exited with {process.returncode}", file=sys.stderr)
                status = 1
                stopping = True
        time.sleep(0.2)
    _stop(processes)
    _stop(list(after))
    return status


def _stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
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


def cmd_send(args: argparse.Namespace) -> int:
    """Post payload files the way Exchange does; print each answer; fail if any is not 200."""
    import httpx

    failures = 0
    headers = {
        "Content-Type": "text/xml; charset=utf-8",
        "SOAPAction": SOAP_ACTION,
        "User-Agent": "ExchangeServicesClient/15.20 (syncnotify send)",
    }
    with httpx.Client(timeout=args.timeout) as client:
        for name in args.files:
            try:
                body = Path(name).read_bytes()
            except OSError as exc:
                raise SyncNotifyError(f"cannot read {name}: {exc.strerror}") from None
            try:
                response = client.post(args.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                raise SyncNotifyError(f"cannot post {name} to {args.url}: {exc}") from None
            status = _subscription_status(response.text) if response.status_code == 200 else response.text.strip()
            print(f"{name}: {response.status_code} {status}")
            failures += response.status_code != 200
    return 1 if failures else 0


def _subscription_status(text: str) -> str:
    start = text.find("SubscriptionStatus>")
    return text[start + len("SubscriptionStatus>") :].split("<", 1)[0] if start >= 0 else text[:80]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncnotify", description="Receiver of Exchange push notifications.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(handler=handler)
        return sub

    up = command("up", cmd_up, "everything on one machine: migrate, ingress, workers (and Redis if none)")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    up.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    up.add_argument(
        "--embedded-redis",
        action="store_true",
        help="start a redis-server of its own (data in .syncnotify/redis) even if a Redis is reachable",
    )

    ingress = command("ingress", cmd_ingress, "the HTTP side alone")
    ingress.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    ingress.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    ingress.add_argument("--processes", type=int, default=1, help="server processes (default 1)")

    worker = command("worker", cmd_worker, "workers alone")
    worker.add_argument("--burst", action="store_true", help="drain the queue, then exit")
    worker.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")

    db = command("db", lambda _args: 2, "database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    db_upgrade = db_commands.add_parser("upgrade", help="create or migrate the schema (Alembic)")
    db_upgrade.set_defaults(handler=cmd_db_upgrade)

    send = command("send", cmd_send, "post payload files the way Exchange does")
    send.add_argument("files", nargs="+", metavar="FILE")
    send.add_argument(
        "--url",
        required=True,
        help="callback URL, e.g. http://127.0.0.1:8080/Webservices/SyncNotification.svc",
    )
    send.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer (default 10)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except SyncNotifyError as exc:
        print(f"syncnotify: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
