"""Commands that play Exchange's part: ``send`` (payload files) and ``simulate`` (a fleet of rooms)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import SyncNotifyError
from shared.ews import SOAP_ACTION
from syncnotify.cli.helpers import add_command
from syncnotify.simulator.options import SimulateOptions

if TYPE_CHECKING:
    from syncnotify.cli.helpers import Subparsers

HEADERS = {
    "Content-Type": "text/xml; charset=utf-8",
    "SOAPAction": f'"{SOAP_ACTION}"',  # quoted, as Exchange sends it
    "User-Agent": "ExchangeServicesClient/15.20 (syncnotify send)",
}


def cmd_send(args: argparse.Namespace) -> int:
    """Post payload files the way Exchange does; print each answer; fail if any is not 200."""
    import httpx

    failures = 0
    with httpx.Client(timeout=args.timeout) as client:
        for name in args.files:
            try:
                body = Path(name).read_bytes()
            except OSError as exc:
                raise SyncNotifyError(f"cannot read {name}: {exc.strerror}") from None
            try:
                response = client.post(args.url, content=body, headers=HEADERS)
            except httpx.HTTPError as exc:
                raise SyncNotifyError(f"cannot post {name} to {args.url}: {exc}") from None
            status = _subscription_status(response.text) if response.status_code == 200 else response.text.strip()
            print(f"{name}: {response.status_code} {status}")
            failures += response.status_code != 200
    return 1 if failures else 0


def _subscription_status(text: str) -> str:
    start = text.find("SubscriptionStatus>")
    return text[start + len("SubscriptionStatus>") :].split("<", 1)[0] if start >= 0 else text[:80]


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``syncnotify simulate``."""
    d = SimulateOptions()
    parser.add_argument("--url", default=d.url, help=f"callback URL to post to (default {d.url})")
    parser.add_argument("--subscriptions", type=int, default=d.subscriptions, help="rooms (default %(default)s)")
    parser.add_argument(
        "--notifications", type=int, default=d.notifications, help="distinct notifications in all (default %(default)s)"
    )
    parser.add_argument("--connections", type=int, default=d.connections, help="keep-alive connections (default 64)")
    parser.add_argument("--duplicates", type=float, default=d.duplicates, help="share posted twice (default 0.05)")
    parser.add_argument("--rate", type=float, default=d.rate, help="posts/s in all, 0 = as fast as possible")
    parser.add_argument("--tenant", default=d.tenant, help="tenant of the rows, added as ?TENANT to a bare URL")
    parser.add_argument("--seed", type=int, default=None, help="seed of the plan (default: random, printed)")
    parser.add_argument("--verify", metavar="DATABASE_URL", help="after sending, wait for the drain and check rows")
    parser.add_argument("--processes", type=int, default=d.processes, help="sending processes, 0 = one per CPU")
    parser.add_argument("--client", choices=("raw", "httpx"), default=d.client, help="HTTP client (default raw)")
    parser.add_argument("--heartbeats", type=float, default=d.heartbeats, help="share of StatusEvent heartbeats")
    parser.add_argument("--bursts", type=float, default=d.bursts, help="share of MoreEvents bursts (two parts each)")
    parser.add_argument("--timeout", type=float, default=d.timeout, help="seconds to wait for an answer")
    parser.add_argument(
        "--retry-delay", type=float, default=d.retry_delay, help="seconds before a retry (Exchange: 30)"
    )
    parser.add_argument("--max-attempts", type=int, default=d.max_attempts, help="posts of one notification at most")
    parser.add_argument("--drain-timeout", type=float, default=d.drain_timeout, help="seconds to wait for the rows")
    parser.add_argument("--progress-every", type=float, default=d.progress_every, help="seconds between progress")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document on stdout")


def options_from(args: argparse.Namespace) -> SimulateOptions:
    names = SimulateOptions.__dataclass_fields__
    return SimulateOptions(**{name: getattr(args, name) for name in names if hasattr(args, name)})


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run a parsed command line; 0 when all was acknowledged and verified, 1 otherwise, 2 on a bad option."""
    import json

    from syncnotify.simulator.fleet import simulate  # multiprocessing and asyncio: only when simulating

    try:
        options = options_from(args)
        report = simulate(options)
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(report.summary())
    return 0 if report.ok else 1


def add_parsers(subparsers: Subparsers) -> None:
    text = "an Exchange simulator: many rooms posting real-format chains"
    add_simulate_arguments(add_command(subparsers, "simulate", cmd_simulate, text))

    send = add_command(subparsers, "send", cmd_send, "post payload files the way Exchange does")
    send.add_argument("files", nargs="+", metavar="FILE")
    send.add_argument(
        "--url",
        required=True,
        help="callback URL, e.g. http://127.0.0.1:8080/Webservices/SyncNotification.svc",
    )
    send.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer (default 10)")
