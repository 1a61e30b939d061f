"""The pool manager end to end: real PostgreSQL, real Redis, real RQ worker processes, vcsim."""

from __future__ import annotations

import signal
import socket
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.jobs import runner
from apps.jobs.models import Job
from apps.leases import services as leases
from apps.pools import manager
from apps.pools.instance import instance_id
from apps.pools.models import VM, Pool, VMState
from apps.pools.templates import register_template
from apps.vsphere.session import close_all
from tests import vcsim as vcsim_launcher
from tests.live import GUEST, make_pool, settle, site, vms_in_folder, worker

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]


def test_fill_from_empty_then_shrink(vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, size=3)
    settle(pool)
    ready = list(pool.vms.filter(state=VMState.READY))
    assert len(ready) == 3, [(j.kind, j.status, j.error, j.log) for j in Job.objects.all()]
    assert all(vm.ip_address.startswith("10.30.") and vm.moid for vm in ready)
    in_vcenter = vms_in_folder(vc)
    assert sorted(v.name for v in in_vcenter) == sorted(vm.name for vm in ready)
    assert all(v.owner == f"{instance_id()}:{VM.objects.get(name=v.name).pk}" for v in in_vcenter)

    Pool.objects.filter(pk=pool.pk).update(size=1)
    settle(pool)
    assert pool.vms.filter(state=VMState.READY).count() == 1
    assert len(vms_in_folder(vc)) == 1


def test_template_change_drains_ready_vms_and_keeps_the_leased_one(vcsim_factory, redis_conn, engineer):
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, size=2)
    settle(pool)
    [lease] = leases.checkout(user=engineer, pools=[pool])
    ubuntu = register_template(vcenter=vc, name="ubuntu-24.04", inventory_path="DC0/vm/Templates/ubuntu-24.04",
                               prepare_now=True)
    Pool.objects.filter(pk=pool.pk).update(template=ubuntu, cluster=ubuntu.copies.get().cluster)
    settle(pool)
    ready = pool.vms.filter(state=VMState.READY)
    assert ready.count() == 2 and all(vm.template_id == ubuntu.pk for vm in ready)
    assert VM.objects.get(pk=lease.vm_id).state == VMState.LEASED
    assert {v.name for v in vms_in_folder(vc)} == {lease.vm.name, *(vm.name for vm in ready)}


def test_boot_timeout_fails_with_a_reason_and_backs_off(vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory())  # no -guest-ip: the guest never reports an address
    pool = make_pool(vc, folder, size=1, boot_timeout=timedelta(seconds=2), max_tries=3)
    manager.reconcile_pool(pool.pk)
    assert worker().wait(timeout=60) == 0
    vm = pool.vms.get()
    assert vm.state == VMState.FAILED
    assert "no usable IP address" in vm.state_reason
    pool.refresh_from_db()
    assert pool.health == Pool.Health.DEGRADED and pool.retry_at > timezone.now()
    manager.reconcile_pool(pool.pk)  # destroys the failed VM, clones nothing while backing off
    assert worker().wait(timeout=60) == 0
    assert vms_in_folder(vc) == []
    assert Job.objects.filter(kind="pools.fill").count() == 1


def test_permanent_error_stops_retries(vcsim_factory, redis_conn):
    sim = vcsim_factory(*GUEST, "-fail-rate", "1", "-fail-methods", "CloneVM_Task", "-fail-fault", "NoDiskSpace")
    vc, folder = site(sim)
    pool = make_pool(vc, folder, size=3)
    settle(pool)
    pool.refresh_from_db()
    assert pool.health == Pool.Health.FAILING
    assert "disk space" in pool.health_reason.lower()
    assert Job.objects.filter(kind="pools.fill").count() == 1  # no retry storm
    assert not manager.reconcile_pool(pool.pk).fill_started
    # Only the clones already in flight when the first failure came back were tried.
    assert pool.vms.count() <= 3
    assert not pool.vms.exclude(state=VMState.DESTROYED).exists()


def test_killed_worker_mid_clone_leaves_no_leaked_vm(vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST, "-method-delay", "CloneVM_Task:2500"))
    pool = make_pool(vc, folder, size=1)
    manager.reconcile_pool(pool.pk)
    doomed = worker(burst=False)
    deadline = time.monotonic() + 30
    while not pool.vms.filter(state=VMState.CLONING).exists():
        assert time.monotonic() < deadline, "the worker never started a clone"
        time.sleep(0.1)
    time.sleep(0.5)  # the CloneVM_Task request is in flight
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    time.sleep(3)  # the simulator finishes the clone nobody is waiting for
    orphan = pool.vms.get()
    assert (orphan.state, orphan.moid) == (VMState.CLONING, "")

    # Later: the fill job's heartbeat is stale; the reaper fails it and its clone slot.
    Job.objects.filter(kind="pools.fill").update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert runner.reap_lost() == 1
    settle(pool)
    orphan.refresh_from_db()
    assert orphan.state == VMState.DESTROYED
    live = {vm.name for vm in pool.vms.filter(state=VMState.READY)}
    assert len(live) == 1
    assert {v.name for v in vms_in_folder(vc)} == live  # the leaked clone is gone


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vcenter_outage_during_fill_degrades_then_recovers(tmp_path, redis_conn):
    port = free_port()
    state = str(tmp_path / "state")
    flags = (*GUEST, "-method-delay", "CloneVM_Task:300", "-save", state, "-load", state)
    sim = vcsim_launcher.start(*flags, listen=f"127.0.0.1:{port}")
    filler = None
    try:
        vc, folder = site(sim)
        pool = make_pool(vc, folder, size=6)
        manager.reconcile_pool(pool.pk)
        filler = worker(burst=False)
        deadline = time.monotonic() + 30
        while not pool.vms.filter(state=VMState.READY).exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sim.stop()  # vCenter goes away mid-fill
        deadline = time.monotonic() + 60
        while Pool.objects.get(pk=pool.pk).health != Pool.Health.DEGRADED:
            assert time.monotonic() < deadline, "the pool never noticed the outage"
            time.sleep(0.1)
        pool.refresh_from_db()
        assert "vcenter" in pool.health_reason.lower()  # says what broke: the connection to vCenter
        filler.send_signal(signal.SIGTERM)
        filler.wait(timeout=30)
        assert Job.objects.filter(kind="pools.fill").count() == 1  # no job storm while down

        sim = vcsim_launcher.start(*flags, listen=f"127.0.0.1:{port}")
        close_all()
        Pool.objects.filter(pk=pool.pk).update(retry_at=None)
        settle(pool, rounds=8)
        pool.refresh_from_db()
        assert pool.health == Pool.Health.OK
        ready = {vm.name for vm in pool.vms.filter(state=VMState.READY)}
        assert len(ready) == 6
        assert {v.name for v in vms_in_folder(vc)} == ready
    finally:
        if filler is not None and filler.poll() is None:
            filler.kill()
            filler.wait()
        sim.stop()
