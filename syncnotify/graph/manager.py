"""What syncnotify does to a room's Graph subscription: subscribe, unsubscribe, renew, reauthorize, re-create.

The commands (``syncnotify graph …``) and the workers' upkeep call these; each call is one room, and the
caller holds the room's lock (``upkeep.room_lock``) so two processes never act on one room at once.
What to do, and when, is ``plan``'s answer; the rows are ``rooms``' business, the HTTP ``api``'s.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from sqlalchemy import Engine

from shared.errors import ConfigError
from shared.graph_tenants import GraphTenant
from shared.settings import Settings
from syncnotify.graph import rooms
from syncnotify.graph.errors import Conflict, GraphError, NotFound
from syncnotify.graph.rooms import Room, resource_of

if TYPE_CHECKING:
    from syncnotify.graph.api import GraphAPI, Subscription

#: After a failure the next attempt waits this long, doubling each time …
FIRST_RETRY = timedelta(seconds=5)
#: … but never longer than a tenth of the lifetime (or this, when no lifetime is known).
LONGEST_RETRY = timedelta(minutes=30)

Action = Literal["renew", "reauthorize", "recreate"]


class Clients:
    """One ``GraphAPI`` per ROOMS tenant, made on first use: tokens, retries and failures stay per tenant."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._apis: dict[str, GraphAPI] = {}
        self._lock = threading.Lock()

    def config(self, tenant: str) -> GraphTenant:
        return self.settings.graph_tenant(tenant)

    def api(self, tenant: str) -> GraphAPI:
        config = self.config(tenant)
        if config.missing:
            raise ConfigError(f"Graph subscriptions of tenant {tenant!r} need {', '.join(config.missing)}")
        # imported on first use: a worker whose rooms are all EWS never loads msal and httpx (~15 MiB)
        from syncnotify.graph.api import GraphAPI
        from syncnotify.graph.credentials import Credentials

        with self._lock:
            if tenant not in self._apis:
                self._apis[tenant] = GraphAPI(config, Credentials(config))
            return self._apis[tenant]


@dataclass(frozen=True, slots=True)
class Subscribed:
    mailbox: str
    subscription_id: str
    expires_at: datetime | None
    #: False: the room was subscribed already (or Graph had its subscription, which was adopted).
    created: bool


def subscribe(engine: Engine, clients: Clients, tenant: str, mailbox: str, now: datetime | None = None) -> Subscribed:
    """The room's live subscription, created at Graph (after its handshake with the ingress) if it has none."""
    live = rooms.live_room(engine, tenant, mailbox)
    if live is not None:
        return Subscribed(live.mailbox, live.subscription_id, live.expires_at, created=False)
    now = now or datetime.now(UTC)
    sub, created = _create(clients, tenant, mailbox, now)
    rooms.add(engine, tenant, mailbox, sub.id, sub.expires_at, clients.config(tenant).directory_tenant_id, now)
    return Subscribed(mailbox, sub.id, sub.expires_at, created=created)


def _create(clients: Clients, tenant: str, mailbox: str, now: datetime) -> tuple[Subscription, bool]:
    config, api = clients.config(tenant), clients.api(tenant)
    expires = now + timedelta(minutes=config.subscription_minutes)
    client_state = config.client_state[0].get_secret_value()
    try:
        return api.create(
            resource_of(mailbox), config.notification_url, config.lifecycle_url, client_state, expires
        ), True
    except Conflict as exc:
        # Graph holds one for the room already (made by a run that died before writing its row): adopt it
        if exc.existing_id:
            return api.get(exc.existing_id), False
        wanted = resource_of(mailbox).lower()
        found = next((s for s in api.list() if s.resource.strip("/").lower() == wanted), None)
        if found is None:
            raise
        return found, False


def unsubscribe(engine: Engine, clients: Clients, tenant: str, mailbox: str) -> list[str]:
    """Marks the room's live subscriptions ``unsubscribed`` (nothing re-creates them), then deletes them at Graph."""
    live = [r for r in rooms.rooms(engine, tenant, [mailbox]) if not r.retired]
    for r in live:
        rooms.retire(engine, r, "unsubscribed")
    for r in live:
        try:
            clients.api(tenant).delete(r.subscription_id)
        except NotFound:
            pass  # gone at Graph already: expired, or removed
    return [r.subscription_id for r in live]


