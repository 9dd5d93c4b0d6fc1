"""The operator's status page (``syncnotify admin``): queue, workers, dead-letter queue, spool, throughput and
every room's subscription, server-rendered, on an address of its own — never on the public notification path.

``GET /`` is plain HTML (no script, refreshed by the browser every 10 s), ``GET /status.json`` the same data
as JSON, ``GET /healthz`` says the page process is alive.  The endpoints are sync functions, so FastAPI runs
their blocking database and Redis work in its threadpool.
"""

from __future__ import annotations

import html
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import Engine, func, literal_column, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.expression import case

from shared.schema import make_engine, notifications
from shared.settings import Settings, get_settings
from syncnotify.status import Status, Subscription, collect, list_subscriptions

logger = logging.getLogger(__name__)

#: The page reloads itself this often (seconds).
REFRESH_SECONDS = 10
#: At most this many subscriptions are listed per tenant (the worst first); the page says when it cut.
ROWS_PER_TENANT = 500
#: Throughput is shown for each of the last this many minutes.
THROUGHPUT_MINUTES = 15
#: States in the order the page shows their counts (others follow, by name).
STATE_ORDER = ("stale", "error", "needs_resync", "unsubscribed", "active")
#: No script may run on the page, whatever a subscription id or an error class holds.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class TenantView:
    """One tenant's subscriptions as the page lists them: at most ``ROWS_PER_TENANT``, the worst first."""

    tenant: str
    total: int
    by_state: dict[str, int]
    subscriptions: list[Subscription]

    @property
    def truncated(self) -> bool:
        return len(self.subscriptions) < self.total

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "total": self.total,
            "shown": len(self.subscriptions),
            "by_state": self.by_state,
            "subscriptions": [s.as_json() for s in self.subscriptions],
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the page shows, read at ``generated_at``."""

    generated_at: datetime
    status: Status
    #: Rows stored in each of the last minutes, the most recent minute first.
    per_minute: list[int]
    tenants: list[TenantView]

    def rows_in_last(self, minutes: int) -> int:
        return sum(self.per_minute[:minutes])

    def as_json(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.isoformat(),
            "status": self.status.as_json(),
            "throughput": {
                "per_minute": self.per_minute,
                "last_1_min": self.rows_in_last(1),
                "last_5_min": self.rows_in_last(5),
                "last_15_min": self.rows_in_last(15),
            },
            "tenants": [t.as_json() for t in self.tenants],
        }


def rows_per_minute(engine: Engine, now: datetime, minutes: int = THROUGHPUT_MINUTES) -> list[int]:
    """Rows stored (``notifications.stored_at``) in each of the last ``minutes`` minutes, the latest first.

    One query on SQLite and PostgreSQL alike: each row's minute is a CASE over bound timestamps (no
    dialect's date functions), grouped in an outer query.  Rows stamped after ``now`` (a worker whose
    clock runs ahead) count in the latest minute.
    """
    stored_at = notifications.c.stored_at
    edges = [now - timedelta(minutes=i + 1) for i in range(minutes)]
    minute = case(*[(stored_at >= edge, literal_column(str(i))) for i, edge in enumerate(edges)])
    recent = select(minute.label("minute")).where(stored_at >= edges[-1]).subquery()
    query = select(recent.c.minute, func.count().label("rows")).group_by(recent.c.minute)
    counts = [0] * minutes
    with engine.connect() as conn:
        for row in conn.execute(query):
            if row.minute is not None:
                counts[int(row.minute)] = int(row.rows)
    return counts


def by_tenant(subs: Iterable[Subscription], limit: int = ROWS_PER_TENANT) -> list[TenantView]:
    """Group ``subs`` (in the order to show) by tenant, keeping the first ``limit`` of each."""
    groups: dict[str, list[Subscription]] = {}
    for sub in subs:
        groups.setdefault(sub.tenant, []).append(sub)
    views = []
    for tenant in sorted(groups, key=lambda t: (t.casefold(), t)):
        group = groups[tenant]
        states: dict[str, int] = {}
        for sub in group:
            states[sub.state] = states.get(sub.state, 0) + 1
        views.append(TenantView(tenant, len(group), _ordered_states(states), group[:limit]))
    return views


def snapshot(
    engine: Engine, redis: Redis, spool_dir: Path, now: datetime | None = None, limit: int = ROWS_PER_TENANT
) -> Snapshot:
    """Read everything the page shows; raises ``RedisError``, ``SQLAlchemyError`` or ``OSError`` unchanged."""
    now = now or datetime.now(UTC)
    subs = list_subscriptions(engine, now=now)
    status = collect(engine, redis, spool_dir, now=now, subs=subs)
    status.subscriptions_by_state = _ordered_states(status.subscriptions_by_state)
    return Snapshot(now, status, rows_per_minute(engine, now), by_tenant(subs, limit))


def _ordered_states(counts: dict[str, int]) -> dict[str, int]:
    known = [s for s in STATE_ORDER if s in counts]
    return {s: counts[s] for s in known + sorted(set(counts) - set(known))}


# ----------------------------------------------------------------------------------------------------------
# HTML.  Every value that is not a literal of this module goes through ``_e``.
# ----------------------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _n(value: int) -> str:
    return _e(f"{value:,}")


def ago(at: datetime | None, now: datetime) -> str:
    """``'4 min ago'``, ``'3 h 12 min ago'``, ``'2 d 5 h ago'``; ``'never'`` for None."""
    if at is None:
        return "never"
    seconds = max(0, int((now - at).total_seconds()))
    if seconds < 5:
        return "just now"
    return duration(seconds) + " ago"


def duration(seconds: float) -> str:
    """A length of time in at most two units: ``'0.4 s'``, ``'42 s'``, ``'4 min 10 s'``, ``'2 d 5 h'``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    for unit, size, sub_unit, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if whole >= size:
            major, rest = divmod(whole, size)
            minor = rest // sub_size
            return f"{major} {unit}" + (f" {minor} {sub_unit}" if minor else "")
    return f"{whole} s"


