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

    assert sorted(redis_conn.lrange(nudge.KEY, 0, -1)) == [b"7", b"8"]
    assert nudge.wait(0.1) == {7, 8}
    assert nudge.trailing(7) is True   # 19 nudges were folded in: reconcile again after the window
    assert nudge.trailing(7) is False  # and only once
    assert nudge.trailing(8) is False  # a lone nudge needs no second reconcile


def test_a_nudge_after_the_window_is_pushed_again(db, redis_conn, django_capture_on_commit_callbacks):
    _nudge_committed(django_capture_on_commit_callbacks, 7)
    assert nudge.wait(0.1) == {7}
    time.sleep(nudge.COALESCE_MS / 1000 + 0.05)
    _nudge_committed(django_capture_on_commit_callbacks, 7)
    assert nudge.wait(0.1) == {7}
