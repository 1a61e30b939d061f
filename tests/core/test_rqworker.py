"""rqworker runs its jobs at a lower CPU priority (VMPORTAL_WORKER_NICE), so that on a shared
host the web processes get the cores first, and can host the pool manager's loop in a thread
(--poolmanager): checked with real worker processes, Redis and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import django_rq
import pytest

from tests.live import ROOT, manage_process


def _niceness_seen_by_a_job(monkeypatch, nice: str) -> int:
    monkeypatch.setenv("VMPORTAL_WORKER_NICE", nice)
    queue = django_rq.get_queue("default")
    queue.empty()
    job = queue.enqueue(os.nice, 0)  # os.nice(0) answers the calling thread's niceness
    worker = manage_process("rqworker", "default", "--worker-class", "rq.SimpleWorker", "--burst")
    assert worker.wait(timeout=60) == 0
    job.refresh()
    assert job.is_finished, job.get_status()
    return job.return_value()


@pytest.mark.django_db(transaction=True)
def test_jobs_run_at_the_configured_niceness_above_the_starting_process(monkeypatch):
    base = os.nice(0)
    assert _niceness_seen_by_a_job(monkeypatch, "7") == min(19, base + 7)
    assert _niceness_seen_by_a_job(monkeypatch, "0") == base


def autogroup() -> str:
    """What a job sees of its session's autogroup, e.g. "/autogroup-85 nice 10"."""
    return Path("/proc/self/autogroup").read_text().strip()


def _autogroup_seen_by_a_job(monkeypatch, *options: str) -> str:
    monkeypatch.setenv("VMPORTAL_WORKER_NICE", "10")
    queue = django_rq.get_queue("default")
    queue.empty()
    job = queue.enqueue(autogroup)
    worker = manage_process("rqworker", "default", "--worker-class", "rq.SimpleWorker", "--burst", *options,
                            own_session=True)
    assert worker.wait(timeout=60) == 0
    job.refresh()
    assert job.is_finished, job.get_status()
    return job.return_value()


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="the kernel has no autogroup to lower")
@pytest.mark.django_db(transaction=True)
def test_a_worker_leading_its_session_lowers_the_sessions_autogroup_unless_it_hosts_the_pool_manager(monkeypatch):
    """Autogroup shares the CPU between sessions before nice counts: without this, a niced
    worker under systemd got as much CPU as the web process."""
    assert _autogroup_seen_by_a_job(monkeypatch).endswith(" nice 10")
    assert _autogroup_seen_by_a_job(monkeypatch, "--poolmanager").endswith(" nice 0")


def test_an_out_of_range_niceness_is_refused_naming_the_setting():
    env = {"PATH": os.environ["PATH"], "VMPORTAL_WORKER_NICE": "25", "DJANGO_SETTINGS_MODULE": "vmportal.settings"}
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "VMPORTAL_WORKER_NICE=25 must be between 0 and 19" in result.stderr


@pytest.mark.django_db(transaction=True)
def test_a_worker_with_poolmanager_reconciles_pools_in_its_thread_and_stops_on_sigterm(engineer):
    from datetime import timedelta

    from django.utils import timezone

    from apps.leases import services as leases
    from apps.leases.models import Lease
    from apps.pools.models import VMState
    from tests import factories

    pool = factories.pool(size=1, enabled=False)  # no fill: the lease expiry is what is watched
    factories.vm(pool, state=VMState.READY)
    pool.enabled = True
    pool.save(update_fields=["enabled"])
    [lease] = leases.checkout(user=engineer, pools=[pool])
    pool.enabled = False
    pool.save(update_fields=["enabled"])
    Lease.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    worker = manage_process("rqworker", "purge", "--worker-class", "rq.SimpleWorker",
                            "--poolmanager", "--poolmanager-interval", "0.5")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and worker.poll() is None:
            lease.refresh_from_db()
            if lease.end_reason:
                break
            time.sleep(0.2)
        assert lease.end_reason == Lease.EndReason.EXPIRED, "the worker's pool manager did not reconcile"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()


@pytest.mark.django_db(transaction=True)
def test_a_worker_whose_database_connection_was_dropped_runs_its_next_job():
    from django.db import connection

    from apps.jobs import runner
    from apps.jobs.models import Job
    from apps.pools.models import VMState
    from tests import factories

    vm = factories.vm(factories.pool(size=1), state=VMState.READY)  # a destroy finds nothing to do: no vSphere

    def finished(job: Job) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if job.status not in (Job.Status.QUEUED, Job.Status.RUNNING):
                return job.status
            time.sleep(0.2)
        return job.status

    django_rq.get_queue("purge").empty()
    worker = manage_process("rqworker", "purge", "--worker-class", "rq.SimpleWorker")
    try:
        assert finished(runner.enqueue("pools.destroy", target=vm, vm_id=vm.pk)) == Job.Status.SUCCEEDED
        # PostgreSQL drops the worker's idle connection (a restart, a failover, an admin).
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            assert cursor.fetchone()[0] >= 1
        assert finished(runner.enqueue("pools.destroy", target=vm, vm_id=vm.pk)) == Job.Status.SUCCEEDED
    finally:
        worker.terminate()
        worker.wait(timeout=30)