STYLE = """
:root { --fg:#1d2430; --muted:#5f6b7a; --line:#e3e7ee; --bg:#f5f7fa; --card:#fff;
  --ok:#1f7a3d; --ok-bg:#e3f4e8; --warn:#8a5a00; --warn-bg:#fff2d6; --bad:#a1221b; --bad-bg:#fde6e4;
  --resync:#6b3fa0; --resync-bg:#efe6fa; --off:#55606e; --off-bg:#eceff3; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px; font: 14px/1.45 "Liberation Sans", Arial, Helvetica, sans-serif;
  color: var(--fg); background: var(--bg); }
header { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap; margin-bottom: 18px; }
h1 { font-size: 22px; margin: 0; }
h1 span { color: var(--muted); font-weight: normal; }
h2 { font-size: 17px; margin: 0 0 8px; }
.meta { color: var(--muted); margin: 0; }
a { color: #1a56b0; }
.banner { padding: 10px 14px; border-radius: 6px; margin: 0 0 16px; font-weight: bold; }
.banner.ok { background: var(--ok-bg); color: var(--ok); }
.banner.attention { background: var(--warn-bg); color: var(--warn); }
.banner.bad { background: var(--bad-bg); color: var(--bad); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 12px; margin-bottom: 22px; }
.card { background: var(--card); border: 1px solid var(--line); border-left: 4px solid var(--ok);
  border-radius: 6px; padding: 10px 14px; }
.card.warn { border-left-color: #e0a100; }
.card.bad { border-left-color: var(--bad); }
.card h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); margin: 0; }
.card .value { font-size: 28px; font-weight: bold; margin: 2px 0; }
.card p, .card ul { margin: 0; color: var(--muted); }
.card ul { list-style: none; padding: 0; }
.card li code { color: var(--fg); }
.bars { display: flex; align-items: flex-end; gap: 3px; height: 44px; margin: 6px 0 4px; }
#throughput-totals { font-size: 12px; white-space: nowrap; }
.bars span { flex: 1; background: #7aa7e0; min-height: 1px; border-radius: 2px 2px 0 0; }
section.tenant { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: 14px 16px; margin-bottom: 18px; }
.overview { display: flex; align-items: baseline; gap: 14px; flex-wrap: wrap; margin: 0 0 12px; }
.overview h2 { margin: 0; }
.overview h2 small, .tenant h2 small { color: var(--muted); font-weight: normal; font-size: 13px; }
.states { display: flex; flex-wrap: wrap; gap: 6px; list-style: none; padding: 0; margin: 0 0 10px; }
.overview .states { margin: 0; }
.overview .gaps { margin: 0; color: var(--muted); }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
col.state { width: 120px; } col.seen { width: 110px; } col.num { width: 88px; } col.error { width: 170px; }
th { text-align: left; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted);
  border-bottom: 2px solid var(--line); padding: 6px 8px; white-space: nowrap; }
td { border-bottom: 1px solid var(--line); padding: 6px 8px; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.id code { font-size: 12px; overflow-wrap: anywhere; }
tbody tr:hover { background: #f8fafc; }
.pill { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: bold;
  white-space: nowrap; background: var(--off-bg); color: var(--off); }
.pill.active { background: var(--ok-bg); color: var(--ok); }
.pill.stale { background: var(--warn-bg); color: var(--warn); }
.pill.error { background: var(--bad-bg); color: var(--bad); }
.pill.needs_resync { background: var(--resync-bg); color: var(--resync); }
.note { color: var(--muted); margin: 10px 0 0; }
.empty { color: var(--muted); }
"""


