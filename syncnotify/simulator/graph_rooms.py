"""What a fleet of rooms sends through Microsoft Graph: each room's changes and lifecycle events, from a seed.

A ``Room`` is one subscription (``users/{room}/events``).  Its steps are a pure function of ``(seed, index,
count, lifecycle)``, so the simulator posts them and the verifier plans them again, as for EWS mailboxes.
The changes follow what Graph sends for a room's calendar (GRAPH.md §2.5): a booking is a ``created``, most
often followed at once by an ``updated`` (the created-then-updated pair); an edit of an event is 2–4
``updated``, each with a new etag; a cancellation is a ``deleted`` without etag.  Each group of changes of
one booking, edit or cancellation is an *edit*, numbered per room.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from syncnotify.simulator.graph_payloads import Change, etag, event_id
from syncnotify.simulator.mailboxes import split

#: The lifecycle events a simulation sends, in turn to the rooms chosen for one (never ``subscriptionRemoved``:
#: nothing would arrive for a removed subscription afterwards).
LIFECYCLE_EVENTS = ("missed", "reauthorizationRequired")
#: How often a booking's ``created`` is followed at once by an ``updated``.
_PAIRED = 0.8


@dataclass(frozen=True, slots=True)
class Step:
    """One item a room posts: a change of one of its events, or a lifecycle event (``change`` is then ``None``)."""

    change: Change | None
    lifecycle: str | None = None
    #: The room's edit this change belongs to (from 0); ``-1`` for a lifecycle event.
    edit: int = -1


@dataclass(frozen=True, slots=True)
class Room:
    """One room's Graph subscription and everything it posts, in order."""

    index: int
    subscription_id: str
    user_id: str
    steps: tuple[Step, ...]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def room(seed: int, index: int, count: int, lifecycle: str | None = None, ids: tuple[str, str] | None = None) -> Room:
    """Room ``index``: ``count`` changes, and ``lifecycle`` (if any) somewhere after its first change; ``ids``:
    its (subscription id, user) when a real subscription plays it, else made up."""
    rng = random.Random(f"{seed}:{index}:graph")
    subscription_id, user_id = _uuid(rng), _uuid(rng)
    if ids is not None:
        subscription_id, user_id = ids
    versions: dict[int, int] = {}  # the room's events not deleted: number → version of their etag
    steps: list[Step] = []
    edit = 0

    def change(change_type: str, number: int) -> None:
        tag = None if change_type == "deleted" else etag(subscription_id, number, versions[number])
        steps.append(
            Step(Change(subscription_id, user_id, change_type, event_id(subscription_id, number), tag), edit=edit)
        )

    while len(steps) < count:
        roll = rng.random()
        if not versions or roll < 0.35:
            number = edit  # a new event per booking: edit numbers are unique
            versions[number] = 0
            change("created", number)
            updates = 1 if rng.random() < _PAIRED else 0
        elif roll < 0.85:
            number = rng.choice(sorted(versions))
            updates = rng.randint(2, 4)
        else:
            number = rng.choice(sorted(versions))
            change("deleted", number)
            del versions[number]
            updates = 0
        for _ in range(updates):
            versions[number] += 1
            change("updated", number)
        edit += 1
    del steps[count:]
    if lifecycle is not None:
        steps.insert(rng.randint(min(1, len(steps)), len(steps)), Step(None, lifecycle))
    return Room(index, subscription_id, user_id, tuple(steps))


def rooms(
    seed: int, subscriptions: int, total: int, lifecycle: int = 0, ids: Sequence[tuple[str, str]] = ()
) -> list[Room]:
    """The fleet: ``subscriptions`` rooms making ``total`` changes between them; ``lifecycle`` of them (chosen
    by the seed) also get one lifecycle event each, ``LIFECYCLE_EVENTS`` in turn; ``ids``: the rooms' (subscription
    id, user), if not made up."""
    chosen: Sequence[int] = random.Random(f"{seed}:lifecycle").sample(
        range(subscriptions), min(lifecycle, subscriptions)
    )
    events = {index: LIFECYCLE_EVENTS[n % len(LIFECYCLE_EVENTS)] for n, index in enumerate(chosen)}
    counts = split(total, subscriptions)
    return [
        room(seed, index, count, events.get(index), ids[index] if ids else None) for index, count in enumerate(counts)
    ]
