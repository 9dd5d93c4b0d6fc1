"""What the fake Graph knows: registered apps, tokens it issued, subscriptions, faults to inject, requests seen.

One ``Store`` per fake, shared by the request threads and the reaper; every read or change holds its lock and
hands out copies, so a test can look at ``subscriptions`` while requests change them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Set
from dataclasses import dataclass, field, replace
from datetime import datetime


@dataclass(frozen=True, slots=True)
class App:
    """An app registration in a directory tenant, with a secret and/or a certificate credential.

    ``permission``: whether the admin consented to ``Calendars.Read`` (application); ``mailboxes``: the rooms an
    application access policy confines it to (``None``: no policy, every mailbox).
    """

    directory_tenant_id: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    certificate_pem: bytes | None = None
    permission: bool = True
    mailboxes: Set[str] | None = None

    def may_read(self, mailbox: str) -> bool:
        """Whether the policy lets the app reach ``mailbox`` (case-insensitive, as Exchange compares)."""
        return self.mailboxes is None or mailbox.lower() in {m.lower() for m in self.mailboxes}


@dataclass(slots=True)
class FakeSubscription:
    """One Graph subscription as the fake keeps it (times are aware UTC)."""

    id: str
    client_id: str
    directory_tenant_id: str
    resource: str
    change_type: str
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expires_at: datetime
    created_at: datetime
    renewals: int = 0
    reauthorizations: int = 0
    needs_reauthorization: bool = False

    @property
    def mailbox(self) -> str:
        """The ``{mailbox}`` of ``users/{mailbox}/events``."""
        return self.resource.strip("/").split("/")[1]


@dataclass(frozen=True, slots=True)
class Logged:
    """One request the fake answered; ``client_id`` is the app it was for, when known."""

    method: str
    path: str
    status: int
    client_id: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class Token:
    """An access token the fake issued."""

    client_id: str
    directory_tenant_id: str
    expires_at: datetime


#: The ``status`` of a fault that only delays the answer by ``hold_seconds``.
HOLD = 0


@dataclass(slots=True)
class Fault:
    """The next ``count`` requests matching ``method`` and ``path_contains`` get ``status`` instead of an answer
    (``HOLD``: their usual answer, ``hold_seconds`` late)."""

    method: str
    path_contains: str
    status: int
    retry_after: int | None
    count: int
    hold_seconds: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return self.count > 0 and method.upper() == self.method.upper() and self.path_contains in path


class Store:
    """The fake's state behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.apps: dict[str, App] = {}
        self.revoked: set[str] = set()
        self.tokens: dict[str, Token] = {}
        self.subscriptions: dict[str, FakeSubscription] = {}
        self.expired: list[FakeSubscription] = []
        #: The latest requests (bounded: ``syncnotify graph fake`` may run for days).
        self.requests: deque[Logged] = deque(maxlen=100_000)
        self.faults: list[Fault] = []

    def tenant_known(self, directory_tenant_id: str) -> bool:
        with self.lock:
            return any(app.directory_tenant_id == directory_tenant_id for app in self.apps.values())

    def app(self, client_id: str) -> App | None:
        with self.lock:
            return self.apps.get(client_id)

    def subscription(self, subscription_id: str) -> FakeSubscription | None:
        """A copy of the subscription, or ``None`` if Graph does not have it."""
        with self.lock:
            found = self.subscriptions.get(subscription_id)
            return replace(found) if found else None

    def forget(self, subscription_id: str) -> FakeSubscription | None:
        with self.lock:
            return self.subscriptions.pop(subscription_id, None)

    def snapshot(self) -> dict[str, FakeSubscription]:
        with self.lock:
            return {key: replace(sub) for key, sub in self.subscriptions.items()}

    def take_fault(self, method: str, path: str) -> Fault | None:
        """The first armed fault matching the request, its count lowered by one."""
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.count -= 1
                    return replace(fault)
            return None

    def reap(self, now: datetime) -> list[FakeSubscription]:
        """Drop the subscriptions that reached their expiry into ``expired``, and expired tokens; return the former."""
        with self.lock:
            self.tokens = {key: token for key, token in self.tokens.items() if token.expires_at > now}
            lapsed = [sub for sub in self.subscriptions.values() if sub.expires_at <= now]
            for sub in lapsed:
                del self.subscriptions[sub.id]
            self.expired.extend(lapsed)
            return [replace(sub) for sub in lapsed]
