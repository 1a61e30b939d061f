"""Pool administration: validation, runtime reconfigure, drain and reset."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.inventory.models import Datastore, Folder
from apps.jobs.models import Job
from apps.pools import reconfigure as services
from apps.pools.manager import reconcile_pool
from apps.pools.models import Pool, TemplateCopy, TemplateStatus, VMState
from tests import factories

pytestmark = pytest.mark.django_db


def ready_vms(pool, n):
    return [factories.vm(pool, state=VMState.READY, ready_at=timezone.now()) for _ in range(n)]


def test_growing_a_pool_is_audited_and_reconcile_then_starts_a_fill_job(ready_pool):
    ready_vms(ready_pool, 2)
    pool, preview = services.reconfigure(pool_id=ready_pool.pk, size=5)
    assert pool.size == 5
    assert preview.summary == "clone 3, 0 leased VMs untouched"
    event = AuditEvent.objects.get(action="pool.reconfigure")
    assert (event.before, event.after) == ({"size": 2}, {"size": 5})
    assert event.message == preview.summary and event.pool_id == pool.pk
    report = reconcile_pool(pool.pk)
    assert report.fill_started and report.deficit == 3
    assert Job.objects.filter(kind="pools.fill", object_id=str(pool.pk)).count() == 1


def test_shrinking_a_pool_destroys_excess_ready_vms_and_not_leased_ones(ready_pool):
    ready_vms(ready_pool, 4)
    leased = factories.vm(ready_pool, state=VMState.LEASED)
    _, preview = services.reconfigure(pool_id=ready_pool.pk, size=1)
    assert (preview.drain_ready, preview.leased_untouched) == (3, 1)
    report = reconcile_pool(ready_pool.pk)
    assert len(report.destroy) == 3
    assert Job.objects.filter(kind="pools.destroy").count() == 3
    leased.refresh_from_db()
    assert leased.state == VMState.LEASED


def test_template_change_needs_a_ready_copy_somewhere_not_in_the_pools_cluster(ready_pool):
    other = factories.template(ready_pool.template.vcenter)
    with pytest.raises(ValidationError) as exc:
        services.reconfigure(pool_id=ready_pool.pk, template=other)
    assert "has no ready copy in any cluster" in str(exc.value)
    # Ready elsewhere only: allowed; the pool manager copies it to the pool's cluster.
    TemplateCopy.objects.create(template=other, cluster=factories.cluster(other.vcenter), moid="vm-9",
                                status=TemplateStatus.READY)
    pool, _ = services.reconfigure(pool_id=ready_pool.pk, template=other)
    assert pool.template_id == other.pk
    assert AuditEvent.objects.get(action="pool.reconfigure").after["template"] == {"id": other.pk, "name": other.name}


def test_a_pool_with_a_failed_template_can_still_be_drained(ready_pool):
    ready_pool.template.status = TemplateStatus.FAILED
    ready_pool.template.save()
    pool, _ = services.drain(pool_id=ready_pool.pk, disable=True)
    assert (pool.size, pool.enabled) == (0, False)
    event = AuditEvent.objects.get(action="pool.drain")
    assert event.after == {"size": 0, "enabled": False}
    assert event.message.startswith("Drained and disabled: ")


def test_reset_clears_failing_health(ready_pool):
    Pool.objects.filter(pk=ready_pool.pk).update(
        health=Pool.Health.FAILING, health_reason="disk full", consecutive_failures=5,
        retry_at=timezone.now() + timedelta(hours=1),
    )
    pool = services.reset(pool_id=ready_pool.pk)
    pool.refresh_from_db()
    assert (pool.health, pool.health_reason, pool.consecutive_failures, pool.retry_at) == ("ok", "", 0, None)
    event = AuditEvent.objects.get(action="pool.reset")
    assert event.before["health"] == "failing" and event.after["consecutive_failures"] == 0


def test_reconfigure_view_applies_and_redirects(client, admin_user, ready_pool):
    client.force_login(admin_user)
    url = reverse("adminui:pool-reconfigure", args=[ready_pool.pk])
    response = client.post(url, {"size": 7, "template": ready_pool.template_id, "cluster": ready_pool.cluster_id})
    assert response.status_code == 302
    ready_pool.refresh_from_db()
    assert ready_pool.size == 7
    event = AuditEvent.objects.get(action="pool.reconfigure")
    assert event.actor_name == admin_user.username


def test_preview_view_says_what_will_happen(client, admin_user, ready_pool):
    ready_vms(ready_pool, 2)
    factories.vm(ready_pool, state=VMState.LEASED)
    client.force_login(admin_user)
    response = client.post(reverse("adminui:pool-preview", args=[ready_pool.pk]),
                           {"size": 14, "template": ready_pool.template_id, "cluster": ready_pool.cluster_id},
                           HTTP_HX_REQUEST="true")
    assert b"clone 12, 1 leased VM untouched" in response.content
    ready_pool.refresh_from_db()
    assert ready_pool.size == 2  # a preview changes nothing


@pytest.mark.parametrize("size", ["-1", "lots", ""])
def test_bad_reconfigure_input_rerenders_the_form(client, admin_user, ready_pool, size):
    client.force_login(admin_user)
    response = client.post(reverse("adminui:pool-reconfigure", args=[ready_pool.pk]),
                           {"size": size, "template": ready_pool.template_id, "cluster": ready_pool.cluster_id})
    assert response.status_code == 400
    assert b"field-error" in response.content
    assert not AuditEvent.objects.exists()


def test_drain_and_reset_views(client, admin_user, ready_pool):
    client.force_login(admin_user)
    assert client.post(reverse("adminui:pool-drain", args=[ready_pool.pk])).status_code == 302
    ready_pool.refresh_from_db()
    assert ready_pool.size == 0 and ready_pool.enabled
    assert client.post(reverse("adminui:pool-reset", args=[ready_pool.pk])).status_code == 302
    assert AuditEvent.objects.filter(action="pool.reset").exists()


def pool_folder(pool) -> Folder:
    """The VM folder of ``pool`` (given one if it had none): the pool forms require it."""
    cluster = pool.cluster
    folder, _ = Folder.objects.get_or_create(vcenter=cluster.vcenter, moid="group-v42", defaults={
        "datacenter": cluster.datacenter, "name": "pools", "path": "DC0/vm/pools"})
    Pool.objects.filter(pk=pool.pk, folder=None).update(folder=folder)
    return folder


def _create_form(pool, **over):
    data = {
        "name": "new-pool", "template": pool.template_id, "cluster": pool.cluster_id, "size": 3,
        "folder": pool_folder(pool).pk,
        "linked_clones": "on", "lease_lifetime": "02:00:00", "lease_max_lifetime": "1 00:00:00",
        "boot_timeout": "00:10:00", "max_tries": 3, "enabled": "on",
    }
    data.update(over)
    return data


def test_create_pool_explains_every_problem(client, admin_user, ready_pool):
    failed = factories.template(ready_pool.template.vcenter, status=TemplateStatus.FAILED,
                                status_reason="OVF checksum mismatch")
    ds = Datastore.objects.create(vcenter=ready_pool.cluster.vcenter, datacenter=ready_pool.cluster.datacenter,
                                  moid="datastore-9", name="lonely-ds")
    client.force_login(admin_user)
    response = client.post(reverse("adminui:pool-create"), _create_form(
        ready_pool, template=failed.pk, size=-1, lease_lifetime="48:00:00", datastore=ds.pk,
    ))
    assert response.status_code == 400
    body = response.content.decode()
    assert "greater than or equal to 0" in body
    assert not Pool.objects.filter(name="new-pool").exists()
    response = client.post(reverse("adminui:pool-create"), _create_form(
        ready_pool, template=failed.pk, lease_lifetime="48:00:00", datastore=ds.pk,
    ))
    body = response.content.decode()
    assert "The maximum lifetime must be at least the default lifetime." in body
    assert "No host of cluster" in body and "lonely-ds" in body
    response = client.post(reverse("adminui:pool-create"), _create_form(ready_pool, template=failed.pk))
    assert "is failed: OVF checksum mismatch" in response.content.decode()


def test_create_pool_with_valid_input(client, admin_user, ready_pool):
    host = factories.host(ready_pool.cluster)
    ds = Datastore.objects.create(vcenter=ready_pool.cluster.vcenter, datacenter=ready_pool.cluster.datacenter,
                                  moid="datastore-1", name="shared-ds")
    host.datastores.add(ds)
    client.force_login(admin_user)
    response = client.post(reverse("adminui:pool-create"), _create_form(ready_pool, datastore=ds.pk))
    assert response.status_code == 302, response.content.decode()[:2000]
    pool = Pool.objects.get(name="new-pool")
    assert pool.datastore == ds and pool.size == 3
    assert AuditEvent.objects.get(action="pool.create").after["size"] == 3


def test_edit_keeps_a_pool_with_a_failed_template_editable(client, admin_user, ready_pool):
    ready_pool.template.status = TemplateStatus.FAILED
    ready_pool.template.save()
    client.force_login(admin_user)
    data = {f"edit-{k}": v for k, v in _create_form(ready_pool, name=ready_pool.name, size=2).items()}
    data["edit-description"] = "now described"
    response = client.post(reverse("adminui:pool-detail", args=[ready_pool.pk]), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    ready_pool.refresh_from_db()
    assert ready_pool.description == "now described"
    assert AuditEvent.objects.get(action="pool.reconfigure").after == {"description": "now described"}


@pytest.mark.django_db(transaction=True)
def test_reconfigure_is_serialised_per_pool_and_sees_the_committed_row(ready_pool, redis_conn):
    import threading
    import time

    from django.db import connection, transaction

    locked, release, done = threading.Event(), threading.Event(), []

    def other_writer():
        try:
            with transaction.atomic():
                Pool.objects.select_for_update().get(pk=ready_pool.pk)
                locked.set()
                release.wait(5)
                Pool.objects.filter(pk=ready_pool.pk).update(size=9)
        finally:
            connection.close()

    def admin():
        try:
            services.reconfigure(pool_id=ready_pool.pk, size=3)
            done.append(True)
        finally:
            connection.close()

    first = threading.Thread(target=other_writer)
    first.start()
    assert locked.wait(5)
    second = threading.Thread(target=admin)
    second.start()
    time.sleep(0.3)
    assert not done  # blocked on the pool row lock
    release.set()
    first.join(5)
    second.join(5)
    assert done
    event = AuditEvent.objects.get(action="pool.reconfigure")
    assert (event.before, event.after) == ({"size": 9}, {"size": 3})
    assert redis_conn.lrange("vmportal:reconcile", 0, -1) == [str(ready_pool.pk).encode()]


def test_cluster_change_drains_vms_of_the_old_cluster_by_host_or_claim(ready_pool):
    old, new = ready_pool.cluster, factories.cluster(ready_pool.template.vcenter)
    TemplateCopy.objects.create(template=ready_pool.template, cluster=new, moid="vm-2", status=TemplateStatus.READY)
    host_in_old = factories.host(old)
    by_claim = factories.vm(ready_pool, state=VMState.READY, cluster=old)  # no host known yet
    by_host = factories.vm(ready_pool, state=VMState.READY, host=host_in_old)  # a row from before VM.cluster
    unknown = factories.vm(ready_pool, state=VMState.READY)  # nowhere known: left alone
    leased = factories.vm(ready_pool, state=VMState.LEASED, cluster=old)
    on_demand = factories.vm(ready_pool, state=VMState.READY, cluster=old, on_demand=True)
    _, preview = services.reconfigure(pool_id=ready_pool.pk, cluster=new)
    assert (preview.drain_ready, preview.leased_untouched) == (2, 1)
    report = reconcile_pool(ready_pool.pk)
    assert sorted(report.destroy) == sorted([by_claim.pk, by_host.pk])
    for vm, state in [(unknown, VMState.READY), (leased, VMState.LEASED), (on_demand, VMState.READY)]:
        vm.refresh_from_db()
        assert vm.state == state
