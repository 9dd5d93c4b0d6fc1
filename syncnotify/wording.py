"""How counts and times are said, one way for the command line and the status page alike."""

from __future__ import annotations

from datetime import datetime


def agree(count: int, one: str, many: str) -> str:
    """``one`` for a count of 1, else ``many``: ``agree(n, 'needs', 'need')``."""
    return one if count == 1 else many


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``'1 subscription'``, ``'0 subscriptions'``, ``'1,204 subscriptions'``."""
    return f"{count:,} {agree(count, singular, plural or singular + 's')}"


def duration(seconds: float) -> str:
    """A length of time in at most two units: ``'0.4 s'``, ``'42 s'``, ``'4 min 10 s'``, ``'2 d 5 h'``."""
    if seconds < 10:
        return f"{max(0.0, seconds):.1f} s"
    whole = int(seconds)
    for unit, size, sub_unit, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if whole >= size:
            major, rest = divmod(whole, size)
            minor = rest // sub_size
            return f"{major} {unit}" + (f" {minor} {sub_unit}" if minor else "")
    return f"{whole} s"


def ago(at: datetime | None, now: datetime) -> str:
    """``'4 min ago'``, ``'3 h 12 min ago'``, ``'2 d 5 h ago'``; ``'just now'`` under 5 s (or for a time a
    little ahead of ``now``: clocks differ); ``'never'`` for None."""
    if at is None:
        return "never"
    seconds = int((now - at).total_seconds())
    if seconds < 5:
        return "just now"
    return duration(seconds) + " ago"


def until(at: datetime, now: datetime) -> str:
    """``'in 4 min'``, ``'in 4 d 19 h'`` for a time ahead (a Graph subscription's expiry); ``'now'`` within 5 s
    either way; ``'3 h ago'`` once it has passed, as ``ago`` says it."""
    seconds = int((at - now).total_seconds())
    if abs(seconds) < 5:
        return "now"
    if seconds < 0:
        return ago(at, now)
    return "in " + duration(seconds)
