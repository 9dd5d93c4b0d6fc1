"""``syncnotify``: the one command operators run (SPEC §3).

Exit status 0 on success, 1 with one line on stderr on failure, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import SyncNotifyError
from shared.logs import configure_logging
from shared.settings import Settings, get_settings, redact_url
from syncnotify.simulator.fleet import add_arguments as add_simulate_arguments

if TYPE_CHECKING:
    from redis import Redis

#: How long ``up`` and ``worker`` wait for their children to finish their current work on Ctrl-C.
STOP_GRACE_SECONDS = 30

SOAP_ACTION = '"http://schemas.microsoft.com/exchange/services/2006/messages/SendNotification"'


class UsageError(SyncNotifyError):
    """The command line asks for something that cannot be done as asked (exit status 2)."""


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
    from ingress.server import serve

    settings = _settings()
    serve(args.host, args.port, args.processes, settings.log_level.lower())
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Start ``--processes`` worker processes and serve their summed metrics; or, as ``--child``, be one."""
    settings = _settings()
    if args.child:
        from worker.runner import run_worker

        run_worker(burst=args.burst)
        return 0
    metrics_dir = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="syncnotify-metrics-"))
    for stale in metrics_dir.glob("*.db"):  # counters of an earlier run would be summed in
        stale.unlink()
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    command = [sys.executable, "-m", "syncnotify", "worker", "--child"] + (["--burst"] if args.burst else [])
    children = [Child(command, env) for _ in range(args.processes)]
    if args.metrics_port:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # before prometheus_client is imported
        from shared.schema import make_engine
        from syncnotify import metrics

        metrics.serve(args.metrics_port, args.metrics_host, _redis(settings), make_engine(settings.database))
    if args.burst:
        codes = [child.process.wait() for child in children]
        return 0 if all(code == 0 for code in codes) else 1
    return _supervise(children)


def cmd_up(args: argparse.Namespace) -> int:
    from syncnotify.redis_server import reachable, start_redis

    settings = _settings()
    embedded: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ)
    if args.embedded_redis or not reachable(settings.redis):
        if "SYNCNOTIFY_REDIS_URL" in os.environ and not args.embedded_redis:
            raise SyncNotifyError(f"Redis at {redact_url(settings.redis)} is not reachable")
        redis_process, url = start_redis(Path(".syncnotify") / "redis")
        embedded.append(redis_process)
        env["SYNCNOTIFY_REDIS_URL"] = url
        print(f"started an embedded redis-server at {url} (append-only file in .syncnotify/redis)", flush=True)
    migrate = subprocess.run([sys.executable, "-m", "syncnotify", "db", "upgrade"], env=env)
    if migrate.returncode != 0:
        _stop(embedded)
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
    return _supervise(services, after=embedded)


#: A child that dies is started again after this pause (crash loops are slowed, not stopped).
RESTART_DELAY_SECONDS = 1.0


@dataclass
class Child:
    """A process ``up`` or ``worker`` keeps running: started again with the same command if it dies."""

    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, env=self.env)


def _supervise(children: list[Child], after: Sequence[subprocess.Popen[bytes]] = ()) -> int:
    """Keep the children running (one that dies is started again) until told to stop; then stop them all."""
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stopping:
        for child in children:
            if child.process.poll() is not None and not stopping:
                code = child.process.returncode
                print(f"{' '.join(child.command[2:])} exited with {code}; starting it again", file=sys.stderr)
                time.sleep(RESTART_DELAY_SECONDS)
                child.start()
        time.sleep(0.2)
    _stop([child.process for child in children])
    _stop(list(after))
    return 0


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


