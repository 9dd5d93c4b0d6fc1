"""What a fleet of room mailboxes sends: one watermark chain per subscription, planned from a seed.

A ``Mailbox`` is one subscription.  Its notifications are a pure function of ``(seed, index, count, mix)``:
the simulator renders and posts them, and the verifier plans them again to know which rows must exist, in
which order, without any message between the two.  Each notification's ``PreviousWatermark`` is the last
watermark of the one before it (the chain); the mailbox counter inside the watermarks rises with gaps, as a
real mailbox's does (other folders' changes use numbers too).
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from syncnotify.simulator.payloads import ROW_KINDS, Event, notification_body, watermark

#: Weights of the kinds of item events a room calendar produces (FreeBusyChanged with every booking).
_KIND_WEIGHTS = {
    "Created": 30,
    "Modified": 35,
    "Deleted": 10,
    "FreeBusyChanged": 15,
    "Moved": 4,
    "Copied": 2,
    "NewMail": 4,
}
assert set(_KIND_WEIGHTS) == set(ROW_KINDS)
_KINDS = list(_KIND_WEIGHTS)
_WEIGHTS = list(_KIND_WEIGHTS.values())
_EPOCH = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Mix:
    """Shares of the kinds of notifications (the rest carry 1–3 item events)."""

    #: Heartbeats: one StatusEvent whose Watermark is the PreviousWatermark (no activity).
    heartbeats: float = 0.2
    #: ``MoreEvents`` bursts: a notification with ``MoreEvents=true`` and 3–6 events, then at once the next part.
    bursts: float = 0.05
    #: Notifications that Exchange posts a second time after our 200 (its retry of an answer it did not see).
    duplicates: float = 0.05


@dataclass(frozen=True, slots=True)
class Planned:
    """One notification of a chain."""

    previous_watermark: str
    events: tuple[Event, ...]
    more_events: bool
    #: Exchange posts this body again right after our 200, before the chain's next notification.
    duplicate: bool

    @property
    def last_watermark(self) -> str:
        return self.events[-1].watermark

    @property
    def row_watermarks(self) -> list[str]:
        return [e.watermark for e in self.events if e.makes_row]


def subscription_id(seed: int, index: int) -> str:
    """A subscription id shaped like Exchange's (an opaque base64 blob naming the mailbox), unique per seed."""
    text = f"SIM:{seed}:{index:06d}::mbx-room-{index:06d}@simulator.invalid"
    return base64.b64encode(text.encode() + random.Random(f"{seed}:{index}:id").randbytes(18)).decode()


class Mailbox:
    """One room's subscription: ``count`` notifications, each chained to the one before it."""

    def __init__(self, seed: int, index: int, count: int, mix: Mix) -> None:
        self.seed = seed
        self.index = index
        self.count = count
        self.mix = mix
        self.subscription_id = subscription_id(seed, index)
        rng = random.Random(f"{seed}:{index}:mailbox")
        self.guid = rng.randbytes(16)
        self._first_counter = rng.randrange(1_000, 5_000_000)

    def plan(self) -> Iterator[Planned]:
        """The chain's notifications in order: exactly ``count`` of them (a burst's parts count one each)."""
        rng = random.Random(f"{self.seed}:{self.index}:chain")
        counter = self._first_counter
        previous = watermark(self.guid, counter)
        left = self.count
        while left > 0:
            roll = rng.random()
            if roll < self.mix.heartbeats:
                parts = [[Event("Status", previous)]]
            elif roll < self.mix.heartbeats + self.mix.bursts and left >= 2:
                parts = []
                for size in (rng.randint(3, 6), rng.randint(1, 3)):
                    events = []
                    for _ in range(size):
                        counter += rng.randint(1, 3)
                        events.append(self._event(rng, counter))
                    parts.append(events)
            else:
                events = []
                for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
                    counter += rng.randint(1, 3)
                    events.append(self._event(rng, counter))
                parts = [events]
            for number, events in enumerate(parts):
                duplicate = rng.random() < self.mix.duplicates
                yield Planned(previous, tuple(events), number < len(parts) - 1, duplicate)
                previous = events[-1].watermark
                left -= 1

    def _event(self, rng: random.Random, counter: int) -> Event:
        kind = rng.choices(_KINDS, _WEIGHTS)[0]
        stamp = (_EPOCH + timedelta(seconds=counter % 10_000_000)).strftime("%Y-%m-%dT%H:%M:%SZ")
        if kind == "Modified" and rng.random() < 0.2:  # a calendar folder change (UnreadCount-less variant)
            return Event(kind, watermark(self.guid, counter), stamp, folder_id=_folder_id(self.guid))
        item = base64.b64encode(self.guid + rng.randbytes(24)).decode()
        return Event(kind, watermark(self.guid, counter), stamp, item_id=item)

    def render(self, planned: Planned) -> bytes:
        """The POST body of ``planned``."""
        return notification_body(self.subscription_id, planned.previous_watermark, planned.events, planned.more_events)


def _folder_id(guid: bytes) -> str:
    return base64.b64encode(b"FOLDER-CALENDAR:" + guid).decode()


def split(total: int, subscriptions: int) -> list[int]:
    """How many notifications each of ``subscriptions`` mailboxes sends, adding up to ``total``."""
    base, extra = divmod(total, subscriptions)
    return [base + (1 if index < extra else 0) for index in range(subscriptions)]


def mailboxes(seed: int, subscriptions: int, total: int, mix: Mix) -> list[Mailbox]:
    """The fleet: ``subscriptions`` mailboxes sending ``total`` notifications between them."""
    return [Mailbox(seed, index, count, mix) for index, count in enumerate(split(total, subscriptions))]
