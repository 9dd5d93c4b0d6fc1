"""Graph's ``/v1.0/subscriptions`` for room events: create (after the handshake), list, get, renew, delete,
reauthorize — with Graph's checks: bearer token, permission, access policy, one subscription per resource."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from syncnotify.fakegraph.replies import Reply, graph_error, json_reply
from syncnotify.fakegraph.state import App, FakeSubscription, Store

RESOURCE = re.compile(r"/?users/([^/]+)/events", re.IGNORECASE)
CHANGE_TYPES = {"created", "updated", "deleted"}
NOT_FOUND = ("ResourceNotFound", "The object was not found.")
DENIED = "Access is denied. Check credentials and try again."
POLICY = "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings."
#: Graph's challenge on a 401.
CHALLENGE = 'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize"'

#: A handshake: the URL in, ``None`` or Graph's error message out.
Validate = Callable[[str], str | None]


def graph_time(moment: datetime) -> str:
    """A time as Graph writes ``expirationDateTime`` (seven fractional digits, ``Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _invalid(message: str) -> Reply:
    return graph_error(400, "InvalidRequest", message)


class Subscriptions:
    """The handlers; ``path`` is what follows ``/v1.0/subscriptions`` (``""``, ``/{id}``, ``/{id}/reauthorize``)."""

    def __init__(self, store: Store, api_url: str, lifetime_seconds: float, validate: Validate) -> None:
        self.store = store
        self.api_url = api_url
        self.lifetime = timedelta(seconds=lifetime_seconds)
        self.validate = validate

    def __call__(self, method: str, path: str, authorization: str | None, body: bytes) -> Reply:
        app, refused = self._caller(authorization)
        if app is None:
            return refused
        reply = self._route(app, method, path.strip("/").split("/") if path.strip("/") else [], body)
        return replace(reply, client_id=app.client_id)

    def _caller(self, authorization: str | None) -> tuple[App | None, Reply]:
        def refuse(message: str) -> tuple[None, Reply]:
            return None, graph_error(401, "InvalidAuthenticationToken", message, {"WWW-Authenticate": CHALLENGE})

        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return refuse("Access token is empty.")
        with self.store.lock:
            token = self.store.tokens.get(value.strip())
            revoked = token is not None and token.client_id in self.store.revoked
        if token is None:
            return refuse("IDX14100: JWT is not well formed, there are no dots (.).")
        if token.expires_at <= datetime.now(UTC):
            return refuse("Lifetime validation failed, the token is expired.")
        app = self.store.app(token.client_id)
        if app is None or revoked:
            return refuse("Access token validation failure: the application was disabled.")
        return app, Reply(200)

    def _route(self, app: App, method: str, parts: list[str], body: bytes) -> Reply:
        if not parts:
            if method == "POST":
                return self.create(app, body)
            if method == "GET":
                return self.list(app)
        elif len(parts) == 1 and method in {"GET", "PATCH", "DELETE"}:
            sub = self._own(app, parts[0])
            if sub is None:
                return graph_error(404, *NOT_FOUND)
            if method == "GET":
                return json_reply(200, self._document(sub))
            if method == "PATCH":
                return self.renew(app, sub, body)
            return self.delete(sub)
        elif len(parts) == 2 and parts[1] == "reauthorize" and method == "POST":
            sub = self._own(app, parts[0])
            if sub is None:
                return graph_error(404, *NOT_FOUND)
            return self.reauthorize(app, sub)
        return graph_error(400, "BadRequest", f"Unsupported request: {method} /subscriptions/{'/'.join(parts)}")

    def events(self, mailbox: str, authorization: str | None) -> Reply:
        """``GET /users/{mailbox}/events``: what ``syncnotify graph check`` reads to try the permission."""
        app, refused = self._caller(authorization)
        if app is None:
            return refused
        return replace(self._denied(app, mailbox) or json_reply(200, {"value": []}), client_id=app.client_id)

    def _own(self, app: App, subscription_id: str) -> FakeSubscription | None:
        sub = self.store.subscription(subscription_id)
        return sub if sub is not None and sub.client_id == app.client_id else None

    def _denied(self, app: App, mailbox: str) -> Reply | None:
        if not app.permission:
            return graph_error(403, "ErrorAccessDenied", DENIED)
        if not app.may_read(mailbox):
            return graph_error(403, "ErrorAccessDenied", POLICY)
        return None

    def _granted(self, asked: Any) -> datetime | Reply:
        """The expiry Graph grants for ``expirationDateTime``: at most ``lifetime`` from now."""
        moment = _parse_time(asked)
        if moment is None:
            return _invalid("expirationDateTime must be a date and time, e.g. 2026-12-08T07:30:00Z.")
        now = datetime.now(UTC)
        if moment <= now:
            return _invalid("Subscription expiration can only be in the future.")
        return min(moment, now + self.lifetime)

    def create(self, app: App, body: bytes) -> Reply:
        fields = _json_object(body)
        if fields is None:
            return graph_error(400, "BadRequest", "Empty Payload. JSON content expected.")
        resource: Any = fields.get("resource")
        match = RESOURCE.fullmatch(resource) if isinstance(resource, str) else None
        if match is None:
            return _invalid(f"Resource '{resource}' is not supported (this fake knows users/{{mailbox}}/events).")
        change_type: Any = fields.get("changeType")
        kinds = change_type.split(",") if isinstance(change_type, str) else []
        if not kinds or not set(kinds) <= CHANGE_TYPES:
            return _invalid(f"'{change_type}' is not a valid changeType (created, updated, deleted, comma-separated).")
        notification_url: Any = fields.get("notificationUrl")
        lifecycle_url: Any = fields.get("lifecycleNotificationUrl")
        if not _is_url(notification_url) or not (lifecycle_url is None or _is_url(lifecycle_url)):
            return _invalid("notificationUrl and lifecycleNotificationUrl must be http(s) URLs.")
        client_state = fields.get("clientState")
        if client_state is not None and not (isinstance(client_state, str) and len(client_state) <= 128):
            return _invalid("clientState must be a string of at most 128 characters.")
        denied = self._denied(app, match.group(1))
        if denied is not None:
            return denied
        expires_at = self._granted(fields.get("expirationDateTime"))
        if isinstance(expires_at, Reply):
            return expires_at
        conflict = self._conflict(app, resource, change_type)
        if conflict is not None:
            return conflict
        for url in (notification_url, lifecycle_url):
            failure = self.validate(url) if url is not None else None
            if failure is not None:
                return graph_error(400, "ValidationError", failure)
        sub = FakeSubscription(
            id=str(uuid.uuid4()),
            client_id=app.client_id,
            directory_tenant_id=app.directory_tenant_id,
            resource=resource,
            change_type=change_type,
            notification_url=notification_url,
            lifecycle_url=lifecycle_url,
            client_state=client_state,
            expires_at=expires_at,
            created_at=datetime.now(UTC),
        )
        with self.store.lock:
            # The handshakes ran without the lock: another create may have won meanwhile.
            conflict = self._conflict(app, resource, change_type)
            if conflict is not None:
                return conflict
            self.store.subscriptions[sub.id] = sub
            return json_reply(201, self._document(sub))

    def _conflict(self, app: App, resource: str, change_type: str) -> Reply | None:
        with self.store.lock:
            for sub in self.store.subscriptions.values():
                same = sub.resource.strip("/").lower() == resource.strip("/").lower()
                if (
                    sub.client_id == app.client_id
                    and same
                    and set(sub.change_type.split(",")) == set(change_type.split(","))
                ):
                    message = f"Subscription Id {sub.id} already exists for the requested combination"
                    return graph_error(409, "ExtensionError", message)
        return None

    def list(self, app: App) -> Reply:
        with self.store.lock:
            own = [self._document(s) for s in self.store.subscriptions.values() if s.client_id == app.client_id]
        return json_reply(200, {"@odata.context": f"{self.api_url}/$metadata#subscriptions", "value": own})

    def renew(self, app: App, sub: FakeSubscription, body: bytes) -> Reply:
        fields = _json_object(body)
        if fields is None or "expirationDateTime" not in fields:
            return _invalid("A PATCH of a subscription needs expirationDateTime.")
        if "lifecycleNotificationUrl" in fields:
            return _invalid("lifecycleNotificationUrl can only be set when the subscription is created.")
        denied = self._denied(app, sub.mailbox)
        if denied is not None:
            return denied
        expires_at = self._granted(fields["expirationDateTime"])
        if isinstance(expires_at, Reply):
            return expires_at
        new_url = fields.get("notificationUrl")
        if new_url is not None and new_url != sub.notification_url:
            failure = self.validate(new_url) if _is_url(new_url) else "notificationUrl must be an http(s) URL."
            if failure is not None:
                return graph_error(400, "ValidationError", failure)
        with self.store.lock:
            live = self.store.subscriptions.get(sub.id)
            if live is None:
                return graph_error(404, *NOT_FOUND)
            live.expires_at = expires_at
            live.notification_url = new_url or live.notification_url
            live.renewals += 1
            live.needs_reauthorization = False
            return json_reply(200, self._document(live))

    def delete(self, sub: FakeSubscription) -> Reply:
        with self.store.lock:
            if self.store.subscriptions.pop(sub.id, None) is None:
                return graph_error(404, *NOT_FOUND)
        return Reply(204, content_type="")

    def reauthorize(self, app: App, sub: FakeSubscription) -> Reply:
        denied = self._denied(app, sub.mailbox)
        if denied is not None:
            return denied
        with self.store.lock:
            live = self.store.subscriptions.get(sub.id)
            if live is None:
                return graph_error(404, *NOT_FOUND)
            live.reauthorizations += 1
            live.needs_reauthorization = False
        return Reply(204, content_type="")

    def _document(self, sub: FakeSubscription) -> dict[str, Any]:
        return {
            "@odata.context": f"{self.api_url}/$metadata#subscriptions/$entity",
            "id": sub.id,
            "resource": sub.resource,
            "applicationId": sub.client_id,
            "changeType": sub.change_type,
            "clientState": sub.client_state,
            "notificationUrl": sub.notification_url,
            "notificationQueryOptions": None,
            "lifecycleNotificationUrl": sub.lifecycle_url,
            "expirationDateTime": graph_time(sub.expires_at),
            "creatorId": str(uuid.uuid5(uuid.NAMESPACE_URL, sub.client_id)),
            "includeResourceData": False,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
        }


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://"))
