"""The operator's commands on a running system: ``status`` and ``subscriptions`` (``dlq`` is in ``dlq.py``)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from syncnotify.cli.helpers import add_command, redis_client, settings
from syncnotify.cli.output import ago, print_json, table
from syncnotify.wording import counted

if TYPE_CHECKING:
    from syncnotify.cli.helpers import Subparsers

SUBSCRIPTION_STATES = ["active", "stale", "needs_resync", "error", "unsubscribed"]


def cmd_status(args: argparse.Namespace) -> int:
    from shared.schema import make_engine
    from syncnotify.status import collect

    configured = settings()
    status = collect(make_engine(configured.database), redis_client(configured), configured.spool_dir)
    if args.json:
        print_json(status.as_json())
        return 0
    oldest = "-" if status.oldest_queued_seconds is None else f"{status.oldest_queued_seconds:.1f} s"
    dead = ", ".join(f"{k} {v}" for k, v in sorted(status.dead_letter.items())) or "none"
    states = ", ".join(f"{k} {v}" for k, v in sorted(status.subscriptions_by_state.items())) or "none"
    retrying = status.scheduled_retries
    print(f"queue depth        {counted(status.queue_depth, 'job')} (oldest payload {oldest}), {retrying} retrying")
    print(f"workers alive      {status.workers}")
    print(f"dead-letter queue  {sum(status.dead_letter.values())} ({dead})")
    print(f"spool backlog      {counted(status.spool_backlog, 'payload')} in {configured.spool_dir}")
    gaps, waiting = counted(status.gaps, "gap"), counted(status.waiting_links, "notification")
    print(f"subscriptions      {states}; {gaps}, {waiting} waiting")
    return 0


def cmd_subscriptions_list(args: argparse.Namespace) -> int:
    from shared.schema import make_engine
    from syncnotify.status import list_subscriptions

    configured = settings()
    subs = list_subscriptions(make_engine(configured.database), tenant=args.tenant, state=args.state)
    if args.json:
        print_json([s.as_json() for s in subs])
        return 0
    now = datetime.now(UTC)
    rows = [
        [
            s.tenant,
            s.subscription_id,
            s.state + (f" ({s.error_code})" if s.error_code else ""),
            ago(s.last_seen_at, now),
            str(s.last_seq),
            str(s.gap_count),
            str(s.waiting),
        ]
        for s in subs
    ]
    table(rows, ["TENANT", "SUBSCRIPTION", "STATE", "LAST SEEN", "SEQ", "GAPS", "WAITING"])
    return 0


def cmd_subscriptions_unsubscribe(args: argparse.Namespace) -> int:
    from shared.schema import make_engine
    from syncnotify.status import unsubscribe

    configured = settings()
    unsubscribe(make_engine(configured.database), redis_client(configured), args.ids, tenant=args.tenant)
    print(f"the ingress answers Unsubscribe for {len(args.ids)} subscription(s) from now on")
    return 0


def add_parsers(subparsers: Subparsers) -> None:
    text = "queue, workers, dead-letter queue, spool and subscriptions at a glance"
    status = add_command(subparsers, "status", cmd_status, text)
    status.add_argument("--json", action="store_true", help="one JSON document on stdout")

    subs = add_command(subparsers, "subscriptions", None, "subscriptions by state; unsubscribe")
    subs_commands = subs.add_subparsers(dest="subs_command", required=True, metavar="COMMAND")
    text = "subscriptions with state, last seen, gaps (stale first)"
    subs_list = add_command(subs_commands, "list", cmd_subscriptions_list, text)
    subs_list.add_argument("--tenant")
    subs_list.add_argument("--state", choices=SUBSCRIPTION_STATES, help="only this state")
    subs_list.add_argument("--json", action="store_true", help="one JSON document on stdout")
    text = "make the ingress answer Unsubscribe for these"
    subs_unsub = add_command(subs_commands, "unsubscribe", cmd_subscriptions_unsubscribe, text)
    subs_unsub.add_argument("ids", nargs="+", metavar="ID")
    subs_unsub.add_argument("--tenant", default="Default", help="tenant of ids never seen yet (default Default)")
