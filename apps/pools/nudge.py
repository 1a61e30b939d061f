"""Asking the pool manager to look at a pool now, instead of at its next cycle.

A Redis list the poolmanager loop blocks on. Losing a nudge (Redis down) costs only a
few seconds: the loop reconciles every pool on its own schedule anyway.
"""

from __future__ import annotations

import logging
from functools import cache

import django_rq
from django.db import transaction
from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
KEY = "vmportal:reconcile"


@cache
def _client() -> Redis:
    # One client (and its connection pool) per process: a new connection per checkout
    # cost more than the checkout's own queries.
    return django_rq.get_connection("default")


def nudge(pool_id: int) -> None:
    def push() -> None:
        try:
            _client().rpush(KEY, pool_id)
        except RedisError as exc:
            log.info("Reconcile nudge for pool %s dropped (%s); the next cycle will do.", pool_id, exc)

    transaction.on_commit(push)


def wait(timeout: float) -> set[int]:
    """Pool ids nudged within ``timeout`` seconds (empty when none)."""
    conn = django_rq.get_connection("default")
    item = conn.blpop([KEY], timeout=max(1, int(timeout)))
    if item is None:
        return set()
    ids = {int(item[1])}
    while (more := conn.lpop(KEY)) is not None:
        ids.add(int(more))
    return ids
