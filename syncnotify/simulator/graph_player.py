"""Playing Microsoft Graph: rooms' changes batched into POSTs of several subscriptions, lifecycle events apart.

A turn takes a ready room and, at random, up to ``items_per_post`` items in all from it and other ready
rooms whose next step goes to the same URL (changes to the ``notificationUrl``, lifecycle events to the
``lifecycleNotificationUrl``); a room may put several consecutive changes in one POST (a created-then-updated
pair often travels together).  The rooms go back to the pool only once the POST was answered 2xx, so a
room's changes reach the ingress in their order, as Graph's do.  A ``duplicates`` share of the POSTs is
sent again later, byte for byte, by whichever connection is free next (Graph's redelivery, which may come
after newer changes of the same rooms); what is left is sent before the end.  With ``via``, the rooms are a
fake Graph's subscriptions and every POST goes to the fake, which forwards it (``syncnotify.simulator.via_fake``).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from syncnotify.simulator.client import Target
from syncnotify.simulator.graph_payloads import HEADERS, change_item, lifecycle_item, notification_body
from syncnotify.simulator.graph_rooms import Step, rooms
from syncnotify.simulator.options import DEFAULT_GRAPH_URL, SimulateOptions
from syncnotify.simulator.play import GAVE_UP, Pool, Send, Subscription
from syncnotify.simulator.via_fake import deliver_url

if TYPE_CHECKING:
    from syncnotify.simulator.verify import Expected

_NOTIFY = "notify"
_LIFECYCLE = "lifecycle"
#: Consecutive changes of one room in one POST: mostly one, sometimes two or three.
_RUNS = (1, 1, 1, 2, 2, 3)


def graph_urls(url: str, tenant: str) -> tuple[str, str]:
    """The notification and lifecycle URLs: ``url`` with ``?tenant=TENANT`` when it names no tenant (no query,
    no path segment before ``/api/webhooks/graph``), and the same with ``/lifecycle`` after the path."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    query = parts.query or ("" if path.strip("/").count("/") >= 3 else f"tenant={tenant}")
    notify = urlunsplit((parts.scheme, parts.netloc, path, query, ""))
    return notify, urlunsplit((parts.scheme, parts.netloc, path + "/lifecycle", query, ""))


def _endpoint(step: Step) -> str:
    return _NOTIFY if step.change is not None else _LIFECYCLE


class GraphPlayer:
    """Graph's side: ``options.subscriptions`` rooms making ``options.notifications`` changes in all."""

    def __init__(self, options: SimulateOptions, seed: int, slot: int = 0) -> None:
        if not options.client_state and options.via is None:
            raise ValueError(
                "--graph needs --client-state (or SYNCNOTIFY_GRAPH_CLIENT_STATE): the ingress drops "
                "items without one of its secrets"
            )
        if options.items_per_post < 1:
            raise ValueError("items per post must be at least 1")
        self.rooms = rooms(seed, options.subscriptions, options.notifications, options.lifecycle, options.rooms)
        if options.via is not None:  # the fake sends each item where its subscription says
            notify = lifecycle = deliver_url(options.via)
        else:
            notify, lifecycle = graph_urls(options.url or DEFAULT_GRAPH_URL, options.tenant)
        self.targets = {_NOTIFY: Target(notify, HEADERS), _LIFECYCLE: Target(lifecycle, HEADERS)}
        self._options = options
        self._client_state = options.client_state or ""
        self._rng = random.Random(f"{seed}:graph-posts:{slot}")
        self._redeliveries: deque[tuple[str, bytes, int]] = deque()

    def subscriptions(self, indices: Sequence[int]) -> list[Subscription[Step]]:
        return [Subscription(i, self.rooms[i].steps) for i in indices]

    def accepted(self, status: int) -> bool:
        return 200 <= status < 300

    async def turn(self, first: Subscription[Step], pool: Pool[Step], send: Send) -> None:
        if self._redeliveries and self._rng.random() < 0.5:
            await send(*self._redeliveries.popleft(), redelivery=True)
        step = first.current
        assert step is not None
        endpoint = _endpoint(step)
        budget = self._rng.randint(1, self._options.items_per_post)
        others = pool.take_now(lambda s: _endpoint(s) == endpoint, budget - 1)
        try:
            picked = [first, *others]
            shares = self._shares(picked, endpoint, budget)
            body = notification_body(
                [
                    self._item(sub.index, s)
                    for sub, share in zip(picked, shares, strict=True)
                    for s in sub.upcoming(share)
                ]
            )
            if await send(endpoint, body, sum(shares)) is None:
                for sub in picked:
                    sub.ended = GAVE_UP
                return
            for sub, share in zip(picked, shares, strict=True):
                sub.acknowledged += share
                sub.advance(share)
            if self._rng.random() < self._options.duplicates:
                self._redeliveries.append((endpoint, body, sum(shares)))
        finally:
            for sub in others:
                pool.give_back(sub)

    def _shares(self, picked: Sequence[Subscription[Step]], endpoint: str, budget: int) -> list[int]:
        """How many consecutive steps each room puts in the POST: one at least, all within ``budget``."""
        spare = budget - len(picked)
        shares = []
        for sub in picked:
            run = 0
            for step in sub.upcoming(max(_RUNS)):
                if _endpoint(step) != endpoint:
                    break
                run += 1
            share = max(1, min(run, self._rng.choice(_RUNS), 1 + spare))
            spare -= share - 1
            shares.append(share)
        return shares

    def _item(self, index: int, step: Step) -> dict[str, Any]:
        tenant_id, secret = self._options.directory_tenant, self._client_state
        if step.change is not None:
            return change_item(step.change, tenant_id, secret)
        assert step.lifecycle is not None
        return lifecycle_item(self.rooms[index].subscription_id, step.lifecycle, tenant_id, secret)

    async def finish(self, send: Send) -> None:
        while self._redeliveries:
            await send(*self._redeliveries.popleft(), redelivery=True)

    def planned(self) -> int:
        return sum(len(room.steps) for room in self.rooms)

    def expected(self, index: int, acknowledged: int) -> Expected:
        from syncnotify.simulator.verify import graph_expected  # SQLAlchemy only when checking

        return graph_expected(self.rooms[index], acknowledged, self._options.directory_tenant)
