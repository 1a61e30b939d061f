"""Runtime reconfigure against vcsim: the preview the admin sees, then what real RQ worker
processes do to vSphere once it is applied (size, template, clone target)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.inventory.models import Cluster
from apps.leases import services as leases
from apps.pools.models import VM, Pool, TemplateStatus, VMState
from apps.pools.templates import register_template, start_copy_to_cluster
from tests.live import GUEST, make_pool, settle, site, vms_in_folder
from tests.pools.test_template_jobs import run_worker

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]


def preview(client, pool: Pool, **changes) -> str:
    data = {"size": pool.size, "template": pool.template_id, "cluster": pool.cluster_id, **changes}
    response = client.post(reverse("adminui:pool-preview", args=[pool.pk]), data)
    assert response.status_code == 200
    return response.content.decode()


def apply(client, pool: Pool, **changes) -> None:
    data = {"size": pool.size, "template": pool.template_id, "cluster": pool.cluster_id, **changes}
    response = client.post(reverse("adminui:pool-reconfigure", args=[pool.pk]), data)
    assert response.status_code == 302, response.content.decode()[-3000:]


def names_in_vsphere(vc) -> set[str]:
    return {v.name for v in vms_in_folder(vc)}


def test_growing_a_pool_clones_the_difference_in_vsphere(client, admin_user, vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, size=1)
    settle(pool)
    client.force_login(admin_user)
    assert "Will clone 2, 0 leased VMs untouched." in preview(client, pool, size=3)
    apply(client, pool, size=3)
    settle(pool)
    ready = set(pool.vms.filter(state=VMState.READY).values_list("name", flat=True))
    assert len(ready) == 3 and names_in_vsphere(vc) == ready
    event = AuditEvent.objects.get(action="pool.reconfigure")
    assert (event.before, event.after, event.actor_name) == ({"size": 1}, {"size": 3}, "alice-admin")


def test_template_change_destroys_old_ready_vms_in_vsphere_and_keeps_the_leased_one(
        client, admin_user, engineer, vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, size=2)
    settle(pool)
    [lease] = leases.checkout(user=engineer, pools=[pool])
    settle(pool)  # refills to 2 ready beside the leased one
    old_ready = set(pool.vms.filter(state=VMState.READY).values_list("name", flat=True))
    ubuntu = register_template(vcenter=vc, name="ubuntu-24.04", inventory_path="DC0/vm/Templates/ubuntu-24.04",
                               prepare_now=True)
    client.force_login(admin_user)
    text = preview(client, pool, template=ubuntu.pk)
    assert "Will clone 2, drain 2 ready VMs, 1 leased VM untouched." in text
    assert "The template changes" in text
    apply(client, pool, template=ubuntu.pk)
    settle(pool)
    ready = pool.vms.filter(state=VMState.READY)
    assert ready.count() == 2 and all(vm.template_id == ubuntu.pk for vm in ready)
    in_vsphere = names_in_vsphere(vc)
    assert not old_ready & in_vsphere
    assert in_vsphere == {lease.vm.name, *(vm.name for vm in ready)}
    assert VM.objects.get(pk=lease.vm_id).state == VMState.LEASED


def test_cluster_change_drains_the_old_cluster_and_leaves_leased_vms_where_they_are(
        client, admin_user, engineer, vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, size=2)
    c0, c1 = Cluster.objects.get(vcenter=vc, name="DC0_C0"), Cluster.objects.get(vcenter=vc, name="DC0_C1")
    assert pool.cluster == c0
    settle(pool)
    [lease] = leases.checkout(user=engineer, pools=[pool])
    settle(pool)
    old_ready = set(pool.vms.filter(state=VMState.READY).values_list("name", flat=True))
    assert all(vm.cluster_id == c0.pk and vm.host.cluster_id == c0.pk for vm in pool.vms.filter(state=VMState.READY))

    client.force_login(admin_user)
    # No ready copy in the other cluster yet: allowed (the pool manager would make one).
    assert "has no copy" not in preview(client, pool, cluster=c1.pk)
    start_copy_to_cluster(template=pool.template, cluster=c1)
    run_worker()
    assert pool.template.copies.get(cluster=c1).status == TemplateStatus.READY

    text = preview(client, pool, cluster=c1.pk)
    assert "Will clone 2, drain 2 ready VMs, 1 leased VM untouched." in text
    assert "ready and booting VMs in the old one are drained" in text
    apply(client, pool, cluster=c1.pk)
    settle(pool)
    ready = list(pool.vms.filter(state=VMState.READY).select_related("host"))
    assert len(ready) == 2 and all(vm.cluster_id == c1.pk and vm.host.cluster_id == c1.pk for vm in ready)
    leased = VM.objects.select_related("host").get(pk=lease.vm_id)
    assert leased.state == VMState.LEASED and leased.host.cluster_id == c0.pk
    in_vsphere = names_in_vsphere(vc)
    assert not old_ready & in_vsphere
    assert in_vsphere == {leased.name, *(vm.name for vm in ready)}
    reasons = set(VM.objects.filter(name__in=old_ready).values_list("state_reason", flat=True))
    assert reasons == {"The pool's cluster (clone target) changed."}


def test_a_fill_job_running_through_a_template_change_clones_the_new_template(vcsim_factory, redis_conn,
                                                                              monkeypatch):
    from apps.jobs import runner
    from apps.jobs.models import Job
    from apps.pools import jobs, provisioning
    from apps.vsphere import operations as ops

    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, size=1)
    ubuntu = register_template(vcenter=vc, name="ubuntu-24.04", inventory_path="DC0/vm/Templates/ubuntu-24.04",
                               prepare_now=True)
    real_claim, real_clone_many = provisioning.claim_slots, ops.clone_many
    sources: list[str] = []

    def claim_after_an_admin_changed_the_template(pool_id, most=1, **kw):
        # The admin's change lands after the fill job loaded the pool, before it claims.
        Pool.objects.filter(pk=pool_id).update(template=ubuntu)
        return real_claim(pool_id, most, **kw)

    def spy(conn, specs, **kw):
        sources.extend(s.template_moid for s in specs)
        return real_clone_many(conn, specs, **kw)

    monkeypatch.setattr(provisioning, "claim_slots", claim_after_an_admin_changed_the_template)
    monkeypatch.setattr(ops, "clone_many", spy)
    job = Job.objects.create(kind="pools.fill", queue="clone", status=Job.Status.RUNNING)
    jobs.fill(runner.JobContext(job), pool_id=pool.pk)
    [vm] = pool.vms.all()
    assert vm.template_id == ubuntu.pk and vm.state == VMState.READY
    assert sources == [ubuntu.copies.get().moid]
