"""Real services for the tests: a redis-server of our own on a free port, a PostgreSQL database of our own,
SQLite files in a temporary folder.  Storage tests run on both databases."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import psycopg
import pytest
from redis import Redis
from sqlalchemy import Engine

from migrations import upgrade
from shared.schema import make_engine
from shared.settings import get_settings
from syncnotify.redis_server import EmbeddedRedis
from tests import processes

SAMPLES = Path(__file__).parent / "samples"
#: The subscription of the seed's sample (00_seed_sample.xml).
SEED_SUBSCRIPTION = (
    "LABkYjhwcjAxbWI2NDg1LmV1cnByZDAxLnByb2QuZXhjaGFuZ2VsYWJzLmNvbRAAAADELVfykPBZQp7Q8IIUrUfmCKn7"
    "JnqX2AgQAAAAWTlI8+A2EEqLQp01E8Pw2Q=="
)

#: Where the tests create their PostgreSQL databases (a server with trust auth, as on CI).
PG_ADMIN_URL = os.environ.get("SYNCNOTIFY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server: EmbeddedRedis) -> Iterator[Redis]:
    """A clean Redis for each test (flushed before and after, as rq's own suite does)."""
    client = redis_server.client()
    client.flushall()
    yield client
    client.flushall()
    client.close()


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[psycopg.Connection]:
    try:
        conn = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise  # in CI the PostgreSQL tests must run, not skip
        pytest.skip(f"no PostgreSQL at {PG_ADMIN_URL}: {exc}")
    yield conn
    conn.close()


def create_pg_database(admin: psycopg.Connection) -> str:
    name = f"syncnotify_test_{uuid.uuid4().hex[:12]}"
    for attempt in range(20):
        try:
            admin.execute(f'CREATE DATABASE "{name}"')
            break
        except psycopg.errors.ObjectInUse:  # another test process is copying template1 this instant
            time.sleep(0.1 * (attempt + 1))
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{name}"


def drop_pg_database(admin: psycopg.Connection, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database: a SQLite file, or a PostgreSQL database created for this test."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'syncnotify.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    admin = request.getfixturevalue("pg_admin")
    url = create_pg_database(admin)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    drop_pg_database(admin, url)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """Clear the cached settings around a test that sets ``SYNCNOTIFY_*`` variables."""
    monkeypatch.chdir(tmp_path)  # no stray .env is read, and relative defaults land in tmp
    for name in list(os.environ):
        if name.startswith("SYNCNOTIFY_") and name != "SYNCNOTIFY_TEST_PG":
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


class Reliability:
    """Where a fault test appends (fault, how often, load, what was lost) for the terminal summary.

    Kept in the test's report (``user_properties``), so the summary has them when the tests ran in other
    processes (pytest-xdist) too.
    """

    def __init__(self, node: pytest.Item) -> None:
        self.node = node

    def append(self, row: tuple[str, str, str, str]) -> None:
        self.node.user_properties.append(("reliability", row))


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Reliability:
    return Reliability(request.node)


def _runs_real_processes(module: ModuleType) -> bool:
    """Whether a test module drives real ``syncnotify`` processes (it uses ``tests.processes``)."""
    return any(getattr(value, "__module__", None) == processes.__name__ for value in vars(module).values())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests of modules that run real processes ``system``: ``-m "not system"`` leaves the fast ones.
    Tests marked ``minutes`` go first (pytest-xdist hands tests out in this order)."""
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and _runs_real_processes(module):
            item.add_marker(pytest.mark.system)
    items.sort(key=lambda item: item.get_closest_marker("minutes") is None)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reports = [r for outcome in ("passed", "failed") for r in terminalreporter.stats.get(outcome, [])]
    rows = [
        tuple(value)
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in report.user_properties
        if name == "reliability"
    ]
    if not rows:
        return
    terminalreporter.section("reliability (figures for the README's table)")
    terminalreporter.write_line("| fault | how often | load | lost |")
    terminalreporter.write_line("| --- | --- | --- | --- |")
    for row in rows:
        terminalreporter.write_line("| " + " | ".join(row) + " |")
