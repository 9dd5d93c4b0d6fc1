"""``syncnotify graph``: the rooms' Graph subscriptions syncnotify creates and keeps (SPEC §10), and a fake Graph."""

from __future__ import annotations

import argparse
import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import SyncNotifyError
from syncnotify.cli.helpers import UsageError, add_command, redis_client, settings
from syncnotify.cli.output import print_json, table
from syncnotify.wording import ago, counted, until

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from syncnotify.cli.helpers import Subparsers
    from syncnotify.graph.manager import Action, Clients
    from syncnotify.graph.rooms import Room

#: How long ``renew`` waits for a worker that is renewing the same room.
LOCK_WAIT_SECONDS = 30.0


def _open() -> tuple[Engine, Clients]:
    from shared.schema import make_engine
    from syncnotify.graph.manager import Clients

    configured = settings()
    return make_engine(configured.database), Clients(configured)


def cmd_subscribe(args: argparse.Namespace) -> int:
    from syncnotify.graph.manager import subscribe

    engine, clients = _open()
    _warn_plain_http(clients, args.tenant)
    failures = 0
    for mailbox in args.mailboxes:
        try:
            done = subscribe(engine, clients, args.tenant, mailbox)
        except SyncNotifyError as exc:
            print(f"{mailbox}: not subscribed: {exc}")
            failures += 1
            continue
        expires = f", expires {done.expires_at:%Y-%m-%d %H:%M}Z" if done.expires_at else ""
        said = "subscribed" if done.created else "already subscribed"
        print(f"{mailbox}: {said} {done.subscription_id}{expires}")
    return 1 if failures else 0


def _warn_plain_http(clients: Clients, tenant: str) -> None:
    url = clients.config(tenant).public_url or ""
    if url.startswith("http://"):
        print(f"warning: SYNCNOTIFY_PUBLIC_URL {url} is not HTTPS; Microsoft Graph posts to HTTPS URLs only")


def cmd_unsubscribe(args: argparse.Namespace) -> int:
    from syncnotify.graph.manager import unsubscribe

    engine, clients = _open()
    for mailbox in args.mailboxes:
        ids = unsubscribe(engine, clients, args.tenant, mailbox)
        print(f"{mailbox}: " + (f"unsubscribed {', '.join(ids)}" if ids else "had no live subscription"))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from syncnotify.graph.rooms import rooms
    from syncnotify.status import shown_graph_state

    engine, _clients = _open()
    now = datetime.now(UTC)
    found = rooms(engine, args.tenant)
    if args.json:
        print_json([_room_json(r, shown_graph_state(r.state, r.expires_at, now)) for r in found])
        return 0
    header = ["TENANT", "MAILBOX", "SUBSCRIPTION", "STATE", "EXPIRES", "RENEWED", "LAST ATTEMPT"]
    table([_room_row(r, shown_graph_state(r.state, r.expires_at, now), now) for r in found], header)
    return 0


def _room_row(r: Room, state: str, now: datetime) -> list[str]:
    return [
        r.tenant,
        r.mailbox,
        r.subscription_id,
        state,
        until(r.expires_at, now) if r.expires_at else "-",
        ago(r.renewed_at, now),
        "ok" if r.renewal_error is None else f"failed: {r.renewal_error}",
    ]


def _room_json(r: Room, state: str) -> dict[str, object]:
    def iso(at: datetime | None) -> str | None:
        return at.isoformat() if at else None

    return {
        "tenant": r.tenant,
        "mailbox": r.mailbox,
        "subscription_id": r.subscription_id,
        "state": state,
        "expires_at": iso(r.expires_at),
        "renewed_at": iso(r.renewed_at),
        "renewal_attempted_at": iso(r.renewal_attempted_at),
        "renewal_error": r.renewal_error,
        "renewal_failures": r.renewal_failures,
        "directory_tenant_id": r.directory_tenant_id,
    }


