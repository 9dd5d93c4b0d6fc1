"""Playing Exchange: each mailbox posts its watermark chain, one notification after the other's 200.

A turn posts the subscription's next notification; a notification with ``MoreEvents=true`` is followed at
once, on the same connection, by its next part.  A notification planned as a duplicate is posted a second
time as the subscription's next post (Exchange's retry of an answer it did not see), whichever connection
takes it.  An ``Unsubscribe`` answer ends the subscription, as it ends Exchange's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from syncnotify.simulator.client import Target
from syncnotify.simulator.mailboxes import Mix, Planned, mailboxes
from syncnotify.simulator.options import DEFAULT_URL, SimulateOptions
from syncnotify.simulator.payloads import HEADERS
from syncnotify.simulator.play import GAVE_UP, UNSUBSCRIBED, Pool, Send, Subscription

if TYPE_CHECKING:
    from syncnotify.simulator.verify import Expected

_NOTIFY = "notify"


def url_with_tenant(url: str, tenant: str) -> str:
    """``url``, with ``?TENANT`` added when it names no tenant (no query, no path segment before the service)."""
    parts = urlsplit(url)
    names_tenant = parts.query or parts.path.strip("/").lower().count("/") >= 2
    return url if names_tenant else f"{url}?{tenant}"


class EwsPlayer:
    """Exchange's side: ``options.subscriptions`` mailboxes sending ``options.notifications`` in all."""

    def __init__(self, options: SimulateOptions, seed: int) -> None:
        mix = Mix(options.heartbeats, options.bursts, options.duplicates)
        self.fleet = mailboxes(seed, options.subscriptions, options.notifications, mix)
        self.targets = {_NOTIFY: Target(url_with_tenant(options.url or DEFAULT_URL, options.tenant), HEADERS)}
        self._repeat: set[int] = set()  # mailboxes whose next post is the duplicate of their last one

    def subscriptions(self, indices: Sequence[int]) -> list[Subscription[Planned]]:
        return [Subscription(i, self.fleet[i].plan()) for i in indices]

    def accepted(self, status: int) -> bool:
        return status == 200

    async def turn(self, first: Subscription[Planned], pool: Pool[Planned], send: Send) -> None:  # noqa: ARG002
        while (planned := first.current) is not None and first.ended is None:
            repeat = first.index in self._repeat
            answer = await send(_NOTIFY, self.fleet[first.index].render(planned), 1, repeat)
            if answer is None:
                first.ended = GAVE_UP
                return
            if repeat:
                self._repeat.discard(first.index)
                first.advance()
            else:
                first.acknowledged += 1
                if planned.duplicate:
                    self._repeat.add(first.index)
                else:
                    first.advance()
            if b"Unsubscribe" in answer:
                first.ended = UNSUBSCRIBED
            if not planned.more_events:
                return

    async def finish(self, send: Send) -> None:
        pass

    def planned(self) -> int:
        return sum(mailbox.count for mailbox in self.fleet)

    def expected(self, index: int, acknowledged: int) -> Expected:
        from syncnotify.simulator.verify import expected_of  # SQLAlchemy only when checking

        return expected_of(self.fleet[index], acknowledged)
