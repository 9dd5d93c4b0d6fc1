"""Located parse errors as an operator meets them: real ingress and worker processes, the malformed seed sample
and a truncated one posted as Exchange would, their messages read back with ``syncnotify dlq list --json``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from migrations import upgrade
from shared.ews import SOAP_ACTION
from shared.schema import make_engine
from syncnotify.redis_server import EmbeddedRedis
from tests import processes
from tests.conftest import SAMPLES
from tests.processes import run, service_env, wait_for

HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{SOAP_ACTION}"'}
SEED_MALFORMED = (SAMPLES / "00_seed_sample_malformed.xml").read_bytes()
SEED_MESSAGE = (
    "payload is not well-formed XML: mismatched tag at line 1, column 1894: "
    "<t:SubscriptionId> opened at line 1, column 785 is not closed"
)
SEED = (SAMPLES / "00_seed_sample.xml").read_bytes()
# Cut inside the first event's Watermark: the message names that element and where it opened.
TRUNCATED = SEED[: SEED.index(b"</t:Watermark>")]
TRUNCATED_MESSAGE = (
    f"payload is truncated at line 1, column {len(TRUNCATED) + 1}: "
    f"<t:Watermark> opened at line 1, column {SEED.index(b'<t:Watermark>') + 1} is never closed"
)


@pytest.fixture
def service(redis_server: EmbeddedRedis, redis: Redis, tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """Ingress and one worker on a fresh SQLite database (parsing does not depend on the database)."""
    database_url = f"sqlite:///{tmp_path / 'syncnotify.db'}"
    engine = make_engine(database_url)
    upgrade(engine)
    engine.dispose()
    env = service_env(redis_server.url, database_url, tmp_path)
    with processes.service(env, tmp_path) as base:
        yield env, f"{base}/Webservices/SyncNotification.svc"


def dead_letters(env: dict[str, str], tmp_path: Path) -> list[dict[str, object]]:
    result = run(["dlq", "list", "--json"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    entries: list[dict[str, object]] = json.loads(result.stdout)
    return entries


def test_malformed_and_truncated_payloads_are_dead_lettered_with_located_messages(
    service: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    env, url = service
    for body in (SEED_MALFORMED, TRUNCATED):
        response = httpx.post(url, content=body, headers=HEADERS, timeout=10)
        assert response.status_code == 200, response.text  # acked: the worker refuses it, not the ingress

    wait_for(lambda: len(dead_letters(env, tmp_path)) == 2, 60, "both payloads in the dead-letter queue")
    messages = {str(entry["message"]): entry for entry in dead_letters(env, tmp_path)}
    assert set(messages) == {SEED_MESSAGE, TRUNCATED_MESSAGE}
    for entry in messages.values():
        assert entry["error_class"] == "malformed_xml" and entry["attempts"] == 1

    human = run(["dlq", "list"], env, tmp_path)
    assert human.returncode == 0 and SEED_MESSAGE in human.stdout
