"""The ordering rule: how notifications become links of a subscription's watermark chain (SPEC §7).

- Every ``Notification`` element becomes one *link* in ``chain_links`` (its ``PreviousWatermark``, its last
  ``Watermark`` and the watermarks of the rows it made).  The link's unique key makes a redelivered
  notification a no-op, and each row's unique ``(tenant, subscription_id, watermark)`` does the same for
  events.
- A subscription's ``last_watermark`` is the tail of its chain.  A link whose ``PreviousWatermark`` is the
  tail is *linked*: its rows get the next ``seq`` numbers in document order and its last watermark becomes
  the tail.  A link that does not fit yet *waits* (rows with ``seq`` null) until its predecessor is linked.
- A new subscription has no tail.  Its head is the earliest-received waiting link, but only once no
  payload of that subscription received before it is still in flight (queued, or being retried): the
  ingress records each payload's receive time in Redis (``shared.inflight``) and the store passes what is
  still in flight here.  Exchange sends a subscription's next notification only after we answered the
  previous one, so receive order is chain order, whatever order the workers finish in.
- A link that waits longer than the gap timeout is linked anyway by ``worker.store.sweep``: the gap is
  counted, the subscription goes to ``needs_resync`` and the chain continues past it.
- Graph sends no watermarks (SPEC §9): each (POST, subscription) is one link keyed by its payload id, and
  every link of a Graph subscription is placed as a new chain's head is, by receive order and the in-flight
  marks.

Every function here runs inside the caller's transaction, with the subscription's row locked
(``worker.store``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, select, tuple_, update

from shared.schema import chain_links, insert_new_returning, notifications
from shared.types import SubscriptionKey

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class StoreResult:
    """What one call stored; the job turns it into log lines and metrics."""

    rows: int = 0
    duplicates: int = 0
    gaps: int = 0
    errors: int = 0

    def add(self, other: StoreResult) -> None:
        self.rows += other.rows
        self.duplicates += other.duplicates
        self.gaps += other.gaps
        self.errors += other.errors


@dataclass(slots=True)
class Chain:
    """A subscription's row, locked for the length of the transaction and written back whole."""

    tenant: str
    subscription_id: str
    tail: str | None
    last_seq: int
    last_seen_at: datetime | None
    heartbeat_seconds: float | None
    state: str
    error_code: str | None
    gap_count: int
    server_version: str | None
    source: str = "ews"
    expires_at: datetime | None = None

    @property
    def key(self) -> SubscriptionKey:
        return (self.tenant, self.subscription_id)


@dataclass(slots=True)
class Incoming:
    """A notification of this batch on its way to becoming a link."""

    key: SubscriptionKey
    payload_id: str
    received_at: datetime
    previous: str
    last: str
    rows: list[dict[str, Any]]
    id: int | None = None


@dataclass(frozen=True, slots=True)
class Link:
    id: int
    previous_watermark: str
    last_watermark: str
    row_watermarks: tuple[str, ...]
    payload_id: str
    received_at: datetime
    waiting_since: datetime


