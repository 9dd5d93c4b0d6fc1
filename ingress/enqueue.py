"""Posts → one Redis write per group of concurrent posts, or the spool while Redis cannot take them.

Requests hand their payload to ``Enqueuer.submit`` and wait.  One thread of its own does all of the
ingress's Redis and spool work: it writes whatever has gathered since its last write as *one* RQ job in
*one* Redis transaction (a group commit), and goes straight on to the next group, while the event loop is
told of the finished one.  Under load many posts share a write; a lone post is written at once, never
waiting for a batch to fill; writes stay in arrival order; the event loop never blocks on Redis.  Between
writes, about once a second, the same thread refreshes the unsubscribe list and drains the spool.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from queue import Empty, SimpleQueue

from redis import Redis
from redis.exceptions import RedisError

from ingress.spool import Spool
from shared.errors import SpoolError
from shared.queues import GRAPH_REJECTED_KEY, UNSUBSCRIBED_KEY, spooled_key
from shared.settings import Settings
from shared.store_job import enqueue_payloads
from shared.types import Payload

logger = logging.getLogger(__name__)


#: Seconds between maintenance rounds (unsubscribe list, spool drain), and the least pause after one.
MAINTENANCE_SECONDS = 1.0
MAINTENANCE_PAUSE_SECONDS = 0.2

_Waiting = tuple[Payload, "asyncio.Future[str]"]


class Enqueuer:
    """Makes each submitted payload durable (queue, else spool) before ``submit`` returns."""

    def __init__(self, settings: Settings, redis: Redis | None = None, spool: Spool | None = None) -> None:
        self.settings = settings
        self.redis = redis or Redis.from_url(settings.redis, socket_timeout=5, socket_connect_timeout=2)
        self.spool = spool or Spool(settings.spool_dir)
        self.unsubscribed: frozenset[str] = frozenset()
        self.redis_ok = False  # until the first check in start()
        self._submitted: SimpleQueue[_Waiting | None] = SimpleQueue()  # None: stop
        self._thread = threading.Thread(target=self._run, name="enqueue", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rejected: Counter[str] = Counter()  # Graph refusals not yet added to GRAPH_REJECTED_KEY
        self._rejected_lock = threading.Lock()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._maintain_sync)
        self._thread.start()

    async def stop(self) -> None:
        """Write what was submitted (answered or not: Exchange may have sent it once only), then close."""
        if self._thread.is_alive():
            self._submitted.put(None)
            await asyncio.to_thread(self._thread.join)
        try:
            await asyncio.to_thread(self._flush_rejected)
        except RedisError:
            logger.warning("could not record the last Graph rejections in Redis")
        self.spool.close()
        self.redis.close()

    async def submit(self, payload: Payload) -> str:
        """Wait until ``payload`` is durable; return ``"queue"`` or ``"spool"``; raise ``SpoolError`` if neither."""
        assert self._loop is not None, "submit() before start()"
        future: asyncio.Future[str] = self._loop.create_future()
        self._submitted.put((payload, future))
        return await future

    def count_rejected(self, reason: str, count: int = 1) -> None:
        """Count refused Graph items for ``syncnotify status`` (written to Redis with the next maintenance round)."""
        with self._rejected_lock:
            self._rejected[reason] += count

    def _flush_rejected(self) -> None:
        with self._rejected_lock:
            counts, self._rejected = self._rejected, Counter()
        if not counts:
            return
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for reason, count in counts.items():
                    pipe.hincrby(GRAPH_REJECTED_KEY, reason, count)
                pipe.execute()
        except RedisError:
            with self._rejected_lock:  # kept for the next round
                self._rejected.update(counts)
            raise

    def _run(self) -> None:
        """The enqueue thread: group writes until ``stop``, with a maintenance round when one is due."""
        due = time.monotonic() + MAINTENANCE_SECONDS  # start() did the first round
        while True:
            now = time.monotonic()
            if now >= due:
                self._maintain_sync()
                due = max(now + MAINTENANCE_SECONDS, time.monotonic() + MAINTENANCE_PAUSE_SECONDS)
                continue
            try:
                item = self._submitted.get(timeout=due - now)
            except Empty:
                continue
            batch: list[_Waiting] = []
            while item is not None:  # everything gathered since the last write, up to batch_max
                batch.append(item)
                if len(batch) >= self.settings.batch_max:
                    break
                try:
                    item = self._submitted.get_nowait()
                except Empty:
                    break
            if batch:
                self._write_batch(batch)
            if item is None:  # stop(): everything submitted before it is written now
                return

    def _write_batch(self, batch: list[_Waiting]) -> None:
        try:
            where: str | None = self._write_sync([payload for payload, _ in batch])
            error: BaseException | None = None
        except Exception as exc:  # noqa: BLE001 - every waiting request must get an answer
            where, error = None, exc
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(_settle, batch, where, error)
        except RuntimeError:  # the event loop is closed: nobody waits for these any more
            pass

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
            self._flush_rejected()
            if not self.redis_ok:
                logger.info("Redis takes payloads again")
            self.redis_ok = True
        except RedisError as exc:
            if self.redis_ok:
                logger.warning("Redis unavailable: %s", exc)
            self.redis_ok = False
        except Exception:  # the next round tries again; the thread must live on to write the posts
            logger.exception("maintenance round failed")

    def ready(self) -> dict[str, object]:
        """What ``/readyz`` reports."""
        return {
            "redis": "ok" if self.redis_ok else "unavailable",
            "spool": {"writable": self.spool.writable(), "backlog": self.spool.backlog},
        }


def _settle(batch: list[_Waiting], where: str | None, error: BaseException | None) -> None:
    """On the event loop: answer the requests of a written batch."""
    for _, future in batch:
        if future.done():  # the request was cancelled meanwhile
            continue
        if error is not None:
            future.set_exception(error)
        else:
            assert where is not None
            future.set_result(where)
