"""`manage.py rqworkers`: several rqworkers forked from one process that loaded what they
share, which passes its stop signals on, starts a dead worker again, and takes its workers
with it when it is killed. Real processes, Redis and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import django_rq
import pytest
from rq import Worker

from tests.live import ROOT, manage_process

pytestmark = pytest.mark.django_db(transaction=True)


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _workers_of(parent: int, want: int, timeout: float = 60) -> dict[tuple[str, ...], int]:
    """Queue names -> pid of the registered RQ workers forked by ``parent``, once there are ``want``."""
    connection = django_rq.get_connection("default")
    deadline = time.monotonic() + timeout
    found: dict[tuple[str, ...], int] = {}
    while time.monotonic() < deadline:
        found = {}
        for worker in Worker.all(connection=connection):
            if worker.pid and _alive(worker.pid) and _parent_of(worker.pid) == parent:
                found[tuple(worker.queue_names())] = worker.pid
        if len(found) == want:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{want} workers of pid {parent} did not register within {timeout:.0f} s: {found}")


def _wait_gone(pids, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), f"still running: {[p for p in pids if _alive(p)]}"


def test_each_argument_is_a_worker_forked_from_the_command_and_running_its_queues():
    queue = django_rq.get_queue("clone")
    queue.empty()
    group = manage_process("rqworkers", "clone", "default,purge")
    try:
        workers = _workers_of(group.pid, 2)
        assert set(workers) == {("clone",), ("default", "purge")}
        job = queue.enqueue(os.getppid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job.refresh()
            if job.is_finished:
                break
            time.sleep(0.1)
        assert job.is_finished, job.get_status()
        assert job.return_value() == group.pid  # run in a worker the command forked
        group.send_signal(signal.SIGTERM)
        assert group.wait(timeout=30) == 0
        _wait_gone(workers.values())
    finally:
        if group.poll() is None:
            group.kill()


def test_a_killed_worker_is_forked_again_with_its_queues():
    group = manage_process("rqworkers", "clone", "default purge deploy")
    try:
        before = _workers_of(group.pid, 2)
        os.kill(before[("clone",)], signal.SIGKILL)
        _wait_gone([before[("clone",)]])
        deadline = time.monotonic() + 60
        after = before
        while time.monotonic() < deadline and after.get(("clone",)) in (None, before[("clone",)]):
            after = _workers_of(group.pid, 2)
            time.sleep(0.2)
        assert after[("clone",)] != before[("clone",)], "the killed worker was not started again"
        assert after[("default", "purge", "deploy")] == before[("default", "purge", "deploy")]
        assert group.poll() is None
    finally:
        group.send_signal(signal.SIGTERM)
        group.wait(timeout=30)


def test_workers_that_find_no_redis_are_forked_again_until_it_is_back(tmp_path):
    from redis import Redis

    from tools.chaos.procs import RedisServer

    redis = RedisServer(tmp_path)  # a free port, nothing listening on it yet
    group = manage_process("rqworkers", "clone", "purge", REDIS_URL=redis.url)
    try:
        time.sleep(4)  # the workers exit at once, and are forked again after 1 s, 2 s, ...
        assert group.poll() is None
        redis.start()
        connection = Redis.from_url(redis.url)
        deadline = time.monotonic() + 30
        names: list[tuple[str, ...]] = []
        while time.monotonic() < deadline and len(names) < 2:
            names = [tuple(w.queue_names()) for w in Worker.all(connection=connection)]
            time.sleep(0.2)
        assert sorted(names) == [("clone",), ("purge",)]
        group.send_signal(signal.SIGTERM)
        assert group.wait(timeout=30) == 0
    finally:
        if group.poll() is None:
            group.kill()
        redis.stop()


def test_the_workers_go_with_a_killed_parent():
    group = manage_process("rqworkers", "clone", "purge")
    try:
        workers = _workers_of(group.pid, 2)
        group.kill()
        group.wait(timeout=10)
        _wait_gone(workers.values())
    finally:
        if group.poll() is None:
            group.kill()


@pytest.mark.parametrize(("argv", "message"), [
    (["clone", "clones"], "Unknown or empty queue list: clones."),
    (["clone", "--poolmanager"], "--poolmanager runs in the worker that serves the default queue; none does."),
])
def test_a_wrong_command_line_is_refused_with_a_message(argv, message):
    env = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "tests.settings",
           "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")}
    result = subprocess.run([sys.executable, "manage.py", "rqworkers", *argv, "--skip-checks"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