def add_batch(
    conn: Connection,
    chains: dict[SubscriptionKey, Chain],
    news: Sequence[Incoming],
    now: datetime,
    result: StoreResult,
    graph_ready: Callable[[Incoming], bool] | None = None,
) -> None:
    """Insert the batch's links and rows in a few statements; number the rows of links that fit the tail.

    ``news`` are in arrival order per subscription.  Links that do not fit are left waiting for ``advance``.
    A Graph link has no predecessor to fit: it is numbered at once when ``graph_ready`` says nothing
    received before it can still arrive (see ``advance``).
    """
    if not news:
        return
    inserted = insert_new_returning(
        conn,
        chain_links,
        [
            {
                "tenant": new.key[0],
                "subscription_id": new.key[1],
                "previous_watermark": new.previous,
                "last_watermark": new.last,
                "row_watermarks": " ".join(r["watermark"] for r in new.rows),
                "payload_id": new.payload_id,
                "received_at": new.received_at,
                "waiting_since": now,
            }
            for new in news
        ],
        [
            chain_links.c.id,
            chain_links.c.tenant,
            chain_links.c.subscription_id,
            chain_links.c.last_watermark,
            chain_links.c.previous_watermark,
        ],
    )
    ids: dict[tuple[str, str, str, str], int] = {
        (r.tenant, r.subscription_id, r.last_watermark, r.previous_watermark): r.id for r in inserted
    }
    base = {key: chain.last_seq for key, chain in chains.items()}
    linked: list[Incoming] = []
    fresh: list[Incoming] = []
    for new in news:
        new.id = ids.pop((*new.key, new.last, new.previous), None)
        if new.id is None:  # stored before (a retry, a replay, a second worker) or twice in this batch
            result.duplicates += len(new.rows)
            continue
        fresh.append(new)
        chain = chains[new.key]
        if chain.source == "graph":
            if graph_ready is not None and graph_ready(new):
                _number_new(chain, new)
                linked.append(new)
        elif chain.tail is not None and _standstill(new.previous, new.last, new.rows):
            linked.append(new)  # a heartbeat that moves nothing: it may come after its successor
        elif chain.tail is not None and new.previous in (chain.tail, ""):
            _number_new(chain, new)
            chain.tail = new.last
            linked.append(new)
    rows = [row for new in fresh for row in new.rows]
    stored: set[tuple[str, str, str]] = set()
    if rows:
        returned = insert_new_returning(
            conn,
            notifications,
            rows,
            [notifications.c.tenant, notifications.c.subscription_id, notifications.c.watermark],
        )
        stored = {(r.tenant, r.subscription_id, r.watermark) for r in returned}
    result.rows += len(stored)
    result.duplicates += len(rows) - len(stored)
    if len(stored) < len(rows):  # some events were stored under another notification: close the holes
        _renumber(conn, chains, base, linked, stored)
    for start in range(0, len(linked), 500):
        conn.execute(
            update(chain_links)
            .where(chain_links.c.id.in_([new.id for new in linked[start : start + 500]]))
            .values(waiting_since=None)
        )


def _number_new(chain: Chain, new: Incoming) -> None:
    for offset, row in enumerate(new.rows, start=1):
        row["seq"] = chain.last_seq + offset
    chain.last_seq += len(new.rows)


def _renumber(
    conn: Connection,
    chains: dict[SubscriptionKey, Chain],
    base: dict[SubscriptionKey, int],
    linked: Sequence[Incoming],
    stored: set[tuple[str, str, str]],
) -> None:
    """Give the rows this batch linked contiguous numbers again, leaving out events stored elsewhere before."""
    by_key: dict[SubscriptionKey, list[str]] = defaultdict(list)
    for new in linked:
        by_key[new.key] += [r["watermark"] for r in new.rows if (*new.key, r["watermark"]) in stored]
    for key, watermarks in by_key.items():
        chain = chains[key]
        chain.last_seq = base[key]
        _number(conn, chain, watermarks, renumber=True)


def keys_waiting(conn: Connection, keys: Sequence[SubscriptionKey]) -> list[SubscriptionKey]:
    """The subscriptions among ``keys`` with links still waiting for their predecessor."""
    if not keys:
        return []
    query = (
        select(chain_links.c.tenant, chain_links.c.subscription_id)
        .where(
            chain_links.c.waiting_since.is_not(None),
            tuple_(chain_links.c.tenant, chain_links.c.subscription_id).in_(keys),
        )
        .distinct()
    )
    return sorted((r.tenant, r.subscription_id) for r in conn.execute(query))


