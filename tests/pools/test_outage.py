"""Unreachable is not failure: a vCenter outage degrades a pool, never fails it, counts as
one event, and the pool returns to OK by itself once vCenter answers again.

The outage tests stop a real simulator and start it again on the same port with the
same saved state, as a vCenter restart does."""

from __future__ import annotations

import socket
import ssl
from datetime import timedelta

import pytest
from django.utils import timezone
from pyVmomi import vim

from apps.audit.models import AuditEvent
from apps.firstboot.models import AddressRange, IPAllocation, Method, PoolFirstBoot
from apps.jobs.models import Job
from apps.pools import manager
from apps.pools.models import VM, Pool, VMState
from apps.vsphere.errors import translate
from apps.vsphere.session import close_all
from tests import factories
from tests import vcsim as vcsim_launcher
from tests.live import GUEST, make_pool, settle, site, vms_in_folder, worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jobs_report() -> list:
    return [(j.kind, j.status, j.error, j.log) for j in Job.objects.order_by("pk")]


def run_one_reconcile(pool: Pool) -> None:
    """One reconcile once the pool's retry time has come, and the jobs it starts."""
    Pool.objects.filter(pk=pool.pk).update(retry_at=timezone.now() - timedelta(seconds=1))
    manager.reconcile_pool(pool.pk)
    assert worker().wait(timeout=120) == 0
    pool.refresh_from_db()


# ------------------------------------------------------------------ classification


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(111, "Connection refused"),
    TimeoutError("timed out"),
    ConnectionResetError(104, "Connection reset by peer"),
    ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
    OSError(113, "No route to host"),
    vim.fault.NotAuthenticated(),
])
def test_reachability_errors_are_outages(exc):
    err = translate(exc, operation="clone", obj="vm")
    assert err.outage and not err.permanent


@pytest.mark.parametrize("exc", [
    vim.fault.NoDiskSpace(), vim.fault.InvalidLogin(), vim.fault.TaskInProgress(), vim.fault.Timedout(),
    ssl.SSLCertVerificationError("certificate verify failed"),
])
def test_faults_vcenter_answered_with_are_not_outages(exc):
    assert not translate(exc, operation="clone", obj="vm").outage


# ------------------------------------------------------------------ the services


@pytest.mark.django_db
def test_outage_failures_never_count_toward_max_tries_and_are_one_event():
    pool = factories.pool(max_tries=3)
    for _ in range(10):  # three batches of three slots and one more: far beyond max_tries
        vm = VM.objects.create(vcenter_id=pool.template.vcenter_id, pool=pool, template=pool.template,
                               name=f"{pool.name}-{VM.objects.count()}")
        manager.record_clone_failure(vm, "connection refused", permanent=False, outage=True)
        pool.refresh_from_db()
        assert pool.health == Pool.Health.DEGRADED
        assert pool.consecutive_failures == 0
        assert pool.retry_at - timezone.now() <= manager.UNREACHABLE_RETRY_MAX
    assert pool.health_reason == (f"vCenter {pool.template.vcenter.name} unreachable: connection refused; retrying")
    assert AuditEvent.objects.filter(action="pool.unreachable").count() == 1
    assert not AuditEvent.objects.filter(action="pool.failing").exists()

    assert manager.record_reachable(vcenter_id=pool.template.vcenter_id) == 1
    pool.refresh_from_db()
    assert (pool.health, pool.health_reason, pool.retry_at, pool.unreachable_since) == (Pool.Health.OK, "", None, None)


@pytest.mark.django_db
def test_a_pool_failing_for_a_real_fault_stays_failing_when_vcenter_answers():
    pool = factories.pool(max_tries=3)
    vm = VM.objects.create(vcenter_id=pool.template.vcenter_id, pool=pool, template=pool.template, name="x-1")
    manager.record_clone_failure(vm, "NoDiskSpace", permanent=True)
    vm = VM.objects.create(vcenter_id=pool.template.vcenter_id, pool=pool, template=pool.template, name="x-2")
    manager.record_clone_failure(vm, "connection refused", permanent=False, outage=True)
    manager.record_reachable(vcenter_id=pool.template.vcenter_id)
    pool.refresh_from_db()
    assert pool.health == Pool.Health.FAILING and pool.health_reason == "NoDiskSpace"


# ------------------------------------------------------------------ against the simulator


