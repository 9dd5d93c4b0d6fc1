"""The long-running commands: ``up``, ``ingress``, ``worker``, ``admin``, and ``db upgrade`` before them."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import SyncNotifyError
from shared.settings import redact_url
from syncnotify.cli.helpers import add_command, redis_client, settings
from syncnotify.supervise import Child, stop, supervise

if TYPE_CHECKING:
    from shared.settings import Settings
    from syncnotify.cli.helpers import Subparsers

#: Where ``worker`` serves its processes' summed metrics unless told otherwise (``up``: its port + 2).
DEFAULT_METRICS_PORT = 9101


def cmd_db_upgrade(_args: argparse.Namespace) -> int:
    from migrations import upgrade
    from shared.schema import make_engine

    configured = settings()
    engine = make_engine(configured.database)
    upgrade(engine)
    engine.dispose()
    print(f"database {redact_url(configured.database)} is at the latest schema")
    return 0


def cmd_ingress(args: argparse.Namespace) -> int:
    from ingress.server import serve

    configured = settings()
    serve(args.host, args.port, args.processes, configured.log_level.lower())
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Start ``--processes`` worker processes and serve their summed metrics; or, as ``--child``, be one."""
    configured = settings()
    if args.child:
        from worker.runner import run_worker

        if not args.burst:
            _start_graph_upkeep(configured)
        run_worker(burst=args.burst)
        return 0
    metrics_dir = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="syncnotify-metrics-"))
    for stale in metrics_dir.glob("*.db"):  # counters of an earlier run would be summed in
        stale.unlink()
    if args.metrics_port:  # first: with the port taken, no worker should start
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # before prometheus_client is imported
        from shared.schema import make_engine
        from syncnotify import metrics

        redis, engine = redis_client(configured), make_engine(configured.database)
        try:
            metrics.serve(args.metrics_port, args.metrics_host, redis, engine)
        except OSError as exc:
            raise _metrics_port_error(args.metrics_host, args.metrics_port, exc) from None
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    command = [sys.executable, "-m", "syncnotify", "worker", "--child"] + (["--burst"] if args.burst else [])
    children = [Child(command, env) for _ in range(args.processes)]
    if args.burst:
        codes = [child.process.wait() for child in children]
        return 0 if all(code == 0 for code in codes) else 1
    return supervise(children)


def _start_graph_upkeep(configured: Settings) -> None:
    """The thread that keeps the rooms' Graph subscriptions alive, beside the worker (SPEC §10)."""
    from shared.schema import make_engine
    from syncnotify.graph.manager import Clients
    from syncnotify.graph.upkeep import Upkeep

    engine, redis = make_engine(configured.database), redis_client(configured)
    Upkeep(engine, redis, Clients(configured), configured.graph_upkeep_seconds).start()


def _metrics_port_error(host: str, port: int, exc: OSError) -> SyncNotifyError:
    if exc.errno == errno.EADDRINUSE:
        return SyncNotifyError(
            f"metrics port {port} is in use (another syncnotify worker?): "
            "choose another with --metrics-port, or 0 to serve none"
        )
    return SyncNotifyError(f"cannot serve worker metrics on {host}:{port}: {exc.strerror or exc}")


def _refuse_taken_ports(host: str, ports: dict[int, str]) -> None:
    """Fail before starting anything if a port ``up`` needs is taken: its service would crash-loop."""
    for port, what in ports.items():
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no user
            try:
                sock.bind((host if what == "HTTP" else "127.0.0.1", port))
            except OSError as exc:
                raise SyncNotifyError(
                    f"port {port} ({what}) is in use (another syncnotify up?): choose another base with --port"
                    if exc.errno == errno.EADDRINUSE
                    else f"cannot listen on port {port} ({what}): {exc.strerror or exc}"
                ) from None


def cmd_up(args: argparse.Namespace) -> int:
    from syncnotify.redis_server import EmbeddedRedis, reachable

    configured = settings()
    _refuse_taken_ports(args.host, {args.port: "HTTP", args.port + 1: "status page", args.port + 2: "worker metrics"})
    embedded: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ)
    if args.embedded_redis or not reachable(configured.redis):
        if "SYNCNOTIFY_REDIS_URL" in os.environ and not args.embedded_redis:
            raise SyncNotifyError(f"Redis at {redact_url(configured.redis)} is not reachable")
        redis_server = EmbeddedRedis(Path(".syncnotify") / "redis")
        redis_server.start()
        assert redis_server.process is not None
        embedded.append(redis_server.process)
        env["SYNCNOTIFY_REDIS_URL"] = redis_server.url
        where = f"{redis_server.url} (append-only file in .syncnotify/redis)"
        print(f"started an embedded redis-server at {where}", flush=True)
    migrate = subprocess.run([sys.executable, "-m", "syncnotify", "db", "upgrade"], env=env)
    if migrate.returncode != 0:
        stop(embedded)
        return 1
    base = [sys.executable, "-m", "syncnotify"]
    ingress = base + ["ingress", "--host", args.host, "--port", str(args.port)]
    workers = base + ["worker", "--processes", str(args.workers), "--metrics-port", str(args.port + 2)]
    admin = base + ["admin", "--host", "127.0.0.1", "--port", str(args.port + 1)]
    services = [Child(command, env) for command in (ingress, workers, admin)]
    print(
        f"syncnotify is up: POST notifications to http://{args.host}:{args.port}/Webservices/SyncNotification.svc "
        f"({args.workers} workers); status page http://127.0.0.1:{args.port + 1}/, worker metrics "
        f"http://127.0.0.1:{args.port + 2}/metrics; Ctrl-C stops it",
        flush=True,
    )
    # The embedded Redis stops last, after everything that writes to it.
    return supervise(services, after=embedded)


def cmd_admin(args: argparse.Namespace) -> int:
    import uvicorn

    configured = settings()
    uvicorn.run(
        "syncnotify.admin.app:create_admin_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=configured.log_level.lower(),
        log_config=None,
        access_log=False,
        server_header=False,
    )
    return 0


def add_parsers(subparsers: Subparsers) -> None:
    text = "everything on one machine: migrate, ingress, workers (and Redis if none)"
    up = add_command(subparsers, "up", cmd_up, text)
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8080, help="HTTP port; the status page gets +1, metrics +2 (8080)")
    up.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    up.add_argument(
        "--embedded-redis",
        action="store_true",
        help="start a redis-server of its own (data in .syncnotify/redis) even if a Redis is reachable",
    )

    ingress = add_command(subparsers, "ingress", cmd_ingress, "the HTTP side alone")
    ingress.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    ingress.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    ingress.add_argument("--processes", type=int, default=1, help="server processes (default 1)")

    text = "the operators' side: status page, metrics (keep it off the internet)"
    admin = add_command(subparsers, "admin", cmd_admin, text)
    admin.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    admin.add_argument("--port", type=int, default=8081, help="HTTP port (default 8081)")

    worker = add_command(subparsers, "worker", cmd_worker, "workers alone")
    worker.add_argument("--burst", action="store_true", help="drain the queue, then exit")
    worker.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help=f"serve all processes' metrics here (default {DEFAULT_METRICS_PORT}; 0: off; taken: exit 1)",
    )
    worker.add_argument("--metrics-host", default="0.0.0.0", help="address for the metrics (default 0.0.0.0)")
    worker.add_argument("--child", action="store_true", help=argparse.SUPPRESS)

    db = add_command(subparsers, "db", None, "database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    add_command(db_commands, "upgrade", cmd_db_upgrade, "create or migrate the schema (Alembic)")