def plan(room_rows: Iterable[Room], now: datetime) -> tuple[Action, Room] | None:
    """What one room needs now, from all its rows: its newest row decides (by the last grant).

    A live subscription is renewed at half its lifetime (sooner when reauthorization is asked, though at most
    a reauthorization then if it was renewed within a tenth of it); a removed one is re-created; an
    unsubscribed one is left alone.  After a failure, nothing before the backoff is over.
    """
    oldest = datetime.min.replace(tzinfo=UTC)
    newest = max(room_rows, key=lambda r: (not r.retired, r.renewed_at or oldest, r.expires_at or oldest))
    if newest.state == "unsubscribed":
        return None
    if newest.renewal_failures and newest.renewal_attempted_at is not None:
        if now < newest.renewal_attempted_at + retry_after(newest):
            return None
    if newest.state == "removed":
        return "recreate", newest
    lifetime = newest.lifetime
    if lifetime is None or newest.renewed_at is None:
        return "renew", newest
    if newest.state == "reauthorization_required":
        return ("reauthorize" if now < newest.renewed_at + lifetime / 10 else "renew"), newest
    if newest.renewal_failures or now >= newest.renewed_at + lifetime / 2:
        return "renew", newest
    return None


def retry_after(room: Room) -> timedelta:
    """How long after a failed attempt the next one waits."""
    longest = room.lifetime / 10 if room.lifetime else LONGEST_RETRY
    return min(FIRST_RETRY * (1 << max(room.renewal_failures - 1, 0)), longest)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``act`` did: ``ok`` False when the room still needs it done (it is tried again after a backoff)."""

    action: Action
    ok: bool
    text: str


def act(engine: Engine, clients: Clients, action: Action, room: Room, now: datetime | None = None) -> Outcome:
    """Does ``action`` for ``room`` and records the outcome in its rows."""
    now = now or datetime.now(UTC)
    try:
        if action == "recreate":
            return _recreate(engine, clients, room, now)
        api = clients.api(room.tenant)
        if action == "reauthorize":
            api.reauthorize(room.subscription_id)
            rooms.renewed(engine, room, None, now)
            return Outcome(action, True, "reauthorized")
        minutes = clients.config(room.tenant).subscription_minutes
        sub = api.renew(room.subscription_id, now + timedelta(minutes=minutes))
    except NotFound:
        # Graph dropped it (expired, or removed without a lifecycle event reaching us): a new one replaces it
        rooms.retire(engine, room, "removed")
        removed = rooms.room(engine, room.tenant, room.subscription_id) or room
        outcome = _recreate(engine, clients, removed, now)
        return Outcome(action, outcome.ok, f"gone at Graph (404); {outcome.text}")
    except (GraphError, ConfigError) as exc:
        if isinstance(exc, GraphError) and exc.transient:
            rooms.postponed(engine, room, _reason(exc), now)
            return Outcome(action, False, f"postponed: {_reason(exc)}")
        rooms.failed(engine, room, _reason(exc), now)
        return Outcome(action, False, f"failed: {_reason(exc)}")
    rooms.renewed(engine, room, sub.expires_at, now)
    return Outcome(action, True, f"renewed until {sub.expires_at:%Y-%m-%d %H:%M:%S}Z")


def _recreate(engine: Engine, clients: Clients, removed: Room, now: datetime) -> Outcome:
    try:
        sub, _created = _create(clients, removed.tenant, removed.mailbox, now)
    except (GraphError, ConfigError) as exc:
        rooms.postponed(engine, removed, _reason(exc), now)  # the removed row keeps its state
        return Outcome("recreate", False, f"not re-created: {_reason(exc)}")
    directory = clients.config(removed.tenant).directory_tenant_id
    rooms.add(engine, removed.tenant, removed.mailbox, sub.id, sub.expires_at, directory, now)
    return Outcome("recreate", True, f"re-created as {sub.id}")


def _reason(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
