"""Commands that play Exchange's or Graph's part: ``send`` (payload files) and ``simulate`` (a fleet of rooms)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import SyncNotifyError
from shared.ews import SOAP_ACTION
from syncnotify.cli.helpers import add_command
from syncnotify.simulator.options import DEFAULT_GRAPH_URL, DEFAULT_URL, SimulateOptions

if TYPE_CHECKING:
    import httpx

    from syncnotify.cli.helpers import Subparsers

HEADERS = {
    "Content-Type": "text/xml; charset=utf-8",
    "SOAPAction": f'"{SOAP_ACTION}"',  # quoted, as Exchange sends it
    "User-Agent": "ExchangeServicesClient/15.20 (syncnotify send)",
}

#: What Graph's change-notification POSTs carry (JSON, UTF-8); the agent names the sender for the logs.
GRAPH_HEADERS = {
    "Content-Type": "application/json; charset=utf-8",
    "User-Agent": "Microsoft-Graph-Change-Notifications/1.0 (syncnotify send)",
}


@dataclass(frozen=True, slots=True)
class Sender:
    """How one source posts a file, which answer means it was taken, and what of the answer is worth printing."""

    headers: dict[str, str]
    accepted: int
    describe: Callable[[httpx.Response], str]


def _soap_answer(response: httpx.Response) -> str:
    """``OK`` or ``Unsubscribe`` from a 200 answer (the SubscriptionStatus), else the reason the ingress gave."""
    if response.status_code != 200:
        return response.text.strip()
    text = response.text
    start = text.find("SubscriptionStatus>")
    return text[start + len("SubscriptionStatus>") :].split("<", 1)[0] if start >= 0 else text[:80]


def _graph_answer(response: httpx.Response) -> str:
    """``Accepted`` for Graph's expected empty 202; else the reason the ingress gave (its status's name if none)."""
    return response.text.strip() or response.reason_phrase


EWS_SENDER = Sender(HEADERS, 200, _soap_answer)
GRAPH_SENDER = Sender(GRAPH_HEADERS, 202, _graph_answer)


def cmd_send(args: argparse.Namespace) -> int:
    """Post payload files the way Exchange (or, with ``--graph``, Microsoft Graph) does; print each answer;
    fail if any was not taken (200 for EWS, 202 for Graph)."""
    import httpx

    sender = GRAPH_SENDER if args.graph else EWS_SENDER
    failures = 0
    with httpx.Client(timeout=args.timeout) as client:
        for name in args.files:
            response = _post(client, args.url, name, sender.headers)
            print(f"{name}: {response.status_code} {sender.describe(response)}")
            failures += response.status_code != sender.accepted
    return 1 if failures else 0


def _post(client: httpx.Client, url: str, name: str, headers: dict[str, str]) -> httpx.Response:
    """The file ``name`` posted as it is, byte for byte (a broken file is worth sending: the ingress must say
    why); ``SyncNotifyError`` in one line if it cannot be read or posted."""
    import httpx

    try:
        body = Path(name).read_bytes()
    except OSError as exc:
        raise SyncNotifyError(f"cannot read {name}: {exc.strerror}") from None
    try:
        return client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise SyncNotifyError(f"cannot post {name} to {url}: {exc}") from None


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``syncnotify simulate``."""
    d = SimulateOptions()
    parser.add_argument(
        "--url", help=f"callback URL to post to (default {DEFAULT_URL}, with --graph {DEFAULT_GRAPH_URL})"
    )
    parser.add_argument("--subscriptions", type=int, default=d.subscriptions, help="rooms (default %(default)s)")
    parser.add_argument(
        "--notifications",
        type=int,
        default=d.notifications,
        help="distinct notifications in all; with --graph, changes (default %(default)s)",
    )
    parser.add_argument("--connections", type=int, default=d.connections, help="keep-alive connections (default 64)")
    parser.add_argument(
        "--duplicates", type=float, default=d.duplicates, help="share posted twice (with --graph: of POSTs; 0.05)"
    )
    parser.add_argument("--rate", type=float, default=d.rate, help="posts/s in all, 0 = as fast as possible")
    parser.add_argument("--tenant", default=d.tenant, help="tenant of the rows, added to a URL that names none")
    parser.add_argument("--seed", type=int, default=None, help="seed of the plan (default: random, printed)")
    parser.add_argument("--verify", metavar="DATABASE_URL", help="after sending, wait for the drain and check rows")
    parser.add_argument("--processes", type=int, default=d.processes, help="sending processes, 0 = one per CPU")
    parser.add_argument("--client", choices=("raw", "httpx"), default=d.client, help="HTTP client (default raw)")
    parser.add_argument("--timeout", type=float, default=d.timeout, help="seconds to wait for an answer")
    parser.add_argument(
        "--retry-delay",
        type=float,
        default=d.retry_delay,
        help="seconds before the first retry, doubled for each next one up to 5 min (Exchange: 30; default 1)",
    )
    parser.add_argument(
        "--max-attempts", type=int, default=d.max_attempts, help="attempts of one post at most (default 5)"
    )
    parser.add_argument("--drain-timeout", type=float, default=d.drain_timeout, help="seconds to wait for the rows")
    parser.add_argument("--progress-every", type=float, default=d.progress_every, help="seconds between progress")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document on stdout")
    ews = parser.add_argument_group("Exchange (EWS, the default)")
    ews.add_argument("--heartbeats", type=float, default=d.heartbeats, help="share of StatusEvent heartbeats")
    ews.add_argument("--bursts", type=float, default=d.bursts, help="share of MoreEvents bursts (two parts each)")
    graph = parser.add_argument_group(
        "Microsoft Graph",
        "rooms' created-then-updated pairs, 2–4 updates per edit and deletes, several rooms per POST, "
        "lifecycle events to URL/lifecycle; 2xx is taken",
    )
    graph.add_argument("--graph", action="store_true", help="play Microsoft Graph's change notifications")
    graph.add_argument(
        "--client-state",
        metavar="SECRET",
        help="clientState of every item (default: the first of $SYNCNOTIFY_GRAPH_CLIENT_STATE; not with --via)",
    )
    graph.add_argument(
        "--via",
        metavar="FAKE_URL",
        help="post through a fake Graph (syncnotify graph fake, e.g. https://127.0.0.1:8443): the rooms are its "
        "live subscriptions of --tenant (default: the only tenant it has), up to --subscriptions; it fills in "
        "clientState and tenantId and sends each item to its subscription's URL; httpx client, trusting "
        "$SSL_CERT_FILE; no --lifecycle",
    )
    graph.add_argument(
        "--directory-tenant",
        metavar="UUID",
        default=d.directory_tenant,
        help="the items' tenantId (default a fixed one)",
    )
    graph.add_argument(
        "--lifecycle",
        metavar="N",
        type=int,
        default=d.lifecycle,
        help="rooms that also get a lifecycle event, missed and reauthorizationRequired in turn (default 0)",
    )
    graph.add_argument(
        "--items-per-post", metavar="N", type=int, default=d.items_per_post, help="most items in one POST (default 10)"
    )


