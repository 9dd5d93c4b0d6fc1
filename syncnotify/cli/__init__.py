"""``syncnotify``: the one command operators run (SPEC §3).

Each module adds its commands with ``add_parsers(subparsers)``: ``serve`` (up, ingress, worker, admin, db),
``operate`` (status, subscriptions), ``dlq`` (the dead-letter queue), ``tools`` (send, simulate), ``graph``
(the rooms' Graph subscriptions, a fake Graph).  Here are the parser, the exit statuses and the turning of
errors into one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shared.errors import SyncNotifyError
from shared.settings import get_settings, redact_url
from syncnotify.cli import dlq, graph, operate, serve, tools
from syncnotify.cli.helpers import UsageError
from syncnotify.cli.serve import cmd_ingress  # bench/baselines.py serves its baselines through it

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "UsageError", "build_parser", "cmd_ingress", "main"]

EXIT_OK = 0
#: Failure, said in one line on stderr.
EXIT_FAILURE = 1
#: The command line is wrong (argparse's own status too).
EXIT_USAGE = 2
#: Ctrl-C outside the long-running commands (those stop cleanly and exit 0).
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncnotify", description="Receiver of Exchange push notifications.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (serve, operate, dlq, tools, graph):
        module.add_parsers(commands)
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
        return EXIT_USAGE
    except SyncNotifyError as exc:
        print(f"syncnotify: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except RedisError as exc:
        print(f"syncnotify: Redis at {redact_url(get_settings().redis)}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        print(f"syncnotify: database {redact_url(get_settings().database)}: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
