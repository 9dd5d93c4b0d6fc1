"""The tables (SQLAlchemy Core) and the engine that reaches them, alike on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import namedtuple_row
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    make_url,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.dml import Insert

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

#: How long a SQLite connection waits for another process's write lock before failing (transiently).
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0

SUBSCRIPTION_STATES = (
    "active",
    "stale",
    "needs_resync",
    "error",
    "unsubscribed",
    # Graph only (SPEC §9–§10): a lifecycle event asked for reauthorization / Graph removed the subscription
    "reauthorization_required",
    "removed",
    # Graph subscriptions syncnotify keeps alive (SPEC §10): the last renewal failed (why: renewal_error)
    "renewal_failed",
)

#: States of subscriptions that are over for good: nothing more arrives, nothing renews them.
RETIRED_STATES = frozenset({"unsubscribed", "removed"})

#: Where a row came from: an EWS push notification, or a Microsoft Graph change notification (SPEC §9).
SOURCES = ("ews", "graph")


def _one_of(column: str, values: Sequence[str]) -> str:
    """The SQL of a check that ``column`` holds one of ``values``."""
    return f"{column} IN (" + ", ".join(f"'{value}'" for value in values) + ")"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always aware UTC in Python, whatever the database keeps (SQLite keeps text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given where UTC is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002 - SQLAlchemy's signature
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a bigint identity.
BigID = BigInteger().with_variant(Integer(), "sqlite")

notifications = Table(
    "notifications",
    metadata,
    Column("id", BigID, primary_key=True, autoincrement=True),
    Column("tenant", Text, nullable=False),
    Column("subscription_id", Text, nullable=False),
    Column("seq", BigInteger, nullable=True),  # 1, 2, 3 … in watermark-chain order; null while waiting
    Column("watermark", Text, nullable=False),
    Column("previous_watermark", Text, nullable=True),
    Column("event_type", Text, nullable=False),
    Column("event_time", UTCDateTime, nullable=True),
    Column("item_id", Text),
    Column("item_change_key", Text),
    Column("folder_id", Text),
    Column("folder_change_key", Text),
    Column("parent_folder_id", Text),
    Column("old_item_id", Text),
    Column("old_folder_id", Text),
    Column("old_parent_folder_id", Text),
    Column("unread_count", Integer),
    Column("received_at", UTCDateTime, nullable=False),
    Column("stored_at", UTCDateTime, nullable=False),
    Column("source", Text, nullable=False, server_default="ews"),
    Column("resource", Text, nullable=True),  # Graph: the item's resource path, as received
    Column("resource_data", Text, nullable=True),  # Graph: the decrypted resource JSON of a rich notification
    UniqueConstraint("tenant", "subscription_id", "watermark"),
    CheckConstraint(_one_of("source", SOURCES), name="source"),
    Index(None, "tenant", "subscription_id", "seq"),
    Index(None, "stored_at"),
)

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("tenant", Text, primary_key=True),
    Column("subscription_id", Text, primary_key=True),
    Column("last_watermark", Text, nullable=True),  # tail of the chain; null until its head is known
    Column("last_seq", BigInteger, nullable=False, server_default="0"),
    Column("last_seen_at", UTCDateTime, nullable=True),
    Column("state", Text, nullable=False, server_default="active"),
    Column("error_code", Text, nullable=True),
    Column("gap_count", Integer, nullable=False, server_default="0"),
    Column("server_version", Text, nullable=True),
    Column("heartbeat_seconds", Float, nullable=True),  # the usual longest silence, learned (see worker.store)
    Column("source", Text, nullable=False, server_default="ews"),
    # Graph subscriptions only (SPEC §10); null on EWS ones
    Column("expires_at", UTCDateTime, nullable=True),
    Column("mailbox", Text, nullable=True),
    Column("resource", Text, nullable=True),
    Column("directory_tenant_id", Text, nullable=True),
    # Graph subscriptions syncnotify created (SPEC §10): the upkeep's record
    Column("renewed_at", UTCDateTime, nullable=True),  # when Graph last granted a lifetime
    Column("renewal_attempted_at", UTCDateTime, nullable=True),
    Column("renewal_error", Text, nullable=True),  # why the last attempt failed; null after a success
    Column("renewal_failures", Integer, nullable=False, server_default="0"),  # failed attempts in a row
    CheckConstraint(_one_of("state", SUBSCRIPTION_STATES), name="state"),
    CheckConstraint(_one_of("source", SOURCES), name="source"),
)

# One row per Notification element (one link of the watermark chain, with the watermarks of the rows it
# made).  Links wait here until their predecessor is linked; linked ones are kept so that a late retry of
# an already linked notification is recognised as a duplicate instead of waiting for a gap.
chain_links = Table(
    "chain_links",
    metadata,
    Column("id", BigID, primary_key=True, autoincrement=True),
    Column("tenant", Text, nullable=False),
    Column("subscription_id", Text, nullable=False),
    Column("previous_watermark", Text, nullable=False),  # '' when the notification carried none
    Column("last_watermark", Text, nullable=False),
    Column("row_watermarks", Text, nullable=False),  # space-separated, in document order
    Column("payload_id", Text, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("waiting_since", UTCDateTime, nullable=True),  # null once linked
    UniqueConstraint("tenant", "subscription_id", "last_watermark", "previous_watermark", name="uq_chain_links_link"),
    Index("ix_chain_links_predecessor", "tenant", "subscription_id", "previous_watermark"),
    Index(None, "waiting_since"),
)


def insert_new(conn: Connection, table: Table) -> Insert:
    """``INSERT … ON CONFLICT DO NOTHING`` for this connection's dialect: duplicates are dropped by the database."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()  # type: ignore[no-any-return]


def insert_new_returning(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], returning: Sequence[Column[Any]]
) -> list[Any]:
    """``insert_new`` of many ``rows``; the ``returning`` columns of those actually inserted (not the duplicates).

    On PostgreSQL, one prepared statement run for each row in psycopg's pipeline: SQLAlchemy would send
    multi-row ``VALUES`` statements, whose thousands of placeholders psycopg then parses in Python on every
    call (half the time of a store, profiled).  The values go to psycopg as they are: ``str``, ``int``,
    ``None`` and aware ``datetime`` (what ``UTCDateTime`` would send).
    """
    statement = insert_new(conn, table).returning(*returning)
    if not rows or conn.dialect.name != "postgresql":
        return list(conn.execute(statement, list(rows))) if rows else []
    sql = str(statement.compile(dialect=conn.dialect, column_keys=list(rows[0])))
    cursor = conn.connection.driver_connection.cursor(row_factory=namedtuple_row)  # type: ignore[union-attr]
    try:
        cursor.executemany(sql, rows, returning=True)
        inserted = []
        while True:
            inserted += cursor.fetchall()
            if not cursor.nextset():
                return inserted
    finally:
        cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the settings this project relies on.

    On SQLite: WAL, a 30 s busy timeout (``?timeout=N`` in the URL changes it), and ``BEGIN IMMEDIATE`` for
    every transaction, so that the write lock is taken up front (the per-subscription lock of PostgreSQL's
    ``FOR UPDATE`` has no finer equivalent there) and two workers never deadlock upgrading a read lock.
    """
    if url.startswith("sqlite"):
        parsed = make_url(url)
        # how long to wait for another process's write lock; ``?timeout=5`` in the URL changes it
        timeout = float(parsed.query.get("timeout", SQLITE_BUSY_TIMEOUT_SECONDS))  # type: ignore[arg-type]
        engine = create_engine(
            parsed.difference_update_query(["timeout"]),
            connect_args={"timeout": timeout, "isolation_level": None},
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)
