"""Queue names, Redis keys and job paths: the names the ingress and the worker must agree on."""

from __future__ import annotations

#: The RQ queue that carries raw payloads from the ingress to the workers.
QUEUE_NAME = "syncnotify"

#: Dotted path of the job function.  The ingress enqueues by name so it never imports worker code;
#: ``tests/test_layout.py`` checks that the name still resolves.
STORE_JOB = "worker.jobs.store_payloads"

#: Dotted path of the RQ failure callback that tells permanent from transient failures.
FAILURE_CALLBACK = "worker.jobs.on_failure"

#: Prefix of every key syncnotify itself writes (RQ's own keys start with ``rq:``).
KEY_PREFIX = "syncnotify:"

#: Set of subscription ids for which the ingress answers ``Unsubscribe``.
UNSUBSCRIBED_KEY = KEY_PREFIX + "unsubscribed"

#: How long a job may run before RQ stops it (a batch of a few hundred payloads takes well under a second).
JOB_TIMEOUT_SECONDS = 300

#: Backoff between attempts of a job that met a transient failure, in seconds; the last value repeats.
RETRY_INTERVALS = [1, 2, 5, 10, 30, 60, 120, 300]

#: A job whose worker dies mid-job is run again, at most this many times; then it is dead-lettered (``abandoned``).
MAX_ABANDONS = 5

#: In-flight payloads of one subscription live at most this long in Redis (refreshed on every post).
INFLIGHT_TTL_SECONDS = 7 * 24 * 3600


def inflight_key(tenant: str, subscription_id: str) -> str:
    """Sorted set of the payloads of one subscription that are queued but not stored yet.

    Members are payload ids, scores the ingress's receive time.  Exchange sends a subscription's next
    notification only after we answered the previous one, so a lower score means earlier in the chain;
    the worker uses this to choose the head of a new subscription's chain (SPEC §7, the hard race).
    """
    return f"{KEY_PREFIX}inflight:{tenant}:{subscription_id}"


def spooled_key(chunk_id: str) -> str:
    """Marks a chunk of a spool file as queued (written with its job), so a resumed drain skips it."""
    return f"{KEY_PREFIX}spooled:{chunk_id}"


#: Hash of Graph items the ingresses refused, by reason (``client_state``, ``not_json`` …), for ``status``.
GRAPH_REJECTED_KEY = KEY_PREFIX + "graph:rejected"