def render(snap: Snapshot, refresh: int = REFRESH_SECONDS) -> str:
    """The status page for ``snap``: a whole HTML document."""
    now = snap.generated_at
    parts = [
        _head("syncnotify status", refresh),
        "<header><h1>syncnotify <span>status</span></h1>",
        f'<p class="meta">at <time datetime="{_e(now.isoformat())}">{_e(now.strftime("%Y-%m-%d %H:%M:%S"))} UTC'
        f"</time> · refreshes every {_e(refresh)} s · "
        '<a href="status.json">JSON</a></p></header>',
        _banner(snap),
        _summary(snap),
        _overview(snap),
    ]
    if not snap.tenants:
        parts.append('<section class="tenant"><p class="empty">No subscriptions yet.</p></section>')
    parts.extend(_tenant(view, now) for view in snap.tenants)
    parts.append("</body></html>")
    return "".join(parts)


def render_error(what: str, refresh: int = REFRESH_SECONDS) -> str:
    """The page shown while the database or Redis cannot be read."""
    return (
        _head("syncnotify status: unavailable", refresh)
        + '<header><h1>syncnotify <span>status</span></h1></header><p class="banner bad">'
        + _e(what)
        + "</p></body></html>"
    )


def _head(title: str, refresh: int) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{_e(refresh)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
    )


def _banner(snap: Snapshot) -> str:
    st = snap.status
    troubles = []
    if st.workers == 0:
        troubles.append("no worker is running")
    attention = sum(n for state, n in st.subscriptions_by_state.items() if state in ("stale", "error", "needs_resync"))
    if attention:
        troubles.append(f"{attention:,} subscription{'s' if attention != 1 else ''} need attention")
    dead = sum(st.dead_letter.values())
    if dead:
        troubles.append(f"{dead:,} payload{'s' if dead != 1 else ''} in the dead-letter queue")
    if st.spool_backlog:
        troubles.append(f"{st.spool_backlog:,} payload{'s wait' if st.spool_backlog != 1 else ' waits'} in the spool")
    if not troubles:
        return '<p class="banner ok" id="banner">All clear.</p>'
    level = "bad" if st.workers == 0 else "attention"
    text = "; ".join(troubles)
    return f'<p class="banner {level}" id="banner">{_e(text[0].upper() + text[1:])}.</p>'


def _card(card_id: str, title: str, value: str, detail: str, level: str = "") -> str:
    classes = f"card {level}".strip()
    return (
        f'<div class="{classes}" id="{card_id}"><h2>{_e(title)}</h2>'
        f'<div class="value" id="{card_id}-value">{value}</div>{detail}</div>'
    )


def _summary(snap: Snapshot) -> str:
    st = snap.status
    if st.oldest_queued_seconds is not None:
        queued = f"jobs; the oldest payload waits {duration(st.oldest_queued_seconds)}"
    else:
        queued = "jobs queued" if st.queue_depth else "nothing queued"
    dead_total = sum(st.dead_letter.values())
    dead_items = "".join(
        f"<li><code>{_e(cls)}</code> {_n(count)}</li>" for cls, count in sorted(st.dead_letter.items())
    )
    window = len(snap.per_minute)
    cards = [
        _card(
            "queue",
            "Queue depth",
            _n(st.queue_depth),
            f'<p id="queue-oldest">{_e(queued)}</p>',
            "warn" if (st.oldest_queued_seconds or 0) > 60 else "",
        ),
        _card(
            "workers",
            "Workers alive",
            _n(st.workers),
            "<p>registered with the queue</p>",
            "bad" if st.workers == 0 else "",
        ),
        _card(
            "retries",
            "Retries scheduled",
            _n(st.scheduled_retries),
            "<p>jobs waiting to retry</p>",
            "warn" if st.scheduled_retries else "",
        ),
        _card(
            "dead-letter",
            "Dead-letter queue",
            _n(dead_total),
            f'<ul id="dead-letter-classes">{dead_items}</ul>' if dead_items else "<p>empty</p>",
            "bad" if dead_total else "",
        ),
        _card(
            "spool",
            "Spool backlog",
            _n(st.spool_backlog),
            "<p>payloads waiting for Redis</p>",
            "warn" if st.spool_backlog else "",
        ),
        _card(
            "throughput",
            "Rows stored / min",
            _n(snap.rows_in_last(1)),
            _bars(snap.per_minute)
            + f'<p id="throughput-totals">1 min {_n(snap.rows_in_last(1))} · 5 min {_n(snap.rows_in_last(5))}'
            f" · {_e(window)} min {_n(snap.rows_in_last(window))}</p>",
        ),
    ]
    return '<section class="cards" aria-label="summary">' + "".join(cards) + "</section>"


