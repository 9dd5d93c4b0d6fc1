"""The layout's promises: names resolve, imports point one way, the migration matches the tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from rq.utils import import_attribute
from sqlalchemy import Engine

from shared.queues import FAILURE_CALLBACK, STORE_JOB
from shared.schema import metadata
from worker.jobs import on_failure, store_payloads

ROOT = Path(__file__).parent.parent


def test_job_names_resolve_to_the_worker_functions() -> None:
    assert import_attribute(STORE_JOB) is store_payloads
    assert import_attribute(FAILURE_CALLBACK) is on_failure


def test_ingress_never_imports_worker() -> None:
    code = "import sys, ingress.app; print(sorted(m for m in sys.modules if m == 'worker' or m.startswith('worker.')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


def test_migration_creates_exactly_the_tables_of_the_schema(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
