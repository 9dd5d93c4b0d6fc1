"""The operator's status page (``syncnotify admin``): queue, workers, dead-letter queue, spool, throughput and
every room's subscription, server-rendered, on an address of its own — never on the public notification path.

``GET /`` is plain HTML (no script, refreshed by the browser every 10 s), ``GET /status.json`` the same data
as JSON, ``GET /healthz`` says the page process is alive.  The endpoints are sync functions, so FastAPI runs
their blocking database and Redis work in its threadpool.  The data is read by ``snapshot.py`` and rendered
by ``page.py``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from shared.schema import make_engine
from shared.settings import Settings, get_settings
from syncnotify.admin.page import render, render_error
from syncnotify.admin.snapshot import Snapshot, snapshot

logger = logging.getLogger(__name__)

#: No script may run on the page, whatever a subscription id or an error class holds.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def create_admin_app(settings: Settings | None = None) -> FastAPI:
    """The admin application (``uvicorn --factory syncnotify.admin.app:create_admin_app``; ``syncnotify admin``)."""
    settings = settings or get_settings()
    engine = make_engine(settings.database)
    redis = Redis.from_url(settings.redis)
    spool_dir = settings.spool_dir

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            redis.close()
            engine.dispose()

    app = FastAPI(title="syncnotify admin", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def read() -> Snapshot | str:
        try:
            return snapshot(engine, redis, spool_dir)
        except RedisError as exc:
            logger.warning("status page: cannot read Redis: %s", exc)
            return f"Cannot read Redis: {type(exc).__name__}: {_first_line(exc)}"
        except SQLAlchemyError as exc:
            logger.warning("status page: cannot read the database: %s", type(exc).__name__)
            return f"Cannot read the database: {type(exc).__name__}: {_first_line(getattr(exc, 'orig', exc))}"
        except OSError as exc:
            logger.warning("status page: cannot read the spool: %s", exc)
            return f"Cannot read the spool directory {spool_dir}: {exc.strerror or exc}"

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        snap = read()
        if isinstance(snap, str):
            return HTMLResponse(render_error(snap), status_code=503, headers=SECURITY_HEADERS)
        return HTMLResponse(render(snap), headers=SECURITY_HEADERS)

    @app.get("/status.json")
    def status_json() -> JSONResponse:
        snap = read()
        if isinstance(snap, str):
            return JSONResponse({"error": snap}, status_code=503, headers={"Cache-Control": "no-store"})
        return JSONResponse(snap.as_json(), headers={"Cache-Control": "no-store"})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    return app


def _first_line(exc: object) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""