def cmd_admin(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings()
    uvicorn.run(
        "syncnotify.admin.app:create_admin_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=False,
        server_header=False,
    )
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from syncnotify.simulator.fleet import run

    return run(args)


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


def _redis(settings: Settings) -> Redis:
    from redis import Redis

    return Redis.from_url(settings.redis, socket_connect_timeout=5, socket_timeout=30)


def _print_json(document: object) -> None:
    json.dump(document, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _ago(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "never"
    seconds = int((now - at).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def cmd_status(args: argparse.Namespace) -> int:
    from shared.schema import make_engine
    from syncnotify.status import collect

    settings = _settings()
    status = collect(make_engine(settings.database), _redis(settings), settings.spool_dir)
    if args.json:
        _print_json(status.as_json())
        return 0
    oldest = "-" if status.oldest_queued_seconds is None else f"{status.oldest_queued_seconds:.1f} s"
    dead = ", ".join(f"{k} {v}" for k, v in sorted(status.dead_letter.items())) or "none"
    states = ", ".join(f"{k} {v}" for k, v in sorted(status.subscriptions_by_state.items())) or "none"
    print(
        f"queue depth        {status.queue_depth} jobs (oldest payload {oldest}), {status.scheduled_retries} retrying"
    )
    print(f"workers alive      {status.workers}")
    print(f"dead-letter queue  {sum(status.dead_letter.values())} ({dead})")
    print(f"spool backlog      {status.spool_backlog} payloads in {settings.spool_dir}")
    print(f"subscriptions      {states}; {status.gaps} gaps, {status.waiting_links} notifications waiting")
    return 0


def cmd_subscriptions_list(args: argparse.Namespace) -> int:
    from shared.schema import make_engine
    from syncnotify.status import list_subscriptions

    settings = _settings()
    subs = list_subscriptions(make_engine(settings.database), tenant=args.tenant, state=args.state)
    if args.json:
        _print_json([s.as_json() for s in subs])
        return 0
    now = datetime.now(UTC)
    rows = [
        [
            s.tenant,
            s.subscription_id,
            s.state + (f" ({s.error_code})" if s.error_code else ""),
            _ago(s.last_seen_at, now),
            str(s.last_seq),
            str(s.gap_count),
            str(s.waiting),
        ]
        for s in subs
    ]
    _table(rows, ["TENANT", "SUBSCRIPTION", "STATE", "LAST SEEN", "SEQ", "GAPS", "WAITING"])
    return 0


def cmd_subscriptions_unsubscribe(args: argparse.Namespace) -> int:
    from shared.schema import make_engine
    from syncnotify.status import unsubscribe

    settings = _settings()
    unsubscribe(make_engine(settings.database), _redis(settings), args.ids, tenant=args.tenant)
    print(f"the ingress answers Unsubscribe for {len(args.ids)} subscription(s) from now on")
    return 0


def _dlq_filter(args: argparse.Namespace) -> Any:
    from syncnotify.dlq import Filter

    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise SyncNotifyError(f"--since {args.since!r} is not an ISO date or time") from None
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
    return Filter(tenant=args.tenant, error_class=args.error, since=since)


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from syncnotify import dlq

    settings = _settings()
    entries = dlq.entries(_redis(settings), _dlq_filter(args))
    if args.json:  # streamed, so that 100,000 entries never sit in memory at once
        sys.stdout.write("[")
        for i, entry in enumerate(entries):
            sys.stdout.write(("," if i else "") + "\n  " + json.dumps(entry.as_json()))
        sys.stdout.write("\n]\n")
        return 0
    count = 0
    header = ["ID", "TENANT", "RECEIVED", "ERROR CLASS", "ATTEMPTS", "MESSAGE"]
    print("  ".join(header))
    for entry in entries:
        count += 1
        received = entry.received_at.isoformat(timespec="seconds")
        print(f"{entry.id}  {entry.tenant}  {received}  {entry.error_class}  {entry.attempts}  {entry.message}")
    print(f"{count} dead-lettered payload(s)", file=sys.stderr)
    return 0


def cmd_dlq_show(args: argparse.Namespace) -> int:
    from shared import store_job
    from syncnotify import dlq

    settings = _settings()
    try:
        job = dlq.fetch(_redis(settings), args.id)
    except LookupError as exc:
        raise SyncNotifyError(str(exc)) from None
    entry, body = dlq.entry_of(job), store_job.payload_of(job)["body"]
    if args.json:
        _print_json({**entry.as_json(), "body_base64": base64.b64encode(body).decode()})
        return 0
    for name, value in entry.as_json().items():  # the details on stderr, so stdout is the payload alone
        print(f"{name}: {value}", file=sys.stderr)
    sys.stdout.flush()
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()
    return 0


def _selection(args: argparse.Namespace, redis: Redis) -> Any:
    from syncnotify import dlq

    if not args.ids and not args.all:
        raise UsageError("name entry IDs or --all")
    return dlq.matching(redis, args.ids or None, _dlq_filter(args))


class _Progress:
    """One line on stderr, rewritten at most once a second, for long runs."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.started = self.shown = time.monotonic()

    def __call__(self, outcome: Any) -> None:
        now = time.monotonic()
        if now - self.shown >= 1:
            self.shown = now
            rate = outcome.replayed / max(now - self.started, 1e-9)
            print(
                f"{self.verb}: {outcome.replayed} replayed ({rate:.0f}/s), {outcome.stored} stored, "
                f"{outcome.failed_again} failed again",
                file=sys.stderr,
                flush=True,
            )


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from syncnotify import dlq

    settings = _settings()
    redis = _redis(settings)
    progress = _Progress("replay")
    outcome, ids = dlq.replay(
        redis, _selection(args, redis), settings.job_retries, rate=args.rate, dry_run=args.dry_run, progress=progress
    )
    if not args.dry_run and args.wait:
        dlq.await_outcome(redis, ids, outcome, args.timeout, progress=progress)
    if args.json:
        _print_json({"dry_run": args.dry_run, **outcome.as_json()})
    elif args.dry_run:
        print(f"would replay {outcome.replayed} entr{'y' if outcome.replayed == 1 else 'ies'}; nothing changed")
    else:
        print(
            f"replayed {outcome.replayed}, skipped {outcome.skipped}, stored {outcome.stored}, "
            f"failed again {outcome.failed_again}, still pending {outcome.pending}"
        )
    if outcome.failed_again or outcome.pending:
        print(
            f"syncnotify: {outcome.failed_again} failed again, {outcome.pending} not done yet (see dlq list)",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_dlq_purge(args: argparse.Namespace) -> int:
    from syncnotify import dlq

    if not args.yes and not args.dry_run:
        raise UsageError("purge deletes payloads for good: add --yes (or --dry-run to see what it would delete)")
    settings = _settings()
    redis = _redis(settings)
    outcome = dlq.purge(redis, _selection(args, redis), dry_run=args.dry_run)
    if args.json:
        _print_json({"dry_run": args.dry_run, **outcome.as_json()})
    elif args.dry_run:
        print(f"would purge {outcome.purged} entr{'y' if outcome.purged == 1 else 'ies'}; nothing changed")
    else:
        print(f"purged {outcome.purged}")
    return 0


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

    admin = command("admin", cmd_admin, "the operators' side: status page, metrics (keep it off the internet)")
    admin.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    admin.add_argument("--port", type=int, default=8081, help="HTTP port (default 8081)")

    worker = command("worker", cmd_worker, "workers alone")
    worker.add_argument("--burst", action="store_true", help="drain the queue, then exit")
    worker.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    worker.add_argument(
        "--metrics-port", type=int, default=9101, help="serve all processes' metrics here (default 9101; 0: off)"
    )
    worker.add_argument("--metrics-host", default="0.0.0.0", help="address for the metrics (default 0.0.0.0)")
    worker.add_argument("--child", action="store_true", help=argparse.SUPPRESS)

    db = command("db", lambda _args: 2, "database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    db_upgrade = db_commands.add_parser("upgrade", help="create or migrate the schema (Alembic)")
    db_upgrade.set_defaults(handler=cmd_db_upgrade)

    status = command("status", cmd_status, "queue, workers, dead-letter queue, spool and subscriptions at a glance")
    status.add_argument("--json", action="store_true", help="one JSON document on stdout")

    subs = command("subscriptions", lambda _args: 2, "subscriptions by state; unsubscribe")
    subs_commands = subs.add_subparsers(dest="subs_command", required=True, metavar="COMMAND")
    subs_list = subs_commands.add_parser("list", help="subscriptions with state, last seen, gaps (stale first)")
    subs_list.add_argument("--tenant")
    subs_list.add_argument(
        "--state", choices=["active", "stale", "needs_resync", "error", "unsubscribed"], help="only this state"
    )
    subs_list.add_argument("--json", action="store_true", help="one JSON document on stdout")
    subs_list.set_defaults(handler=cmd_subscriptions_list)
    subs_unsub = subs_commands.add_parser("unsubscribe", help="make the ingress answer Unsubscribe for these")
    subs_unsub.add_argument("ids", nargs="+", metavar="ID")
    subs_unsub.add_argument("--tenant", default="Default", help="tenant of ids never seen yet (default Default)")
    subs_unsub.set_defaults(handler=cmd_subscriptions_unsubscribe)

    dlq = command("dlq", lambda _args: 2, "the dead-letter queue: list, show, replay, purge")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")

    def dlq_command(name: str, handler: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        sub = dlq_commands.add_parser(name, help=text, description=text)
        sub.set_defaults(handler=handler)
        return sub

    def filters(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--tenant", help="only this tenant")
        sub.add_argument("--error", metavar="CLASS", help="only this error class (e.g. malformed_xml, transient)")
        sub.add_argument("--since", metavar="ISO", help="only payloads received at or after this time")

    dlq_list = dlq_command("list", cmd_dlq_list, "dead-lettered payloads, oldest first")
    filters(dlq_list)
    dlq_list.add_argument("--json", action="store_true", help="one JSON document on stdout")
    dlq_show = dlq_command(
        "show", cmd_dlq_show, "one entry: details on stderr, the raw payload byte for byte on stdout"
    )
    dlq_show.add_argument("id", metavar="ID")
    dlq_show.add_argument("--json", action="store_true", help="details and base64 payload as one JSON document")
    for name, handler, text in (
        ("replay", cmd_dlq_replay, "put entries back on the queue (idempotent), then wait for the outcome"),
        ("purge", cmd_dlq_purge, "delete entries for good"),
    ):
        sub = dlq_command(name, handler, text)
        sub.add_argument("ids", nargs="*", metavar="ID")
        sub.add_argument("--all", action="store_true", help="every entry that matches the filters")
        filters(sub)
        sub.add_argument("--dry-run", action="store_true", help="say what would happen, change nothing")
        sub.add_argument("--json", action="store_true", help="the summary as one JSON document on stdout")
        if name == "replay":
            sub.add_argument("--rate", type=float, metavar="N", help="replay at most N entries a second")
            sub.add_argument("--no-wait", dest="wait", action="store_false", help="don't wait for the workers' outcome")
            sub.add_argument("--timeout", type=float, default=300, help="seconds to wait for the outcome (300)")
        else:
            sub.add_argument("--yes", action="store_true", help="really delete")

    simulate = command("simulate", cmd_simulate, "an Exchange simulator: many rooms posting real-format chains")
    add_simulate_arguments(simulate)

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
    parser = build_parser()
    args = parser.parse_args(argv)
    from redis.exceptions import RedisError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return int(args.handler(args))
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"syncnotify: {exc}", file=sys.stderr)
        return 2
    except SyncNotifyError as exc:
        print(f"syncnotify: {exc}", file=sys.stderr)
        return 1
    except RedisError as exc:
        print(f"syncnotify: Redis at {redact_url(get_settings().redis)}: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        print(f"syncnotify: database {redact_url(get_settings().database)}: {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
