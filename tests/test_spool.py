"""The spool journal on its own: order, torn records, drains that stop half-way."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue

from ingress.spool import Spool
from shared.queues import QUEUE_NAME, spooled_key
from shared.settings import Settings
from shared.store_job import enqueue_payloads
from shared.types import Payload
from syncnotify.redis_server import EmbeddedRedis


def payload(n: int) -> Payload:
    return Payload(
        id=uuid.uuid4().hex,
        tenant="Default",
        received_at=1_700_000_000 + n,
        source="127.0.0.1",
        subscription_ids=["sub"],
        body=f"<n>{n}</n>".encode(),
    )


class Recorder:
    """An ``enqueue`` stand-in that records what it was given and can be told to fail on a given call."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.batches: list[list[Payload]] = []
        self.chunk_ids: list[str] = []
        self.calls = 0
        self.fail_on_call = fail_on_call

    def __call__(self, batch: list[Payload], chunk_id: str) -> None:
        self.calls += 1
        self.chunk_ids.append(chunk_id)
        if self.calls == self.fail_on_call:
            raise ConnectionError("Redis went away again")
        self.batches.append(batch)

    @property
    def bodies(self) -> list[bytes]:
        return [p["body"] for batch in self.batches for p in batch]


def test_drain_hands_over_everything_in_arrival_order_and_removes_the_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    sent = [payload(n) for n in range(7)]
    spool.append(sent[:3])
    spool.append(sent[3:])
    assert spool.backlog == 7
    recorder = Recorder()
    assert spool.drain(recorder, chunk=2) == 7
    assert recorder.bodies == [p["body"] for p in sent]
    assert list(tmp_path.iterdir()) == [] and spool.backlog == 0


def test_a_drain_stopped_half_way_resends_nothing_already_handed_over(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    sent = [payload(n) for n in range(600)]
    spool.append(sent)
    first = Recorder(fail_on_call=2)
    with pytest.raises(ConnectionError):
        spool.drain(first, chunk=200)
    assert len(first.bodies) == 200
    second = Recorder()
    Spool(tmp_path).drain(second, chunk=200)  # e.g. the next ingress process, after a restart
    assert first.bodies + second.bodies == [p["body"] for p in sent]  # each exactly once, in order
    assert list(tmp_path.iterdir()) == []


def test_a_torn_last_record_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    sent = [payload(n) for n in range(3)]
    spool.append(sent)
    spool.close()
    (path,) = tmp_path.glob("*.spool")
    with path.open("ab") as f:
        f.write(b"\x00\x00\x01\x00torn")  # a crash in the middle of a write that was never answered
    recorder = Recorder()
    assert Spool(tmp_path).drain(recorder) == 3
    assert recorder.bodies == [p["body"] for p in sent]


def test_a_file_locked_by_a_live_process_is_left_to_it(tmp_path: Path) -> None:
    owner = Spool(tmp_path)
    owner.append([payload(1)])  # owner keeps its file open and locked
    other = Spool(tmp_path / ".." / tmp_path.name)
    recorder = Recorder()
    assert other.drain(recorder) == 0
    assert recorder.batches == [] and len(list(tmp_path.glob("*.spool"))) == 1


def test_a_drain_killed_between_queueing_and_recording_progress_queues_each_payload_once(
    tmp_path: Path, redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """The process dies after Redis took a chunk but before the progress file says so; the next drain
    hands the same chunk over again, under the same id, and nothing reaches the queue twice."""
    settings = Settings(redis_url=redis_server.url)
    spool = Spool(tmp_path)
    sent = [payload(n) for n in range(500)]
    spool.append(sent)

    class Died(Exception):
        pass

    calls = 0

    def enqueue_then_die(batch: list[Payload], chunk_id: str) -> None:
        nonlocal calls
        calls += 1
        enqueue_payloads(redis, batch, settings, once_key=spooled_key(chunk_id))
        if calls == 2:
            raise Died  # queued, but the progress of this chunk is never written

    with pytest.raises(Died):
        spool.drain(enqueue_then_die, chunk=200)
    Spool(tmp_path).drain(
        lambda batch, chunk_id: enqueue_payloads(redis, batch, settings, once_key=spooled_key(chunk_id)),
        chunk=200,
    )
    queued = [p["id"] for job in Queue(QUEUE_NAME, connection=redis).get_jobs() for p in job.args[0]]
    assert sorted(queued) == sorted(p["id"] for p in sent)  # every payload, each exactly once
    assert queued == [p["id"] for p in sent]  # in arrival order
