"""The HTTPS server: a stdlib ``ThreadingHTTPServer`` whose connections each get their own thread and their own
TLS handshake, routing to the authority, to ``/v1.0/subscriptions`` and to the fake's own control API
(``/fake/``, which faults never touch), injecting faults, logging requests.

Requests are served concurrently because a create waits on the handshake with the ingress, which may itself be
waiting on the fake. Every answer closes its connection (HTTP/1.0), so no client keeps an idle socket to a
server that is about to stop.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from syncnotify.fakegraph.authority import TokenEndpoint, openid_configuration
from syncnotify.fakegraph.control import Control
from syncnotify.fakegraph.replies import Reply, graph_error
from syncnotify.fakegraph.state import HOLD, Logged, Store
from syncnotify.fakegraph.subscriptions import Subscriptions

logger = logging.getLogger(__name__)

OPENID = re.compile(r"/([^/]+)/v2\.0/\.well-known/openid-configuration")
TOKEN = re.compile(r"/([^/]+)/oauth2/v2\.0/token")
SUBSCRIPTIONS = re.compile(r"/v1\.0/subscriptions(/.*)?", re.IGNORECASE)
EVENTS = re.compile(r"/v1\.0/users/([^/]+)/events", re.IGNORECASE)
CONTROL = re.compile(r"/fake/(.+)")
#: Seconds a connection may stay silent before its thread gives up on it.
IDLE_SECONDS = 30
FAULT_CODES = {429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable", 404: "ResourceNotFound"}


@dataclass(frozen=True, slots=True)
class Routes:
    store: Store
    base_url: str
    token: TokenEndpoint
    subscriptions: Subscriptions
    control: Control

    def answer(self, method: str, path: str, authorization: str | None, body: bytes) -> Reply:
        if match := CONTROL.fullmatch(path):
            return self.control(method, match.group(1), body)
        fault = self.store.take_fault(method, path)
        if fault is not None and fault.status == HOLD:
            time.sleep(fault.hold_seconds)  # then answered as usual: a slow Graph
        elif fault is not None:
            named = SUBSCRIPTIONS.fullmatch(path)
            if fault.status == 404 and named and named.group(1):
                self.store.forget(named.group(1).strip("/").split("/")[0])  # Graph lost it, as a 404 says
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            code = FAULT_CODES.get(fault.status, "UnknownError")
            return graph_error(fault.status, code, f"Injected fault: {fault.status} {code}.", extra)
        if method == "GET" and (match := OPENID.fullmatch(path)):
            return openid_configuration(self.base_url, self.store, match.group(1))
        if method == "POST" and (match := TOKEN.fullmatch(path)):
            form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            return self.token(match.group(1), form)
        if match := SUBSCRIPTIONS.fullmatch(path):
            return self.subscriptions(method, match.group(1) or "", authorization, body)
        if method == "GET" and (match := EVENTS.fullmatch(path)):
            return self.subscriptions.events(unquote(match.group(1)), authorization)
        return graph_error(400, "BadRequest", f"Resource not found for the segment '{path.strip('/')}'.")


class _Handler(BaseHTTPRequestHandler):
    server: FakeGraphServer
    timeout = IDLE_SECONDS
    server_version = "Microsoft-IIS/10.0 (syncnotify fake Graph)"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        try:
            reply = self.server.routes.answer(self.command, path, self.headers.get("Authorization"), body)
        except Exception:
            logger.exception("fake Graph failed on %s %s", self.command, path)
            reply = graph_error(500, "InternalServerError", "The fake Graph failed; see its log.")
        self.send_response(reply.status)
        if reply.content_type:
            self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)
        store = self.server.routes.store
        with store.lock:
            store.requests.append(Logged(self.command, path, reply.status, reply.client_id, datetime.now(UTC)))

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


class FakeGraphServer(ThreadingHTTPServer):
    """A threading HTTP server doing each connection's TLS handshake in that connection's thread."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, routes: Callable[[str], Routes]) -> None:
        """Bind ``address``, then make the routes for the URL it is reached at (the port known only now)."""
        self.context = context
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        host, port = address[0], self.server_address[1]
        self.base_url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        self.routes = routes(self.base_url)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(IDLE_SECONDS)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            logger.debug("TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection %s from %s ended badly", request, client_address, exc_info=True)
