"""Templates and system health pages."""

from __future__ import annotations

import pytest
from django.urls import reverse
from redis.exceptions import ConnectionError as RedisConnectionError

from apps.core.errors import VmPortalError
from apps.inventory.models import Folder, InventoryVM
from apps.pools import health
from apps.pools.models import Pool, TemplateCopy, TemplateStatus, VMState
from tests import factories

pytestmark = pytest.mark.django_db


def test_templates_page_shows_each_copy_status_progress_and_reason(client, admin_user, ready_pool):
    t = factories.template(ready_pool.template.vcenter, name="win-2022", status=TemplateStatus.DEPLOYING)
    c2 = factories.cluster(ready_pool.template.vcenter)
    TemplateCopy.objects.create(template=t, cluster=ready_pool.cluster, status=TemplateStatus.DEPLOYING, progress=42)
    TemplateCopy.objects.create(template=t, cluster=c2, status=TemplateStatus.FAILED, status_reason="disk full")
    client.force_login(admin_user)
    body = client.get(reverse("adminui:templates"), HTTP_HX_REQUEST="true").content.decode()
    assert "deploying 42%" in body and "disk full" in body and c2.name in body


def test_register_template_from_the_inventory_picker(client, admin_user, ready_pool, monkeypatch):
    vc = ready_pool.template.vcenter
    picked = InventoryVM.objects.create(vcenter=vc, datacenter=ready_pool.cluster.datacenter, moid="vm-9",
                                        name="debian-13", path="DC0/vm/Templates/debian-13", is_template=True)
    InventoryVM.objects.create(vcenter=vc, datacenter=ready_pool.cluster.datacenter, moid="vm-10",
                               name="not-a-template", path="DC0/vm/x")
    calls = []

    def fake_register(**kw):
        calls.append(kw)
        return factories.template(kw["vcenter"], name=kw["name"], status=TemplateStatus.PREPARING)

    monkeypatch.setattr("apps.pools.views.register_template", fake_register)
    client.force_login(admin_user)
    page = client.get(reverse("adminui:templates")).content.decode()
    assert "DC0/vm/Templates/debian-13" in page and "DC0/vm/x" not in page
    response = client.post(reverse("adminui:templates"), {"source": picked.pk, "name": "debian-13"})
    assert response.status_code == 302
    assert calls == [{"vcenter": vc, "name": "debian-13", "inventory_path": "DC0/vm/Templates/debian-13",
                      "os_name": ""}]


def test_register_template_errors_are_shown_on_the_form(client, admin_user, ready_pool, monkeypatch):
    def failing(**kw):
        raise VmPortalError("DC0/vm/nope is not a template")

    monkeypatch.setattr("apps.pools.views.register_template", failing)
    client.force_login(admin_user)
    response = client.post(reverse("adminui:templates"), {"name": "x"})
    assert response.status_code == 400 and b"Pick a template from the inventory" in response.content
    response = client.post(reverse("adminui:templates"), {"name": "nope", "inventory_path": "DC0/vm/nope",
                                                          "vcenter": ready_pool.template.vcenter_id})
    assert response.status_code == 400 and b"is not a template" in response.content


def test_health_lists_troubled_pools_and_unowned_vms(client, admin_user, ready_pool, redis_conn):
    cluster = ready_pool.cluster
    folder = Folder.objects.create(vcenter=cluster.vcenter, datacenter=cluster.datacenter, moid="group-v9",
                                   name="pool-vms", path="DC0/vm/pool-vms")
    Pool.objects.filter(pk=ready_pool.pk).update(folder=folder, health=Pool.Health.FAILING,
                                                  health_reason="Template deleted in vSphere")
    owned = factories.vm(ready_pool, state=VMState.READY)
    for name in (owned.name, "stray-vm"):
        InventoryVM.objects.create(vcenter=cluster.vcenter, datacenter=cluster.datacenter, moid=f"vm-{name}",
                                   name=name, folder=folder)
    client.force_login(admin_user)
    body = client.get(reverse("adminui:health")).content.decode()
    assert "Template deleted in vSphere" in body and "stray-vm" in body and owned.name not in body
    response = client.get(reverse("adminui:health-json"))
    assert response.status_code == 503  # a failing pool is a problem for monitoring
    data = response.json()
    assert data["status"] == "problem"
    assert [p["name"] for p in data["pools"]] == [ready_pool.name]
    assert [v["name"] for v in data["unowned_vms"]] == ["stray-vm"]
    assert data["rq"]["ok"] is True and {q["name"] for q in data["rq"]["queues"]} >= {"clone", "default"}


def test_health_survives_redis_being_down(client, admin_user, monkeypatch):
    def down(name):
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(health, "rq_queue", down)
    client.force_login(admin_user)
    response = client.get(reverse("adminui:health"))
    assert response.status_code == 200
    assert b"Redis is unavailable: Connection refused" in response.content
    data = client.get(reverse("adminui:health-json")).json()
    assert data["rq"]["ok"] is False and data["status"] == "problem"


def test_health_links_failed_jobs(client, admin_user, monkeypatch):
    class FakeQueue:
        count = 4

        class failed_job_registry:  # noqa: N801 - mimics rq's attribute
            count = 2

    monkeypatch.setattr(health, "rq_queue", lambda name: FakeQueue)
    client.force_login(admin_user)
    body = client.get(reverse("adminui:health")).content.decode()
    assert reverse("django_rq:failed_jobs", args=[0]) in body


def test_templates_poll_stops_once_no_template_or_copy_is_on_its_way(client, admin_user, ready_pool):
    client.force_login(admin_user)
    url = reverse("adminui:templates")
    # Every template and copy is ready: nothing on the list changes by itself.
    assert 'hx-trigger="every' not in client.get(url).content.decode()
    settled = client.get(url, HTTP_HX_REQUEST="true")
    assert settled.status_code == 286 and ready_pool.template.name in settled.content.decode()

    other_cluster = factories.cluster(ready_pool.template.vcenter)
    copy = TemplateCopy.objects.create(template=ready_pool.template, cluster=other_cluster,
                                       status=TemplateStatus.DEPLOYING, progress=10)
    assert 'hx-trigger="every' in client.get(url).content.decode()
    assert client.get(url, HTTP_HX_REQUEST="true").status_code == 200  # htmx keeps polling

    copy.status = TemplateStatus.READY
    copy.save(update_fields=["status"])
    assert client.get(url, HTTP_HX_REQUEST="true").status_code == 286
