"""Commands that play Exchange's part: ``send`` (payload files) and ``simulate`` (a fleet of rooms)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import SyncNotifyError
from shared.ews import SOAP_ACTION
from syncnotify.cli.helpers import add_command
from syncnotify.simulator.fleet import add_arguments as add_simulate_arguments

if TYPE_CHECKING:
    from syncnotify.cli.helpers import Subparsers

HEADERS = {
    "Content-Type": "text/xml; charset=utf-8",
    "SOAPAction": f'"{SOAP_ACTION}"',  # quoted, as Exchange sends it
    "User-Agent": "ExchangeServicesClient/15.20 (syncnotify send)",
}


def cmd_simulate(args: argparse.Namespace) -> int:
    from syncnotify.simulator.fleet import run

    return run(args)


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
