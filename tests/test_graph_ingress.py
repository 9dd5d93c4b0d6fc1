"""Graph's webhooks at the real ingress (``python -m syncnotify ingress``): the handshake, the checks of SPEC §9
in order with their answers, clientState and its rotation, and what is queued (or not) for each."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest
from redis import Redis
from rq import Queue

from shared.queues import GRAPH_REJECTED_KEY, QUEUE_NAME
from shared.types import Payload
from syncnotify.redis_server import EmbeddedRedis, free_port
from tests.graph_samples import CLIENT_STATE, JSON, ROOM_A, ROOM_B, TOKEN, body, items, sample
from tests.processes import service_env, started, wait_for, wait_http

NOTIFY = "/api/webhooks/graph?tenant=contoso"
LIFECYCLE = "/api/webhooks/graph/lifecycle?tenant=contoso"
OLD_SECRET = "sn-rooms-previous-secret"


@pytest.fixture(scope="module")
def ingress(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ingress for the module: tenants contoso (Graph on, two secrets: rotation) and Default."""
    tmp = tmp_path_factory.mktemp("graph-ingress")
    port = free_port()
    env = service_env(
        redis_server.url,
        f"sqlite:///{tmp / 'syncnotify.db'}",
        tmp,
        SYNCNOTIFY_TENANTS="contoso,Default",
        SYNCNOTIFY_GRAPH_CLIENT_STATE=f"{CLIENT_STATE},{OLD_SECRET}",
        SYNCNOTIFY_MAX_BODY_BYTES="1048576",
    )
    with started(["ingress", "--host", "127.0.0.1", "--port", str(port)], env, tmp, tmp / "ingress.log"):
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz")
        yield url


