"""A burst of checkouts nudges the pool manager once per window, not once per checkout,
and marks the window so the manager reconciles once more when it is over."""

from __future__ import annotations

import time

from apps.pools import nudge


def _nudge_committed(django_capture_on_commit_callbacks, pool_id: int) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        nudge.nudge(pool_id)


def test_a_burst_of_nudges_pushes_one_per_pool_and_flags_the_rest(db, redis_conn, django_capture_on_commit_callbacks):
    for _ in range(20):
        _nudge_committed(django_capture_on_commit_callbacks, 7)
    _nudge_committed(django_capture_on_commit_callbacks, 8)
    nudge.flush()  # this process's repeats, held back SEND_MS

    assert sorted(redis_conn.lrange(nudge.KEY, 0, -1)) == [b"7", b"8"]
    assert nudge.wait(0.1) == {7, 8}
    assert nudge.trailing(7) is True   # 19 nudges were folded in: reconcile again after the window
    assert nudge.trailing(7) is False  # and only once
    assert nudge.trailing(8) is False  # a lone nudge needs no second reconcile


def test_a_nudge_after_the_window_is_pushed_again(db, redis_conn, django_capture_on_commit_callbacks):
    _nudge_committed(django_capture_on_commit_callbacks, 7)
    nudge.flush()  # held back if the test before nudged pool 7 just now
    assert nudge.wait(0.1) == {7}
    time.sleep(nudge.COALESCE_MS / 1000 + 0.05)
    _nudge_committed(django_capture_on_commit_callbacks, 7)
    assert nudge.wait(0.1) == {7}


def test_a_process_sends_its_repeats_within_send_ms_once_after_it(db, redis_conn, django_capture_on_commit_callbacks):
    time.sleep(nudge.SEND_MS / 1000)  # pool 9's last nudge in this process, if any, is long enough ago
    _nudge_committed(django_capture_on_commit_callbacks, 9)
    assert redis_conn.lrange(nudge.KEY, 0, -1) == [b"9"]  # the first at once
    started = time.monotonic()
    for _ in range(5):
        _nudge_committed(django_capture_on_commit_callbacks, 9)
    if time.monotonic() - started < nudge.SEND_MS / 1000:  # (a machine this slow cannot tell)
        assert not redis_conn.exists(f"{nudge.DIRTY_KEY}9")  # the repeats are held back...
    deadline = time.monotonic() + 2
    while not redis_conn.exists(f"{nudge.DIRTY_KEY}9"):  # ...and sent by the thread, once
        assert time.monotonic() < deadline, "the held nudges were never sent"
        time.sleep(0.01)
    assert redis_conn.lrange(nudge.KEY, 0, -1) == [b"9"]


def test_a_wait_longer_than_the_clients_socket_timeout_comes_back_empty(db, redis_conn):
    # The pool manager asks for waits up to its interval (5 s). redis-py 8 gives every
    # client a 5 s socket timeout unasked, kept on its connections and not among the pool's
    # arguments: such a wait on the process's own client used to end in "Timeout reading
    # from socket", which the pool manager took for Redis being down.
    started = time.monotonic()
    assert nudge.wait(5.5) == set()
    assert time.monotonic() - started < 6