def cmd_renew(args: argparse.Namespace) -> int:
    from redis.exceptions import LockError

    from syncnotify.graph import manager
    from syncnotify.graph.rooms import rooms
    from syncnotify.graph.upkeep import LOCK_SECONDS, holder, room_lock

    if not args.mailboxes and not args.all:
        raise UsageError("name the rooms (MAILBOX …) or give --all")
    engine, clients = _open()
    redis = redis_client(clients.settings)
    by_room: dict[str, list[Room]] = {}
    for r in rooms(engine, args.tenant, None if args.all else list(args.mailboxes)):
        by_room.setdefault(r.mailbox.lower(), []).append(r)
    failures = 0
    for mailbox, rows in by_room.items():
        live = [r for r in rows if not r.retired]
        removed = [r for r in rows if r.state == "removed"]
        if not live and not removed:
            continue  # unsubscribed: nothing to renew
        action: Action = "renew" if live else "recreate"
        room = live[0] if live else removed[-1]
        lock = room_lock(redis, room.tenant, mailbox, LOCK_SECONDS[1])
        if not lock.acquire(blocking=True, blocking_timeout=LOCK_WAIT_SECONDS, token=holder()):
            print(f"{room.mailbox}: not renewed: a worker has held it for over {LOCK_WAIT_SECONDS:.0f} s; try again")
            failures += 1
            continue
        try:
            outcome = manager.act(engine, clients, action, room)
        finally:
            with contextlib.suppress(LockError):
                lock.release()
        print(f"{room.mailbox}: {outcome.text}")
        failures += not outcome.ok
    if not by_room:
        print("no Graph subscriptions made by syncnotify match")
    return 1 if failures else 0


def cmd_check(args: argparse.Namespace) -> int:
    from syncnotify.graph.check import check

    engine, clients = _open()
    problems = 0
    for line, ok in check(clients, args.tenant, args.mailbox, engine):
        print(("ok: " if ok else "problem: ") + line)
        problems += not ok
    print(f"{counted(problems, 'problem')} found" if problems else "Graph subscriptions can be made and kept")
    return 1 if problems else 0


def cmd_fake(args: argparse.Namespace) -> int:
    from syncnotify.fakegraph import App
    from syncnotify.fakegraph.serve import serve

    app = App(directory_tenant_id=args.directory_tenant_id, client_id=args.client_id, client_secret=args.client_secret)
    serve(args.port, args.lifetime, app, Path(args.ca_dir).resolve(), print)
    return 0


def add_parsers(subparsers: Subparsers) -> None:
    graph = add_command(subparsers, "graph", None, "the rooms' Microsoft Graph subscriptions (SPEC §10)")
    commands = graph.add_subparsers(dest="graph_command", required=True, metavar="COMMAND")
    for name, handler, text in (
        ("subscribe", cmd_subscribe, "create a subscription per room (once; again it says so)"),
        ("unsubscribe", cmd_unsubscribe, "mark the rooms unsubscribed, then delete their subscriptions at Graph"),
        ("renew", cmd_renew, "renew now (a room Graph removed gets a new subscription)"),
    ):
        sub = add_command(commands, name, handler, text)
        sub.add_argument("mailboxes", nargs="+" if name != "renew" else "*", metavar="MAILBOX")
        sub.add_argument("--tenant", default="Default", help="the ROOMS tenant (default Default)")
        if name == "renew":
            sub.add_argument("--all", action="store_true", help="every room of the tenant")
    listing = add_command(commands, "list", cmd_list, "rooms with subscription id, state, expiry, last renewal")
    listing.add_argument("--tenant", help="only this ROOMS tenant")
    listing.add_argument("--json", action="store_true", help="one JSON document on stdout")
    text = "try the credentials, the permission on a room and the public URL; say what is wrong"
    check = add_command(commands, "check", cmd_check, text)
    check.add_argument("--tenant", default="Default", help="the ROOMS tenant (default Default)")
    check.add_argument("--mailbox", help="a room to try the permission on (default: a subscribed one)")
    text = "serve a fake Microsoft Graph and token authority over HTTPS, to try syncnotify without a tenant"
    fake = add_command(commands, "fake", cmd_fake, text)
    fake.add_argument("--port", type=int, default=8443)
    fake.add_argument("--lifetime", type=float, default=300.0, help="seconds of life it grants (default 300)")
    fake.add_argument("--directory-tenant-id", default="00000000-0000-4000-8000-00000000fa6e")
    fake.add_argument("--client-id", default="00000000-0000-4000-8000-0000000c11e7")
    fake.add_argument("--client-secret", default="fake-graph-secret")
    fake.add_argument("--ca-dir", default="./fake-graph", help="where it writes ca.pem (default ./fake-graph)")