def _number(conn: Connection, chain: Chain, watermarks: Sequence[str], renumber: bool = False) -> None:
    """Give the rows with these watermarks the next ``seq`` numbers, in the given order."""
    if not watermarks:
        return
    condition = and_(
        notifications.c.tenant == chain.tenant,
        notifications.c.subscription_id == chain.subscription_id,
        notifications.c.watermark.in_(watermarks),
    )
    if not renumber:
        condition = and_(condition, notifications.c.seq.is_(None))
    unnumbered = {row.watermark for row in conn.execute(select(notifications.c.watermark).where(condition))}
    params = []
    for watermark in watermarks:
        if watermark in unnumbered:
            unnumbered.discard(watermark)  # a watermark in two notifications gets one number
            chain.last_seq += 1
            params.append({"w": watermark, "s": chain.last_seq})
    if params:
        conn.execute(
            update(notifications)
            .where(
                notifications.c.tenant == chain.tenant,
                notifications.c.subscription_id == chain.subscription_id,
                notifications.c.watermark == bindparam("w"),
            )
            .values(seq=bindparam("s")),
            params,
        )


def _waiting(conn: Connection, chain: Chain, previous: Iterable[str] | None = None) -> list[Link]:
    query = select(chain_links).where(
        chain_links.c.tenant == chain.tenant,
        chain_links.c.subscription_id == chain.subscription_id,
        chain_links.c.waiting_since.is_not(None),
    )
    if previous is not None:
        query = query.where(chain_links.c.previous_watermark.in_(list(previous)))
    query = query.order_by(chain_links.c.received_at, chain_links.c.id)
    return [
        Link(
            r.id,
            r.previous_watermark,
            r.last_watermark,
            tuple(r.row_watermarks.split()),
            r.payload_id,
            r.received_at,
            r.waiting_since,
        )
        for r in conn.execute(query)
    ]


def _standstill(previous: str, last: str, rows: Sequence[object]) -> bool:
    """A StatusEvent whose Watermark is its PreviousWatermark: a link from W to W that moves the chain nowhere.

    Once the chain has a tail, such a heartbeat is linked wherever it arrives: its successor (from W on) may
    have been stored first, and the heartbeat must neither wait for a W that is already passed nor, forced
    through after the gap timeout, set the chain back to W.
    """
    return previous == last and not rows


#: Rows numbered, and links marked linked, this many per statement.
_CHUNK = 500


def _link_all(conn: Connection, chain: Chain, links: Sequence[Link]) -> None:
    """Number the rows of ``links`` in their order, and mark the links linked: a few statements for all."""
    watermarks = [w for link in links for w in link.row_watermarks]
    for start in range(0, len(watermarks), _CHUNK):
        _number(conn, chain, watermarks[start : start + _CHUNK])
    ids = [link.id for link in links]
    for start in range(0, len(ids), _CHUNK):
        conn.execute(
            update(chain_links).where(chain_links.c.id.in_(ids[start : start + _CHUNK])).values(waiting_since=None)
        )


def _head_blocked(
    conn: Connection, chain: Chain, head: Link, in_flight: Sequence[tuple[str, float]], batch: set[str]
) -> bool:
    """Whether a payload received before ``head`` is still in flight and not stored yet."""
    earlier = {pid for pid, score in in_flight if score < head.received_at.timestamp() and pid != head.payload_id}
    earlier -= batch
    if not earlier:
        return False
    stored = conn.execute(
        select(chain_links.c.payload_id).where(
            chain_links.c.tenant == chain.tenant,
            chain_links.c.subscription_id == chain.subscription_id,
            chain_links.c.payload_id.in_(earlier),
        )
    )
    return bool(earlier - {row.payload_id for row in stored})


