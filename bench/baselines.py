"""The two receivers the ingress is measured against, served with exactly the ingress's server settings.

- ``bare``: a FastAPI route that reads the body and returns the same fixed SOAP ``OK`` — the floor of what
  any FastAPI receiver on this uvicorn configuration costs.
- ``naive``: what one would write first — parse the XML (the product's own parser) and insert the rows into
  the database (``SYNCNOTIFY_DATABASE_URL``) inside the request, in the thread pool, before answering.

``python -m bench.baselines bare|naive --port P`` serves one of them.  The server settings are not copied:
``syncnotify.cli.cmd_ingress`` itself runs, with ``uvicorn.run`` redirected to the baseline's app factory, so
whatever settings the ingress gets (keep-alive, concurrency limit, backlog, logging), the baselines get too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite
from starlette.concurrency import run_in_threadpool

from ingress import soap
from shared.errors import PermanentError
from shared.schema import make_engine, notifications
from shared.settings import get_settings
from worker.parse import parse_payload

FACTORIES = {"bare": "bench.baselines:bare_app", "naive": "bench.baselines:naive_app"}


def _common(app: FastAPI) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}


def bare_app() -> FastAPI:
    """Reads the body, answers the fixed SOAP ``OK``; nothing is stored."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    _common(app)

    @app.post("/{path:path}")
    async def notify(request: Request) -> Response:
        await request.body()
        return Response(soap.OK, media_type=soap.ANSWER_CONTENT_TYPE)

    return app


@lru_cache(maxsize=1)
def _engine() -> Engine:
    return make_engine(get_settings().database, pool_size=20, max_overflow=20)


def _store(body: bytes, received: datetime) -> int:
    parsed = parse_payload(body)
    rows: list[dict[str, Any]] = []
    for notification in parsed.notifications:
        previous = notification.previous_watermark
        for event in notification.events:
            if event.makes_row and event.watermark is not None:
                rows.append(
                    {
                        "tenant": "Default",
                        "subscription_id": notification.subscription_id,
                        "watermark": event.watermark,
                        "previous_watermark": previous,
                        "event_type": event.kind,
                        "event_time": event.timestamp,
                        "item_id": event.item_id,
                        "item_change_key": event.item_change_key,
                        "folder_id": event.folder_id,
                        "parent_folder_id": event.parent_folder_id,
                        "received_at": received,
                        "stored_at": datetime.now(UTC),
                    }
                )
            previous = event.watermark or previous
    if rows:
        engine = _engine()
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        with engine.begin() as conn:
            conn.execute(dialect.insert(notifications).on_conflict_do_nothing(), rows)
    return len(rows)


def naive_app() -> FastAPI:
    """Parses and inserts inside the request (in the thread pool), then answers ``OK``."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    _common(app)

    @app.post("/{path:path}")
    async def notify(request: Request) -> Response:
        body = await request.body()
        try:
            await run_in_threadpool(_store, body, datetime.now(UTC))
        except PermanentError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        return Response(soap.OK, media_type=soap.ANSWER_CONTENT_TYPE)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        return JSONResponse({"ready": True})

    return app


def serve(kind: str, host: str, port: int) -> int:
    """Serve baseline ``kind`` through ``cmd_ingress`` (so with the ingress's uvicorn settings)."""
    import uvicorn

    from syncnotify import cli

    real_run = uvicorn.run

    def run_baseline(app: Any, **settings: Any) -> None:
        real_run(FACTORIES[kind], **settings)

    uvicorn.run = run_baseline
    try:
        return cli.cmd_ingress(argparse.Namespace(host=host, port=port, processes=1))
    finally:
        uvicorn.run = real_run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__)
    parser.add_argument("kind", choices=sorted(FACTORIES))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    return serve(args.kind, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
