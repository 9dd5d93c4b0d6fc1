"""Two HTTP/1.1 keep-alive clients for load generation: a raw asyncio protocol and httpx.

Both post one body at a time on one connection and return ``(status, answer body)``.  The raw client
writes the request with one ``write`` and parses the answer with a ``Content-Length`` scan: several times
cheaper per request than httpx, which is what lets one Python process load a server without being the
bottleneck (``bench.run`` measures both against the bare route).  Neither follows redirects or speaks
chunked answers: the servers measured here always send ``Content-Length``.  Only httpx does TLS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol, cast
from urllib.parse import urlsplit

from syncnotify.simulator.payloads import HEADERS


class HTTPError(Exception):
    """The connection failed or the answer could not be read; the request may or may not have been served."""


class Connection(Protocol):
    async def post(self, body: bytes) -> tuple[int, bytes]: ...

    async def close(self) -> None: ...


class Target:
    """Where to post, and how: host, port and path (with query) of a callback URL (``http://``; ``https://`` for
    the httpx client only) and the request's headers (default: Exchange's)."""

    def __init__(self, url: str, headers: Mapping[str, str] = HEADERS) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {url}")
        self.url = url
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.headers = dict(headers)
        host_header = parts.netloc.rsplit("@", 1)[-1]
        lines = "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
        self.head = f"POST {self.path} HTTP/1.1\r\nHost: {host_header}\r\n{lines}Content-Length: ".encode("latin-1")

    def request(self, body: bytes) -> bytes:
        return b"".join((self.head, str(len(body)).encode(), b"\r\n\r\n", body))


class _Reader(asyncio.Protocol):
    """Collects bytes and completes one waiting future per complete answer."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            answer = self._answer()
        except HTTPError as exc:
            waiter.set_exception(exc)
            return
        if answer is not None:
            waiter.set_result(answer)

    def _answer(self) -> tuple[int, bytes] | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        try:
            status = int(head[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise HTTPError(f"bad status line {head[0]!r}") from None
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            lowered = name.strip().lower()
            if lowered == "content-length":
                length = int(value)
            elif lowered == "transfer-encoding":
                raise HTTPError("chunked answers are not supported")
        if len(self.buffer) < end + 4 + length:
            return None
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        return status, body

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HTTPError(f"connection closed: {exc or 'by the server'}"))


class RawConnection:
    """One keep-alive connection, opened on first use and again after a failure."""

    def __init__(self, target: Target, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self._reader: _Reader | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        reader = self._reader
        if reader is None or reader.closed:
            try:
                _, reader = await asyncio.wait_for(
                    asyncio.get_running_loop().create_connection(_Reader, self.target.host, self.target.port),
                    self.timeout,
                )
            except (OSError, TimeoutError) as exc:
                raise HTTPError(f"cannot connect to {self.target.host}:{self.target.port}: {exc}") from exc
            self._reader = reader
        assert reader is not None and reader.transport is not None
        reader.waiter = asyncio.get_running_loop().create_future()
        reader.transport.write(self.target.request(body))
        try:
            return await asyncio.wait_for(reader.waiter, self.timeout)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, TimeoutError):
                raise HTTPError(f"no answer within {self.timeout} s") from exc
            raise
        finally:
            reader.waiter = None

    async def close(self) -> None:
        if self._reader is not None and self._reader.transport is not None:
            self._reader.transport.close()
        self._reader = None


class HttpxConnection:
    """The same through ``httpx.AsyncClient`` (one client per connection, so one socket each)."""

    def __init__(self, target: Target, timeout: float) -> None:
        import httpx

        self.target = target
        self._httpx = httpx
        self._client = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=1))

    async def post(self, body: bytes) -> tuple[int, bytes]:
        try:
            response = await self._client.post(self.target.url, content=body, headers=self.target.headers)
        except self._httpx.HTTPError as exc:
            raise HTTPError(str(exc) or type(exc).__name__) from exc
        return response.status_code, response.content

    async def close(self) -> None:
        await self._client.aclose()


def connect(kind: str, target: Target, timeout: float) -> Connection:
    """A new connection of ``kind`` (``raw`` or ``httpx``)."""
    if kind == "raw" and target.tls:
        raise ValueError(f"the raw client speaks plain http only: {target.url} needs the httpx client")
    if kind == "raw":
        return RawConnection(target, timeout)
    if kind == "httpx":
        return HttpxConnection(target, timeout)
    raise ValueError(f"unknown client {kind!r} (raw or httpx)")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where installed (it comes with ``uvicorn[standard]``), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