@pytest.fixture
def off_ingress(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[str]:
    """An ingress without ``SYNCNOTIFY_GRAPH_CLIENT_STATE``: Graph is off."""
    port = free_port()
    env = service_env(redis_server.url, f"sqlite:///{tmp_path / 'syncnotify.db'}", tmp_path)
    with started(["ingress", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path, tmp_path / "ingress.log"):
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz")
        yield url


def queued(redis: Redis) -> list[Payload]:
    payloads: list[Payload] = []
    for job in Queue(QUEUE_NAME, connection=redis).get_jobs():
        payloads.extend(job.args[0])
    return payloads


def post(url: str, content: bytes, path: str = NOTIFY, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(url + path, content=content, headers=JSON if headers is None else headers, timeout=10)


@pytest.mark.parametrize(
    "path", [NOTIFY, LIFECYCLE, "/contoso/api/webhooks/graph", "/CONTOSO/API/Webhooks/Graph/Lifecycle"]
)
@pytest.mark.parametrize("encode", [quote, quote_plus])
def test_handshake_answers_the_token_decoded_once(ingress: str, redis: Redis, path: str, encode: object) -> None:
    assert callable(encode)
    separator = "&" if "?" in path else "?"
    response = httpx.post(
        f"{ingress}{path}{separator}validationToken={encode(TOKEN, safe='')}",
        headers={"Content-Type": "text/plain; charset=utf-8"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.content == TOKEN.encode()
    assert queued(redis) == []


def test_handshake_keeps_plus_and_percent_that_were_encoded(ingress: str) -> None:
    token = "a+b%c d/é=&?"
    response = httpx.post(f"{ingress}{NOTIFY}&validationToken={quote(token, safe='')}", timeout=10)
    assert response.status_code == 200 and response.text == token


def test_handshake_of_2000_bytes_or_empty_is_refused(ingress: str, redis: Redis) -> None:
    long = httpx.post(f"{ingress}{NOTIFY}&validationToken={'x' * 2000}", timeout=10)
    assert long.status_code == 400 and "2000 bytes" in long.text and "1024" in long.text
    empty = httpx.post(f"{ingress}{NOTIFY}&validationToken=", timeout=10)
    assert empty.status_code == 400 and "empty" in empty.text
    assert queued(redis) == []


def test_handshake_with_a_body_answers_the_token_and_queues_nothing(ingress: str, redis: Redis) -> None:
    response = httpx.post(f"{ingress}{NOTIFY}&validationToken=abc", content=sample("02"), headers=JSON, timeout=10)
    assert response.status_code == 200 and response.text == "abc"
    assert queued(redis) == []


def test_change_notification_is_queued_then_answered_202(ingress: str, redis: Redis) -> None:
    response = post(ingress, sample("02"))
    assert response.status_code == 202 and response.content == b""
    (payload,) = queued(redis)
    assert payload["kind"] == "graph" and payload["tenant"] == "contoso"
    assert payload["subscription_ids"] == [ROOM_A]
    assert json.loads(payload["body"])["value"] == items("02")


def test_two_subscriptions_in_one_post_are_both_marked(ingress: str, redis: Redis) -> None:
    assert post(ingress, sample("05")).status_code == 202
    (payload,) = queued(redis)
    assert payload["subscription_ids"] == [ROOM_A, ROOM_B]
    assert len(json.loads(payload["body"])["value"]) == 5


def test_lifecycle_items_are_queued_and_hold_no_subscription(ingress: str, redis: Redis) -> None:
    assert post(ingress, sample("10"), LIFECYCLE).status_code == 202
    (payload,) = queued(redis)
    assert payload["subscription_ids"] == [] and len(json.loads(payload["body"])["value"]) == 2


def test_wrong_or_missing_client_state_is_dropped_counted_and_not_revealed(ingress: str, redis: Redis) -> None:
    response = post(ingress, sample("07"))
    assert response.status_code == 202 and response.content == b""  # the same answer as for a good post
    assert queued(redis) == []
    wait_for(lambda: redis.hget(GRAPH_REJECTED_KEY, "client_state") == b"2", 10, "the rejections counted in Redis")
    metrics = httpx.get(f"{ingress}/metrics", timeout=10).text
    assert 'syncnotify_graph_rejected_total{reason="client_state"}' in metrics
    assert CLIENT_STATE not in metrics


def test_good_items_beside_forged_ones_are_kept(ingress: str, redis: Redis) -> None:
    forged, unsigned = items("07")
    assert post(ingress, body(forged, *items("03"), unsigned)).status_code == 202
    (payload,) = queued(redis)
    assert json.loads(payload["body"])["value"] == items("03")


def test_a_lone_surrogate_in_an_item_is_queued_safely(ingress: str, redis: Redis) -> None:
    (item,) = items("03")
    content = body(item).replace(b'"resource":', b'"note": "\\ud800", "resource":')
    assert post(ingress, content).status_code == 202
    assert json.loads(queued(redis)[0]["body"])["value"][0]["note"] == "\ud800"


def test_an_old_secret_is_still_accepted_while_rotating(ingress: str, redis: Redis) -> None:
    (item,) = items("03")
    item["clientState"] = OLD_SECRET
    assert post(ingress, body(item)).status_code == 202
    assert len(queued(redis)) == 1


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not json", "body is not JSON"),
        (b"\xff\xfe\x00garbage", "body is not JSON"),
        ('{"value": []}'.encode("utf-16"), "body is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"value": [' * 5000 + b"]}" * 5000, "nested too deeply"),
        (b"[]", "body is a JSON array"),
        (b'{"items": []}', "'value' must be an array of notifications, is missing"),
        (b'{"value": {"a": 1}}', "'value' must be an array of notifications, is a JSON object"),
        (b'{"value": "x"}', "is a JSON string"),
        (b'{"value": [1, {}]}', "'value' item 0 is a JSON number, not an object"),
        (b'{"value": [{}, null]}', "'value' item 1 is a JSON null, not an object"),
    ],
)
def test_bad_json_gets_400_with_why(ingress: str, redis: Redis, content: bytes, reason: str) -> None:
    response = post(ingress, content)
    assert response.status_code == 400 and reason in response.text
    assert queued(redis) == []


def test_content_type_empty_body_and_size(ingress: str, redis: Redis) -> None:
    xml = post(ingress, sample("02"), headers={"Content-Type": "text/xml"})
    assert xml.status_code == 415 and "application/json" in xml.text
    assert post(ingress, b"").status_code == 400
    big = post(ingress, b'{"value": [], "pad": "' + b"x" * 1_100_000 + b'"}')
    assert big.status_code == 413
    bomb = post(ingress, gzip.compress(b" " * 3_000_000), headers={**JSON, "Content-Encoding": "gzip"})
    assert bomb.status_code == 413
    assert queued(redis) == []


def test_gzip_body_is_decoded(ingress: str, redis: Redis) -> None:
    response = post(ingress, gzip.compress(sample("03")), headers={**JSON, "Content-Encoding": "gzip"})
    assert response.status_code == 202
    assert json.loads(queued(redis)[0]["body"])["value"] == items("03")


def test_huge_json_within_the_limit_is_accepted_whole(ingress: str, redis: Redis) -> None:
    (item,) = items("03")
    many = [{**item, "resourceData": {**item["resourceData"], "id": f"ev-{n}"}} for n in range(1500)]
    content = body(*many)
    assert 500_000 < len(content) < 1_048_576
    assert post(ingress, content).status_code == 202
    assert len(json.loads(queued(redis)[0]["body"])["value"]) == 1500


def test_unknown_tenant_is_404_before_anything_else(ingress: str) -> None:
    response = post(ingress, b"not even json", "/api/webhooks/graph?tenant=fabrikam")
    assert response.status_code == 404 and "fabrikam" in response.text


def test_get_says_graph_notifications_are_received_here(ingress: str) -> None:
    page = httpx.get(f"{ingress}{LIFECYCLE}", timeout=10)
    assert page.status_code == 200 and "lifecycle notifications" in page.text and "contoso" in page.text


def test_graph_is_off_without_a_client_state(off_ingress: str, redis: Redis) -> None:
    for response in (
        post(off_ingress, sample("02"), "/api/webhooks/graph"),
        httpx.post(f"{off_ingress}/api/webhooks/graph?validationToken=abc", timeout=10),
        httpx.get(f"{off_ingress}/api/webhooks/graph/lifecycle", timeout=10),
    ):
        assert response.status_code == 404 and "not enabled" in response.text
    assert queued(redis) == []
