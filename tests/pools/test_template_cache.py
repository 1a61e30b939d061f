"""The per-cluster template cache against vcsim with real rqworker processes: a pool whose
cluster has no copy of its template gets one made (once, however many ask), fills from it,
and the copy goes again once no pool or VM needs it."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import close_old_connections, connection
from django.urls import reverse

from apps.inventory.models import Cluster
from apps.jobs import runner
from apps.jobs.models import Job
from apps.pools import manager, templates
from apps.pools.models import Pool, TemplateCopy, TemplateStatus, VMState
from apps.pools.templates import register_template
from apps.pools.templates.copies import copy_marker
from apps.vsphere import operations as ops
from apps.vsphere.session import Endpoint, connect
from tests.live import GUEST, make_pool, site, worker
from tests.pools.test_template_jobs import run_worker

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]


def fill(pool: Pool, want: int, *, rounds: int = 8) -> None:
    for _ in range(rounds):
        manager.reconcile_pool(pool.pk)
        run_worker()
        if pool.vms.filter(state=VMState.READY).count() >= want:
            return
    raise AssertionError(f"{pool} has {pool.vms.filter(state=VMState.READY).count()} ready VMs, not {want}")


def in_vsphere(vc, name: str) -> list:
    with connect(Endpoint.from_vcenter(vc)) as conn:
        return [vm for vm in ops.list_folder_vms(conn, "DC0/vm/Templates") if vm.name == name]


def test_a_pool_in_a_cluster_without_a_copy_gets_one_and_fills_from_it(
        client, admin_user, vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    other = make_pool(vc, folder, name="seed", size=0)  # registers debian-12, its copy in DC0_C0
    c1 = Cluster.objects.get(vcenter=vc, name="DC0_C1")
    client.force_login(admin_user)
    # The pool form takes a cluster with no copy (it used to refuse: "has no copy in cluster DC0_C1").
    response = client.post(reverse("adminui:pool-create"), {
        "name": "deb-c1", "template": other.template_id, "cluster": c1.pk, "folder": folder.pk, "size": 2,
        "lease_lifetime": "02:00:00", "lease_max_lifetime": "24:00:00", "boot_timeout": "00:10:00",
        "max_tries": 3, "enabled": "on", "linked_clones": "on", "alias_weight": 1})
    assert response.status_code == 302, response.content.decode()[-2000:]
    pool = Pool.objects.get(name="deb-c1")

    manager.reconcile_pool(pool.pk)
    page = client.get(reverse("adminui:pool-detail", args=[pool.pk])).content.decode()
    assert "waiting for template copy in DC0_C1" in page
    assert not pool.vms.exists()

    fill(pool, 2)
    copy = TemplateCopy.objects.get(template=pool.template, cluster=c1)
    assert copy.automatic and copy.status == TemplateStatus.READY and copy.snapshot_moid
    [made] = in_vsphere(vc, "debian-12-DC0_C1")
    assert made.moid == copy.moid and made.is_template and made.owner == copy_marker("debian-12-DC0_C1")
    vms = list(pool.vms.filter(state=VMState.READY).select_related("host"))
    assert len(vms) == 2 and all(vm.host.cluster_id == c1.pk for vm in vms)
    # The pool page and the templates page tell the same: a ready copy in DC0_C1.
    page = client.get(reverse("adminui:pool-detail", args=[pool.pk])).content.decode()
    assert "waiting for template copy" not in page and 'id="template-copy">DC0_C1 ' in page
    listing = client.get(reverse("adminui:templates")).content.decode()
    assert '<span class="copy-cluster">DC0_C1</span>' in listing
    assert '<span class="copy-cluster">DC0_C0</span>' in listing


def test_concurrent_requesters_start_one_copy_and_two_racing_workers_make_one_vm(vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    seed = make_pool(vc, folder, name="seed", size=0)
    c1 = Cluster.objects.get(vcenter=vc, name="DC0_C1")
    pools = [Pool.objects.create(name=f"p{i}", template=seed.template, cluster=c1, folder=folder, size=1)
             for i in range(4)]
    barrier = threading.Barrier(len(pools))
    errors: list[BaseException] = []

    def reconcile(pool: Pool) -> None:
        try:
            barrier.wait()
            manager.reconcile_pool(pool.pk)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=reconcile, args=(p,)) for p in pools]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    close_old_connections()
    assert not errors
    [copy] = TemplateCopy.objects.filter(cluster=c1)
    assert Job.objects.filter(kind="templates.copy_to_cluster").count() == 1

    # A second job for the same copy (a retry racing the first): two workers on two
    # "machines" at once; one clones, the other meets its DuplicateName and adopts it.
    runner.enqueue("templates.copy_to_cluster", target=copy.template, copy_id=copy.pk)
    workers = [worker(), worker()]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    jobs = Job.objects.filter(kind="templates.copy_to_cluster")
    assert set(jobs.values_list("status", flat=True)) == {Job.Status.SUCCEEDED}, [j.log for j in jobs]
    copy.refresh_from_db()
    [made] = in_vsphere(vc, "debian-12-DC0_C1")
    assert copy.status == TemplateStatus.READY and copy.moid == made.moid


def test_a_vm_of_another_installation_in_the_copys_place_is_not_adopted(client, admin_user, vcsim_factory,
                                                                        redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    seed = make_pool(vc, folder, name="seed", size=0)
    source = seed.template.copies.get()
    c1 = Cluster.objects.get(vcenter=vc, name="DC0_C1")
    with connect(Endpoint.from_vcenter(vc)) as conn:
        squatter = ops.copy_template_to_cluster(
            conn, template_moid=source.moid, name="debian-12-DC0_C1",
            folder_moid=ops.get_vm(conn, source.moid).folder_moid,
            resource_pool_moid=c1.resource_pool_moid, owner="elsewhere:template-copy:x").template
    pool = Pool.objects.create(name="deb-c1", template=seed.template, cluster=c1, folder=folder, size=1)
    manager.reconcile_pool(pool.pk)
    run_worker()
    copy = TemplateCopy.objects.get(cluster=c1)
    assert copy.status == TemplateStatus.FAILED and "elsewhere:template-copy:x" in copy.status_reason
    assert not pool.vms.exists()
    # The empty pool says why, where monitoring looks: not "ok" with nothing in it.
    pool.refresh_from_db()
    assert pool.health == Pool.Health.DEGRADED and "elsewhere:template-copy:x" in pool.health_reason
    client.force_login(admin_user)
    health = client.get(reverse("adminui:health-json")).json()
    assert [(p["name"], p["health"]) for p in health["pools"]] == [("deb-c1", "degraded")]

    # Someone removes what was in the way; the copy's next try makes it, and the pool is OK.
    with connect(Endpoint.from_vcenter(vc)) as conn:
        ops.destroy_vm(conn, squatter.moid, allow_template=True)
    TemplateCopy.objects.filter(pk=copy.pk).update(
        status_changed_at=copy.status_changed_at - templates.copies.COPY_RETRY_AFTER)
    manager.reconcile_pool(pool.pk)
    run_worker()
    copy.refresh_from_db()
    pool.refresh_from_db()
    assert copy.status == TemplateStatus.READY, copy.status_reason
    assert (pool.health, pool.health_reason) == (Pool.Health.OK, "")


def test_a_template_change_copies_the_new_one_and_removes_the_old_copy_once_unused(vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    seed = make_pool(vc, folder, name="seed", size=0)
    c1 = Cluster.objects.get(vcenter=vc, name="DC0_C1")
    pool = Pool.objects.create(name="deb-c1", template=seed.template, cluster=c1, folder=folder, size=1)
    fill(pool, 1)
    old = TemplateCopy.objects.get(template=seed.template, cluster=c1)
    ubuntu = register_template(vcenter=vc, name="ubuntu-24.04", inventory_path="DC0/vm/Templates/ubuntu-24.04",
                               prepare_now=True)
    # Still needed by the pool's VM: kept, however old.
    assert templates.remove_unused_copies(keep=timedelta(0)) == []

    Pool.objects.filter(pk=pool.pk).update(template=ubuntu)
    fill(pool, 1)
    fill(pool, 1)  # the drained debian VM is destroyed
    new = TemplateCopy.objects.get(template=ubuntu, cluster=c1)
    assert new.automatic and new.status == TemplateStatus.READY
    assert all(vm.template_id == ubuntu.pk for vm in pool.vms.filter(state=VMState.READY))
    assert not pool.vms.filter(template=seed.template).exclude(state=VMState.DESTROYED).exists()

    assert templates.remove_unused_copies(keep=timedelta(0)) == [old.pk]
    run_worker()
    assert not TemplateCopy.objects.filter(pk=old.pk).exists()
    assert in_vsphere(vc, "debian-12-DC0_C1") == []
    # The template's own copy and the copy in use stay.
    assert seed.template.copies.get().status == TemplateStatus.READY
    assert len(in_vsphere(vc, "ubuntu-24.04-DC0_C1")) == 1


def test_an_on_demand_request_for_a_pool_without_a_copy_starts_it_waits_and_gets_its_vm(
        vcsim_factory, redis_conn, engineer):
    from apps.leases import ondemand  # noqa: PLC0415 - leases sit above pools; only this test needs them
    from apps.leases.models import OnDemandRequest  # noqa: PLC0415

    vc, folder = site(vcsim_factory(*GUEST))
    seed = make_pool(vc, folder, name="seed", size=0)
    c1 = Cluster.objects.get(vcenter=vc, name="DC0_C1")
    pool = Pool.objects.create(name="deb-c1", template=seed.template, cluster=c1, folder=folder, size=0)
    req = ondemand.request_vms(user=engineer, pools=[pool])
    requester = worker()  # takes the request, and waits for the copy its first claim starts
    deadline = time.monotonic() + 60
    while not Job.objects.filter(kind="templates.copy_to_cluster").exists():
        assert time.monotonic() < deadline, "the request started no copy"
        time.sleep(0.2)
    req.refresh_from_db()
    assert "waiting for template copy in DC0_C1" in req.status_reason
    assert worker().wait(timeout=120) == 0  # a second machine's worker makes the copy
    assert requester.wait(timeout=120) == 0
    req.refresh_from_db()
    assert req.status == OnDemandRequest.Status.READY, req.status_reason
    [vm] = req.vms.all()
    assert vm.state == VMState.LEASED and vm.host.cluster_id == c1.pk and req.status_reason == ""
    assert TemplateCopy.objects.get(cluster=c1).status == TemplateStatus.READY


def test_a_pool_on_a_datastore_gets_a_copy_on_that_datastore(vcsim_factory, redis_conn):
    from apps.inventory.models import Datastore  # noqa: PLC0415

    vc, folder = site(vcsim_factory(*GUEST))
    seed = make_pool(vc, folder, name="seed", size=0)
    c1 = Cluster.objects.get(vcenter=vc, name="DC0_C1")
    datastore = Datastore.objects.get(vcenter=vc, name="LocalDS_0")
    pool = Pool.objects.create(name="deb-c1", template=seed.template, cluster=c1, folder=folder, size=1,
                               datastore=datastore)
    fill(pool, 1)
    copy = TemplateCopy.objects.get(cluster=c1)
    assert (copy.datastore_id, copy.status, copy.where) == (datastore.pk, TemplateStatus.READY, "DC0_C1 / LocalDS_0")
    [made] = in_vsphere(vc, "debian-12-DC0_C1-LocalDS_0")
    assert made.moid == copy.moid and datastore.moid in made.datastore_moids
