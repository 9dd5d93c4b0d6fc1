"""``manager.plan``: what a room's Graph subscription needs now, from its rows (SPEC §10) — no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from syncnotify.graph.manager import plan, retry_after
from syncnotify.graph.rooms import Room

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
LIFETIME = timedelta(seconds=90)


def room(state: str = "active", granted_ago: float = 10.0, **changes: object) -> Room:
    renewed = NOW - timedelta(seconds=granted_ago)
    base = Room(
        tenant="Default",
        mailbox="room1@example.com",
        subscription_id=f"sub-{state}",
        state=state,
        expires_at=renewed + LIFETIME,
        renewed_at=renewed,
        renewal_attempted_at=renewed,
        renewal_error=None,
        renewal_failures=0,
        directory_tenant_id="dir",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("granted_ago", "expected"),
    [(10.0, None), (44.0, None), (45.0, "renew"), (80.0, "renew"), (200.0, "renew")],
    ids=["young", "just before half", "at half", "late", "expired"],
)
def test_a_live_subscription_is_renewed_from_half_its_granted_lifetime(
    granted_ago: float, expected: str | None
) -> None:
    planned = plan([room(granted_ago=granted_ago)], NOW)
    assert (planned[0] if planned else None) == expected


def test_lifetime_is_what_graph_granted_not_what_was_asked() -> None:
    long_grant = room(granted_ago=3600, expires_at=NOW + timedelta(hours=5))  # 6 h granted, 1 h gone
    assert plan([long_grant], NOW) is None
    assert plan([long_grant], NOW + timedelta(hours=2, minutes=1)) == ("renew", long_grant)


def test_reauthorization_is_answered_by_reauthorizing_soon_after_a_grant_else_by_renewing() -> None:
    fresh = room("reauthorization_required", granted_ago=5)
    assert plan([fresh], NOW) == ("reauthorize", fresh)
    older = room("reauthorization_required", granted_ago=20)
    assert plan([older], NOW) == ("renew", older)


def test_a_removed_room_is_recreated_and_an_unsubscribed_one_left_alone() -> None:
    removed = room("removed", granted_ago=30)
    assert plan([removed], NOW) == ("recreate", removed)
    replacement = room("active", granted_ago=5, subscription_id="sub-new")
    assert plan([removed, replacement], NOW) is None  # replaced already; the live one is young
    assert plan([removed, room("unsubscribed", granted_ago=1)], NOW) is None


def test_a_room_without_a_known_grant_is_renewed_at_once() -> None:
    unknown = room(renewed_at=None)
    assert plan([unknown], NOW) == ("renew", unknown)


def test_after_failures_the_next_attempt_waits_a_doubling_backoff_capped_at_a_tenth_of_the_lifetime() -> None:
    failing = room("renewal_failed", granted_ago=50, renewal_failures=1, renewal_attempted_at=NOW)
    assert retry_after(failing) == timedelta(seconds=5)
    assert plan([failing], NOW + timedelta(seconds=4)) is None
    assert plan([failing], NOW + timedelta(seconds=5)) == ("renew", failing)
    assert retry_after(replace(failing, renewal_failures=2)) == timedelta(seconds=9)  # 10 s, capped at 90 s / 10
    assert retry_after(replace(failing, renewal_failures=2, expires_at=NOW + timedelta(days=3))) == timedelta(
        seconds=10
    )
    still_young = room("active", granted_ago=5, renewal_failures=1, renewal_attempted_at=NOW - timedelta(seconds=6))
    assert plan([still_young], NOW) == ("renew", still_young)  # a failed attempt is retried, due or not
