"""Did every acknowledged notification become exactly its rows, numbered 1, 2, 3 … in the order sent?

``verify`` waits until the database has caught up with what the simulator had acknowledged or the drain
timeout passes: for EWS, each subscription's ``last_watermark`` is the tail of its acknowledged chain; for
Graph (no chain to follow), it has numbered as many rows as expected and its lifecycle state is the
expected one.  Then it compares the ``notifications`` rows of each subscription with the rows its plan says
must exist: none lost, none twice, none unexpected, ``seq`` 1…n without holes, in the order of the
watermark chain (Graph: the order the changes were sent), no gaps counted but Graph's ``missed`` events,
and the subscription's state as its lifecycle events leave it.  It only reads the database (plain SQLAlchemy
engine, no write lock taken on SQLite).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, create_engine, select

from shared.schema import notifications, subscriptions
from syncnotify.simulator.graph_rooms import Room
from syncnotify.simulator.mailboxes import Mailbox
from worker.graph import watermark

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Expected:
    """What one subscription must look like after the run."""

    subscription_id: str
    #: Watermarks of its rows, in chain order (the order ``seq`` must follow).
    rows: tuple[str, ...]
    #: The last watermark of its last acknowledged notification (``None``: nothing acknowledged, or Graph).
    tail: str | None
    #: Gaps it must have counted at least (Graph: its ``missed`` events; one redelivered counts again); with
    #: 0, none may be counted.
    gaps: int = 0
    #: The state it must be in; ``None``: not checked.
    state: str | None = None


@dataclass(slots=True)
class VerifyReport:
    """The outcome; ``ok`` only when every count of a discrepancy is zero and the drain completed."""

    subscriptions: int = 0
    expected_rows: int = 0
    stored_rows: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    unnumbered: int = 0
    seq_broken: int = 0
    out_of_order: int = 0
    #: Gaps counted that were not expected (or expected ones not counted).
    gaps: int = 0
    #: Subscriptions not in their expected state.
    wrong_state: int = 0
    drained: bool = False
    drain_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        discrepancies = (self.lost, self.duplicated, self.unexpected, self.unnumbered, self.seq_broken)
        return self.drained and not any(discrepancies) and not (self.out_of_order or self.gaps or self.wrong_state)

    @property
    def in_order(self) -> bool:
        """Every row numbered, 1..n without holes, in the order sent."""
        return not (self.seq_broken or self.out_of_order or self.unnumbered)

    def summary(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"verify {verdict}: {self.subscriptions} subscriptions, {self.stored_rows}/{self.expected_rows} rows; "
            f"lost {self.lost}, duplicated {self.duplicated}, unexpected {self.unexpected}, "
            f"seq null {self.unnumbered}, seq not 1..n {self.seq_broken} subscriptions, "
            f"out of order {self.out_of_order} subscriptions, gaps {self.gaps}, "
            f"in the wrong state {self.wrong_state} subscriptions; "
            f"drained {'in' if self.drained else 'NOT within'} {self.drain_seconds:.1f} s"
        )


def expected_of(mailbox: Mailbox, acknowledged: int) -> Expected:
    """The rows and tail of ``mailbox`` after its first ``acknowledged`` notifications were answered 200."""
    rows: list[str] = []
    tail: str | None = None
    for number, planned in enumerate(mailbox.plan()):
        if number >= acknowledged:
            break
        rows.extend(planned.row_watermarks)
        tail = planned.last_watermark
    return Expected(mailbox.subscription_id, tuple(rows), tail)


#: The state each lifecycle event leaves a Graph subscription in (SPEC §9).
_LIFECYCLE_STATES = {"missed": "needs_resync", "reauthorizationRequired": "reauthorization_required"}


def graph_expected(room: Room, acknowledged: int, tenant_id: str) -> Expected:
    """The rows, gaps and state of ``room`` after its first ``acknowledged`` steps were answered 2xx."""
    taken = room.steps[:acknowledged]
    rows: list[str] = []
    state: str | None = "active" if taken else None
    gaps = 0
    for step in taken:
        if step.change is not None:
            c = step.change
            tag = None if c.etag is None else c.etag.removeprefix("W/").strip('"')  # the worker keys it bare
            rows.append(watermark(tenant_id, c.subscription_id, c.change_type, c.event_id, tag))
        elif step.lifecycle is not None:
            state = _LIFECYCLE_STATES[step.lifecycle]
            gaps += step.lifecycle == "missed"
    return Expected(room.subscription_id, tuple(rows), None, gaps, state)


def engine_for(url: str) -> Engine:
    """A read-only-use engine; ``postgresql://`` is taken to mean psycopg 3."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return create_engine(url)