def _overview(snap: Snapshot) -> str:
    """All tenants' subscriptions by state, with the gaps and the notifications that wait."""
    st = snap.status
    total = sum(st.subscriptions_by_state.values())
    by_state = st.subscriptions_by_state.items()
    states = "".join(f'<li class="pill {_e(state)}">{_e(state)} {_n(count)}</li>' for state, count in by_state)
    gaps = f"{st.gaps:,} gap{'s' if st.gaps != 1 else ''} · {st.waiting_links:,} waiting"
    return (
        f'<section class="overview" id="subscriptions"><h2>Subscriptions <small>{_n(total)} in '
        f"{_n(len(snap.tenants))} tenant{'s' if len(snap.tenants) != 1 else ''}</small></h2>"
        f'<ul class="states" id="subscription-states">{states}</ul>'
        f'<p class="gaps" id="subscription-gaps">{_e(gaps)}</p></section>'
    )


def _bars(per_minute: Sequence[int]) -> str:
    """A bar per minute, the oldest on the left; the tallest is full height."""
    top = max(per_minute, default=0) or 1
    bars = []
    for minutes_ago in reversed(range(len(per_minute))):
        count = per_minute[minutes_ago]
        label = f"{count:,} rows {minutes_ago}–{minutes_ago + 1} min ago"
        bars.append(f'<span style="height:{100 * count // top}%" title="{_e(label)}"></span>')
    return '<div class="bars" id="throughput-bars" aria-hidden="true">' + "".join(bars) + "</div>"


def _tenant(view: TenantView, now: datetime) -> str:
    count = f"{view.total:,} subscription{'s' if view.total != 1 else ''}"
    states = " ".join(f'<span class="pill {_e(s)}">{_e(s)} {_n(n)}</span>' for s, n in view.by_state.items())
    rows = "".join(_row(sub, now) for sub in view.subscriptions)
    note = ""
    if view.truncated:
        note = (
            f'<p class="note">Showing the first {_n(len(view.subscriptions))} of {_n(view.total)} subscriptions '
            f"(the stale and troubled ones first). All of them: <code>syncnotify subscriptions list --tenant "
            f'{_e(view.tenant)}</code> or <a href="status.json">status.json</a>.</p>'
        )
    return (
        f'<section class="tenant" data-tenant="{_e(view.tenant)}"><h2>Tenant {_e(view.tenant)} '
        f'<small>{_e(count)}</small></h2><p class="states">{states}</p>'
        '<table class="subscriptions"><colgroup><col class="id"><col class="state"><col class="seen">'
        '<col class="num"><col class="num"><col class="num"><col class="error"></colgroup>'
        "<thead><tr><th>Subscription</th><th>State</th><th>Last seen</th>"
        '<th class="num">Last seq</th><th class="num">Gaps</th><th class="num">Waiting</th><th>Error</th>'
        f"</tr></thead><tbody>{rows}</tbody></table>{note}</section>"
    )


def _row(sub: Subscription, now: datetime) -> str:
    if sub.last_seen_at is None:
        seen = "never"
    else:
        iso = sub.last_seen_at.isoformat(timespec="seconds")
        seen = f'<time datetime="{_e(iso)}" title="{_e(iso)}">{_e(ago(sub.last_seen_at, now))}</time>'
    return (
        f'<tr data-state="{_e(sub.state)}"><td class="id"><code>{_e(sub.subscription_id)}</code></td>'
        f'<td class="state"><span class="pill {_e(sub.state)}">{_e(sub.state)}</span></td>'
        f'<td class="seen">{seen}</td><td class="num seq">{_n(sub.last_seq)}</td>'
        f'<td class="num gaps">{_n(sub.gap_count)}</td><td class="num waiting">{_n(sub.waiting)}</td>'
        f'<td class="error">{_e(sub.error_code or "")}</td></tr>'
    )


# ----------------------------------------------------------------------------------------------------------
# The application
# ----------------------------------------------------------------------------------------------------------


def create_admin_app(settings: Settings | None = None) -> FastAPI:
    """The admin application (``uvicorn --factory syncnotify.admin.app:create_admin_app``; ``syncnotify admin``)."""
    settings = settings or get_settings()
    engine = make_engine(settings.database)
    redis = Redis.from_url(settings.redis)
    spool_dir = settings.spool_dir

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
