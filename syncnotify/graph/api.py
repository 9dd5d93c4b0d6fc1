"""Microsoft Graph's ``/subscriptions`` endpoints for one ROOMS tenant (GRAPH.md §8), over httpx.

Each call retries what waiting can cure: a 429 waits its ``Retry-After`` when that is at most ``max_wait``
seconds (longer: ``Throttled`` at once, for the caller to come back later); 5xx answers and network errors
back off exponentially with jitter, ``attempts`` tries in all; a 401 drops the cached token and tries once
more with a new one.  Whatever is left is raised as a ``GraphError`` subclass saying what failed, for which
tenant.
"""

from __future__ import annotations

import builtins
import logging
import random
import re
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from shared.graph_tenants import GraphTenant
from syncnotify.graph.credentials import Credentials, trusted_ca_file
from syncnotify.graph.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    GraphAuthError,
    GraphError,
    NotFound,
    Throttled,
    Unavailable,
    ValidationFailed,
)

logger = logging.getLogger(__name__)

USER_AGENT = "syncnotify"
#: Seconds to wait for Graph; a create waits longer, as Graph answers only after both validation handshakes
#: (up to 10 s each, GRAPH.md §1).
TIMEOUT = httpx.Timeout(15.0, connect=10.0)
CREATE_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
NO_SUBSCRIPTION = "Graph has no such subscription (it expired, was deleted, or Graph lost it)"
#: The first backoff after a 5xx or a network error, doubled on each further try.
BACKOFF = 0.5


@dataclass(frozen=True, slots=True)
class Subscription:
    """A Graph subscription as Graph describes it; ``expires_at`` is aware UTC."""

    id: str
    resource: str
    change_type: str
    notification_url: str
    lifecycle_url: str | None
    expires_at: datetime
    client_state: str | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Subscription:
        """From Graph's JSON; a missing or malformed field raises ``ValueError`` naming it."""
        try:
            return cls(
                id=str(data["id"]),
                resource=str(data["resource"]),
                change_type=str(data["changeType"]),
                notification_url=str(data["notificationUrl"]),
                lifecycle_url=data.get("lifecycleNotificationUrl"),
                expires_at=parse_time(str(data["expirationDateTime"])),
                client_state=data.get("clientState"),
            )
        except KeyError as exc:
            raise ValueError(f"Graph's subscription lacks {exc.args[0]!r}") from None


