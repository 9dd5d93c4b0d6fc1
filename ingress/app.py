"""The FastAPI ingress: check the request, make the raw body durable, answer Exchange (SPEC §4).

Exchange's notification POSTs are answered by ``notify``, a plain ASGI handler that ``IngressApp`` calls
before FastAPI's own machinery: its middleware, routing and dependency solving cost more per request than
all of the checks together, and the POST is the one route that carries load.  Every other request (the
pages, ``/healthz``, ``/readyz``, ``/metrics``, other methods and paths) is FastAPI's as usual.
"""

from __future__ import annotations

import asyncio
import gc
import html
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from shared.errors import SpoolError
from shared.settings import Settings, get_settings
from shared.types import Payload

from . import graph, metrics, soap
from .checks import (
    GRAPH_PATH,
    NOTIFICATION_PATH,
    ClientGone,
    Rejection,
    _in,
    canonical_tenant,
    check,
    client_address,
    headers_of,
    tenant_of,
)
from .enqueue import Enqueuer

logger = logging.getLogger(__name__)

ASGIHandler = Callable[[Scope, Receive, Send], Awaitable[None]]

#: After a refusal sent before the whole body arrived, at most this much more of the body is read (and
#: dropped), for at most this long, before the connection is closed (see ``_refuse``).
LINGER_BYTES = 8 * 1024 * 1024
LINGER_SECONDS = 2.0

#: The headers of the answers, as Starlette's ``Response`` and ``PlainTextResponse`` would send them.
_SOAP_TYPE = (b"content-type", soap.ANSWER_CONTENT_TYPE.encode())
_TEXT_TYPE = (b"content-type", b"text/plain; charset=utf-8")


async def _answer(send: Send, status: int, body: bytes, content_type: tuple[bytes, bytes]) -> None:
    headers = [(b"content-length", str(len(body)).encode()), content_type]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _refuse(send: Send, receive: Receive, rejection: Rejection) -> None:
    """Answer ``rejection``; if the body has not all arrived, close the connection the way nginx does.

    Closing a socket with unread data makes the kernel reset it, and a client that writes its whole body
    before it reads (most do) would get ECONNRESET instead of the answer.  So the answer goes out at once,
    then the rest of the body is read and dropped (up to ``LINGER_BYTES``, for ``LINGER_SECONDS``), and
    only then is the connection closed.
    """
    await _answer_text(send, receive, rejection.status, rejection.reason.encode(), rejection.body_pending)


