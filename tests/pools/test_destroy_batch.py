"""A wave of returns is destroyed in batches: the first destroy job a worker runs takes over
the queued destroys of the same vCenter and powers off and deletes all those VMs at once,
so one worker drains them in about the time of one destroy, not one after another. Real
PostgreSQL, Redis, an rqworker process and vcsim with vCenter-like task delays."""

from __future__ import annotations

import time

import pytest

from apps.audit.models import AuditEvent
from apps.firstboot.models import AddressRange, IPAllocation, Method, PoolFirstBoot
from apps.jobs.models import Job
from apps.pools import manager
from apps.pools.models import Pool, VMState
from apps.vsphere import operations as ops
from apps.vsphere.session import Endpoint, connect
from apps.vsphere.types import OWNER_KEY
from tests.live import GUEST, make_pool, settle, site, vms_in_folder, worker

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]

POWER_OFF_MS, DESTROY_MS = 200, 600
COUNT = 30


def test_thirty_returned_vms_are_destroyed_by_one_worker_in_a_fraction_of_the_serial_time(
        vcsim_factory, redis_conn):
    sim = vcsim_factory(*GUEST, "-method-delay", f"PowerOffVM_Task:{POWER_OFF_MS},Destroy_Task:{DESTROY_MS}")
    vc, folder = site(sim, task_limit=10)
    pool = make_pool(vc, folder, size=COUNT)
    rng = AddressRange.objects.create(name="lab", network="10.40.0.0/24", first="10.40.0.10",
                                      last="10.40.0.60", gateway="10.40.0.1", dns_servers="10.40.0.2")
    PoolFirstBoot.objects.create(pool=pool, method=Method.CUSTOMIZATION, address_range=rng)
    settle(pool)
    assert pool.vms.filter(state=VMState.READY).count() == COUNT
    assert IPAllocation.objects.filter(vm__pool=pool).count() == COUNT

    Pool.objects.filter(pk=pool.pk).update(size=0)
    manager.reconcile_pool(pool.pk)  # all of them at once, as a wave of returns does
    doomed = list(pool.vms.filter(state=VMState.DESTROYING))
    assert len(doomed) == COUNT
    assert Job.objects.filter(kind="pools.destroy", status=Job.Status.QUEUED).count() == COUNT

    started = time.monotonic()
    assert worker().wait(timeout=300) == 0
    elapsed = time.monotonic() - started

    jobs = Job.objects.filter(kind="pools.destroy")
    assert jobs.count() == COUNT
    assert set(jobs.values_list("status", flat=True)) == {Job.Status.SUCCEEDED}, [
        (j.pk, j.status, j.error) for j in jobs]
    did_vsphere_work = [j for j in jobs if "run by" not in j.log]
    assert len(did_vsphere_work) < COUNT
    serial = COUNT * (POWER_OFF_MS + DESTROY_MS) / 1000
    print(f"{COUNT} destroys in {elapsed:.1f}s by {len(did_vsphere_work)} jobs")
    assert elapsed < serial / 2, f"{elapsed:.1f}s for {COUNT} destroys; one by one takes {serial:.0f}s or more"

    assert set(pool.vms.values_list("state", flat=True)) == {VMState.DESTROYED}
    assert vms_in_folder(vc) == []
    assert IPAllocation.objects.count() == 0  # every address given back, none kept back
    destroyed = AuditEvent.objects.filter(action="vm.destroyed")
    assert sorted(destroyed.values_list("target_id", flat=True)) == sorted(str(vm.pk) for vm in doomed)


def test_a_vm_of_a_batch_that_fails_its_check_stays_destroying_with_its_own_job_failed(vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST, "-method-delay", f"Destroy_Task:{DESTROY_MS}"), task_limit=5)
    pool = make_pool(vc, folder, size=5)
    settle(pool)
    Pool.objects.filter(pk=pool.pk).update(size=0)
    manager.reconcile_pool(pool.pk)
    doomed = list(pool.vms.filter(state=VMState.DESTROYING).order_by("pk"))
    assert len(doomed) == 5
    claimed = doomed[2]  # an admin (or another installation) marked it as theirs meanwhile
    with connect(Endpoint.from_vcenter(vc)) as conn:
        ops.set_extra_config(conn, claimed.moid, {OWNER_KEY: "someone-else:1"})

    assert worker().wait(timeout=120) == 0

    jobs = {int(j.object_id): j for j in Job.objects.filter(kind="pools.destroy")}
    assert sum("run by" in j.log for j in jobs.values()) >= 1  # they ran as a batch
    assert jobs[claimed.pk].status == Job.Status.FAILED
    assert jobs[claimed.pk].error.startswith("InvalidSpec:") and "not marked as ours" in jobs[claimed.pk].error
    assert {j.status for pk, j in jobs.items() if pk != claimed.pk} == {Job.Status.SUCCEEDED}
    assert pool.vms.get(pk=claimed.pk).state == VMState.DESTROYING
    assert pool.vms.filter(state=VMState.DESTROYED).count() == 4
    assert [v.moid for v in vms_in_folder(vc)] == [claimed.moid]


def test_the_jobs_a_batch_took_over_keep_beating_so_a_long_batch_is_not_reaped(
        vcsim_factory, redis_conn, settings, monkeypatch):
    stale_after = 3
    settings.VMPORTAL_JOB_STALE_AFTER = stale_after
    monkeypatch.setenv("VMPORTAL_JOB_STALE_AFTER", str(stale_after))
    vc, folder = site(vcsim_factory(*GUEST, "-method-delay", f"Destroy_Task:{(stale_after * 3) * 1000}"), task_limit=3)
    pool = make_pool(vc, folder, size=3)
    settle(pool)
    Pool.objects.filter(pk=pool.pk).update(size=0)
    manager.reconcile_pool(pool.pk)

    batch = worker()
    while batch.poll() is None:  # the pool manager's cycles run the reaper meanwhile
        assert manager.reconcile_all() is not None
        time.sleep(0.5)
    assert batch.returncode == 0

    jobs = Job.objects.filter(kind="pools.destroy")
    assert jobs.count() == 3  # none reaped and enqueued again
    assert {j.status for j in jobs} == {Job.Status.SUCCEEDED}, [(j.pk, j.error) for j in jobs]
    assert sum("run by" in j.log for j in jobs) == 2
    assert set(pool.vms.values_list("state", flat=True)) == {VMState.DESTROYED}
