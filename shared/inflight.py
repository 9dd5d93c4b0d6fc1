"""The in-flight marks: which payloads of a subscription are queued but not stored yet (SPEC §7).

The ingress marks each payload in the transaction that queues it; the worker reads the marks of
subscriptions whose new chain has no head yet, and releases them once the payload is stored; purging a dead
letter releases its marks too.  One sorted set per subscription (``shared.queues.inflight_key``): members
are payload ids, scores the ingress's receive time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from redis import Redis
from redis.client import Pipeline

from shared.queues import INFLIGHT_TTL_SECONDS, inflight_key
from shared.types import InFlight, Payload, SubscriptionKey


def mark(pipe: Pipeline, payloads: Iterable[Payload]) -> None:
    """Add the marks of ``payloads`` to ``pipe``: one ZADD and one EXPIRE per subscription, not per payload."""
    marks: dict[str, dict[str, float]] = {}
    for payload in payloads:
        for subscription_id in payload["subscription_ids"]:
            key = inflight_key(payload["tenant"], subscription_id)
            marks.setdefault(key, {})[payload["id"]] = payload["received_at"]
    for key, members in marks.items():
        pipe.zadd(key, members)
        pipe.expire(key, INFLIGHT_TTL_SECONDS)


def read(redis: Redis, keys: Sequence[SubscriptionKey]) -> InFlight:
    """The marks of these subscriptions, oldest first; subscriptions with none are left out.

    Raises ``redis.exceptions.RedisError`` when Redis cannot answer.
    """
    with redis.pipeline(transaction=False) as pipe:
        for tenant, subscription_id in keys:
            pipe.zrange(inflight_key(tenant, subscription_id), 0, -1, withscores=True)
        answers = pipe.execute()
    return {
        key: [(member.decode(), float(score)) for member, score in answer]
        for key, answer in zip(keys, answers, strict=True)
        if answer
    }


def release(pipe: Pipeline, payloads: Iterable[Payload]) -> None:
    """Add the removal of the marks of ``payloads`` to ``pipe`` (stored, or purged: nothing waits for them)."""
    for payload in payloads:
        for subscription_id in payload["subscription_ids"]:
            pipe.zrem(inflight_key(payload["tenant"], subscription_id), payload["id"])
