"""The operator's commands on a running system: ``status`` and ``subscriptions`` (``dlq`` is in ``dlq.py``)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from shared.schema import SOURCES
from shared.schema import SUBSCRIPTION_STATES as STORED_STATES
from syncnotify.cli.helpers import add_command, redis_client, settings
from syncnotify.cli.output import ago, print_json, table
from syncnotify.wording import counted, until

if TYPE_CHECKING:
    from syncnotify.cli.helpers import Subparsers
    from syncnotify.status import GraphStatus, Status, Subscription

#: What ``--state`` takes: every state a subscription is shown in, stored or ``expired`` (a Graph one past its
#: expiry) — ``syncnotify.status.SHOWN_STATES``, spelled here so that building the parser loads no rq.
SUBSCRIPTION_STATES = [*STORED_STATES, "expired"]


def cmd_status(args: argparse.Namespace) -> int:
    from shared.schema import make_engine
    from syncnotify.status import collect

    configured = settings()
    now = datetime.now(UTC)
    status = collect(make_engine(configured.database), redis_client(configured), configured.spool_dir, now=now)
    if args.json:
        print_json(status.as_json())
        return 0
    for line in status_lines(status, str(configured.spool_dir)) + graph_lines(status.graph, now):
        print(line)
    return 0


def _counts(counts: dict[str, int]) -> str:
    """``'active 2, removed 1'`` (by name), or ``'none'``."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def status_lines(status: Status, spool_dir: str) -> list[str]:
    """The queue, workers, dead-letter queue, spool and subscriptions (both sources), a line each."""
    oldest = "-" if status.oldest_queued_seconds is None else f"{status.oldest_queued_seconds:.1f} s"
    retrying = status.scheduled_retries
    gaps, waiting = counted(status.gaps, "gap"), counted(status.waiting_links, "notification")
    return [
        f"queue depth        {counted(status.queue_depth, 'job')} (oldest payload {oldest}), {retrying} retrying",
        f"workers alive      {status.workers}",
        f"dead-letter queue  {sum(status.dead_letter.values())} ({_counts(status.dead_letter)})",
        f"spool backlog      {counted(status.spool_backlog, 'payload')} in {spool_dir}",
        f"subscriptions      {_counts(status.subscriptions_by_state)}; {gaps}, {waiting} waiting",
    ]


def graph_lines(graph: GraphStatus, now: datetime) -> list[str]:
    """Graph's subscriptions with the expiry that comes first, and the items the ingresses refused by reason.

    The refusals are the ones nobody else sees: Graph gets ``202`` for an item with a wrong clientState.
    """
    subs = f"{counted(graph.total, 'subscription')} ({_counts(graph.by_state)})" if graph.total else "none"
    soonest = graph.soonest
    if soonest is not None and soonest.expires_at is not None:
        at = soonest.expires_at
        when = f"expired {ago(at, now)}" if at <= now else f"soonest expiry {until(at, now)}"
        room = soonest.mailbox or soonest.subscription_id
        subs += f"; {when} ({room}, {at.isoformat(timespec='seconds')})"
    rejected = f"{sum(graph.rejected.values())} ({_counts(graph.rejected)})"
    return [f"graph              {subs}", f"graph rejected     {rejected}"]


def cmd_subscriptions_list(args: argparse.Namespace) -> int:
    from shared.schema import make_engine
    from syncnotify.status import list_subscriptions

    configured = settings()
    now = datetime.now(UTC)
    engine = make_engine(configured.database)
    subs = list_subscriptions(engine, tenant=args.tenant, state=args.state, now=now, source=args.source)
    if args.json:
        print_json([s.as_json() for s in subs])
        return 0
    header = ["TENANT", "SUBSCRIPTION", "STATE", "SOURCE", "LAST SEEN", "EXPIRES", "SEQ", "GAPS", "WAITING", "MAILBOX"]
    table([subscription_row(s, now) for s in subs], header)
    return 0


def subscription_row(sub: Subscription, now: datetime) -> list[str]:
    """One line of ``subscriptions list``; ``-`` where a source has no such thing (an EWS expiry, mailbox)."""
    return [
        sub.tenant,
        sub.subscription_id,
        sub.state + (f" ({sub.error_code})" if sub.error_code else ""),
        sub.source,
        ago(sub.last_seen_at, now),
        until(sub.expires_at, now) if sub.expires_at else "-",
        str(sub.last_seq),
        str(sub.gap_count),
        str(sub.waiting),
        sub.mailbox or "-",
    ]


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
    text = "subscriptions with state, source, last seen, expiry (Graph), gaps (stale first)"
    subs_list = add_command(subs_commands, "list", cmd_subscriptions_list, text)
    subs_list.add_argument("--tenant")
    subs_list.add_argument("--state", choices=SUBSCRIPTION_STATES, help="only this (shown) state")
    subs_list.add_argument("--source", choices=SOURCES, help="only EWS or only Graph subscriptions")
    subs_list.add_argument("--json", action="store_true", help="one JSON document on stdout")
    text = "make the ingress answer Unsubscribe for these"
    subs_unsub = add_command(subs_commands, "unsubscribe", cmd_subscriptions_unsubscribe, text)
    subs_unsub.add_argument("ids", nargs="+", metavar="ID")
    subs_unsub.add_argument("--tenant", default="Default", help="tenant of ids never seen yet (default Default)")
