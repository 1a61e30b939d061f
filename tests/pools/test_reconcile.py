"""Reconcile and slot accounting against real PostgreSQL (no vSphere calls are made here)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from apps.jobs import runner
from apps.jobs.models import Job
from apps.leases import services as leases
from apps.leases.models import Lease
from apps.pools import manager
from apps.pools.models import VM, Pool, TemplateCopy, TemplateStatus, VMState
from tests import factories

pytestmark = pytest.mark.django_db


def a_pool(**kw) -> Pool:
    """A pool whose template has a ready copy in its cluster: clones are made beside one."""
    pool = factories.pool(**kw)
    TemplateCopy.objects.get_or_create(template=pool.template, cluster=pool.cluster, datastore=None,
                                       defaults={"moid": "vm-copy", "status": TemplateStatus.READY})
    return pool


def test_a_pool_without_a_copy_in_its_cluster_starts_one_copy_job_and_no_fill():
    pool = factories.pool(size=2)
    TemplateCopy.objects.create(template=pool.template, cluster=factories.cluster(pool.template.vcenter),
                                moid="vm-elsewhere", status=TemplateStatus.READY)
    for _ in range(3):
        assert not manager.reconcile_pool(pool.pk).fill_started
        assert manager.claim_slots(pool.pk, 2) == []
    [copy] = TemplateCopy.objects.filter(cluster=pool.cluster)
    assert copy.automatic and copy.status == TemplateStatus.PREPARING
    assert [j.args for j in jobs("templates.copy_to_cluster")] == [{"copy_id": copy.pk}]


def jobs(kind: str) -> list[Job]:
    return list(Job.objects.filter(kind=kind))


def test_empty_pool_starts_one_fill_job_however_often_reconciled():
    pool = a_pool(size=3)
    assert manager.reconcile_pool(pool.pk).fill_started
    assert not manager.reconcile_pool(pool.pk).fill_started
    assert len(jobs("pools.fill")) == 1


def test_full_pool_starts_nothing():
    pool = a_pool(size=1)
    factories.vm(pool, state=VMState.READY)
    report = manager.reconcile_pool(pool.pk)
    assert (report.deficit, report.fill_started, report.destroy) == (0, False, [])


def test_shrink_destroys_ready_vms_but_never_leased_ones(engineer):
    pool = a_pool(size=3)
    ready = [factories.vm(pool, state=VMState.READY, ready_at=timezone.now()) for _ in range(3)]
    leases.checkout(user=engineer, pools=[pool])
    Pool.objects.filter(pk=pool.pk).update(size=1)
    report = manager.reconcile_pool(pool.pk)
    assert len(report.destroy) == 1
    states = sorted(VM.objects.filter(pk__in=[v.pk for v in ready]).values_list("state", flat=True))
    assert states == [VMState.DESTROYING, VMState.LEASED, VMState.READY]
    assert len(jobs("pools.destroy")) == 1


def test_template_change_drains_ready_vms_and_keeps_leased_ones(engineer):
    pool = a_pool(size=2)
    old = [factories.vm(pool, state=VMState.READY, ready_at=timezone.now()) for _ in range(2)]
    [lease] = leases.checkout(user=engineer, pools=[pool])
    pool.template = factories.template(pool.template.vcenter)
    pool.save()
    TemplateCopy.objects.create(template=pool.template, cluster=pool.cluster, moid="vm-new",
                                status=TemplateStatus.READY)
    report = manager.reconcile_pool(pool.pk)
    assert report.destroy == [v.pk for v in old if v.pk != lease.vm_id]
    assert VM.objects.get(pk=lease.vm_id).state == VMState.LEASED
    assert report.fill_started  # the new template's VMs come in


def test_ready_ttl_recycles_old_vms():
    pool = a_pool(size=1, ready_ttl=timedelta(hours=1))
    stale = factories.vm(pool, state=VMState.READY, ready_at=timezone.now() - timedelta(hours=2))
    manager.reconcile_pool(pool.pk)
    stale.refresh_from_db()
    assert stale.state == VMState.DESTROYING and "recycled" in stale.state_reason


def test_boot_timeout_fails_the_vm_with_a_reason_and_destroys_it():
    pool = a_pool(size=1, boot_timeout=timedelta(minutes=5))
    stuck = factories.vm(pool, state=VMState.BOOTING)
    VM.objects.filter(pk=stuck.pk).update(state_changed_at=timezone.now() - timedelta(minutes=6))
    report = manager.reconcile_pool(pool.pk)
    stuck.refresh_from_db()
    assert report.timed_out == [stuck.pk]
    assert stuck.state == VMState.DESTROYING
    assert "did not become usable within 0:05:00" in stuck.state_reason


def test_clones_no_fill_will_record_are_failed_and_destroyed():
    """A fill moves each of its clones on before it ends, or its hook fails them; rows left
    cloning with no fill queued or running are ones that hook never reached (chaos run:
    PostgreSQL dropped every session twice in a second; 4 rows stuck, clones orphaned)."""
    pool = a_pool(size=3)
    fill = runner.enqueue("pools.fill", target=pool, pool_id=pool.pk)
    claimed = manager.claim_slots(pool.pk, 2)
    report = manager.reconcile_pool(pool.pk)  # its fill is alive: its clones are its own
    assert report.orphaned == [] and set(VM.objects.filter(pool=pool).values_list("state", flat=True)) == {
        VMState.CLONING}
    Job.objects.filter(pk=fill.pk).update(status=Job.Status.FAILED)
    report = manager.reconcile_pool(pool.pk)
    assert sorted(report.orphaned) == sorted(vm.pk for vm in claimed)
    assert sorted(report.destroy) == sorted(report.orphaned)
    for vm in VM.objects.filter(pk__in=report.orphaned):
        assert vm.state == VMState.DESTROYING and "ended without recording the clone" in vm.state_reason
    assert report.fill_started  # and the pool fills again


def test_expired_lease_ends_and_its_vm_is_destroyed(engineer):
    pool = a_pool(size=1)
    factories.vm(pool, state=VMState.READY)
    [lease] = leases.checkout(user=engineer, pools=[pool])
    Lease.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    report = manager.reconcile_pool(pool.pk)
    lease.refresh_from_db()
    assert report.expired_leases == [lease.pk]
    assert lease.end_reason == Lease.EndReason.EXPIRED
    assert VM.objects.get(pk=lease.vm_id).state == VMState.DESTROYING


def test_permanent_failure_stops_cloning_until_reset():
    pool = a_pool(size=2)
    vm = manager.claim_slot(pool.pk)
    manager.record_clone_failure(vm, "Datastore LocalDS_0 is full", permanent=True)
    pool.refresh_from_db()
    assert (pool.health, pool.health_reason) == (Pool.Health.FAILING, "Datastore LocalDS_0 is full")
    assert manager.claim_slot(pool.pk) is None
    assert not manager.reconcile_pool(pool.pk).fill_started


def test_transient_failures_back_off_then_fail_after_max_tries():
    pool = a_pool(size=1, max_tries=2)
    manager.record_clone_failure(manager.claim_slot(pool.pk), "timeout", permanent=False)
    pool.refresh_from_db()
    assert pool.health == Pool.Health.DEGRADED and pool.retry_at > timezone.now()
    assert manager.claim_slot(pool.pk) is None  # backing off
    Pool.objects.filter(pk=pool.pk).update(retry_at=None)
    manager.record_clone_failure(manager.claim_slot(pool.pk), "timeout", permanent=False)
    pool.refresh_from_db()
    assert pool.health == Pool.Health.FAILING
    assert "2 clones in a row failed" in pool.health_reason


def test_template_not_ready_means_no_clones():
    pool = a_pool(size=1, template=factories.template(status=TemplateStatus.PREPARING))
    assert manager.claim_slot(pool.pk) is None


def test_slots_respect_the_vcenter_task_limit():
    vc = factories.vcenter(task_limit=2)
    a, b = a_pool(vcenter=vc, size=5), a_pool(vcenter=vc, size=5)
    claimed = [manager.claim_slot(a.pk), manager.claim_slot(b.pk), manager.claim_slot(a.pk)]
    assert [vm is not None for vm in claimed] == [True, True, False]


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_never_exceed_the_pool_size():
    pool = a_pool(size=7, vcenter=factories.vcenter(task_limit=100))
    got: list[int] = []
    lock = threading.Lock()

    def claimer():
        try:
            for _ in range(5):
                vm = manager.claim_slot(pool.pk)
                if vm is not None:
                    with lock:
                        got.append(vm.pk)
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 7
    assert pool.vms.filter(state=VMState.CLONING).count() == 7


def test_dead_fill_job_is_replaced():
    pool = a_pool(size=1)
    manager.reconcile_pool(pool.pk)
    Job.objects.filter(kind="pools.fill").update(
        status=Job.Status.RUNNING, heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    assert runner.reap_lost() == 1
    assert manager.reconcile_pool(pool.pk).fill_started
    assert Job.objects.get(kind="pools.fill", status=Job.Status.FAILED).error.startswith("The worker")
