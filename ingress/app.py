"""The FastAPI ingress: check the request, make the raw body durable, answer Exchange (SPEC §4).

Exchange's notification POSTs are answered by ``notify``, a plain ASGI handler that ``IngressApp`` calls
before FastAPI's own machinery: its middleware, routing and dependency solving cost more per request than
all of the checks together, and the POST is the one route that carries load.  Every other request (the
pages, ``/healthz``, ``/readyz``, ``/metrics``, other methods and paths) is FastAPI's as usual.
"""

from __future__ import annotations

import gc
import html
import ipaddress
import logging
import re
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from shared.errors import SpoolError
from shared.settings import Settings, get_settings
from shared.types import Payload

from . import metrics, soap
from .enqueue import Enqueuer

logger = logging.getLogger(__name__)

#: ``/Webservices/SyncNotification.svc`` with an optional tenant segment in front, any case (as IIS did).
NOTIFICATION_PATH = re.compile(r"^/(?:(?P<tenant>[^/]+)/)?webservices/syncnotification\.svc/?$", re.IGNORECASE)
DEFAULT_TENANT = "Default"

#: A request's headers by lower-case name (ASGI servers lower-case them), the first of repeated ones.
Headers = Mapping[bytes, bytes]
ASGIHandler = Callable[[Scope, Receive, Send], Awaitable[None]]


class Rejection(Exception):
    """A request that gets a 4xx answer with a short plain reason; nothing is enqueued."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


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
    match = NOTIFICATION_PATH.match(path)
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
            raise Rejection(413, f"body is larger than the limit of {limit} bytes")
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
        raise Rejection(415, f"content encoding {name!r} is not supported (gzip is)")
    return _gunzip(body, limit)


def _gunzip(body: bytes, limit: int) -> bytes:
    """Decode every gzip member (RFC 1952 allows several), never inflating more than ``limit`` (gzip bombs)."""
    parts: list[bytes] = []
    size = 0
    rest = body
    while rest:
        decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            data = decoder.decompress(rest, limit - size + 1)
        except zlib.error as exc:
            raise Rejection(400, f"body is not valid gzip: {exc}") from None
        size += len(data)
        if size > limit or decoder.unconsumed_tail:
            raise Rejection(413, f"gzip body decodes to more than the limit of {limit} bytes")
        if not decoder.eof:
            raise Rejection(400, "gzip body is truncated")
        parts.append(data)
        rest = decoder.unused_data
    return b"".join(parts)


async def check(scope: Scope, receive: Receive, settings: Settings) -> tuple[str, str, bytes]:
    """Run SPEC §4's checks in order; return (tenant, source, body) or raise ``Rejection``."""
    headers = headers_of(scope)
    source = client_address(scope, headers, settings)
    if settings.allowed_networks and not _in(source, settings.allowed_networks):
        raise Rejection(403, f"source address {source} is not allowed")
    named = tenant_of(scope)
    tenant = canonical_tenant(named, settings)
    if tenant is None:
        raise Rejection(404, f"unknown tenant {named!r}")
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    soap_action = headers.get(b"soapaction")
    if not soap.soap_action_ok(None if soap_action is None else soap_action.decode("latin-1"), content_type):
        raise Rejection(400, f"SOAPAction must be {soap.SOAP_ACTION}")
    if not soap.content_type_ok(content_type):
        raise Rejection(415, f"content type {content_type or '(none)'!r} is not text/xml or application/soap+xml")
    body = await read_body(receive, headers, settings.max_body_bytes)
    if not body:
        raise Rejection(400, "body is empty")
    return tenant, source, body


#: The headers of the answers, as Starlette's ``Response`` and ``PlainTextResponse`` would send them.
_SOAP_TYPE = (b"content-type", soap.ANSWER_CONTENT_TYPE.encode())
_TEXT_TYPE = (b"content-type", b"text/plain; charset=utf-8")