def format_time(moment: datetime) -> str:
    """``moment`` as Graph takes it: ISO 8601 in UTC with ``Z``; a naive datetime raises ``ValueError``."""
    if moment.tzinfo is None:
        raise ValueError(f"{moment.isoformat()} has no time zone; Graph's expiry must be an aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(text: str) -> datetime:
    """Graph's ``2026-12-03T07:00:00.1234567Z`` (up to 7 decimals) as an aware UTC datetime."""
    # Python 3.11 reads 7 decimals, but only if no offset follows; cut to the microseconds it keeps
    normalized = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(normalized)
    except ValueError:
        raise ValueError(f"Graph's time {text!r} is not ISO 8601") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def retry_after(response: httpx.Response, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> float | None:
    """The seconds ``Retry-After`` asks for (a number or an HTTP date); ``None`` when absent or unreadable."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now()).total_seconds())


class GraphAPI:
    """The Graph subscription calls of ``tenant``, authenticated by ``credentials``.

    ``http`` is the client to use (one is made, trusting ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE``, if it is
    ``None``); ``sleep`` is how retries wait.  Every method raises a ``GraphError`` subclass on failure.
    """

    def __init__(
        self,
        tenant: GraphTenant,
        credentials: Credentials,
        http: httpx.Client | None = None,
        *,
        attempts: int = 4,
        max_wait: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        self.tenant = tenant
        self.credentials = credentials
        self._own_http = http is None
        self.http = http if http is not None else make_http_client()
        self.attempts = attempts
        self.max_wait = max_wait
        self.sleep = sleep
        self.base_url = tenant.api_url.rstrip("/")

    def __repr__(self) -> str:
        return f"GraphAPI(tenant={self.tenant.tenant!r}, api_url={self.base_url!r})"

    def close(self) -> None:
        if self._own_http:
            self.http.close()

    def __enter__(self) -> GraphAPI:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def create(
        self,
        resource: str,
        notification_url: str,
        lifecycle_url: str,
        client_state: str,
        expires: datetime,
        change_type: str = "created,updated,deleted",
    ) -> Subscription:
        """A new subscription on ``resource``; Graph answers only after its handshakes with both URLs pass.

        ``ValidationFailed``: a handshake failed (is the ingress reachable?).  ``Conflict``: the app already has
        one on this resource (``existing_id``), also when a retried create had in fact succeeded.
        """
        body = {
            "changeType": change_type,
            "notificationUrl": notification_url,
            "lifecycleNotificationUrl": lifecycle_url,
            "resource": resource,
            "expirationDateTime": format_time(expires),
            "clientState": client_state,
        }
        what = f"creating the subscription on {resource}"
        response = self._call("POST", "/subscriptions", what, json=body, timeout=CREATE_TIMEOUT, url=notification_url)
        return self._subscription(response, what)

    def renew(self, subscription_id: str, expires: datetime) -> Subscription:
        """Extends the subscription to ``expires`` (Graph may grant less: read ``expires_at``); it reauthorizes too."""
        what = f"renewing subscription {subscription_id}"
        body = {"expirationDateTime": format_time(expires)}
        return self._subscription(self._call("PATCH", self._path(subscription_id), what, json=body), what)

    def reauthorize(self, subscription_id: str) -> None:
        """Answers Graph's ``reauthorizationRequired`` for the subscription."""
        self._call(
            "POST", self._path(subscription_id) + "/reauthorize", f"reauthorizing subscription {subscription_id}"
        )

    def delete(self, subscription_id: str) -> None:
        """Deletes the subscription at Graph; ``NotFound`` if Graph has none (the caller decides if that is fine)."""
        self._call("DELETE", self._path(subscription_id), f"deleting subscription {subscription_id}")

    def get(self, subscription_id: str) -> Subscription:
        what = f"reading subscription {subscription_id}"
        return self._subscription(self._call("GET", self._path(subscription_id), what), what)

    def read_calendar(self, mailbox: str) -> None:
        """Reads one event of ``mailbox``: proves ``Calendars.Read`` and that no access policy excludes the room."""
        path = f"/users/{quote(mailbox, safe='@')}/events?$top=1&$select=id"
        missing = f"Graph knows no mailbox {mailbox}"
        self._call("GET", path, f"reading the calendar of users/{mailbox}/events", not_found=missing)

    def list(self) -> builtins.list[Subscription]:
        """The app's subscriptions, every page."""
        what = "listing the subscriptions"
        found: builtins.list[Subscription] = []
        path: str | None = "/subscriptions"
        while path is not None:
            document = self._json(self._call("GET", path, what), what)
            found.extend(self._parse(item, what) for item in document.get("value", []))
            path = document.get("@odata.nextLink")
            if path is not None and not str(path).startswith(self.base_url + "/"):
                # the bearer token goes with the request: only to Graph itself
                raise BadRequest(f"tenant {self.tenant.tenant!r}: {what}: Graph's next page {path!r} is elsewhere")
        return found

    @staticmethod
    def _path(subscription_id: str) -> str:
        return f"/subscriptions/{quote(subscription_id, safe='')}"

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json: dict[str, Any] | None = None,
        timeout: httpx.Timeout = TIMEOUT,
        url: str | None = None,
        not_found: str = NO_SUBSCRIPTION,
    ) -> httpx.Response:
        """The successful answer to one request, after the retries; ``url``: the notification URL of a create,
        ``not_found``: what a 404 means."""
        target = path if path.startswith(self.base_url + "/") else self.base_url + path
        renewed_token = False
        attempt = 0
        while True:
            attempt += 1
            request_id = str(uuid.uuid4())
            try:
                headers = {
                    "Authorization": f"Bearer {self.credentials.token()}",
                    "client-request-id": request_id,
                    "return-client-request-id": "true",
                }
                response = self.http.request(method, target, json=json, headers=headers, timeout=timeout)
            except httpx.TransportError as exc:
                error: GraphError = Unavailable(
                    f"tenant {self.tenant.tenant!r}: {what} failed: Graph at {self.base_url} did not answer "
                    f"({_transport_problem(exc, timeout)})",
                    request_id=request_id,
                )
            else:
                if response.is_success:
                    return response
                if response.status_code == 401 and not renewed_token:
                    renewed_token = True
                    attempt -= 1  # a new token is not a retry
                    self.credentials.forget_token()
                    continue
                error = self._error(response, what, url, not_found)
            wait = self._wait(error, attempt)
            if wait is None:
                raise error
            logger.info(
                "%s; trying again in %.1f s (try %d of %d)",
                error.message,
                wait,
                attempt + 1,
                self.attempts,
                extra={"tenant": self.tenant.tenant},
            )
            self.sleep(wait)

    def _wait(self, error: GraphError, attempt: int) -> float | None:
        """Seconds to wait before trying again after ``error`` on try ``attempt``; ``None``: give up."""
        if not error.transient or attempt >= self.attempts:
            return None
        if error.retry_after is not None:
            return error.retry_after if error.retry_after <= self.max_wait else None
        backoff: float = min(self.max_wait, BACKOFF * 2 ** (attempt - 1))
        return backoff * random.uniform(0.5, 1.0)  # jitter: workers that failed together do not retry together

    def _error(self, response: httpx.Response, what: str, url: str | None, not_found: str) -> GraphError:
        """The ``GraphError`` that ``response``, a failure, stands for."""
        status = response.status_code
        code, message = _graph_error(response)
        where = f"tenant {self.tenant.tenant!r}: {what} failed"
        details: dict[str, Any] = {
            "status": status,
            "code": code,
            "retry_after": retry_after(response),
            "request_id": response.headers.get("request-id") or response.headers.get("client-request-id"),
        }
        said = f"{status} {code}: {message}" if code else f"{status}: {message}"
        if status == 429:
            return Throttled(f"{where}: Graph is throttling the app ({said})", **details)
        if status >= 500:
            return Unavailable(f"{where}: Graph is unavailable ({said})", **details)
        if status == 401:
            return GraphAuthError(f"{where}: Graph refused a new access token ({said})", **details)
        if status == 403:
            return Forbidden(f"{where}: {_forbidden_reason(message, what)} ({said})", **details)
        if status == 404:
            return NotFound(f"{where}: {not_found} ({said})", **details)
        if status == 409:
            return Conflict(f"{where}: the app already has a subscription on it ({said})", **details)
        if status == 400 and url is not None and _is_handshake_failure(code, message):
            return ValidationFailed(
                f"{where}: Graph could not validate the notification URL {url}: {message.rstrip('.')}; "
                "is the ingress reachable at SYNCNOTIFY_PUBLIC_URL?",
                **details,
            )
        return BadRequest(f"{where}: Graph refused the request ({said})", **details)

    def _subscription(self, response: httpx.Response, what: str) -> Subscription:
        return self._parse(self._json(response, what), what)

    def _json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            document = response.json()
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise BadRequest(
                f"tenant {self.tenant.tenant!r}: {what}: Graph's {response.status_code} answer is not a JSON object",
                status=response.status_code,
            )
        return document

    def _parse(self, item: Any, what: str) -> Subscription:
        try:
            if not isinstance(item, dict):
                raise ValueError("Graph's subscription is not a JSON object")
            return Subscription.from_json(item)
        except ValueError as exc:
            raise BadRequest(f"tenant {self.tenant.tenant!r}: {what}: {exc}") from None


def make_http_client() -> httpx.Client:
    """An HTTP client for Graph that trusts the CA bundle the environment names, or the system's."""
    ca_file = trusted_ca_file()
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
    return httpx.Client(verify=verify, timeout=TIMEOUT, headers={"User-Agent": USER_AGENT}, trust_env=True)


def _graph_error(response: httpx.Response) -> tuple[str | None, str]:
    """Graph's error ``code`` and ``message`` from ``{"error": {...}}``, or the body's first line."""
    try:
        document = response.json()
    except ValueError:
        document = None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        return (str(code) if code else None), " ".join(str(error.get("message", "")).split())
    text = " ".join(response.text.split())[:200]
    return None, text or response.reason_phrase


def _is_handshake_failure(code: str | None, message: str) -> bool:
    lowered = message.lower()
    return code == "ValidationError" or "validation request" in lowered or "notification endpoint" in lowered


def _forbidden_reason(message: str, what: str) -> str:
    lowered = message.lower()
    mailbox = _mailbox(what)
    if "accesspolicy" in lowered.replace(" ", "") or "raop" in lowered:
        return f"an application access policy excludes {mailbox}"
    if "limit" in lowered or "quota" in lowered:
        return f"a Graph subscription quota is reached for {mailbox}"
    return (
        "the app lacks the Calendars.Read application permission (with admin consent) "
        f"or an application access policy excludes {mailbox}"
    )


def _mailbox(what: str) -> str:
    found = re.search(r"users/([^/\s]+)/", what)
    return f"mailbox {found.group(1)}" if found else "the subscription's mailbox"


def _transport_problem(exc: httpx.TransportError, timeout: httpx.Timeout) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout.read:g} s"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}"
