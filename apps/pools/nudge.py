"""Asking the pool manager to look at a pool now, instead of at its next cycle.

A Redis list the poolmanager loop blocks on. Losing a nudge (Redis down) costs only a
few seconds: the loop reconciles every pool on its own schedule anyway.

A burst of checkouts nudges once per pool per COALESCE_MS: the first nudge of a window
sets a marker that expires with it and is pushed; later ones in the window only set a
"dirty" flag, all in one round trip. The manager reconciles at the first nudge and once
more when the window is over if the flag was set (``trailing``), so every nudge is
followed by a reconcile that sees its commit, within COALESCE_MS plus a reconcile, and
a burst costs two reconciles instead of one per checkout (1.7-8 ms of CPU each).

Each process also holds back its own repeats: a pool's first nudge is sent at once, and
those after it within SEND_MS are sent together, once, by a background thread when that
time is over. Still after their commits, so the reconcile they cause sees them; a web
process checking out 100 VMs a second makes ~20 Redis calls for it instead of 100 (the
call was a tenth of an API checkout's CPU). A nudge held back when the process dies is
lost, as one is when Redis is down.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Iterable
from functools import cache

from django.db import transaction
from redis import Redis
from redis.exceptions import RedisError

from apps.core.redis_client import redis_client

log = logging.getLogger(__name__)
KEY = "vmportal:reconcile"
WINDOW_KEY = "vmportal:reconcile:window:"
DIRTY_KEY = "vmportal:reconcile:dirty:"
COALESCE_MS = 250
SEND_MS = 50

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
    """Ask for a reconcile of the pool once the current transaction commits."""
    transaction.on_commit(lambda: _sender.nudge(pool_id))


def _push(pool_ids: Iterable[int]) -> None:
    for pool_id in pool_ids:
        try:
            _script()(keys=[f"{WINDOW_KEY}{pool_id}", f"{DIRTY_KEY}{pool_id}", KEY], args=[pool_id, COALESCE_MS],
                      client=redis_client())
        except RedisError as exc:
            log.info("Reconcile nudge for pool %s dropped (%s); the next cycle will do.", pool_id, exc)


class _Sender:
    """This process's nudges: sent at once, or held back SEND_MS when the pool's last one
    was sent less than that ago (see the module)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # Also in a forked child: the parent's thread is not there, and its lock may have
        # been held at the fork. The child starts a thread of its own at its first nudge.
        self.lock = threading.Condition()
        self.sent_at: dict[int, float] = {}
        self.held: set[int] = set()
        self.pid = 0

    def nudge(self, pool_id: int) -> None:
        now = time.monotonic()
        with self.lock:
            if self.pid != os.getpid():
                self.pid = os.getpid()
                threading.Thread(target=self._run, name="nudge-sender", daemon=True).start()
            if pool_id in self.held:
                return  # the held nudge is sent after this commit anyway
            if now - self.sent_at.get(pool_id, float("-inf")) >= SEND_MS / 1000:
                self.sent_at[pool_id] = now
            else:
                self.held.add(pool_id)
                self.lock.notify()
                return
        _push([pool_id])

    def flush(self) -> None:
        """Send the held nudges now (the thread would within SEND_MS)."""
        with self.lock:
            held, self.held = self.held, set()
            for pool_id in held:
                self.sent_at[pool_id] = time.monotonic()
        _push(sorted(held))

    def _run(self) -> None:
        pid = os.getpid()
        while self.pid == pid:
            with self.lock:
                while not self.held:
                    self.lock.wait()
            time.sleep(SEND_MS / 1000)  # the repeats of the next SEND_MS join these
            self.flush()


_sender = _Sender()
os.register_at_fork(after_in_child=_sender.reset)
atexit.register(_sender.flush)  # a command that exits right after its last nudges


def flush() -> None:
    _sender.flush()


def trailing(pool_id: int) -> bool:
    """Whether a nudge for the pool was coalesced into a window now over (and forget it):
    the manager then reconciles the pool once more."""
    return bool(redis_client().getdel(f"{DIRTY_KEY}{pool_id}"))


@cache
def _socket_timeout(conn: Redis) -> float | None:
    """The read timeout of ``conn``'s connections, as they have it: redis-py 8 sets a
    default that is not among the pool's connection arguments. Read once per client (the
    process keeps one per URL), not on each wait of the pool manager's loop."""
    pool = conn.connection_pool
    connection = pool.get_connection()
    try:
        return connection.socket_timeout
    finally:
        pool.release(connection)


def wait(timeout: float) -> set[int]:
    """Pool ids nudged within ``timeout`` seconds, or less (empty when none).

    The wait is cut to a second under the client's socket timeout (redis-py 8's default
    is 5 s, the pool manager's interval): a BLPOP as long as it ended now and then in
    "Timeout reading from socket" before Redis answered, which the pool manager took for
    Redis being down, leaving nudges waiting for 5 s. Callers loop, so a shorter wait
    costs one more round trip."""
    conn = redis_client()
    socket_timeout = _socket_timeout(conn)
    if socket_timeout:
        timeout = min(timeout, socket_timeout - 1)
    item = conn.blpop([KEY], timeout=max(0.01, timeout))
    if item is None:
        return set()
    ids = {int(item[1])}
    while (more := conn.lpop(KEY)) is not None:
        ids.add(int(more))
    return ids
