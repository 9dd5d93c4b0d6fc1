"""``FakeGraph``: Microsoft Graph and its token authority over HTTPS on this machine, with a hand on every lever.

A test or the simulator starts one, registers apps, points syncnotify at ``api_url`` and ``authority_url``
(trusting ``ca_file``), then watches ``subscriptions``, ``expired`` and ``requests``, or makes Graph do what it
does on its own: lose a subscription, remove it, ask for reauthorization, report missed notifications, throttle.
Over HTTP, ``/fake/subscriptions`` and ``/fake/deliver`` (``syncnotify.fakegraph.control``) let another process
post through its subscriptions.
"""

from __future__ import annotations

import itertools
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from syncnotify.fakegraph.authority import TokenEndpoint
from syncnotify.fakegraph.control import Control, expiry_of
from syncnotify.fakegraph.delivery import Delivery
from syncnotify.fakegraph.server import FakeGraphServer, Routes
from syncnotify.fakegraph.state import HOLD, App, FakeSubscription, Fault, Logged, Store
from syncnotify.fakegraph.subscriptions import Subscriptions
from syncnotify.fakegraph.tls import SERVER_HOSTS, CertificateAuthority
from syncnotify.simulator import graph_payloads as payloads

#: How often the reaper looks for subscriptions past their expiry.
REAP_SECONDS = 0.5


