"""``syncnotify graph check``: can syncnotify make and keep a tenant's subscriptions?  Each step says in one line.

In the order things go wrong for users: a setting missing; the token refused (wrong or expired secret,
unknown app, unknown directory); ``Calendars.Read`` missing or an access policy excluding the room; the
public URL not answering Graph's handshake as the ingress should.  A failed step stops the ones after it that
need it (no permission check without a token).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
from sqlalchemy import Engine

from syncnotify.graph import rooms
from syncnotify.graph.errors import GraphError
from syncnotify.graph.manager import Clients

#: A line of the check and whether it passed.
Step = tuple[str, bool]


def check(clients: Clients, tenant: str, mailbox: str | None, engine: Engine | None = None) -> Iterator[Step]:
    """The steps' lines; ``mailbox`` None tries the permission on a room of ``engine``'s rows, if any."""
    config = clients.config(tenant)
    if config.missing:
        yield f"tenant {tenant!r}: not set: {', '.join(config.missing)}", False
        return
    api = clients.api(tenant)
    try:
        api.credentials.token()
    except GraphError as exc:
        yield exc.message, False
        return
    yield f"token for app {config.client_id} from directory {config.directory_tenant_id}", True
    yield from _permission(clients, tenant, mailbox, engine)
    for url in (config.notification_url, config.lifecycle_url):
        yield _handshake(url)


def _permission(clients: Clients, tenant: str, mailbox: str | None, engine: Engine | None) -> Iterator[Step]:
    if mailbox is None and engine is not None:
        live = [r for r in rooms.rooms(engine, tenant) if not r.retired]
        mailbox = live[0].mailbox if live else None
    if mailbox is None:
        yield "permission not tried: no room subscribed yet; name one with --mailbox", True
        return
    try:
        clients.api(tenant).read_calendar(mailbox)
    except GraphError as exc:
        yield exc.message, False
        return
    yield f"the app may read {mailbox}'s calendar (Calendars.Read, and no access policy excludes it)", True


def _handshake(url: str) -> Step:
    """Does what Graph does before it creates a subscription: POST ``?validationToken=…``, expect it echoed."""
    token = f"Validation: syncnotify graph check {secrets.token_hex(8)} + % &"
    try:
        headers = {"Content-Type": "text/plain"}
        response = httpx.post(url, params={"validationToken": token}, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        problem = f"{type(exc).__name__}: {exc}"
        return f"the public URL {url} does not answer ({problem}): Graph's handshake would fail", False
    if response.status_code != 200 or response.text != token:
        answer = f"{response.status_code} {response.text[:80]!r}"
        return (
            f"the public URL {url} answered the handshake with {answer}, not 200 and the token: is it this ingress"
            " (with SYNCNOTIFY_GRAPH_CLIENT_STATE set), does its allowlist admit this host, does the proxy pass"
            " the query string?",
            False,
        )
    return f"the public URL {url} answers Graph's handshake", True
