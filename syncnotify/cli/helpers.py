"""What every command module shares: the usage error, settings with logging set up, Redis, and the one way
a command is added to the parser."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from shared.errors import SyncNotifyError
from shared.logs import configure_logging
from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from redis import Redis

    # argparse has no public name for what add_subparsers returns
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]  # noqa: SLF001

Handler = Callable[[argparse.Namespace], int]


class UsageError(SyncNotifyError):
    """The command line asks for something that cannot be done as asked (exit status 2)."""


def settings() -> Settings:
    """The settings, with logging configured from them (every command's first step)."""
    configured = get_settings()
    configure_logging(configured.log_level, configured.log_format)
    return configured


def redis_client(configured: Settings) -> Redis:
    from redis import Redis

    return Redis.from_url(configured.redis, socket_connect_timeout=5, socket_timeout=30)


def add_command(subparsers: Subparsers, name: str, handler: Handler | None, text: str) -> argparse.ArgumentParser:
    """A (sub)command whose ``help`` and ``description`` are ``text``; ``handler`` None for a group whose
    own subcommands carry the handlers."""
    sub = subparsers.add_parser(name, help=text, description=text)
    if handler is not None:
        sub.set_defaults(handler=handler)
    return sub
