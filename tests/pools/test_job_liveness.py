"""A worker killed with SIGKILL mid-job: the pool manager's next cycles fail the job and
retry or compensate its work. Real PostgreSQL, Redis, rqworker processes and vcsim."""

from __future__ import annotations

import signal
import time
from datetime import timedelta

import pytest

from apps.firstboot.models import AddressRange, IPAllocation, Method, PoolFirstBoot
from apps.jobs.models import Job
from apps.pools import manager
from apps.pools.models import Pool, VMState
from tests.live import GUEST, make_pool, settle, site, vms_in_folder, worker

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]

STALE_AFTER = 4  # seconds; shrunk from the default so the test waits little


@pytest.fixture
def fast_liveness(settings, monkeypatch):
    """The same stale bound in this process (the reaper) and in the workers (their heartbeats)."""
    settings.VMPORTAL_JOB_STALE_AFTER = STALE_AFTER
    monkeypatch.setenv("VMPORTAL_JOB_STALE_AFTER", str(STALE_AFTER))


def fixed_addresses(pool: Pool) -> None:
    rng = AddressRange.objects.create(name="lab", network="10.40.0.0/24", first="10.40.0.10",
                                      last="10.40.0.40", gateway="10.40.0.1", dns_servers="10.40.0.2")
    PoolFirstBoot.objects.create(pool=pool, method=Method.CUSTOMIZATION, address_range=rng)


def wait_for(condition, *, within: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails the test after ``within``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, f"not within {within}s: {what}"
        time.sleep(0.2)
    return time.monotonic() - started


def kill(process) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_a_destroy_whose_worker_was_killed_is_finished_by_the_next_cycles(vcsim_factory, redis_conn, fast_liveness):
    vc, folder = site(vcsim_factory(*GUEST, "-method-delay", "Destroy_Task:1500"), task_limit=10)
    pool = make_pool(vc, folder, size=10)
    fixed_addresses(pool)
    settle(pool)
    assert pool.vms.filter(state=VMState.READY).count() == 10
    assert IPAllocation.objects.count() == 10

    Pool.objects.filter(pk=pool.pk).update(size=0)
    manager.reconcile_pool(pool.pk)  # ten destroy jobs; the first one run takes over the others
    doomed = worker(burst=False)
    wait_for(lambda: Job.objects.filter(kind="pools.destroy", status=Job.Status.RUNNING).exists(), within=60,
             what="a destroy in flight")
    time.sleep(0.5)  # its Destroy_Tasks are running in the simulator
    kill(doomed)
    assert pool.vms.filter(state=VMState.DESTROYING).exists()  # killed mid-way

    time.sleep(STALE_AFTER + 1)
    manager.reconcile_all()  # the pool manager's cycle
    settle(pool)

    assert set(pool.vms.values_list("state", flat=True)) == {VMState.DESTROYED}
    assert not IPAllocation.objects.exists(), "a destroyed VM still holds its address"
    assert not Job.objects.filter(status__in=(Job.Status.QUEUED, Job.Status.RUNNING)).exists()
    # The killed job and the queued ones it had taken over: their heartbeats stopped with it.
    lost = Job.objects.filter(kind="pools.destroy", status=Job.Status.FAILED)
    assert lost.exists()
    assert all("stopped before it finished" in job.error for job in lost)
    assert vms_in_folder(vc) == []


def test_a_killed_fill_frees_its_clone_slots_within_the_stale_bound_and_the_pool_refills(
        vcsim_factory, redis_conn, fast_liveness):
    vc, folder = site(vcsim_factory(*GUEST, "-method-delay", "CloneVM_Task:2500"), task_limit=4)
    pool = make_pool(vc, folder, size=4)
    fixed_addresses(pool)
    manager.reconcile_pool(pool.pk)
    doomed = worker(burst=False)
    wait_for(lambda: pool.vms.filter(state=VMState.CLONING).count() == 4, within=30, what="four clones started")
    time.sleep(0.5)  # the CloneVM_Task requests are in flight
    kill(doomed)
    killed_at = time.monotonic()

    # The pool manager runs its cycle every few seconds; the slots come free once the
    # job's heartbeat is older than the bound, not after the 15-minute clone timeout.
    def freed() -> bool:
        manager.reconcile_all()
        return not pool.vms.filter(state=VMState.CLONING).exists()

    wait_for(freed, within=STALE_AFTER + 20, what="the dead fill's cloning rows freed")
    freed_after = time.monotonic() - killed_at
    print(f"clone slots of the killed fill freed {freed_after:.1f}s after the kill (bound {STALE_AFTER}s)")
    fill = Job.objects.filter(kind="pools.fill").order_by("pk").first()
    assert fill.status == Job.Status.FAILED and "stopped before it finished" in fill.error

    settle(pool)
    ready = {vm.name for vm in pool.vms.filter(state=VMState.READY)}
    assert len(ready) == 4
    assert {v.name for v in vms_in_folder(vc)} == ready  # the clones the dead worker started are gone
    # Each address held once, and only by a live VM; the address of a clone the dead worker
    # may have started unseen is kept back (no VM holds it) until such a clone cannot appear.
    held = set(IPAllocation.objects.filter(vm__isnull=False).values_list("vm__name", flat=True))
    assert held == ready
    assert not Job.objects.filter(status__in=(Job.Status.QUEUED, Job.Status.RUNNING)).exists()


def test_guests_a_killed_fill_left_booting_are_seen_ready_by_a_new_fill_before_their_boot_timeout(
        vcsim_factory, redis_conn, fast_liveness):
    # Guests report their address 6 s after power-on: long enough to kill the fill while
    # every VM of the (then full) pool is booting, far shorter than the boot timeout.
    vc, folder = site(vcsim_factory(*GUEST, "-guest-ip-delay", "6s"), task_limit=4)
    pool = make_pool(vc, folder, size=3)
    Pool.objects.filter(pk=pool.pk).update(boot_timeout=timedelta(minutes=10))
    manager.reconcile_pool(pool.pk)
    doomed = worker(burst=False)
    try:
        wait_for(lambda: pool.vms.filter(state=VMState.BOOTING).count() == 3, within=30, what="three guests booting")
    finally:
        kill(doomed)

    replacement = worker(burst=False)
    try:
        def ready() -> bool:
            manager.reconcile_all()
            return pool.vms.filter(state=VMState.READY).count() == 3

        took = wait_for(ready, within=STALE_AFTER + 30, what="the booting guests seen ready by a new fill")
        print(f"guests of the killed fill ready {took:.1f}s after the kill (boot timeout 10 min)")
    finally:
        replacement.terminate()
        replacement.wait()
    assert not pool.vms.exclude(state__in=(VMState.READY, VMState.DESTROYED)).exists()
    assert {v.name for v in vms_in_folder(vc)} == {vm.name for vm in pool.vms.filter(state=VMState.READY)}
