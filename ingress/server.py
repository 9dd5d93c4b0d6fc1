"""The HTTP server under the ingress: uvicorn with limits set on purpose against slow and abusive clients.

uvicorn closes idle keep-alive connections, but it waits forever for a client that opens a connection and
then sends nothing, or sends its headers or body a byte at a time (slow-loris): such connections count
against ``limit_concurrency``, and enough of them would make it answer Exchange with 503.  Here every
connection must deliver a complete request within ``SYNCNOTIFY_REQUEST_TIMEOUT_SECONDS`` of connecting or of its
previous answer, or it is closed (httptools itself refuses request heads over 80 kB).  Per-address
connection limits belong to the reverse proxy in front.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.settings import get_settings

#: Idle keep-alive connections are closed after this long (Exchange reuses them between notifications).
KEEP_ALIVE_SECONDS = 30
#: Beyond this many open connections new ones get 503 instead of starving the requests in progress.
MAX_CONNECTIONS = 4096
#: Connections the kernel queues while the event loop is busy.
BACKLOG = 2048


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request to arrive whole."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_complete(self) -> None:
        if self.cycle is not None and self.cycle.response_complete:
            # The end of a body uvicorn dropped because its answer went out first (e.g. a 404 from FastAPI):
            # the connection is idle from now on, and keep-alive's timer, cancelled by that body, is gone.
            self._arm()
        else:
            self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(get_settings().request_timeout_seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


#: uvicorn options that would let it rewrite the client address from ``X-Forwarded-For`` before the app
#: sees it; ``SYNCNOTIFY_TRUSTED_PROXIES`` and ``ingress.checks.client_address`` alone decide that.
_PROXY_OPTIONS = ("proxy_headers", "forwarded_allow_ips")


def serve(host: str, port: int, processes: int, log_level: str, **overrides: Any) -> None:
    """Run the ingress application (blocks until stopped)."""
    refused = sorted(set(overrides).intersection(_PROXY_OPTIONS))
    if refused:
        raise ValueError(
            f"ingress.server.serve: {', '.join(refused)} cannot be set; trusted proxies are SYNCNOTIFY_TRUSTED_PROXIES"
        )
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        "workers": processes,
        "log_level": log_level,
        "log_config": None,  # keep the logging the entry point configured (text or JSON)
        "access_log": False,
        "http": "ingress.server:GuardedHttpToolsProtocol",
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "limit_concurrency": MAX_CONNECTIONS,
        "backlog": BACKLOG,
        "timeout_graceful_shutdown": 10,
        "server_header": False,
        # uvicorn believes X-Forwarded-For from FORWARDED_ALLOW_IPS (default 127.0.0.1) unless told not to
        "proxy_headers": False,
        "forwarded_allow_ips": [],  # not read from the environment either
    }
    options.update(overrides)
    uvicorn.run("ingress.app:create_app", **options)