async def _answer(send: Send, status: int, body: bytes, content_type: tuple[bytes, bytes]) -> None:
    headers = [(b"content-length", str(len(body)).encode()), content_type]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class IngressApp(FastAPI):
    """FastAPI, except that a POST to the notification path goes straight to ``notify`` (see the module)."""

    notify: ASGIHandler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and NOTIFICATION_PATH.match(scope["path"]):
            await self.notify(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ingress application (``uvicorn --factory ingress.app:create_app``)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        enqueuer = Enqueuer(settings)
        app.state.enqueuer = enqueuer
        await enqueuer.start()
        # Everything alive now (modules, app, settings) lives as long as the process: keep it out of the
        # collector's full passes, whose pauses were the ingress's p99 tail (tens of ms every few seconds).
        gc.freeze()
        try:
            yield
        finally:
            await enqueuer.stop()

    app = IngressApp(title="syncnotify ingress", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    async def notify(scope: Scope, receive: Receive, send: Send) -> None:
        """A POST to the notification path: check it, make it durable, answer ``OK`` (or why not)."""
        started = time.perf_counter()
        try:
            tenant, source, body = await check(scope, receive, settings)
        except Rejection as rejection:
            metrics.requests(rejection.status).inc()
            logger.info("rejected a post with %d: %s", rejection.status, rejection.reason)
            return await _answer(send, rejection.status, rejection.reason.encode(), _TEXT_TYPE)
        except ClientGone:
            logger.info("a client disconnected before its whole post arrived; nothing stored")
            return None
        ids = soap.scan_subscription_ids(body)
        payload = Payload(
            id=uuid.uuid4().hex,
            tenant=tenant,
            received_at=round(time.time(), 6),  # microseconds, as the databases keep them
            source=source,
            subscription_ids=ids,
            body=body,
        )
        enqueuer: Enqueuer = app.state.enqueuer
        try:
            where = await enqueuer.submit(payload)
        except SpoolError:
            metrics.requests(503).inc()
            return await _answer(send, 503, b"cannot store the notification now; retry later", _TEXT_TYPE)
        metrics.enqueue_seconds(where).observe(time.perf_counter() - started)
        metrics.requests(200).inc()
        answer = soap.UNSUBSCRIBE if enqueuer.unsubscribed and enqueuer.unsubscribed.intersection(ids) else soap.OK
        return await _answer(send, 200, answer, _SOAP_TYPE)

    app.notify = notify

    @app.post("/{path:path}")
    async def other_post(request: Request) -> Response:
        return PlainTextResponse("not found", status_code=404)  # notification paths never get here

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    def admin(request: Request) -> bool:
        """Whether the client may see the admin side (metrics, readiness detail)."""
        return _in(client_address(request.scope, headers_of(request.scope), settings), settings.admin_networks)

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        detail = request.app.state.enqueuer.ready()
        ready = detail["redis"] == "ok" or detail["spool"]["writable"]
        body = {"ready": ready, **detail} if admin(request) else {"ready": ready}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics_endpoint(request: Request) -> Response:
        if not admin(request):
            return PlainTextResponse("metrics are served to SYNCNOTIFY_ADMIN_NETWORKS only", status_code=403)
        metrics.SPOOL_BACKLOG.set(request.app.state.enqueuer.spool.backlog)
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    @app.get("/{path:path}")
    async def page(request: Request) -> Response:
        if not NOTIFICATION_PATH.match(request.scope["path"]):
            return PlainTextResponse("not found", status_code=404)
        tenant = canonical_tenant(tenant_of(request.scope), settings)
        if tenant is None:
            return PlainTextResponse(f"unknown tenant {tenant_of(request.scope)!r}", status_code=404)
        name = html.escape(tenant)
        return HTMLResponse(
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>syncnotify</title></head><body>"
            f"<h1>syncnotify</h1><p>The Exchange notification service for tenant <b>{name}</b> is reachable.</p>"
            "<p>Exchange delivers push notifications to this address with HTTP POST.</p></body></html>"
        )

    return app
