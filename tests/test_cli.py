"""The operator's commands as a new user runs them: ``up`` until it serves, ``send``, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from redis import Redis
from sqlalchemy import select

from shared.schema import make_engine, notifications
from syncnotify.redis_server import EmbeddedRedis, free_port, reachable
from tests.conftest import SAMPLES
from tests.processes import SYNCNOTIFY, run, service_env, wait_for, wait_http


def test_up_with_embedded_redis_serves_stores_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = service_env("unused", "sqlite:///./syncnotify.db", tmp_path)
    del env["SYNCNOTIFY_REDIS_URL"]  # nothing configured: up starts its own Redis
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        SYNCNOTIFY + ["up", "--port", str(port), "--workers", "1", "--embedded-redis"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        page = httpx.get(f"http://127.0.0.1:{port}/Webservices/SyncNotification.svc?Default")
        assert page.status_code == 200 and "Default" in page.text
        sent = run(
            [
                "send",
                str(SAMPLES / "02_created_event_item.xml"),
                "--url",
                f"http://127.0.0.1:{port}/Default/Webservices/SyncNotification.svc",
            ],
            env,
            tmp_path,
        )
        assert sent.stdout.strip().endswith("200 OK"), sent.stdout + sent.stderr
        engine = make_engine(f"sqlite:///{tmp_path / 'syncnotify.db'}")

        def stored() -> int:
            with engine.connect() as conn:
                return len(conn.execute(select(notifications.c.id)).all())

        wait_for(lambda: stored() == 2, 30, "two rows")
        engine.dispose()
        output = (tmp_path / "up.log").read_text()
        redis_url = output.split("embedded redis-server at ", 1)[1].split()[0]
        assert reachable(redis_url)
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(60)
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert not reachable(redis_url), "the embedded Redis must stop with up"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
    assert list((tmp_path / ".syncnotify" / "redis").rglob("*.aof")), "the embedded Redis keeps an append-only file"


def test_embedded_redis_keeps_queued_data_across_a_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        server.client().rpush("rq:queue:syncnotify", b"job-1")
        server.restart()
        assert server.client().lrange("rq:queue:syncnotify", 0, -1) == [b"job-1"]
    finally:
        server.stop()


def test_send_reports_unreadable_file_in_one_line(tmp_path: Path) -> None:
    result = run(["send", str(tmp_path / "missing.xml"), "--url", "http://127.0.0.1:9/x"], {}, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"syncnotify: cannot read {tmp_path / 'missing.xml'}: No such file or directory"
    ]


def test_send_reports_unreachable_service(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/Webservices/SyncNotification.svc"
    result = run(["send", str(SAMPLES / "01_status_event.xml"), "--url", url], {}, tmp_path)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot post" in result.stderr


def test_help_lists_every_command() -> None:
    result = subprocess.run(SYNCNOTIFY + ["--help"], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    for command in ("up", "ingress", "worker", "db", "send"):
        assert command in result.stdout
    assert sys.executable


def test_json_logs_carry_job_and_payload_fields_and_never_the_payload(
    redis_server: EmbeddedRedis, redis: Redis, tmp_path: Path
) -> None:
    from shared.settings import Settings
    from shared.store_job import enqueue_payloads
    from shared.types import Payload
    from tests.processes import service_env

    database = f"sqlite:///{tmp_path / 'logs.db'}"
    run(["db", "upgrade"], service_env(redis_server.url, database, tmp_path), tmp_path)
    marker = "SECRET-ROOM-CONTENT-1234"
    good = (SAMPLES / "02_created_event_item.xml").read_bytes().replace(b"EXAMPLEITEM", marker.encode(), 1)
    bad = b"<broken>" + marker.encode()
    settings = Settings(redis_url=redis_server.url, database_url=database)
    for n, body in enumerate((good, bad)):
        payload = Payload(
            id=f"p{n}",
            tenant="Default",
            received_at=1.7e9 + n,
            source="127.0.0.1",
            subscription_ids=["RVhBTVBM"],
            body=body,
        )
        enqueue_payloads(redis, [payload], settings)
    env = service_env(redis_server.url, database, tmp_path, SYNCNOTIFY_LOG_FORMAT="json")
    result = run(["worker", "--burst", "--metrics-port", "0"], env, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]  # every line is JSON
    stored = next(entry for entry in lines if entry["message"].startswith("stored 2 rows"))
    assert stored["level"] == "INFO" and stored["job_id"]
    failed = next(entry for entry in lines if "fails permanently" in entry["message"])
    assert failed["tenant"] == "Default" and failed["payload_id"] == "p1" and failed["job_id"]
    assert marker not in "\n".join(e["message"] for e in lines if e["level"] == "INFO")


def test_a_second_worker_on_a_taken_metrics_port_exits_1_in_one_line(
    redis_server: EmbeddedRedis, redis: Redis, tmp_path: Path
) -> None:
    from rq import Worker

    from tests.processes import started

    env = service_env(redis_server.url, f"sqlite:///{tmp_path / 'w.db'}", tmp_path)
    assert run(["db", "upgrade"], env, tmp_path).returncode == 0
    port = free_port()
    with started(["worker", "--metrics-port", str(port)], env, tmp_path, tmp_path / "first.log"):
        wait_http(f"http://127.0.0.1:{port}/metrics")
        wait_for(lambda: Worker.count(connection=redis) == 1, 30, "the first worker to register")
        second = run(["worker", "--metrics-port", str(port)], env, tmp_path, timeout=60)
        assert second.returncode == 1, second.stdout + second.stderr
        assert second.stderr.strip().splitlines() == [
            f"syncnotify: metrics port {port} is in use (another syncnotify worker?): "
            "choose another with --metrics-port, or 0 to serve none"
        ]
        assert Worker.count(connection=redis) == 1, "the second started no worker process"


def test_up_refuses_a_taken_port_before_starting_anything(tmp_path: Path) -> None:
    import socket

    env = service_env("redis://127.0.0.1:9/0", f"sqlite:///{tmp_path / 'u.db'}", tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1]
        result = run(["up", "--port", str(metrics_port - 2)], env, tmp_path, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"syncnotify: port {metrics_port} (worker metrics) is in use (another syncnotify up?): "
        "choose another base with --port"
    ]
    assert not (tmp_path / "u.db").exists(), "nothing was started, not even the migration"
