"""Rich Graph notifications through the real ingress and worker: tokens checked against a JWKS served over
HTTPS from a test CA (trusted through ``SSL_CERT_FILE``), the resource decrypted into ``resource_data``,
each failure its own dead-letter class, and a replay once the configuration is fixed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from sqlalchemy import Engine, select

from migrations import upgrade
from shared.schema import make_engine, notifications
from syncnotify.redis_server import EmbeddedRedis
from tests.graph_keys import GraphKeys, graph_keys_fixture  # noqa: F401 - the fixture
from tests.graph_samples import APP_ID, CLIENT_STATE, JSON, body, items
from tests.processes import queue_drained, run, service, service_env, wait_for

NOTIFY = "/api/webhooks/graph?tenant=contoso"
RESOURCE = {"id": "ev-rich-1", "subject": "Board meeting", "start": {"dateTime": "2026-12-03T09:00:00"}}


def rich_item(keys: GraphKeys, item_id: str = "ev-rich-1", certificate_id: str | None = None) -> dict[str, Any]:
    (item,) = items("02")
    resource = json.dumps({**RESOURCE, "id": item_id})
    return {
        **item,
        "resourceData": {**item["resourceData"], "id": item_id},
        "encryptedContent": keys.encrypt(resource, certificate_id),
    }


def environment(
    redis_server: EmbeddedRedis, database_url: str, tmp: Path, keys: GraphKeys, **extra: str
) -> dict[str, str]:
    return service_env(
        redis_server.url,
        database_url,
        tmp,
        SYNCNOTIFY_TENANTS="contoso",
        SYNCNOTIFY_GRAPH_CLIENT_STATE=CLIENT_STATE,
        SYNCNOTIFY_GRAPH_APP_IDS=APP_ID,
        SYNCNOTIFY_GRAPH_JWKS_URL=keys.jwks_url,
        SSL_CERT_FILE=str(keys.ca_file),
        REQUESTS_CA_BUNDLE=str(keys.ca_file),
        **extra,
    )


@pytest.fixture
def database(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def post(url: str, content: bytes) -> None:
    response = httpx.post(url + NOTIFY, content=content, headers=JSON, timeout=10)
    assert response.status_code == 202, response.text


def dead_letters(env: dict[str, str], tmp: Path) -> dict[str, str]:
    result = run(["dlq", "list", "--json"], env, tmp)
    assert result.returncode == 0, result.stderr
    return {str(e["error_class"]): str(e["message"]) for e in json.loads(result.stdout)}


def resource_data(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(select(notifications.c.item_id, notifications.c.resource_data)).all()
    return {r.item_id: None if r.resource_data is None else json.loads(r.resource_data) for r in rows}


def test_rich_items_are_checked_decrypted_and_each_failure_dead_lettered(
    redis_server: EmbeddedRedis,
    redis: Redis,
    database: Engine,
    database_url: str,
    graph_keys: GraphKeys,
    tmp_path: Path,
) -> None:
    keys = graph_keys
    env = environment(
        redis_server, database_url, tmp_path, keys, SYNCNOTIFY_GRAPH_DECRYPTION_KEYS=keys.decryption_keys_env
    )
    (basic,) = items("03")
    tampered = rich_item(keys, "ev-tampered")
    tampered["encryptedContent"]["dataSignature"] = rich_item(keys, "ev-other")["encryptedContent"]["dataSignature"]
    with service(env, tmp_path) as url:
        post(url, body(rich_item(keys), basic, validationTokens=[keys.mint()]))
        post(url, body(tampered, validationTokens=[keys.mint()]))
        post(url, body(rich_item(keys, "ev-unknown-key", "sn-not-configured"), validationTokens=[keys.mint()]))
        post(url, body(rich_item(keys, "ev-no-token")))
        post(url, body(rich_item(keys, "ev-expired"), basic, validationTokens=[keys.mint({"exp": 1_000_000_000})]))
        post(url, body(rich_item(keys, "ev-audience"), validationTokens=[keys.mint({"aud": "someone-else"})]))
        post(url, body(rich_item(keys, "ev-publisher"), validationTokens=[keys.mint({"appid": "not-graph"})]))
        wait_for(lambda: queue_drained(redis), 60, "the queue to drain")
        wait_for(lambda: len(dead_letters(env, tmp_path)) == 3, 60, "one dead letter of each class")
        wait_for(lambda: len(resource_data(database)) == 2, 30, "the rich row and the basic one")
        entries = run(["dlq", "list", "--json"], env, tmp_path)
    stored = resource_data(database)
    assert stored["ev-rich-1"] == RESOURCE
    assert stored[basic["resourceData"]["id"]] is None  # a basic item beside failed tokens is stored as usual
    listed = json.loads(entries.stdout)
    classes = sorted(str(e["error_class"]) for e in listed)
    assert classes == [
        "bad_signature",
        "invalid_validation_token",
        "invalid_validation_token",
        "invalid_validation_token",
        "invalid_validation_token",
        "no_decryption_key",
    ]
    messages = " ".join(str(e["message"]) for e in listed)
    assert "sn-not-configured" in messages and "item 0" in messages


def test_a_missing_key_dead_letter_is_stored_once_replayed_with_the_key(
    redis_server: EmbeddedRedis,
    redis: Redis,
    database: Engine,
    database_url: str,
    graph_keys: GraphKeys,
    tmp_path: Path,
) -> None:
    keys = graph_keys
    without = environment(redis_server, database_url, tmp_path, keys)
    with service(without, tmp_path) as url:
        post(url, body(rich_item(keys), validationTokens=[keys.mint()]))
        wait_for(lambda: "no_decryption_key" in dead_letters(without, tmp_path), 60, "the dead letter")
    assert resource_data(database) == {}

    fixed = environment(
        redis_server, database_url, tmp_path, keys, SYNCNOTIFY_GRAPH_DECRYPTION_KEYS=keys.decryption_keys_env
    )
    with service(fixed, tmp_path):
        replay = run(["dlq", "replay", "--all"], fixed, tmp_path)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        wait_for(lambda: resource_data(database) == {"ev-rich-1": RESOURCE}, 60, "the replayed row")
    assert dead_letters(fixed, tmp_path) == {}
