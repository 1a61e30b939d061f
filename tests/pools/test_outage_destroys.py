"""Destroys that failed while vCenter was away are retried soon after, not after the
two-minute retry of a destroy that is simply not done: the pool is clean within a
reconcile or two once vCenter answers, and no job storm runs while it is still away.

Real PostgreSQL, Redis, rqworker processes and a simulator stopped and started again on
the same port with its saved state, as a vCenter restart does."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from apps.jobs.models import Job
from apps.pools import manager
from apps.pools.models import Pool, VMState
from apps.vsphere.session import close_all
from tests import vcsim as vcsim_launcher
from tests.live import GUEST, make_pool, settle, site, vms_in_folder, worker
from tests.pools.test_outage import free_port, jobs_report

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]

BACKOFF = timedelta(seconds=2)  # shrunk from the default so the test waits little


def destroy_jobs() -> dict[str, int]:
    jobs = Job.objects.filter(kind="pools.destroy")
    return {status: jobs.filter(status=status).count() for status in Job.Status.values}


def test_destroys_failed_by_an_outage_finish_within_one_reconcile_after_vcenter_answers(
        tmp_path, redis_conn, monkeypatch):
    monkeypatch.setattr(manager, "DESTROY_FAILED_BACKOFF", BACKOFF)
    port = free_port()
    state = str(tmp_path / "state")
    flags = (*GUEST, "-save", state, "-load", state)
    sim = vcsim_launcher.start(*flags, listen=f"127.0.0.1:{port}")
    try:
        vc, folder = site(sim)
        pool = make_pool(vc, folder, size=3)
        settle(pool)
        assert pool.vms.filter(state=VMState.READY).count() == 3
        Pool.objects.filter(pk=pool.pk).update(size=0)
        manager.reconcile_pool(pool.pk)
        assert pool.vms.filter(state=VMState.DESTROYING).count() == 3

        sim.stop()  # vCenter goes away before the destroys run
        assert worker().wait(timeout=120) == 0
        assert destroy_jobs()[Job.Status.FAILED] == 3, jobs_report()
        assert pool.vms.filter(state=VMState.DESTROYING).count() == 3

        # Still away: within the backoff a reconcile starts nothing; after it, one attempt per VM.
        manager.reconcile_pool(pool.pk)
        assert destroy_jobs()[Job.Status.QUEUED] == 0
        time.sleep(BACKOFF.total_seconds() + 0.5)
        manager.reconcile_pool(pool.pk)
        manager.reconcile_pool(pool.pk)
        assert destroy_jobs()[Job.Status.QUEUED] == 3
        assert worker().wait(timeout=120) == 0
        assert destroy_jobs()[Job.Status.FAILED] == 6, jobs_report()

        sim = vcsim_launcher.start(*flags, listen=f"127.0.0.1:{port}")
        close_all()
        time.sleep(BACKOFF.total_seconds() + 0.5)
        manager.reconcile_pool(pool.pk)  # the first reconcile after vCenter answers
        assert worker().wait(timeout=120) == 0
        assert set(pool.vms.values_list("state", flat=True)) == {VMState.DESTROYED}, jobs_report()
        assert vms_in_folder(vc) == []
    finally:
        sim.stop()


def test_a_destroy_that_failed_for_a_permanent_fault_waits_for_the_long_retry():
    assert manager._transient("Unreachable: destroy 'x' failed: connection refused")
    assert manager._transient("TransientFault: destroy 'x' failed: the connection to vCenter broke off")
    assert manager._transient("OperationTimeout: destroy 'x' failed: timed out")
    # PostgreSQL dropped the job's connection (a restart, a failover): tried again soon too.
    assert manager._transient("OperationalError: server closed the connection unexpectedly")
    assert not manager._transient("InvalidSpec: destroy 'x' failed: 'x' is not marked as ours")
    assert not manager._transient("IntegrityError: duplicate key value violates unique constraint")
    assert not manager._transient("")
