"""The one "time ago" spelling the command line and the status page share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from syncnotify.wording import ago, counted, duration, until

NOW = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "just now"),
        (-30, "just now"),  # a clock a little ahead: never "-30 s ago"
        (42, "42 s ago"),
        (250, "4 min 10 s ago"),
        (3 * 3600 + 12 * 60, "3 h 12 min ago"),
        (2 * 86400 + 5 * 3600 + 59, "2 d 5 h ago"),
        (86400, "1 d ago"),
    ],
)
def test_ago(seconds: int, shown: str) -> None:
    assert ago(NOW - timedelta(seconds=seconds), NOW) == shown


def test_ago_never() -> None:
    assert ago(None, NOW) == "never"


def test_duration_below_ten_seconds_has_a_decimal() -> None:
    assert duration(0.42) == "0.4 s" and duration(10) == "10 s"


@pytest.mark.parametrize(("count", "shown"), [(0, "0 jobs"), (1, "1 job"), (2, "2 jobs"), (1204, "1,204 jobs")])
def test_counted_agrees_with_its_noun(count: int, shown: str) -> None:
    assert counted(count, "job") == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (5 * 86400 + 30 * 60, "in 5 d"),  # a Graph subscription renewed a moment ago
        (4 * 86400 + 19 * 3600 + 59, "in 4 d 19 h"),
        (250, "in 4 min 10 s"),
        (3, "now"),
        (-3, "now"),  # clocks differ by a little either way
        (-(3 * 3600 + 10 * 60), "3 h 10 min ago"),  # expired: said as ago says it
    ],
)
def test_until(seconds: int, shown: str) -> None:
    assert until(NOW + timedelta(seconds=seconds), NOW) == shown
