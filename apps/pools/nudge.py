"""Asking the pool manager to look at a pool now, instead of at its next cycle.

A Redis list the poolmanager loop blocks on. Losing a nudge (Redis down) costs only a
few seconds: the loop reconciles every pool on its own schedule anyway.

A burst of checkouts nudges once per pool per COALESCE_MS: the first nudge of a window
sets a marker that expires with it and is pushed; later ones in the window only set a
"dirty" flag, all in one round trip. The manager reconciles at the first nudge and once
more when the window is over if the flag was set (``trailing``), so every nudge is
followed by a reconcile that sees its commit, within COALESCE_MS plus a reconcile, and
a burst costs two reconciles instead of one per checkout (1.7-8 ms of CPU each).
"""

from __future__ import annotations

import logging
from functools import cache

from django.db import transaction
from redis.exceptions import RedisError

from apps.core.redis_client import redis_client

log = logging.getLogger(__name__)
KEY = "vmportal:reconcile"
WINDOW_KEY = "vmportal:reconcile:window:"
DIRTY_KEY = "vmportal:reconcile:dirty:"
COALESCE_MS = 250

# KEYS: window marker, dirty flag, list; ARGV: pool id, window in ms.
_NUDGE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[2]) then
  redis.call('RPUSH', KEYS[3], ARGV[1])
  return 1
end
redis.call('SET', KEYS[2], '1', 'PX', 60000)
return 0
"""


@cache
def _script():  # noqa: ANN202 (redis-py's Script, called with the current client)
    return redis_client().register_script(_NUDGE)


def nudge(pool_id: int) -> None:
    def push() -> None:
        try:
            _script()(keys=[f"{WINDOW_KEY}{pool_id}", f"{DIRTY_KEY}{pool_id}", KEY], args=[pool_id, COALESCE_MS],
                      client=redis_client())
        except RedisError as exc:
            log.info("Reconcile nudge for pool %s dropped (%s); the next cycle will do.", pool_id, exc)

    transaction.on_commit(push)


def trailing(pool_id: int) -> bool:
    """Whether a nudge for the pool was coalesced into a window now over (and forget it):
    the manager then reconciles the pool once more."""
    return bool(redis_client().getdel(f"{DIRTY_KEY}{pool_id}"))


def wait(timeout: float) -> set[int]:
    """Pool ids nudged within ``timeout`` seconds (empty when none)."""
    conn = redis_client()
    item = conn.blpop([KEY], timeout=max(0.01, timeout))
    if item is None:
        return set()
    ids = {int(item[1])}
    while (more := conn.lpop(KEY)) is not None:
        ids.add(int(more))
    return ids
