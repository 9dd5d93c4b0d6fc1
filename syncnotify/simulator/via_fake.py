"""``syncnotify simulate --graph --via FAKE_URL``: the rooms are a fake Graph's live subscriptions, posted through it.

The fake (``syncnotify graph fake``) holds the subscriptions syncnotify made there.  Its ``POST /fake/deliver``
fills in each item's clientState, tenantId and expiry from its record, as Graph does, and posts the items to
the subscriptions' URLs (``syncnotify.fakegraph.control``).  So a run through the fake differs from a plain
``--graph`` run only in where the rooms come from and where the POSTs go; the player, the fleet and the check
are the same.  The fake speaks HTTPS with a CA of its own, trusted through ``SSL_CERT_FILE``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx

from ingress.checks import DEFAULT_TENANT, tenant_of
from syncnotify.simulator.options import SimulateOptions

SUBSCRIBE_FIRST = (
    "subscribe rooms first: syncnotify graph subscribe ROOM@… (with SYNCNOTIFY_GRAPH_* pointing at the fake)"
)


def deliver_url(via: str) -> str:
    return f"{via.rstrip('/')}/fake/deliver"


def _tenant(notification_url: str) -> str:
    """The ROOMS tenant the ingress files a notification URL's items under."""
    parts = urlsplit(notification_url)
    return tenant_of({"path": parts.path, "query_string": parts.query.encode("latin-1")})


def _live(via: str, timeout: float) -> list[dict[str, Any]]:
    url = f"{via.rstrip('/')}/fake/subscriptions"
    try:
        answer = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ValueError(f"cannot read the fake Graph's subscriptions at {url}: {exc}") from None
    if answer.status_code != 200:
        raise ValueError(f"{url} answered {answer.status_code}: is it a fake Graph (syncnotify graph fake)?")
    listed: list[dict[str, Any]] = answer.json()["value"]
    return listed


def through_fake(options: SimulateOptions) -> SimulateOptions:
    """``options`` with the fake's rooms (at most ``subscriptions``, by mailbox) of one tenant — ``tenant`` if
    the fake has subscriptions for it, else the only one it has — and the httpx client, which does TLS."""
    assert options.via is not None
    if not options.graph:
        raise ValueError("--via needs --graph: the fake plays Microsoft Graph")
    if options.lifecycle:
        raise ValueError("--lifecycle is not played through the fake: syncnotify's upkeep answers those at the fake")
    by_tenant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sub in _live(options.via, options.timeout):
        by_tenant[_tenant(sub["notificationUrl"])].append(sub)
    if not by_tenant:
        raise ValueError(f"the fake Graph at {options.via} has no live subscriptions: {SUBSCRIBE_FIRST}")
    if options.tenant in by_tenant:
        tenant = options.tenant
    elif options.tenant == DEFAULT_TENANT and len(by_tenant) == 1:
        (tenant,) = by_tenant
    else:
        raise ValueError(
            f"the fake Graph has no subscriptions for tenant {options.tenant!r} (it has some for "
            f"{', '.join(sorted(by_tenant))}): pass --tenant, or {SUBSCRIBE_FIRST}"
        )
    chosen = sorted(by_tenant[tenant], key=lambda sub: str(sub["mailbox"]).lower())[: options.subscriptions]
    directories = {str(sub["tenantId"]) for sub in chosen}
    if len(directories) != 1:
        raise ValueError(f"tenant {tenant!r}'s subscriptions at the fake belong to several directory tenants")
    return replace(
        options,
        subscriptions=len(chosen),
        rooms=tuple((str(sub["id"]), str(sub["mailbox"])) for sub in chosen),
        tenant=tenant,
        directory_tenant=directories.pop(),
        client="httpx",
    )
