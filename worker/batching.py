"""The batching worker: RQ's SimpleWorker running waiting store jobs together (it uses RQ's private API).

RQ spends about 2 ms and a few dozen Redis commands on each job it runs, and a job holds only the posts the
ingress gathered into one Redis write -- one or two when posts arrive one at a time.  So when more jobs wait
behind the one RQ hands over, the worker takes them too, up to ``batch_payloads`` payloads: it moves them to
RQ's intermediate queue (as RQ's own dequeue does), registers them all as started in one Redis transaction,
stores all their payloads in one database transaction (``worker.batch.run``) and finishes them in one
more.  A bad payload is still dead-lettered alone; when the batch meets a transient failure, its jobs run
again one by one, so that each fails, retries and is dead-lettered exactly as it would have alone.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.results import Result
from rq.timeouts import JobTimeoutException
from rq.utils import now
from rq.worker import WorkerStatus

from shared.queues import JOB_TIMEOUT_SECONDS, KEY_PREFIX, STORE_JOB
from worker import batch
from worker.recovery import requeue_abandoned

logger = logging.getLogger(__name__)

#: Only one worker at a time looks for abandoned jobs (the lock lasts one maintenance interval).
REAPER_LOCK_KEY = KEY_PREFIX + "reaper-lock"
#: RQ's own registry maintenance runs this often, as RQ does by default.
RQ_MAINTENANCE_SECONDS = 600
#: Most job ids moved from the queue in one Redis round trip.
TAKE_AT_ONCE = 32


class BatchWorker(SimpleWorker):
    """RQ's SimpleWorker, running waiting jobs together, with a bounded recovery of dead workers' jobs.

    SimpleWorker runs jobs in its own process instead of forking one per job: the engine's pooled
    connections are reused across jobs, and a job is cheap to start.

    RQ notices a job whose worker died only when the job's entry in the started registry expires, which
    it sets to a minute and a half or more, and then fails it as ``AbandonedJobError``.  Here the entry
    lives ``abandon_after`` seconds, kept fresh by a heartbeat while the job runs, and the registry
    maintenance (every ``abandon_after / 4`` seconds) puts expired jobs back at the front of the queue to
    run again: storing is idempotent, so a second run of a half-done job stores each event once.
    """

    def __init__(self, *args: Any, abandon_after: int, batch_payloads: int, **kwargs: Any) -> None:
        kwargs["maintenance_interval"] = max(1, abandon_after // 4)
        super().__init__(*args, **kwargs)
        self.abandon_after = abandon_after
        self.batch_payloads = batch_payloads
        self._rq_cleaned_at = -float(RQ_MAINTENANCE_SECONDS)
        # the idle loop wakes every worker_ttl - 15 s to heartbeat and run maintenance when due
        self.worker_ttl = max(16, abandon_after // 4 + 15)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:  # noqa: ARG002 - RQ's signature
        return self.abandon_after

    def execute_job(self, job: Job, queue: Queue) -> None:
        jobs = self._take_more(job, queue) if _payload_count(job) is not None else [job]
        if len(jobs) == 1:
            super().execute_job(job, queue)
        else:
            self._execute_together(jobs, queue)

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        with self._heartbeats([job], [execution]):
            return bool(super().perform_job(job, queue, execution))

    def _take_more(self, first: Job, queue: Queue) -> list[Job]:
        """``first`` and the jobs waiting behind it, up to about ``batch_payloads`` payloads."""
        taken, held = [first], _payload_count(first) or 0
        while held < self.batch_payloads:
            # guess from the jobs so far how many more make up the batch
            count = min(TAKE_AT_ONCE, math.ceil((self.batch_payloads - held) / max(1, held / len(taken))))
            with self.connection.pipeline(transaction=False) as pipe:
                for _ in range(count):
                    pipe.lmove(queue.key, queue.intermediate_queue_key)
                ids = [i.decode() for i in pipe.execute() if i is not None]
            for job_id, job in zip(ids, Job.fetch_many(ids, self.connection, self.serializer), strict=True):
                if job is None:  # deleted meanwhile (an operator's purge): nothing to run
                    self.connection.lrem(queue.intermediate_queue_key, 1, job_id)
                    continue
                taken.append(job)
                held += _payload_count(job) or 0
            if len(ids) < count:
                break
        return taken

    def _execute_together(self, jobs: Sequence[Job], queue: Queue) -> None:
        """Run the store jobs of ``jobs`` as one, then any other job alone, in its turn.

        When the batch meets a transient failure (or any unexpected one), each of its jobs runs again
        alone at once, so that a job fails, retries and is dead-lettered exactly as without batches: a
        flapping database must not spend the retries of every job that happened to share a batch.
        """
        together = [j for j in jobs if _payload_count(j) is not None]
        executions = self._start(together, queue)
        with self._heartbeats(together, executions):  # until the last of them is done, alone or not
            failure: BaseException | None = None
            try:
                with self.death_penalty_class(JOB_TIMEOUT_SECONDS, JobTimeoutException, job_id=together[0].id):
                    outcome = batch.run(self.connection, [(job, job.args[0]) for job in together])
                failure = outcome.transient
            except Exception as exc:  # noqa: BLE001 - the jobs run again alone, where RQ handles it as usual
                failure = exc
            if failure is not None:
                logger.warning("a batch of %d jobs failed (%s); running them one by one", len(together), failure)
                for job, execution in zip(together, executions, strict=True):
                    self.perform_job(job, queue, execution)
            else:
                failing = {job.id: error for job, error in outcome.failing if job is not None}
                for job, execution in zip(together, executions, strict=True):
                    if job.id in failing:
                        error = failing[job.id]
                        self._finalize_failure(job, queue, execution, (type(error), error, error.__traceback__))
                self._finish([(j, e) for j, e in zip(together, executions, strict=True) if j.id not in failing])
        self.set_state(WorkerStatus.IDLE)
        for job in jobs:
            if _payload_count(job) is None:
                super().execute_job(job, queue)

    def _start(self, jobs: Sequence[Job], queue: Queue) -> list[Execution]:
        """What RQ does before running a job, for all ``jobs`` in one transaction."""
        ttl = self.abandon_after
        with self.connection.pipeline() as pipe:
            executions = [Execution.create(job, ttl, pipeline=pipe, worker_name=self.name) for job in jobs]
            for job in jobs:
                job.prepare_for_execution(self.name, pipeline=pipe)
                pipe.persist(job.key)
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
                pipe.delete(queue.intermediate_queue.get_first_seen_key(job.id))  # see recovery.requeue_untaken
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            self.heartbeat(ttl, pipeline=pipe)
            pipe.execute()
        for execution in executions:
            self.executions[execution.id] = execution
        return executions

    def _finish(self, done: Sequence[tuple[Job, Execution]]) -> None:
        """What RQ does after a job succeeds (without a result to keep), for all of ``done`` in one transaction."""
        ended = now()
        with self.connection.pipeline() as pipe:
            for job, execution in done:
                job.ended_at = ended
                job._status = JobStatus.FINISHED
                # what ``job.cleanup(0)`` deletes for a started job without dependents, group or rate limit
                # (see ``_payload_count``), without the two reads a job it makes first
                pipe.delete(job.key, job.dependents_key, job.dependencies_key, Result.get_key(job.id))  # type: ignore[no-untyped-call]
                pipe.delete(job.execution_registry.key)
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                self.increment_successful_job_count(pipeline=pipe)
                if job.started_at is not None:
                    self.increment_total_working_time(ended - job.started_at, pipe)
            pipe.execute()

    @contextmanager
    def _heartbeats(self, jobs: Sequence[Job], executions: Sequence[Execution]) -> Iterator[None]:
        """Keep the started-registry entries of running ``jobs`` fresh (they expire after ``abandon_after``)."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.abandon_after / 3):
                try:
                    with self.connection.pipeline() as pipe:
                        for job, execution in zip(jobs, executions, strict=True):
                            execution.heartbeat(job.started_job_registry, self.abandon_after, pipe)
                        pipe.execute()
                except RedisError as exc:
                    logger.warning("job %s: heartbeat failed: %s", jobs[0].id, exc)

        thread = threading.Thread(target=beat, name="job-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def clean_registries(self) -> None:
        """Requeue abandoned jobs every ``abandon_after / 4`` s; RQ's own cleaning at its usual pace."""
        for queue in self.queues:
            # our own short lock: RQ's lasts 15 minutes, and a worker killed while holding it would
            # stop every worker's maintenance for that long
            if queue.connection.set(REAPER_LOCK_KEY, self.name, nx=True, ex=max(1, self.abandon_after // 4)):
                requeue_abandoned(queue)
        if time.monotonic() - self._rq_cleaned_at > RQ_MAINTENANCE_SECONDS:
            self._rq_cleaned_at = time.monotonic()
            super().clean_registries()  # type: ignore[no-untyped-call]
        self.last_cleaned_at = now()  # type: ignore[assignment]


def _payload_count(job: Job) -> int | None:
    """How many payloads a store job carries; None for a job that cannot run in a batch (run it alone)."""
    if job.func_name != STORE_JOB or job.result_ttl != 0 or job.group_id or job.has_rate_limit:
        return None
    try:
        payloads = job.args[0]
    except Exception:  # noqa: BLE001 - unreadable data: RQ's own path fails the job with the reason
        return None
    return len(payloads) if isinstance(payloads, list) else None
