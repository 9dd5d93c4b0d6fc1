"""The checks of SPEC §4 on a notification POST, in order, read off the ASGI scope and body.

No DOM and no framework objects: these run for every post, before FastAPI's machinery (see ``ingress.app``).
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from collections.abc import Mapping
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope

from shared.ews import SOAP_ACTION
from shared.settings import Settings

from . import soap

#: ``/Webservices/SyncNotification.svc``, or ROOMS' own EWS callback path ``/api/webhooks/exchange`` (SPEC §4),
#: with an optional tenant segment in front, any case (as IIS did).
NOTIFICATION_PATH = re.compile(
    r"^/(?:(?P<tenant>[^/]+)/)?(?:webservices/syncnotification\.svc|api/webhooks/exchange)/?$", re.IGNORECASE
)
#: Microsoft Graph's webhooks, at the paths ROOMS registers for its own (SPEC §9): change notifications, and
#: lifecycle notifications under ``/lifecycle``.
GRAPH_PATH = re.compile(r"^/(?:(?P<tenant>[^/]+)/)?api/webhooks/graph(?P<lifecycle>/lifecycle)?/?$", re.IGNORECASE)
DEFAULT_TENANT = "Default"

#: A request's headers by lower-case name (ASGI servers lower-case them), the first of repeated ones.
Headers = Mapping[bytes, bytes]


class Rejection(Exception):
    """A request that gets a 4xx answer with a short plain reason; nothing is enqueued.

    ``body_pending``: whether some of the request body may still be on its way (the checks stopped
    before its end), so that the answer must be followed by a lingering close.
    """

    def __init__(self, status: int, reason: str, *, body_pending: bool = True, code: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.body_pending = body_pending
        #: a short stable name for metrics (``syncnotify_graph_rejected_total{reason=…}``)
        self.code = code or _CODES.get(status, str(status))


_CODES = {403: "source", 404: "tenant", 413: "too_large", 415: "content_type", 400: "bad_request"}


class ClientGone(Exception):
    """The client disconnected before its whole body arrived: nobody is left to answer, nothing is stored."""


def headers_of(scope: Scope) -> Headers:
    """The request's headers; of a repeated header the first, as Starlette's ``Headers.get`` returns."""
    return dict(reversed(scope["headers"]))


def client_address(scope: Scope, headers: Headers, settings: Settings) -> str:
    """The sender's address: the peer, or ``X-Forwarded-For`` when the peer is a trusted proxy.

    Walks the header from the right, skipping trusted proxies, so a client cannot spoof its address by
    putting one in front.
    """
    client = scope.get("client")
    peer: str = client[0] if client else ""
    if not settings.trusted_proxies or not _in(peer, settings.trusted_proxies):
        return peer
    header = headers.get(b"x-forwarded-for", b"").decode("latin-1")
    forwarded = [a.strip() for a in header.split(",") if a.strip()]
    for address in reversed(forwarded):
        if not _in(address, settings.trusted_proxies):
            return address
    return forwarded[0] if forwarded else peer


def _in(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def tenant_of(scope: Scope) -> str:
    """Path segment, else the first bare query key (``?Default``), else ``?tenant=``, else ``Default``."""
    # read from the ASGI scope: building request.url costs more than the rest of the checks together
    path: str = scope["path"]
    match = NOTIFICATION_PATH.match(path) or GRAPH_PATH.match(path)
    if match and match.group("tenant"):
        return match.group("tenant")
    query: str = scope["query_string"].decode("latin-1")
    if not query:
        return DEFAULT_TENANT
    for part in query.split("&"):
        if part and "=" not in part:
            return part
    return next((value for name, value in parse_qsl(query) if name == "tenant" and value), DEFAULT_TENANT)


def canonical_tenant(tenant: str, settings: Settings) -> str | None:
    """The configured spelling of ``tenant``, ``tenant`` itself under ``*``, or ``None`` if unknown."""
    for known in settings.tenants:
        if known == tenant or known.casefold() == tenant.casefold():
            return known
    return tenant if "*" in settings.tenants else None


async def read_body(receive: Receive, headers: Headers, limit: int) -> bytes:
    """The body, gzip-decoded if so encoded; ``Rejection`` 413 past ``limit`` bytes (before or after decoding)."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejection(413, f"body of {declared.decode()} bytes is larger than the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            more: bool = message.get("more_body", False)
            raise Rejection(413, f"body is larger than the limit of {limit} bytes", body_pending=more)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = headers.get(b"content-encoding")
    if encoding is None:
        return body
    name = encoding.decode("latin-1").strip().lower()
    if name in ("", "identity"):
        return body
    if name not in ("gzip", "x-gzip"):
        raise Rejection(415, f"content encoding {name!r} is not supported (gzip is)", body_pending=False)
    return gunzip(body, limit)


def gunzip(body: bytes, limit: int) -> bytes:
    """Decode every gzip member (RFC 1952 allows several), never inflating more than ``limit`` (gzip bombs)."""
    parts: list[bytes] = []
    size = 0
    rest = body
    while rest:
        decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            data = decoder.decompress(rest, limit - size + 1)
        except zlib.error as exc:
            raise Rejection(400, f"body is not valid gzip: {exc}", body_pending=False) from None
        size += len(data)
        if size > limit or decoder.unconsumed_tail:
            raise Rejection(413, f"gzip body decodes to more than the limit of {limit} bytes", body_pending=False)
        if not decoder.eof:
            raise Rejection(400, "gzip body is truncated", body_pending=False)
        parts.append(data)
        rest = decoder.unused_data
    return b"".join(parts)


def allowed_tenant(scope: Scope, headers: Headers, settings: Settings) -> tuple[str, str]:
    """The first two checks of every notification path: source allowed (403), tenant known (404).

    Returns (tenant, source).
    """
    source = client_address(scope, headers, settings)
    if settings.allowed_networks and not _in(source, settings.allowed_networks):
        raise Rejection(403, f"source address {source} is not allowed")
    named = tenant_of(scope)
    tenant = canonical_tenant(named, settings)
    if tenant is None:
        raise Rejection(404, f"unknown tenant {named!r}")
    return tenant, source


async def check(scope: Scope, receive: Receive, settings: Settings) -> tuple[str, str, bytes]:
    """Run SPEC §4's checks in order; return (tenant, source, body) or raise ``Rejection``."""
    headers = headers_of(scope)
    tenant, source = allowed_tenant(scope, headers, settings)
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    soap_action = headers.get(b"soapaction")
    if not soap.soap_action_ok(None if soap_action is None else soap_action.decode("latin-1"), content_type):
        raise Rejection(400, f"SOAPAction must be {SOAP_ACTION}")
    if not soap.content_type_ok(content_type):
        raise Rejection(415, f"content type {content_type or '(none)'!r} is not text/xml or application/soap+xml")
    body = await read_body(receive, headers, settings.max_body_bytes)
    if not body:
        raise Rejection(400, "body is empty", body_pending=False)
    return tenant, source, body
