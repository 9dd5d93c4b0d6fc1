"""What can go wrong talking to Microsoft Graph and its token authority, one class per thing a caller does about it.

Every message is one line naming the ROOMS tenant and what failed.  ``transient`` says whether the same call
may succeed later without anyone changing anything (throttling, an outage); the rest need an operator.
"""

from __future__ import annotations

import re

from shared.errors import SyncNotifyError


class GraphError(SyncNotifyError):
    """A Graph or token call that failed: HTTP ``status`` (``None`` without an answer), Graph's error ``code``."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.request_id = request_id

    @property
    def transient(self) -> bool:
        return False


class GraphAuthError(GraphError):
    """No token: the authority refused the credentials (the message says which), or they cannot be used."""


class Forbidden(GraphError):
    """403: the app lacks ``Calendars.Read``, an application access policy excludes the mailbox, or a quota."""


class NotFound(GraphError):
    """404: Graph has no such subscription (it expired, was deleted, or Graph lost it)."""


class Conflict(GraphError):
    """409: the app already has a subscription on this resource and change type; ``existing_id`` if Graph names it."""

    @property
    def existing_id(self) -> str | None:
        found = _EXISTING_ID.search(self.message)
        return found.group(1) if found else None


class BadRequest(GraphError):
    """Another 4xx: Graph refused the request as made."""


class ValidationFailed(BadRequest):
    """400 on create: Graph's validation handshake with the notification or lifecycle URL failed."""


class Unavailable(GraphError):
    """5xx, a timeout or no connection: Graph or the authority may answer later."""

    @property
    def transient(self) -> bool:
        return True


class AuthorityUnreachable(GraphAuthError, Unavailable):
    """The token authority did not answer (network, 5xx): no token, but nothing is wrong with the credentials."""


class Throttled(GraphError):
    """429: Graph asks to wait ``retry_after`` seconds (``None``: it did not say)."""

    @property
    def transient(self) -> bool:
        return True


# Graph: "Subscription Id 2f1c… already exists for the requested combination" (GRAPH.md §6).
_EXISTING_ID = re.compile(r"Subscription Id <?([^\s<>'\"]+?)>?\s+already exists", re.IGNORECASE)