async def _answer_text(send: Send, receive: Receive, status: int, text: bytes, body_pending: bool) -> None:
    """A plain-text answer; with ``body_pending``, followed by the lingering close ``_refuse`` describes."""
    if not body_pending:
        return await _answer(send, status, text, _TEXT_TYPE)
    headers = [(b"content-length", str(len(text)).encode()), _TEXT_TYPE, (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    # more_body: the client has the whole answer (Content-Length), but the server must not close yet
    await send({"type": "http.response.body", "body": text, "more_body": True})
    await _discard_body(receive)
    await send({"type": "http.response.body", "body": b""})


async def _discard_body(receive: Receive) -> None:
    """Read the rest of the request body and drop it, within ``LINGER_BYTES`` and ``LINGER_SECONDS``."""
    left = LINGER_BYTES
    try:
        async with asyncio.timeout(LINGER_SECONDS):
            while left > 0:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                left -= len(message.get("body", b""))
    except TimeoutError:
        pass


def _notifier(app: FastAPI, settings: Settings) -> ASGIHandler:
    """``notify`` for ``app``: its ``Enqueuer`` is ``app.state.enqueuer`` once the lifespan started it."""

    async def notify(scope: Scope, receive: Receive, send: Send) -> None:
        """A POST to the notification path: check it, make it durable, answer ``OK`` (or why not)."""
        started = time.perf_counter()
        try:
            tenant, source, body = await check(scope, receive, settings)
        except Rejection as rejection:
            metrics.requests(rejection.status).inc()
            logger.info("rejected a post with %d: %s", rejection.status, rejection.reason)
            return await _refuse(send, receive, rejection)
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

    return notify


async def _answer_handshake(send: Send, receive: Receive, handshake: graph.Handshake) -> None:
    """``200`` with the decoded token as plain text; a body (Graph sends none) is read and dropped."""
    metrics.GRAPH_VALIDATIONS.inc()
    logger.info("answered a Graph validation request")
    await _answer_text(send, receive, 200, handshake.token.encode(), handshake.body_pending)


def _graph_notifier(app: FastAPI, settings: Settings) -> ASGIHandler:
    """``notify`` for Graph's webhooks (SPEC §9): the handshake, or the accepted items made durable, then 202."""

    async def notify(scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        enqueuer: Enqueuer = app.state.enqueuer
        try:
            accepted = await graph.check(scope, receive, settings)
        except graph.Handshake as handshake:
            metrics.requests(200).inc()
            return await _answer_handshake(send, receive, handshake)
        except Rejection as rejection:
            metrics.requests(rejection.status).inc()
            metrics.GRAPH_REJECTED.labels(rejection.code).inc()
            enqueuer.count_rejected(rejection.code)
            logger.info("rejected a Graph post with %d: %s", rejection.status, rejection.reason)
            return await _refuse(send, receive, rejection)
        except ClientGone:
            logger.info("a client disconnected before its whole Graph post arrived; nothing stored")
            return None
        if accepted.rejected:
            metrics.GRAPH_REJECTED.labels("client_state").inc(accepted.rejected)
            enqueuer.count_rejected("client_state", accepted.rejected)
            logger.warning(
                "dropped %d Graph item(s) without a matching clientState",
                accepted.rejected,
                extra={"tenant": accepted.tenant, "source": accepted.source},
            )
        if accepted.body:
            payload = Payload(
                id=uuid.uuid4().hex,
                tenant=accepted.tenant,
                received_at=round(time.time(), 6),
                source=accepted.source,
                subscription_ids=accepted.subscription_ids,
                body=accepted.body,
                kind="graph",
            )
            try:
                where = await enqueuer.submit(payload)
            except SpoolError:
                metrics.requests(503).inc()
                return await _answer(send, 503, b"cannot store the notifications now; retry later", _TEXT_TYPE)
            metrics.enqueue_seconds(where).observe(time.perf_counter() - started)
            metrics.GRAPH_ITEMS.labels("change").inc(accepted.changes)
            for event, count in accepted.lifecycle.items():
                metrics.GRAPH_ITEMS.labels("lifecycle").inc(count)
                metrics.GRAPH_LIFECYCLE.labels(event).inc(count)
        metrics.requests(202).inc()
        return await _answer(send, 202, b"", _TEXT_TYPE)

    return notify


class IngressApp(FastAPI):
    """FastAPI, except that notification POSTs go straight to their handlers (see the module)."""

    notify: ASGIHandler
    notify_graph: ASGIHandler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            if NOTIFICATION_PATH.match(scope["path"]):
                return await self.notify(scope, receive, send)
            if GRAPH_PATH.match(scope["path"]):
                return await self.notify_graph(scope, receive, send)
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

    app.notify = _notifier(app, settings)
    app.notify_graph = _graph_notifier(app, settings)

    @app.post("/{path:path}")
    async def other_post() -> Response:
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
        graph_path = GRAPH_PATH.match(request.scope["path"])
        if not graph_path and not NOTIFICATION_PATH.match(request.scope["path"]):
            return PlainTextResponse("not found", status_code=404)
        tenant = canonical_tenant(tenant_of(request.scope), settings)
        if tenant is None:
            return PlainTextResponse(f"unknown tenant {tenant_of(request.scope)!r}", status_code=404)
        name = html.escape(tenant)
        if graph_path:
            if not settings.graph_client_states(tenant):
                return PlainTextResponse(
                    f"Microsoft Graph notifications are not enabled for tenant {tenant!r}", status_code=404
                )
            which = "lifecycle notifications" if graph_path.group("lifecycle") else "change notifications"
            return HTMLResponse(
                "<!doctype html><html lang=en><head><meta charset=utf-8><title>syncnotify</title></head><body>"
                f"<h1>syncnotify</h1><p>Microsoft Graph {which} for tenant <b>{name}</b> are received here.</p>"
                "<p>Graph delivers them to this address with HTTP POST.</p></body></html>"
            )
        return HTMLResponse(
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>syncnotify</title></head><body>"
            f"<h1>syncnotify</h1><p>The Exchange notification service for tenant <b>{name}</b> is reachable.</p>"
            "<p>Exchange delivers push notifications to this address with HTTP POST.</p></body></html>"
        )

    return app
