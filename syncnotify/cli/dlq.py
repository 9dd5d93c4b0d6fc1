"""``syncnotify dlq``: list, show, replay and purge the dead-letter queue (the work is ``syncnotify.dlq``'s)."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from shared.errors import SyncNotifyError
from syncnotify.cli.helpers import UsageError, add_command, redis_client, settings
from syncnotify.cli.output import Progress, plural, print_json

if TYPE_CHECKING:
    from collections.abc import Iterator

    from redis import Redis
    from rq.job import Job

    from syncnotify.cli.helpers import Subparsers
    from syncnotify.dlq import Filter


def _dlq_filter(args: argparse.Namespace) -> Filter:
    from syncnotify.dlq import Filter

    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise SyncNotifyError(f"--since {args.since!r} is not an ISO date or time") from None
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
    return Filter(tenant=args.tenant, error_class=args.error, since=since)


def _selection(args: argparse.Namespace, redis: Redis) -> Iterator[Job]:
    from syncnotify import dlq

    if not args.ids and not args.all:
        raise UsageError("name entry IDs or --all")
    return dlq.matching(redis, args.ids or None, _dlq_filter(args))


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from syncnotify import dlq

    entries = dlq.entries(redis_client(settings()), _dlq_filter(args))
    if args.json:  # streamed, so that 100,000 entries never sit in memory at once
        sys.stdout.write("[")
        for i, entry in enumerate(entries):
            sys.stdout.write(("," if i else "") + "\n  " + json.dumps(entry.as_json()))
        sys.stdout.write("\n]\n")
        return 0
    count = 0
    print("  ".join(["ID", "TENANT", "RECEIVED", "ERROR CLASS", "ATTEMPTS", "MESSAGE"]))
    for entry in entries:
        count += 1
        received = entry.received_at.isoformat(timespec="seconds")
        print(f"{entry.id}  {entry.tenant}  {received}  {entry.error_class}  {entry.attempts}  {entry.message}")
    print(f"{count} dead-lettered payload(s)", file=sys.stderr)
    return 0


def cmd_dlq_show(args: argparse.Namespace) -> int:
    from shared import store_job
    from syncnotify import dlq

    try:
        job = dlq.fetch(redis_client(settings()), args.id)
    except LookupError as exc:
        raise SyncNotifyError(str(exc)) from None
    entry, body = dlq.entry_of(job), store_job.payload_of(job)["body"]
    if args.json:
        print_json({**entry.as_json(), "body_base64": base64.b64encode(body).decode()})
        return 0
    for name, value in entry.as_json().items():  # the details on stderr, so stdout is the payload alone
        print(f"{name}: {value}", file=sys.stderr)
    sys.stdout.flush()
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from syncnotify import dlq

    configured = settings()
    redis = redis_client(configured)
    progress = Progress("replay")
    selection = _selection(args, redis)
    outcome, ids = dlq.replay(
        redis, selection, configured.job_retries, rate=args.rate, dry_run=args.dry_run, progress=progress
    )
    # With no worker, waiting would only end at --timeout with everything "still pending".
    unattended = bool(ids) and dlq.workers_alive(redis) == 0
    if unattended:
        outcome.pending = len(ids)
    elif not args.dry_run and args.wait:
        dlq.await_outcome(redis, ids, outcome, args.timeout, progress=progress)
    if args.json:
        print_json({"dry_run": args.dry_run, **outcome.as_json()})
    elif args.dry_run:
        print(f"would replay {plural(outcome.replayed, 'entry', 'entries')}; nothing changed")
    elif not unattended:
        print(
            f"replayed {outcome.replayed}, skipped {outcome.skipped}, stored {outcome.stored}, "
            f"failed again {outcome.failed_again}, still pending {outcome.pending}"
        )
    if unattended:  # queued is what was asked: success
        note = f"replayed {plural(len(ids), 'entry', 'entries')}; no worker is running, so they wait on the queue"
        print(f"{note}: start `syncnotify worker`", file=sys.stderr if args.json else sys.stdout)
        return 0
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
    redis = redis_client(settings())
    outcome = dlq.purge(redis, _selection(args, redis), dry_run=args.dry_run)
    if args.json:
        print_json({"dry_run": args.dry_run, **outcome.as_json()})
    elif args.dry_run:
        print(f"would purge {plural(outcome.purged, 'entry', 'entries')}; nothing changed")
    else:
        print(f"purged {outcome.purged}")
    return 0


def add_parsers(subparsers: Subparsers) -> None:
    dlq = add_command(subparsers, "dlq", None, "the dead-letter queue: list, show, replay, purge")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")

    def filters(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--tenant", help="only this tenant")
        sub.add_argument("--error", metavar="CLASS", help="only this error class (e.g. malformed_xml, transient)")
        sub.add_argument("--since", metavar="ISO", help="only payloads received at or after this time")

    dlq_list = add_command(dlq_commands, "list", cmd_dlq_list, "dead-lettered payloads, oldest first")
    filters(dlq_list)
    dlq_list.add_argument("--json", action="store_true", help="one JSON document on stdout")
    text = "one entry: details on stderr, the raw payload byte for byte on stdout"
    dlq_show = add_command(dlq_commands, "show", cmd_dlq_show, text)
    dlq_show.add_argument("id", metavar="ID")
    dlq_show.add_argument("--json", action="store_true", help="details and base64 payload as one JSON document")
    for name, handler, text in (
        ("replay", cmd_dlq_replay, "put entries back on the queue (idempotent), then wait for the outcome"),
        ("purge", cmd_dlq_purge, "delete entries for good"),
    ):
        sub = add_command(dlq_commands, name, handler, text)
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
