"""Recovery of the jobs of dead workers (it uses RQ's private API).

RQ notices a job whose worker died only when the job's entry in the started registry expires, and then
fails it.  Here such jobs are put back at the front of the queue to run again (storing is idempotent), and
so are jobs a dead worker had moved to RQ's intermediate queue without starting them.
"""

from __future__ import annotations

import logging

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.utils import current_timestamp, now

from shared.queues import MAX_ABANDONS

logger = logging.getLogger(__name__)


def requeue_abandoned(queue: Queue) -> list[str]:
    """Put the jobs of dead workers back at the front of ``queue``; return their ids.

    A job abandoned more than ``MAX_ABANDONS`` times is left to RQ, which dead-letters it.
    """
    registry = queue.started_job_registry
    requeued = []
    for entry in registry.connection.zrangebyscore(registry.key, 0, current_timestamp()):
        job_id = registry.parse_job_id(entry)
        try:
            job = Job.fetch(job_id, connection=queue.connection)
        except NoSuchJobError:
            registry.connection.zrem(registry.key, entry)
            continue
        if job.get_status(refresh=False) != JobStatus.STARTED:
            continue  # finished or failed meanwhile: RQ's cleanup drops the entry
        abandons = int(job.meta.get("abandoned", 0)) + 1
        if abandons > MAX_ABANDONS:
            continue
        job.meta["abandoned"] = abandons
        job.started_at = None
        with queue.connection.pipeline() as pipe:
            pipe.zrem(registry.key, entry)
            queue._enqueue_job(job, pipeline=pipe, at_front=True)
            pipe.execute()
        drop_dead_executions(job)
        logger.warning("job %s was abandoned by a dead worker; running it again (%d)", job.id, abandons)
        requeued.append(job.id)
    return requeued + requeue_untaken(queue)


#: Moves a job id from the intermediate queue back to the front of the queue, unless someone else did.
_BACK_TO_FRONT = """
if redis.call('lrem', KEYS[1], 1, ARGV[1]) == 1 then
    redis.call('lpush', KEYS[2], ARGV[1])
    return 1
end
return 0
"""


def requeue_untaken(queue: Queue) -> list[str]:
    """Jobs a dead worker moved to RQ's intermediate queue but had not yet started: back to the queue's front.

    A worker moves jobs there and registers them as started a Redis round trip later; a job found there
    unregistered on two passes a maintenance interval apart was left by a worker that died in between.
    (RQ's own cleanup would fail such a job as "stuck" after a minute, and only every ten minutes.)
    """
    intermediate = queue.intermediate_queue
    waiting = intermediate.get_job_ids()
    started = set(queue.started_job_registry.get_job_ids(cleanup=False)) if waiting else set()
    requeued = []
    for job_id in waiting:
        if job_id in started:  # a live worker started it: forget that it was seen waiting
            queue.connection.delete(intermediate.get_first_seen_key(job_id))
            continue
        if intermediate.set_first_seen(job_id):
            continue
        seen = intermediate.get_first_seen(job_id)
        if seen is None or (now() - seen).total_seconds() < 1:
            continue
        if queue.connection.eval(_BACK_TO_FRONT, 2, intermediate.key, queue.key, job_id):
            queue.connection.delete(intermediate.get_first_seen_key(job_id))
            logger.warning("job %s was taken by a worker that died before starting it; queued again", job_id)
            requeued.append(job_id)
    return requeued


def drop_dead_executions(job: Job) -> None:
    """Forget the executions of ``job`` whose worker died (no live entry in the started registry).

    RQ looks each execution up when the job next finishes, and fails the job if one has expired meanwhile,
    which the re-run of an abandoned job would otherwise meet.
    """
    connection = job.connection
    registry = ExecutionRegistry(job_id=job.id, connection=connection)
    started = job.started_job_registry.key
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in connection.zrange(registry.key, 0, -1)]
    with connection.pipeline() as pipe:
        for execution_id in ids:
            pipe.zscore(started, f"{job.id}:{execution_id}")
        scores = pipe.execute()
    dead = [i for i, score in zip(ids, scores, strict=True) if score is None or score <= current_timestamp()]
    if dead:
        with connection.pipeline() as pipe:
            pipe.zrem(registry.key, *dead)
            for execution_id in dead:
                pipe.delete(Execution(execution_id, job.id, connection).key)
            pipe.execute()