def options_from(args: argparse.Namespace) -> SimulateOptions:
    """The options of a parsed command line; ``ValueError`` if ``--graph`` has no clientState to send (with
    ``--via`` the fake fills it in)."""
    names = SimulateOptions.__dataclass_fields__
    options = SimulateOptions(**{name: getattr(args, name) for name in names if hasattr(args, name)})
    if options.graph and not options.client_state and options.via is None:
        secrets = os.environ.get("SYNCNOTIFY_GRAPH_CLIENT_STATE", "").split(",")
        accepted = next((secret.strip() for secret in secrets if secret.strip()), "")
        if not accepted:
            raise ValueError(
                "--graph needs --client-state SECRET (one of the ingress's SYNCNOTIFY_GRAPH_CLIENT_STATE), "
                "or that variable set here: the ingress drops items without it"
            )
        options = replace(options, client_state=accepted)
    return options


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
    text = "an Exchange (or, with --graph, Microsoft Graph) simulator: many rooms posting real-format notifications"
    add_simulate_arguments(add_command(subparsers, "simulate", cmd_simulate, text))

    send = add_command(subparsers, "send", cmd_send, "post payload files the way Exchange (or Graph) does")
    send.add_argument("files", nargs="+", metavar="FILE")
    send.add_argument(
        "--url",
        required=True,
        help="callback URL, e.g. http://127.0.0.1:8080/Webservices/SyncNotification.svc, or with --graph "
        "http://127.0.0.1:8080/api/webhooks/graph?tenant=Default",
    )
    send.add_argument(
        "--graph",
        action="store_true",
        help="post JSON change (or lifecycle) notifications as Microsoft Graph does; 202 is success",
    )
    send.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer (default 10)")