def verify(
    database_url: str,
    tenant: str,
    expected: Sequence[Expected],
    drain_timeout: float,
    progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Wait for the drain (at most ``drain_timeout`` s), then compare; never raises for a discrepancy."""
    engine = engine_for(database_url)
    try:
        report = VerifyReport(subscriptions=len(expected), expected_rows=sum(len(e.rows) for e in expected))
        started = time.monotonic()
        report.drained = _wait_for_drain(engine, tenant, expected, started + drain_timeout, progress)
        report.drain_seconds = time.monotonic() - started
        _compare(engine, tenant, expected, report)
        return report
    finally:
        engine.dispose()


def _chunks(expected: Sequence[Expected]) -> list[list[str]]:
    ids = [e.subscription_id for e in expected]
    return [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


def _caught_up(item: Expected, row: Any) -> bool:
    """Whether the subscription ``row`` (``None``: not in the table) holds what ``item`` waits for."""
    if row is None:
        return False
    if item.tail is not None:
        return bool(row.last_watermark == item.tail)
    state_ok = item.state is None or row.state == item.state
    return bool(row.last_seq >= len(item.rows) and row.gap_count >= item.gaps and state_ok)


def _wait_for_drain(
    engine: Engine,
    tenant: str,
    expected: Sequence[Expected],
    deadline: float,
    progress: Callable[[str], None] | None,
) -> bool:
    want = [e for e in expected if e.tail is not None or e.rows or e.state is not None]
    last_report = time.monotonic()
    columns = (
        subscriptions.c.subscription_id,
        subscriptions.c.last_watermark,
        subscriptions.c.last_seq,
        subscriptions.c.gap_count,
        subscriptions.c.state,
    )
    while True:
        found: dict[str, Any] = {}
        with engine.connect() as conn:
            for ids in _chunks(want):
                query = select(*columns).where(
                    subscriptions.c.tenant == tenant, subscriptions.c.subscription_id.in_(ids)
                )
                found.update({row.subscription_id: row for row in conn.execute(query)})
        done = sum(1 for e in want if _caught_up(e, found.get(e.subscription_id)))
        if done == len(want):
            return True
        now = time.monotonic()
        if now > deadline:
            return False
        if progress is not None and now - last_report >= 5:
            progress(f"draining: {done}/{len(want)} subscriptions caught up")
            last_report = now
        time.sleep(0.25)


def _compare(engine: Engine, tenant: str, expected: Sequence[Expected], report: VerifyReport) -> None:
    stored: dict[str, list[tuple[int | None, str]]] = defaultdict(list)
    states: dict[str, tuple[int, str]] = {}
    with engine.connect() as conn:
        for ids in _chunks(expected):
            rows = conn.execute(
                select(notifications.c.subscription_id, notifications.c.seq, notifications.c.watermark).where(
                    notifications.c.tenant == tenant, notifications.c.subscription_id.in_(ids)
                )
            )
            for row in rows:
                stored[row.subscription_id].append((row.seq, row.watermark))
            found = conn.execute(
                select(subscriptions.c.subscription_id, subscriptions.c.gap_count, subscriptions.c.state).where(
                    subscriptions.c.tenant == tenant, subscriptions.c.subscription_id.in_(ids)
                )
            )
            states.update({row.subscription_id: (row.gap_count, row.state) for row in found})
    for item in expected:
        gaps, state = states.get(item.subscription_id, (0, None))
        wrong_gaps = gaps if not item.gaps else max(0, item.gaps - gaps)
        _compare_one(item, stored.get(item.subscription_id, []), wrong_gaps, report)
        if item.state is not None and state != item.state:
            report.wrong_state += 1
            _note(report, f"{item.subscription_id[:24]}…: state {state!r}, expected {item.state!r}")


def _compare_one(item: Expected, rows: list[tuple[int | None, str]], gaps: int, report: VerifyReport) -> None:
    """``gaps``: those counted but not expected, or expected but not counted."""
    sid = item.subscription_id
    report.stored_rows += len(rows)
    report.gaps += gaps
    want = set(item.rows)
    counts: dict[str, int] = defaultdict(int)
    for _, mark in rows:
        counts[mark] += 1
    lost = [w for w in item.rows if w not in counts]
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    unexpected = [w for w in counts if w not in want]
    unnumbered = sum(1 for seq, _ in rows if seq is None)
    report.lost += len(lost)
    report.duplicated += duplicated
    report.unexpected += len(unexpected)
    report.unnumbered += unnumbered
    numbered = sorted((seq, mark) for seq, mark in rows if seq is not None)
    if [seq for seq, _ in numbered] != list(range(1, len(numbered) + 1)):
        report.seq_broken += 1
        _note(report, f"{sid[:24]}…: seq {[s for s, _ in numbered][:12]} is not 1..{len(numbered)}")
    elif not lost and not unexpected and tuple(mark for _, mark in numbered) != item.rows:
        report.out_of_order += 1
        _note(report, f"{sid[:24]}…: rows numbered out of the order sent")
    if lost:
        _note(report, f"{sid[:24]}…: {len(lost)} of {len(item.rows)} rows lost, first {lost[0]}")
    if duplicated or unexpected or unnumbered or gaps:
        _note(
            report,
            f"{sid[:24]}…: duplicated {duplicated}, unexpected {len(unexpected)}, seq null {unnumbered}, gaps {gaps}",
        )


def _note(report: VerifyReport, text: str) -> None:
    if len(report.problems) < 20:
        report.problems.append(text)
