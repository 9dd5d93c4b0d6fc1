"""Migration 0004 (Graph): an EWS database of revision 0003 keeps every row as it was, and gains ``source``,
Graph's columns and the Graph subscription states (SPEC §6, §9, §10).

Every test here runs on SQLite and on PostgreSQL; each starts from an empty database migrated to 0003.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Engine, Table, inspect, select
from sqlalchemy.exc import IntegrityError

from migrations import alembic_config, upgrade
from shared.schema import make_engine, metadata, notifications, subscriptions
from tests.conftest import create_pg_database, drop_pg_database

BEFORE = "0003"
T0 = datetime(2026, 11, 20, 8, 30, 15, 123456, tzinfo=UTC)

#: The columns of 0003's tables, spelled out: the rows below are written as that schema had them.
OLD_NOTIFICATION_COLUMNS = (
    "id",
    "tenant",
    "subscription_id",
    "seq",
    "watermark",
    "previous_watermark",
    "event_type",
    "event_time",
    "item_id",
    "item_change_key",
    "folder_id",
    "folder_change_key",
    "parent_folder_id",
    "old_item_id",
    "old_folder_id",
    "old_parent_folder_id",
    "unread_count",
    "received_at",
    "stored_at",
)
OLD_SUBSCRIPTION_COLUMNS = (
    "tenant",
    "subscription_id",
    "last_watermark",
    "last_seq",
    "last_seen_at",
    "state",
    "error_code",
    "gap_count",
    "server_version",
    "heartbeat_seconds",
)
NEW_NOTIFICATION_COLUMNS = ("source", "resource", "resource_data")
NEW_SUBSCRIPTION_COLUMNS = ("source", "expires_at", "mailbox", "resource", "directory_tenant_id")
#: The checks shared.schema declares, by the names its naming convention gives them.
CHECKS = {
    "notifications": {"ck_notifications_source"},
    "subscriptions": {"ck_subscriptions_state", "ck_subscriptions_source"},
}

OLD_NOTIFICATIONS: list[dict[str, Any]] = [
    {
        "tenant": "Default",
        "subscription_id": "SUB-A",
        "seq": 1,
        "watermark": "AQAAAAWM1",
        "previous_watermark": "AQAAAAWM0",
        "event_type": "Created",
        "event_time": T0,
        "item_id": "AAMkItem1=",
        "item_change_key": "CQAAAB1",
        "folder_id": "AAMkFolder=",
        "folder_change_key": "AQAAAF1",
        "parent_folder_id": "AAMkParent=",
        "old_item_id": None,
        "old_folder_id": None,
        "old_parent_folder_id": None,
        "unread_count": None,
        "received_at": T0 + timedelta(seconds=1),
        "stored_at": T0 + timedelta(seconds=2),
    },
    {
        "tenant": "Default",
        "subscription_id": "SUB-A",
        "seq": 2,
        "watermark": "AQAAAAWM2",
        "previous_watermark": "AQAAAAWM1",
        "event_type": "Moved",
        "event_time": T0 + timedelta(minutes=1),
        "item_id": "AAMkItem1-moved=",
        "item_change_key": "CQAAAB2",
        "folder_id": "AAMkFolder2=",
        "folder_change_key": None,
        "parent_folder_id": "AAMkParent2=",
        "old_item_id": "AAMkItem1=",
        "old_folder_id": "AAMkFolder=",
        "old_parent_folder_id": "AAMkParent=",
        "unread_count": None,
        "received_at": T0 + timedelta(minutes=1, seconds=1),
        "stored_at": T0 + timedelta(minutes=1, seconds=2),
    },
    {
        "tenant": "Räume",
        "subscription_id": "SUB-B",
        "seq": None,  # still waiting for its predecessor
        "watermark": "AQAAAAWM9",
        "previous_watermark": None,
        "event_type": "Modified",
        "event_time": None,
        "item_id": None,
        "item_change_key": None,
        "folder_id": "AAMkInbox=",
        "folder_change_key": "AQAAAF9",
        "parent_folder_id": None,
        "old_item_id": None,
        "old_folder_id": None,
        "old_parent_folder_id": None,
        "unread_count": 7,
        "received_at": T0 + timedelta(hours=1),
        "stored_at": T0 + timedelta(hours=1, microseconds=1),
    },
]

OLD_SUBSCRIPTIONS: list[dict[str, Any]] = [
    {
        "tenant": "Default",
        "subscription_id": f"SUB-{state}",
        "last_watermark": f"AQAAAA-{state}",
        "last_seq": n * 10,
        "last_seen_at": T0 + timedelta(seconds=n),
        "state": state,
        "error_code": "ErrorSubscriptionNotFound" if state == "error" else None,
        "gap_count": n,
        "server_version": "V2017_07_11",
        "heartbeat_seconds": 60.5 if n % 2 else None,
    }
    for n, state in enumerate(["active", "stale", "needs_resync", "error", "unsubscribed"])
]


@pytest.fixture(params=["sqlite", "postgresql"])
def old_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a fresh database migrated to 0003, holding the EWS rows above."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'syncnotify.db'}"
    else:
        admin = request.getfixturevalue("pg_admin")
        url = create_pg_database(admin)
    engine = make_engine(url)
    upgrade(engine, BEFORE)
    with engine.begin() as conn:
        assert [column["name"] for column in inspect(conn).get_columns("notifications")] == list(
            OLD_NOTIFICATION_COLUMNS
        )
        assert [column["name"] for column in inspect(conn).get_columns("subscriptions")] == list(
            OLD_SUBSCRIPTION_COLUMNS
        )
        conn.execute(notifications.insert(), OLD_NOTIFICATIONS)
        conn.execute(subscriptions.insert(), OLD_SUBSCRIPTIONS)
    yield engine
    engine.dispose()
    if request.param == "postgresql":
        drop_pg_database(request.getfixturevalue("pg_admin"), url)


#: The newest revision; 0005 (the renewal's record) follows 0004 (Graph).
HEAD = "0005"


def _downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def _current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _rows(engine: Engine, table: Table, names: Sequence[str]) -> list[dict[str, Any]]:
    """The ``names`` columns of every row, in key order (sorted here: text order is PostgreSQL's collation)."""
    keys = [column.name for column in table.primary_key]
    columns: list[Column[Any]] = [table.c[name] for name in dict.fromkeys([*keys, *names])]
    with engine.connect() as conn:
        rows = [dict(row._mapping) for row in conn.execute(select(*columns))]
    rows.sort(key=lambda row: tuple(row[key] for key in keys))
    return [{name: row[name] for name in names} for row in rows]


def _old_notifications(engine: Engine) -> list[dict[str, Any]]:
    """The rows as 0003 had them, with their ids."""
    return _rows(engine, notifications, OLD_NOTIFICATION_COLUMNS)


def _without_id(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{name: value for name, value in row.items() if name != "id"} for row in rows]


def _old_subscriptions(engine: Engine) -> list[dict[str, Any]]:
    return _rows(engine, subscriptions, OLD_SUBSCRIPTION_COLUMNS)


def _sorted_subscriptions(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(rows, key=lambda row: (row["tenant"], row["subscription_id"]))


def _check_names(engine: Engine, table: str) -> set[str]:
    with engine.connect() as conn:
        return {str(check["name"]) for check in inspect(conn).get_check_constraints(table)}


def test_head_is_0005() -> None:
    assert ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head() == HEAD


def test_old_rows_are_kept_exactly_and_become_ews(old_engine: Engine) -> None:
    before = _old_notifications(old_engine)
    assert _without_id(before) == OLD_NOTIFICATIONS
    assert _old_subscriptions(old_engine) == _sorted_subscriptions(OLD_SUBSCRIPTIONS)

    upgrade(old_engine)

    assert _current_revision(old_engine) == HEAD
    assert _old_notifications(old_engine) == before
    assert _old_subscriptions(old_engine) == _sorted_subscriptions(OLD_SUBSCRIPTIONS)
    new_notification_values = _rows(old_engine, notifications, NEW_NOTIFICATION_COLUMNS)
    assert new_notification_values == [{"source": "ews", "resource": None, "resource_data": None}] * len(
        OLD_NOTIFICATIONS
    )
    new_subscription_values = _rows(old_engine, subscriptions, NEW_SUBSCRIPTION_COLUMNS)
    assert new_subscription_values == [
        {"source": "ews", "expires_at": None, "mailbox": None, "resource": None, "directory_tenant_id": None}
    ] * len(OLD_SUBSCRIPTIONS)


def test_graph_rows_and_states_are_accepted_after_the_upgrade(old_engine: Engine) -> None:
    before = _old_notifications(old_engine)
    upgrade(old_engine)
    graph_notification = {
        "tenant": "Default",
        "subscription_id": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
        "seq": 1,
        "watermark": "graph:3f1c…",
        "event_type": "Modified",
        "item_id": "AAMkAGraphEvent=",
        "item_change_key": "DwAAABYAAAA",
        "received_at": T0 + timedelta(days=1),
        "stored_at": T0 + timedelta(days=1, seconds=1),
        "source": "graph",
        "resource": "Users/room1@example.com/Events/AAMkAGraphEvent=",
        "resource_data": '{"id": "AAMkAGraphEvent=", "subject": "Standup"}',
    }
    expires = T0 + timedelta(days=6, hours=22)
    graph_subscriptions = [
        {
            "tenant": "Default",
            "subscription_id": f"graph-{state}",
            "state": state,
            "source": "graph",
            "expires_at": expires,
            "mailbox": "room1@example.com",
            "resource": "users/room1@example.com/events",
            "directory_tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        }
        for state in ["reauthorization_required", "removed", "active"]
    ]
    with old_engine.begin() as conn:
        (new_id,) = conn.execute(notifications.insert().returning(notifications.c.id), [graph_notification]).one()
        conn.execute(subscriptions.insert(), graph_subscriptions)

    assert new_id > max(row["id"] for row in before)  # the id sequence goes on past the old rows
    (stored,) = _rows(old_engine, notifications, ["id", *graph_notification])[len(before) :]
    assert stored == {"id": new_id, **graph_notification}
    stored_subscriptions = [
        row for row in _rows(old_engine, subscriptions, [*graph_subscriptions[0]]) if row["source"] == "graph"
    ]
    assert stored_subscriptions == _sorted_subscriptions(graph_subscriptions)
    assert _old_notifications(old_engine)[: len(before)] == before


@pytest.mark.parametrize(
    ("table", "row"),
    [
        (subscriptions, {"tenant": "Default", "subscription_id": "S", "state": "bogus"}),
        (subscriptions, {"tenant": "Default", "subscription_id": "S", "source": "other"}),
        (
            notifications,
            {
                "tenant": "Default",
                "subscription_id": "S",
                "watermark": "W",
                "event_type": "Created",
                "received_at": T0,
                "stored_at": T0,
                "source": "other",
            },
        ),
    ],
    ids=["state bogus", "subscription source other", "notification source other"],
)
def test_unknown_states_and_sources_are_refused(old_engine: Engine, table: Table, row: dict[str, Any]) -> None:
    upgrade(old_engine)
    with pytest.raises(IntegrityError), old_engine.begin() as conn:
        conn.execute(table.insert(), [row])
    with old_engine.connect() as conn:
        assert conn.execute(select(table.c.tenant).where(table.c.subscription_id == "S")).all() == []


def test_the_migrated_schema_is_shared_schema(old_engine: Engine) -> None:
    upgrade(old_engine)
    with old_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    # compare_metadata leaves CHECK constraints out: their names are compared here, what they allow above
    for table, names in CHECKS.items():
        assert _check_names(old_engine, table) == names
        assert {str(check.name) for check in metadata.tables[table].constraints if check.name} >= names


def test_downgrade_restores_0003_and_upgrading_again_works(old_engine: Engine) -> None:
    checks_before = _check_names(old_engine, "subscriptions")
    before = _old_notifications(old_engine)
    upgrade(old_engine)
    _downgrade(old_engine, BEFORE)

    assert _current_revision(old_engine) == BEFORE
    with old_engine.connect() as conn:
        assert [column["name"] for column in inspect(conn).get_columns("notifications")] == list(
            OLD_NOTIFICATION_COLUMNS
        )
        assert [column["name"] for column in inspect(conn).get_columns("subscriptions")] == list(
            OLD_SUBSCRIPTION_COLUMNS
        )
    assert _check_names(old_engine, "subscriptions") == checks_before
    assert _check_names(old_engine, "notifications") == set()
    assert _old_notifications(old_engine) == before
    assert _old_subscriptions(old_engine) == _sorted_subscriptions(OLD_SUBSCRIPTIONS)

    upgrade(old_engine)
    assert _current_revision(old_engine) == HEAD
    assert _old_notifications(old_engine) == before


def test_downgrade_is_refused_while_graph_rows_exist(old_engine: Engine) -> None:
    upgrade(old_engine)
    with old_engine.begin() as conn:
        conn.execute(
            subscriptions.insert(),
            [{"tenant": "Default", "subscription_id": "graph-1", "state": "removed", "source": "graph"}],
        )
    _downgrade(old_engine, "0004")
    with pytest.raises(RuntimeError, match="Graph row"):
        _downgrade(old_engine, BEFORE)
    assert _current_revision(old_engine) == "0004"
    assert {
        row["subscription_id"]: row["source"] for row in _rows(old_engine, subscriptions, ["subscription_id", "source"])
    }["graph-1"] == "graph"


def test_0005_keeps_the_renewal_record_and_downgrades_renewal_failed_to_active(old_engine: Engine) -> None:
    """0005 (SPEC §10): the upkeep's columns and the state ``renewal_failed``; down again, that state is ``active``."""
    upgrade(old_engine)
    record = {
        "tenant": "Default",
        "subscription_id": "graph-kept",
        "state": "renewal_failed",
        "source": "graph",
        "mailbox": "room1@example.com",
        "renewed_at": T0,
        "renewal_attempted_at": T0 + timedelta(hours=1),
        "renewal_error": "the client secret is wrong",
        "renewal_failures": 3,
    }
    with old_engine.begin() as conn:
        conn.execute(subscriptions.insert(), [record])
    assert [r for r in _rows(old_engine, subscriptions, [*record]) if r["source"] == "graph"] == [record]
    fresh = _rows(old_engine, subscriptions, ["subscription_id", "renewal_failures", "renewal_error"])
    assert {r["subscription_id"]: r["renewal_failures"] for r in fresh if r["subscription_id"] != "graph-kept"} == {
        row["subscription_id"]: 0 for row in OLD_SUBSCRIPTIONS
    }

    _downgrade(old_engine, "0004")
    assert _current_revision(old_engine) == "0004"
    with old_engine.connect() as conn:
        columns = {column["name"] for column in inspect(conn).get_columns("subscriptions")}
        state = conn.execute(
            select(subscriptions.c.state).where(subscriptions.c.subscription_id == "graph-kept")
        ).scalar_one()
    assert state == "active"
    assert not columns & {"renewed_at", "renewal_attempted_at", "renewal_error", "renewal_failures"}
    upgrade(old_engine)
    assert _current_revision(old_engine) == HEAD
