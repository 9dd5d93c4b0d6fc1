"""The FastAPI ingress: check the request, make the raw body durable, answer Exchange (SPEC §4)."""

from __future__ import annotations

import gc
import html
import ipaddress
import logging
import re
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from shared.errors import SpoolError
from shared.settings import Settings, get_settings
from shared.types import Payload

from . import metrics, soap
from .enqueue import Enqueuer

logger = logging.getLogger(__name__)

#: ``/Webservices/SyncNotification.svc`` with an optional tenant segment in front, any case (as IIS did).
NOTIFICATION_PATH = re.compile(r"^/(?:(?P<tenant>[^/]+)/)?webservices/syncnotification\.svc/?$", re.IGNORECASE)
DEFAULT_TENANT = "Default"


class Rejection(Exception):
    """A request that gets a 4xx answer with a short plain reason; nothing is enqueued."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def client_address(request: Request, settings: Settings) -> str:
    """The sender's address: the peer, or ``X-Forwarded-For`` when the peer is a trusted proxy.

    Walks the header from the right, skipping trusted proxies, so a client cannot spoof its address by
    putting one in front.
    """
    peer = request.client.host if request.client else ""
    if not settings.trusted_proxies or not _in(peer, settings.trusted_proxies):
        return peer
    forwarded = [a.strip() for a in request.headers.get("x-forwarded-for", "").split(",") if a.strip()]
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


def tenant_of(request: Request) -> str:
    """Path segment, else the first bare query key (``?Default``), else ``?tenant=``, else ``Default``."""
    # read from the ASGI scope: building request.url costs more than the rest of the checks together
    path: str = request.scope["path"]
    match = NOTIFICATION_PATH.match(path)
    if match and match.group("tenant"):
        return match.group("tenant")
    query: str = request.scope["query_string"].decode("latin-1")
    for part in query.split("&"):
        if part and "=" not in part:
            return part
    return next((value for name, value in parse_qsl(query) if name == "tenant" and value), DEFAULT_TENANT)


def canonical_tenant(tenant: str, settings: Settings) -> str | None:
    """The configured spelling of ``tenant``, ``tenant`` itself under ``*``, or ``None`` if unknown."""
    for known in settings.tenants:
        if known.casefold() == tenant.casefold():
            return known
    return tenant if "*" in settings.tenants else None


async def read_body(request: Request, limit: int) -> bytes:
    """The body, gzip-decoded if so encoded; ``Rejection`` 413 past ``limit`` bytes (before or after decoding)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejection(413, f"body of {declared} bytes is larger than the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejection(413, f"body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise Rejection(415, f"content encoding {encoding!r} is not supported (gzip is)")
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


async def check(request: Request, settings: Settings) -> tuple[str, str, bytes]:
    """Run SPEC §4's checks in order; return (tenant, source, body) or raise ``Rejection``."""
    source = client_address(request, settings)
    if settings.allowed_networks and not _in(source, settings.allowed_networks):
        raise Rejection(403, f"source address {source} is not allowed")
    named = tenant_of(request)
    tenant = canonical_tenant(named, settings)
    if tenant is None:
        raise Rejection(404, f"unknown tenant {named!r}")
    content_type = request.headers.get("content-type", "")
    if not soap.soap_action_ok(request.headers.get("soapaction"), content_type):
        raise Rejection(400, f"SOAPAction must be {soap.SOAP_ACTION}")
    if not soap.content_type_ok(content_type):
        raise Rejection(415, f"content type {content_type or '(none)'!r} is not text/xml or application/soap+xml")
    body = await read_body(request, settings.max_body_bytes)
    if not body:
        raise Rejection(400, "body is empty")
    return tenant, source, body


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

    app = FastAPI(title="syncnotify ingress", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/{path:path}")
    async def notify(request: Request) -> Response:
        if not NOTIFICATION_PATH.match(request.scope["path"]):
            return PlainTextResponse("not found", status_code=404)
        started = time.perf_counter()
        try:
            tenant, source, body = await check(request, settings)
        except Rejection as rejection:
            metrics.REQUESTS.labels(str(rejection.status)).inc()
            logger.info("rejected a post with %d: %s", rejection.status, rejection.reason)
            return PlainTextResponse(rejection.reason, status_code=rejection.status)
        ids = soap.scan_subscription_ids(body)
        payload = Payload(
            id=uuid.uuid4().hex,
            tenant=tenant,
            received_at=round(time.time(), 6),  # microseconds, as the databases keep them
            source=source,
            subscription_ids=ids,
            body=body,
        )
        enqueuer: Enqueuer = request.app.state.enqueuer
        try:
            where = await enqueuer.submit(payload)
        except SpoolError:
            metrics.REQUESTS.labels("503").inc()
            return PlainTextResponse("cannot store the notification now; retry later", status_code=503)
        metrics.ENQUEUE_SECONDS.labels(where).observe(time.perf_counter() - started)
        metrics.REQUESTS.labels("200").inc()
        answer = soap.UNSUBSCRIBE if enqueuer.unsubscribed.intersection(ids) else soap.OK
        return Response(answer, media_type=soap.ANSWER_CONTENT_TYPE)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    def admin(request: Request) -> bool:
        """Whether the client may see the admin side (metrics, readiness detail)."""
        return _in(client_address(request, settings), settings.admin_networks)

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
        tenant = canonical_tenant(tenant_of(request), settings)
        if tenant is None:
            return PlainTextResponse(f"unknown tenant {tenant_of(request)!r}", status_code=404)
        name = html.escape(tenant)
        return HTMLResponse(
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>syncnotify</title></head><body>"
            f"<h1>syncnotify</h1><p>The Exchange notification service for tenant <b>{name}</b> is reachable.</p>"
            "<p>Exchange delivers push notifications to this address with HTTP POST.</p></body></html>"
        )

    return app
