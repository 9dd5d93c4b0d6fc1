"""The fake's own control API under ``/fake/``, which Microsoft Graph does not have: what lets
``syncnotify simulate --graph --via`` post through the subscriptions syncnotify made at the fake.

``GET /fake/subscriptions``: the live subscriptions (never their clientState).  ``POST /fake/deliver``: a Graph
notification body (``{"value": [items]}``) whose items name subscriptions the fake holds; the fake fills each
item's ``clientState``, ``tenantId`` and ``subscriptionExpirationDateTime`` from its record, as Graph does,
posts the items to their subscription's ``notificationUrl`` (lifecycle items to its
``lifecycleNotificationUrl``), one POST per URL, and answers with the worst status the receivers gave.

No authentication: the fake is a local test tool, and this API exists only on the fake.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from syncnotify.fakegraph.replies import Reply, graph_error, json_reply
from syncnotify.fakegraph.state import FakeSubscription, Store
from syncnotify.fakegraph.subscriptions import graph_time
from syncnotify.simulator import graph_payloads as payloads

#: POST a body to a URL; the receiver's status (raises ``httpx.HTTPError`` if none).
Post = Callable[[str, bytes], int]


def expiry_of(sub: FakeSubscription) -> str:
    """The subscription's expiry as a notification item carries it."""
    return payloads.expiry(sub.expires_at, minutes=0)


def _items(body: bytes) -> list[dict[str, Any]] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    items = document.get("value") if isinstance(document, dict) else None
    if not isinstance(items, list) or not items or not all(isinstance(item, dict) for item in items):
        return None
    return items


class Control:
    """The handlers; ``path`` is what follows ``/fake/``."""

    def __init__(self, store: Store, post: Post) -> None:
        self.store = store
        self.post = post

    def __call__(self, method: str, path: str, body: bytes) -> Reply:
        if method == "GET" and path == "subscriptions":
            return self.subscriptions()
        if method == "POST" and path == "deliver":
            return self.deliver(body)
        return graph_error(400, "BadRequest", f"Unsupported request: {method} /fake/{path}")

    def subscriptions(self) -> Reply:
        listed = [
            {
                "id": sub.id,
                "resource": sub.resource,
                "mailbox": sub.mailbox,
                "changeType": sub.change_type,
                "tenantId": sub.directory_tenant_id,
                "notificationUrl": sub.notification_url,
                "lifecycleNotificationUrl": sub.lifecycle_url,
                "expirationDateTime": graph_time(sub.expires_at),
            }
            for sub in self.store.snapshot().values()
        ]
        return json_reply(200, {"value": listed})

    def deliver(self, body: bytes) -> Reply:
        items = _items(body)
        if items is None:
            return graph_error(400, "BadRequest", 'A notification body {"value": [items…]} was expected.')
        groups: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            sub = self.store.subscription(str(item.get("subscriptionId")))
            if sub is None:
                message = f"The fake Graph has no subscription {item.get('subscriptionId')!r}."
                return graph_error(404, "ResourceNotFound", message)
            url = sub.lifecycle_url if "lifecycleEvent" in item else sub.notification_url
            if url is None:
                return graph_error(400, "BadRequest", f"Subscription {sub.id} has no lifecycleNotificationUrl.")
            filled = {
                **item,
                "clientState": sub.client_state or "",
                "tenantId": sub.directory_tenant_id,
                "subscriptionExpirationDateTime": expiry_of(sub),
            }
            groups.setdefault(url, []).append(filled)
        statuses = []
        for url, group in groups.items():
            try:
                statuses.append(self.post(url, payloads.notification_body(group)))
            except httpx.HTTPError as exc:
                return graph_error(502, "BadGateway", f"No answer from {url}: {exc or type(exc).__name__}")
        return Reply(max(statuses), content_type="")
