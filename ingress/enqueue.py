"""Posts → one Redis write per group of concurrent posts, or the spool while Redis cannot take them.

Requests hand their payload to ``Enqueuer.submit`` and wait.  One background thread writes whatever has
gathered since its last write as *one* RQ job in *one* Redis transaction (a group commit): under load many
posts share a write, and a lone post is written at once, never waiting for a batch to fill.  The event loop
never blocks on Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from redis import Redis
from redis.exceptions import RedisError
from rq import Callback, Queue, Retry
from rq.job import Job

from shared.errors import SpoolError
from shared.queues import (
    FAILURE_CALLBACK,
    INFLIGHT_TTL_SECONDS,
    JOB_TIMEOUT_SECONDS,
    QUEUE_NAME,
    RETRY_INTERVALS,
    STORE_JOB,
    UNSUBSCRIBED_KEY,
    inflight_key,
    spooled_key,
)
from shared.settings import Settings
from shared.spool import Spool
from shared.types import Payload

logger = logging.getLogger(__name__)


def enqueue_payloads(
    redis: Redis, payloads: list[Payload], settings: Settings, once_key: str | None = None
) -> Job | None:
    """Put ``payloads`` on the queue as one job, with their in-flight marks, in one Redis transaction.

    With ``once_key``, a second call with the same key enqueues nothing (and returns None): the key is
    written in the same transaction as the job.  The spool's drain uses it to queue each chunk once.
    """
    if once_key is not None and redis.exists(once_key):
        return None
    # RQ counts intervals from the end of the list when it is longer than the retries: cut it to size
    retries = settings.job_retries
    retry = Retry(max=retries, interval=RETRY_INTERVALS[:retries]) if retries else None
    job = Job.create(
        STORE_JOB,
        args=(payloads,),
        connection=redis,
        timeout=JOB_TIMEOUT_SECONDS,
        result_ttl=0,
        failure_ttl=settings.dlq_retention_days * 86400,
        on_failure=Callback(FAILURE_CALLBACK),
        retry=retry,
        meta={"tenants": sorted({p["tenant"] for p in payloads}), "payloads": len(payloads)},
        # RQ would otherwise render every body into the description: CPU here, kilobytes in Redis
        description=f"store {len(payloads)} payload(s)",
    )
    queue = Queue(QUEUE_NAME, connection=redis)
    with redis.pipeline() as pipe:
        queue.enqueue_job(job, pipeline=pipe)  # first: it opens the MULTI block the marks then join
        for payload in payloads:
            for subscription_id in payload["subscription_ids"]:
                key = inflight_key(payload["tenant"], subscription_id)
                pipe.zadd(key, {payload["id"]: payload["received_at"]})
                pipe.expire(key, INFLIGHT_TTL_SECONDS)
        if once_key is not None:
            pipe.set(once_key, job.id, ex=INFLIGHT_TTL_SECONDS)
        pipe.execute()
    return job


class Enqueuer:
    """Makes each submitted payload durable (queue, else spool) before ``submit`` returns."""

    def __init__(self, settings: Settings, redis: Redis | None = None, spool: Spool | None = None) -> None:
        self.settings = settings
        self.redis = redis or Redis.from_url(settings.redis, socket_timeout=5, socket_connect_timeout=2)
        self.spool = spool or Spool(settings.spool_dir)
        self.unsubscribed: frozenset[str] = frozenset()
        self.redis_ok = False  # until the first check in start()
        self._pending: list[tuple[Payload, asyncio.Future[str]]] = []
        self._wake = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enqueue")
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._maintain_sync)
        self._tasks = [asyncio.create_task(self._write_loop()), asyncio.create_task(self._maintain_loop())]

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pending:  # answered nobody yet, but write them anyway: Exchange may have sent them once only
            await self._write([p for p, _ in self._pending])
        self._thread.shutdown(wait=True)
        self.spool.close()
        self.redis.close()

    async def submit(self, payload: Payload) -> str:
        """Wait until ``payload`` is durable; return ``"queue"`` or ``"spool"``; raise ``SpoolError`` if neither."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((payload, future))
        self._wake.set()
        return await future

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self.settings.batch_max]
                del self._pending[: len(batch)]
                try:
                    where = await self._write([p for p, _ in batch])
                except Exception as exc:  # noqa: BLE001 - every waiting request must get an answer
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(where)

    async def _write(self, payloads: list[Payload]) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._write_sync, payloads)

    def _write_sync(self, payloads: list[Payload]) -> str:
        """Queue if Redis takes it and nothing older waits in the spool (arrival order); else spool."""
        if self.spool.backlog or not self.redis_ok:
            self.spool.append(payloads)
            return "spool"
        try:
            enqueue_payloads(self.redis, payloads, self.settings)
            return "queue"
        except RedisError as exc:
            self.redis_ok = False
            logger.warning("Redis cannot take payloads (%s); spooling to %s", exc, self.spool.directory)
        try:
            self.spool.append(payloads)
        except SpoolError:
            logger.error("neither Redis nor the spool can take payloads: answering 503")
            raise
        return "spool"

    def _enqueue_chunk(self, payloads: list[Payload], chunk_id: str) -> None:
        enqueue_payloads(self.redis, payloads, self.settings, once_key=spooled_key(chunk_id))

    def _maintain_sync(self) -> None:
        """Refresh the unsubscribe list; drain the spool once Redis answers again."""
        try:
            self.unsubscribed = frozenset(m.decode() for m in self.redis.smembers(UNSUBSCRIBED_KEY))  # type: ignore[union-attr]
            if self.spool.backlog or self.spool.pending_files():
                self.spool.drain(self._enqueue_chunk)
            if not self.redis_ok:
                logger.info("Redis takes payloads again")
            self.redis_ok = True
        except RedisError as exc:
            if self.redis_ok:
                logger.warning("Redis unavailable: %s", exc)
            self.redis_ok = False

    async def _maintain_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            started = time.monotonic()
            await loop.run_in_executor(self._thread, self._maintain_sync)
            await asyncio.sleep(max(0.2, 1.0 - (time.monotonic() - started)))

    def ready(self) -> dict[str, object]:
        """What ``/readyz`` reports."""
        return {
            "redis": "ok" if self.redis_ok else "unavailable",
            "spool": {"writable": self.spool.writable(), "backlog": self.spool.backlog},
        }