def advance(
    conn: Connection,
    chain: Chain,
    result: StoreResult,
    in_flight: Sequence[tuple[str, float]],
    batch: set[str],
    force_after: datetime | None = None,
) -> None:
    """Link every waiting link that now fits; with ``force_after``, link past gaps older than that.

    The waiting links are read once and walked in memory, then numbered together: a backlog of thousands
    (a room whose head waited for an earlier payload) costs a handful of statements, not several a link.
    """
    waiting = _waiting(conn, chain)  # in receive order
    if chain.source == "graph":
        return _advance_graph(conn, chain, waiting, in_flight, batch, force_after, result)
    fits = _Fits(waiting)
    linked: list[Link] = []
    while fits.left:
        if chain.tail is None:
            head = fits.first()
            if _head_blocked(conn, chain, head, in_flight, batch):
                if force_after is None or head.waiting_since > force_after:
                    break
                _record_gap(chain, head, result, "its predecessor never arrived")
        else:
            found = fits.after(chain.tail)
            if found is None:
                if force_after is None:
                    break
                found = fits.first_waiting_since(force_after)
                if found is None:
                    break
                _record_gap(chain, found, result, f"expected previous watermark {chain.tail}")
            head = found
        fits.take(head)
        linked.append(head)
        if chain.tail is None or not _standstill(head.previous_watermark, head.last_watermark, head.row_watermarks):
            chain.tail = head.last_watermark
    _link_all(conn, chain, linked)


def _advance_graph(
    conn: Connection,
    chain: Chain,
    waiting: Sequence[Link],
    in_flight: Sequence[tuple[str, float]],
    batch: set[str],
    force_after: datetime | None,
    result: StoreResult,
) -> None:
    """Graph gives no chain: links go in receive order, each once no payload received before it is in flight.

    However long the queue (a backlog older than the gap timeout keeps its order); only a link that has
    waited in the database since before ``force_after`` goes on without the payload it waits for — a gap, as
    for EWS: that POST may come later, out of its place (being retried), or never (its marks are released when
    it is dead-lettered, so a dead letter holds no room up).
    """
    linked: list[Link] = []
    for head in waiting:
        if _head_blocked(conn, chain, head, in_flight, batch):
            if force_after is None or head.waiting_since > force_after:
                break
            _record_gap(chain, head, result, "a Graph POST received before it is still not stored")
        linked.append(head)
    _link_all(conn, chain, linked)


class _Fits:
    """The waiting links of one chain, in receive order, indexed by the watermark they follow."""

    def __init__(self, waiting: Sequence[Link]) -> None:
        self._order = {link.id: position for position, link in enumerate(waiting)}
        self._waiting = list(waiting)
        self._by_previous: dict[str, list[Link]] = defaultdict(list)
        for link in waiting:
            self._by_previous[link.previous_watermark].append(link)
        self._taken: set[int] = set()

    @property
    def left(self) -> int:
        return len(self._waiting) - len(self._taken)

    def _head(self, links: list[Link]) -> Link | None:
        while links and links[0].id in self._taken:
            links.pop(0)
        return links[0] if links else None

    def first(self) -> Link:
        head = self._head(self._waiting)
        assert head is not None
        return head

    def after(self, tail: str) -> Link | None:
        """The earliest-received link whose previous watermark is ``tail`` (or none: it fits anywhere)."""
        candidates = [c for c in (self._head(self._by_previous[tail]), self._head(self._by_previous[""])) if c]
        return min(candidates, key=lambda link: self._order[link.id], default=None)

    def first_waiting_since(self, at: datetime) -> Link | None:
        return next((link for link in self._waiting if link.id not in self._taken and link.waiting_since <= at), None)

    def take(self, link: Link) -> None:
        self._taken.add(link.id)


def _record_gap(chain: Chain, link: Link, result: StoreResult, detail: str) -> None:
    result.gaps += 1
    chain.gap_count += 1
    if chain.state == "active":  # an error, or an operator's unsubscribe, says more
        chain.state = "needs_resync"
    logger.warning(
        "gap in the watermark chain: notification after watermark %s waited past the gap timeout (%s)",
        link.previous_watermark or "(none)",
        detail,
        extra={"tenant": chain.tenant, "subscription": chain.subscription_id},
    )