class FakeGraph:
    """Graph (``/v1.0/subscriptions``) and Entra ID (OpenID configuration, tokens) in one HTTPS server thread."""

    def __init__(
        self,
        lifetime_seconds: float = 90.0,
        token_seconds: int = 3600,
        host: str = "127.0.0.1",
        port: int = 0,
        ca_dir: Path | None = None,
    ) -> None:
        self.lifetime_seconds = lifetime_seconds
        self.token_seconds = token_seconds
        self._host, self._port = host, port
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        if ca_dir is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="fakegraph-ca-")
            ca_dir = Path(self._temporary.name)
        self._ca_dir = ca_dir
        self._store = Store()
        self._server: FakeGraphServer | None = None
        self._delivery: Delivery | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._events = itertools.count(1)
        self.ca_file: Path = self._ca_dir / "ca.pem"

    # -- running ---------------------------------------------------------------------------------------------

    def start(self) -> FakeGraph:
        """Make the CA, write ``ca_file``, start serving on a thread and the reaper on another."""
        if self._server is not None:
            raise RuntimeError("this FakeGraph is already running")
        authority = CertificateAuthority.make()
        self.ca_file = authority.write(self._ca_dir)
        context = authority.server_context(tuple(dict.fromkeys((self._host, *SERVER_HOSTS))))
        delivery = self._delivery = Delivery()

        def routes(base_url: str) -> Routes:
            return Routes(
                store=self._store,
                base_url=base_url,
                token=TokenEndpoint(self._store, base_url, self.token_seconds),
                subscriptions=Subscriptions(self._store, f"{base_url}/v1.0", self.lifetime_seconds, delivery.validate),
                control=Control(self._store, delivery.post),
            )

        server = self._server = FakeGraphServer((self._host, self._port), context, routes)
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="fakegraph", daemon=True),
            threading.Thread(target=self._reap, name="fakegraph-reaper", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and reaping; the state (subscriptions, requests) stays readable, a temporary ``ca_file``
        does not."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._delivery is not None:
            self._delivery.close()
        if self._temporary is not None:
            self._temporary.cleanup()

    def __enter__(self) -> FakeGraph:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _reap(self) -> None:
        while not self._stopping.wait(REAP_SECONDS):
            self._store.reap(datetime.now(UTC))

    # -- where it is -----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeGraph is not running: start() it first")
        return self._server.base_url

    @property
    def authority_url(self) -> str:
        """msal's authority is ``f"{authority_url}/{directory_tenant_id}"``."""
        return self.url

    @property
    def api_url(self) -> str:
        return f"{self.url}/v1.0"

    # -- what it holds ---------------------------------------------------------------------------------------

    def add_app(self, app: App) -> App:
        """Register ``app`` (replacing one with the same client id: a changed permission or policy)."""
        with self._store.lock:
            self._store.apps[app.client_id] = app
        return app

    @property
    def subscriptions(self) -> dict[str, FakeSubscription]:
        """The live subscriptions by id (copies)."""
        return self._store.snapshot()

    @property
    def expired(self) -> list[FakeSubscription]:
        """Subscriptions that reached their expiry unrenewed, which Graph dropped (copies)."""
        with self._store.lock:
            return [replace(sub) for sub in self._store.expired]

    @property
    def requests(self) -> list[Logged]:
        with self._store.lock:
            return list(self._store.requests)

    # -- levers ----------------------------------------------------------------------------------------------

    def fail_next(
        self,
        method: str = "PATCH",
        path_contains: str = "/subscriptions/",
        status: int = 429,
        retry_after: int | None = 2,
        count: int = 1,
    ) -> None:
        """The next ``count`` matching requests get ``status`` (with ``Retry-After`` when given).

        An injected 404 on a path naming a subscription also forgets it, so that the world stays as a 404 says.
        """
        with self._store.lock:
            self._store.faults.append(Fault(method.upper(), path_contains, status, retry_after, count))

    def hold_next(
        self, method: str = "PATCH", path_contains: str = "/subscriptions/", seconds: float = 5.0, count: int = 1
    ) -> None:
        """The next ``count`` matching requests are answered as usual, ``seconds`` late (a slow Graph)."""
        with self._store.lock:
            self._store.faults.append(Fault(method.upper(), path_contains, HOLD, None, count, seconds))

    def forget(self, subscription_id: str) -> FakeSubscription | None:
        """Graph lost the subscription: no lifecycle event, and GET/PATCH/DELETE on it answer 404."""
        return self._store.forget(subscription_id)

    def revoke(self, client_id: str) -> None:
        """The app is disabled: token requests get 401 ``invalid_client``, its tokens get 401 at Graph."""
        with self._store.lock:
            self._store.revoked.add(client_id)

    def restore(self, client_id: str) -> None:
        """Undo ``revoke``."""
        with self._store.lock:
            self._store.revoked.discard(client_id)

    def remove(self, subscription_id: str) -> int | None:
        """Forget the subscription, post ``subscriptionRemoved`` to its lifecycle URL; the receiver's status.

        Like the other lifecycle levers: ``None`` for a subscription without a lifecycle URL (Graph sends it
        nothing); ``KeyError`` for one Graph does not have.
        """
        sub = self._live(subscription_id)
        self.forget(subscription_id)
        return self._lifecycle(sub, "subscriptionRemoved")

    def reauthorization_required(self, subscription_id: str) -> int | None:
        """Post ``reauthorizationRequired``; the subscription needs it until a reauthorize or a PATCH."""
        sub = self._live(subscription_id)
        with self._store.lock:
            live = self._store.subscriptions.get(subscription_id)
            if live is not None:
                live.needs_reauthorization = True
        return self._lifecycle(sub, "reauthorizationRequired")

    def missed(self, subscription_id: str) -> int | None:
        """Post a ``missed`` lifecycle event."""
        return self._lifecycle(self._live(subscription_id), "missed")

    def notify(
        self, subscription_id: str, change_type: str = "created", event_id: str | None = None, etag: str | None = None
    ) -> int:
        """Post one change notification as Graph does; the receiver's HTTP status.

        Without ``event_id`` each call names a new event; without ``etag`` a fresh one is made (none for
        ``deleted``, as Graph sends none).
        """
        sub = self._live(subscription_id)
        number = next(self._events)
        item_id = event_id or payloads.event_id(sub.mailbox, number)
        tag = etag if etag is not None or change_type == "deleted" else payloads.etag(sub.mailbox, number, 1)
        change = payloads.Change(sub.id, sub.mailbox, change_type, item_id, tag)
        item = payloads.change_item(change, sub.directory_tenant_id, sub.client_state or "", expiry_of(sub))
        return self._post(sub.notification_url, payloads.notification_body([item]))

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
        """Poll ``predicate`` until it holds (``True``) or ``timeout`` seconds pass (``False``)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)
        return True

    def _live(self, subscription_id: str) -> FakeSubscription:
        sub = self._store.subscription(subscription_id)
        if sub is None:
            raise KeyError(f"the fake Graph has no subscription {subscription_id!r}")
        return sub

    def _lifecycle(self, sub: FakeSubscription, event: str) -> int | None:
        if sub.lifecycle_url is None:
            return None
        item = payloads.lifecycle_item(sub.id, event, sub.directory_tenant_id, sub.client_state or "", expiry_of(sub))
        return self._post(sub.lifecycle_url, payloads.notification_body([item]))

    def _post(self, url: str, body: bytes) -> int:
        if self._delivery is None:
            raise RuntimeError("FakeGraph is not running: start() it first")
        return self._delivery.post(url, body)
