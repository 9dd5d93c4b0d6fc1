"""What the fleet drives, whichever server it plays: subscriptions, the pool they wait in, and ``Player``.

A ``Player`` (``EwsPlayer``, ``GraphPlayer``) knows its protocol: which subscriptions there are, what one
turn posts and how, which answer means taken, and what the database must hold afterwards.  The fleet
(``syncnotify.simulator.fleet``) owns the connections, the pacing, the retries and the processes.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from syncnotify.simulator.client import Target
    from syncnotify.simulator.verify import Expected

S = TypeVar("S")

GAVE_UP = "gave_up"
UNSUBSCRIBED = "unsubscribed"


class Subscription(Generic[S]):
    """One subscription's way through its steps; posted by one connection at a time."""

    __slots__ = ("index", "_steps", "_ahead", "acknowledged", "ended")

    def __init__(self, index: int, steps: Iterable[S]) -> None:
        self.index = index
        self._steps: Iterator[S] = iter(steps)
        self._ahead: deque[S] = deque()
        #: Steps answered as taken (a step posted twice counts once).
        self.acknowledged = 0
        #: Why it stopped before its last step (``GAVE_UP``, ``UNSUBSCRIBED``), else ``None``.
        self.ended: str | None = None

    def upcoming(self, count: int) -> list[S]:
        """Its next ``count`` steps (fewer at the end), without moving on."""
        self._ahead.extend(islice(self._steps, max(0, count - len(self._ahead))))
        return list(islice(self._ahead, count))

    @property
    def current(self) -> S | None:
        ahead = self.upcoming(1)
        return ahead[0] if ahead else None

    @property
    def ready(self) -> bool:
        return self.ended is None and self.current is not None

    def advance(self, count: int = 1) -> None:
        for _ in range(count):
            self._ahead.popleft()


class Pool(Generic[S]):
    """Subscriptions ready for their next post; a free connection takes a random one."""

    def __init__(self, subs: Sequence[Subscription[S]], rng: random.Random) -> None:
        self.ready = [s for s in subs if s.ready]
        self.busy = 0
        self.rng = rng
        self.changed = asyncio.Event()

    async def take(self) -> Subscription[S] | None:
        """A ready subscription, or ``None`` once none is ready and none can become ready."""
        while not self.ready:
            if self.busy == 0:
                return None
            self.changed.clear()
            await self.changed.wait()
        return self._pop(self.rng.randrange(len(self.ready)))

    def take_now(self, fits: Callable[[S], bool], limit: int) -> list[Subscription[S]]:
        """Up to ``limit`` more ready subscriptions whose next step ``fits``, at random, without waiting."""
        taken: list[Subscription[S]] = []
        for index in self.rng.sample(range(len(self.ready)), len(self.ready)):
            if len(taken) >= limit:
                break
            step = self.ready[index].current
            if step is not None and fits(step):
                taken.append(self.ready[index])
        for sub in taken:
            self._pop(self.ready.index(sub))
        return taken

    def _pop(self, index: int) -> Subscription[S]:
        self.ready[index], self.ready[-1] = self.ready[-1], self.ready[index]
        self.busy += 1
        return self.ready.pop()

    def give_back(self, sub: Subscription[S]) -> None:
        self.busy -= 1
        if sub.ready:
            self.ready.append(sub)
        self.changed.set()


class Send(Protocol):
    """Post ``body`` to the player's target ``endpoint`` until it is taken, retrying with backoff; the answer's
    body, or ``None`` when the attempts ran out.  ``items`` is how many notifications it carries, counted as
    sent for the first time unless ``redelivery``."""

    async def __call__(self, endpoint: str, body: bytes, items: int, redelivery: bool = False) -> bytes | None: ...


class Player(Protocol[S]):
    """One protocol's side of the simulation (see the module's docstring)."""

    #: Where it posts: endpoint name → target.
    targets: dict[str, Target]

    def subscriptions(self, indices: Sequence[int]) -> list[Subscription[S]]: ...

    def accepted(self, status: int) -> bool: ...

    async def turn(self, first: Subscription[S], pool: Pool[S], send: Send) -> None:
        """Post ``first``'s next step(s) (perhaps with others' from ``pool``, given back when done)."""

    async def finish(self, send: Send) -> None:
        """Post what is left once no subscription has anything more (Graph's late redeliveries)."""

    def planned(self) -> int:
        """Steps to acknowledge in all."""

    def expected(self, index: int, acknowledged: int) -> Expected:
        """What subscription ``index`` must look like after its first ``acknowledged`` steps were taken."""
