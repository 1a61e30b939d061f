"""A clone vCenter finishes after its row was destroyed (its fill worker was killed, the reaper
failed the row, and the destroy found nothing yet) boots with the row's fixed address. That
address is kept back until such a clone can no longer appear, so no new VM gets it meanwhile;
the purge destroys the late clone. Real PostgreSQL, Redis, rqworker processes and vcsim."""

from __future__ import annotations

import signal
import time
from datetime import timedelta

import pytest

from apps.firstboot.models import AddressRange, IPAllocation, Method, PoolFirstBoot
from apps.jobs import runner
from apps.jobs.models import Job
from apps.pools import manager, provisioning
from apps.pools.models import VMState
from tests.live import GUEST, make_pool, site, vms_in_folder, worker

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]

STALE_AFTER = 3  # seconds; shrunk from the default so the test waits little
CLONE_SECONDS = 20  # the simulator's clone task outlives the worker, the reaper and the destroy


@pytest.fixture
def fast_liveness(settings, monkeypatch):
    settings.VMPORTAL_JOB_STALE_AFTER = STALE_AFTER
    monkeypatch.setenv("VMPORTAL_JOB_STALE_AFTER", str(STALE_AFTER))


def wait_for(condition, *, within: float, what: str) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, f"not within {within}s: {what}"
        time.sleep(0.2)


def test_the_address_of_a_clone_that_lands_after_its_row_was_destroyed_goes_to_no_one_else(
        vcsim_factory, redis_conn, fast_liveness):
    vc, folder = site(vcsim_factory(*GUEST, "-method-delay", f"CloneVM_Task:{CLONE_SECONDS * 1000}"))
    pool = make_pool(vc, folder, size=1)
    rng = AddressRange.objects.create(name="lab", network="10.40.0.0/24", first="10.40.0.10",
                                      last="10.40.0.20", gateway="10.40.0.1", dns_servers="10.40.0.2")
    PoolFirstBoot.objects.create(pool=pool, method=Method.CUSTOMIZATION, address_range=rng)

    manager.reconcile_pool(pool.pk)
    doomed = worker(burst=False)
    wait_for(lambda: pool.vms.filter(state=VMState.CLONING).exists(), within=30, what="the clone started")
    [late] = pool.vms.filter(state=VMState.CLONING)
    address = IPAllocation.objects.get(vm=late).address
    time.sleep(1)  # the CloneVM_Task is running in the simulator
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()

    time.sleep(STALE_AFTER + 1)
    manager.reconcile_all()  # the reaper fails the fill and its row; reconcile destroys the row
    destroy = Job.objects.get(kind="pools.destroy")
    assert runner.run(destroy.pk) == "succeeded", Job.objects.get(pk=destroy.pk).error
    late.refresh_from_db()
    assert late.state == VMState.DESTROYED
    assert not IPAllocation.objects.filter(vm=late).exists(), "a destroyed VM holds no address"
    assert late.name not in {v.name for v in vms_in_folder(vc)}, "the clone was still running"

    # The refill's new VM does not get the address the late clone will boot with.
    [new] = manager.claim_slots(pool.pk, 1)
    assert IPAllocation.objects.get(vm=new).address != address
    kept = IPAllocation.objects.get(address=address)
    assert kept.vm is None and kept.quarantined_until == late.created_at + provisioning.LATE_CLONE_BOUND

    wait_for(lambda: late.name in {v.name for v in vms_in_folder(vc)}, within=CLONE_SECONDS + 30,
             what="vCenter finished the dead worker's clone")
    purge = runner.enqueue("pools.purge", target=folder, folder_id=folder.pk)
    assert runner.run(purge.pk) == "succeeded"
    assert late.name not in {v.name for v in vms_in_folder(vc)}, Job.objects.get(pk=purge.pk).log

    # Once no late clone can appear any more, the address is free again (lowest first).
    IPAllocation.objects.filter(pk=kept.pk).update(quarantined_until=kept.quarantined_until - timedelta(hours=1))
    new.move_to(VMState.FAILED)
    manager.reconcile_pool(pool.pk)
    new.refresh_from_db()
    [again] = manager.claim_slots(pool.pk, 1)
    assert IPAllocation.objects.get(vm=again).address == address
    assert not IPAllocation.objects.filter(vm__isnull=True).exists()