@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_a_batch_failed_by_an_outage_degrades_the_pool_and_it_recovers_within_one_reconcile(tmp_path, redis_conn):
    port = free_port()
    state = str(tmp_path / "state")
    flags = (*GUEST, "-save", state, "-load", state)
    sim = vcsim_launcher.start(*flags, listen=f"127.0.0.1:{port}")
    try:
        vc, folder = site(sim)
        pool = make_pool(vc, folder, size=3, max_tries=3)
        rng = AddressRange.objects.create(name="lab", network="10.40.0.0/24", first="10.40.0.10",
                                          last="10.40.0.19", gateway="10.40.0.1", dns_servers="10.40.0.2")
        PoolFirstBoot.objects.create(pool=pool, method=Method.CUSTOMIZATION, address_range=rng)
        sim.stop()  # vCenter goes away before the first fill

        manager.reconcile_pool(pool.pk)
        assert worker().wait(timeout=120) == 0
        pool.refresh_from_db()
        # The whole batch of three failed on one refused connection: not failing, not counted.
        assert pool.vms.filter(state=VMState.FAILED).count() == 3, jobs_report()
        assert pool.health == Pool.Health.DEGRADED, pool.health_reason
        assert pool.consecutive_failures == 0
        assert pool.health_reason.startswith(f"vCenter {vc.name} unreachable: ")
        assert pool.health_reason.endswith("; retrying")
        assert pool.retry_at <= timezone.now() + manager.UNREACHABLE_RETRY_MAX

        # Still down when its retry comes: one cheap look, no new clone slots, still one event.
        run_one_reconcile(pool)
        assert pool.health == Pool.Health.DEGRADED
        assert pool.consecutive_failures == 0
        assert pool.vms.count() == 3, "no VM rows churn while vCenter is away"
        assert AuditEvent.objects.filter(action="pool.unreachable", pool_id=pool.pk).count() == 1
        assert not AuditEvent.objects.filter(action="pool.failing").exists()

        sim = vcsim_launcher.start(*flags, listen=f"127.0.0.1:{port}")
        close_all()
        run_one_reconcile(pool)  # the first reconcile after vCenter answers
        assert (pool.health, pool.health_reason, pool.unreachable_since) == (Pool.Health.OK, "", None), jobs_report()
        assert AuditEvent.objects.filter(action="pool.reachable", pool_id=pool.pk).count() == 1

        # The failed slots go the usual way: destroyed and their addresses given back.
        VM.objects.filter(state=VMState.DESTROYING).update(state_changed_at=timezone.now() - timedelta(hours=1))
        settle(pool)
        failed = pool.vms.exclude(state__in=(VMState.READY,))
        assert failed.count() == 3 and all(vm.state == VMState.DESTROYED for vm in failed), jobs_report()
        assert not IPAllocation.objects.filter(vm__in=failed).exists()
        ready = {vm.name for vm in pool.vms.filter(state=VMState.READY)}
        assert len(ready) == 3
        assert {v.name for v in vms_in_folder(vc)} == ready
        pool.refresh_from_db()
        assert pool.health == Pool.Health.OK
    finally:
        sim.stop()


@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_a_real_fault_after_an_outage_still_fails_the_pool(tmp_path, redis_conn):
    port = free_port()
    state = str(tmp_path / "state")
    flags = (*GUEST, "-save", state, "-load", state)
    sim = vcsim_launcher.start(*flags, listen=f"127.0.0.1:{port}")
    try:
        vc, folder = site(sim)
        pool = make_pool(vc, folder, size=3, max_tries=3)
        sim.stop()
        manager.reconcile_pool(pool.pk)
        assert worker().wait(timeout=120) == 0
        pool.refresh_from_db()
        assert pool.health == Pool.Health.DEGRADED and pool.consecutive_failures == 0, pool.health_reason

        # vCenter is back, but its datastore is full: a real fault, for an admin to fix.
        sim = vcsim_launcher.start(*flags, "-fail-rate", "1", "-fail-methods", "CloneVM_Task",
                                   "-fail-fault", "NoDiskSpace", listen=f"127.0.0.1:{port}")
        close_all()
        run_one_reconcile(pool)
        assert pool.health == Pool.Health.FAILING, jobs_report()
        assert "disk space" in pool.health_reason.lower()
        run_one_reconcile(pool)
        assert pool.health == Pool.Health.FAILING  # stays failing until an admin resets it
        assert AuditEvent.objects.filter(action="pool.failing", pool_id=pool.pk).count() == 1
    finally:
        sim.stop()
