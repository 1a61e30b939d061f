"""Build VMs on the health page: every derive's build VM that exists in vSphere, with its
age, so a forgotten one (a powered-on full clone) is seen; never a reason for a 503."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.pools.models import Template, TemplateBuild, TemplateStatus
from tests import factories
from tests.live import GUEST, make_pool, site
from tests.pools.test_template_jobs import run_worker

S = TemplateBuild.Status


def build(source: Template, name: str, status: str, *, age: timedelta, moid: str = "", user=None,
          kind: str = TemplateBuild.Kind.DERIVE) -> TemplateBuild:
    target = factories.template(source.vcenter, name=name, status=TemplateStatus.PENDING, parent=source,
                                source="derived")
    made = TemplateBuild.objects.create(kind=kind, vcenter=source.vcenter, template=target, template_name=name,
                                        source_template=source, cluster=factories.cluster(source.vcenter),
                                        vm_name=name, moid=moid, status=status, ip_address="10.30.0.7" if moid else "",
                                        created_by=user)
    TemplateBuild.objects.filter(pk=made.pk).update(created_at=timezone.now() - age)
    return made


@pytest.mark.django_db
def test_health_lists_live_build_vms_oldest_first_with_their_age(client, admin_user, redis_conn):
    source = factories.template()
    forgotten = build(source, "forgotten", S.READY, age=timedelta(days=5, hours=2), moid="vm-41", user=admin_user)
    build(source, "cloning-now", S.CLONING, age=timedelta(minutes=3))
    build(source, "capture-failed", S.FAILED, age=timedelta(hours=7), moid="vm-43")
    build(source, "clone-failed", S.FAILED, age=timedelta(hours=8))             # no VM was made
    build(source, "captured", S.CAPTURED, age=timedelta(days=9), moid="vm-44")  # it is the template now
    build(source, "discarded", S.DISCARDED, age=timedelta(days=9), moid="vm-45")
    build(source, "copy-of-vm", S.CAPTURING, age=timedelta(hours=1), kind=TemplateBuild.Kind.CAPTURE_VM)
    client.force_login(admin_user)

    body = client.get(reverse("adminui:health")).content.decode()
    section = body[body.index("<h2>Build VMs</h2>"):]
    shown = re.findall(r"<td><strong>([\w-]+)</strong>", section)
    assert shown == ["forgotten", "capture-failed", "cloning-now"]
    row = section[section.index("forgotten"):section.index("capture-failed")]
    assert "5\xa0days, 2\xa0hours" in row and 'badge warn">old<' in row and "alice-admin" in row
    assert reverse("adminui:template-detail", args=[forgotten.template_id]) in row and "10.30.0.7" in row
    assert "old<" not in section[section.index("capture-failed"):]

    polled = client.get(reverse("adminui:health"), HTTP_HX_REQUEST="true")
    assert "forgotten" in polled.content.decode()  # the live fragment has them too

    response = client.get(reverse("adminui:health-json"))
    assert response.status_code == 200  # a cost to watch, not a fault
    data = response.json()
    assert [b["name"] for b in data["build_vms"]] == ["forgotten", "capture-failed", "cloning-now"]
    first = data["build_vms"][0]
    assert first["moid"] == "vm-41" and first["status"] == "ready" and first["old"] is True
    assert first["created_by"] == "alice-admin" and first["source_template"] == source.name
    assert 5 * 86400 + 2 * 3600 - 5 <= first["age_seconds"] <= 5 * 86400 + 2 * 3600 + 60
    assert data["build_vms"][2]["moid"] == "" and data["build_vms"][2]["old"] is False


@pytest.mark.django_db
def test_health_says_when_there_is_no_build_vm(client, admin_user, redis_conn):
    client.force_login(admin_user)
    assert "No build VMs." in client.get(reverse("adminui:health")).content.decode()
    assert client.get(reverse("adminui:health-json")).json()["build_vms"] == []


@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_a_derives_build_vm_shows_on_health_until_it_is_discarded(client, admin_user, vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    source = make_pool(vc, folder, size=0).template
    client.force_login(admin_user)
    client.post(reverse("adminui:template-derive", args=[source.pk]),
                {"name": "scratch", "cluster": source.copies.get().cluster_id})
    run_worker()
    made = TemplateBuild.objects.get(template_name="scratch")
    assert made.status == S.READY and made.moid
    [entry] = client.get(reverse("adminui:health-json")).json()["build_vms"]
    assert (entry["name"], entry["moid"], entry["status"]) == ("scratch", made.moid, "ready")
    assert entry["ip"].startswith("10.30.") and entry["age_seconds"] < 120 and entry["old"] is False
    assert entry["cluster"] == made.cluster.name and entry["vcenter"] == vc.name

    client.post(reverse("adminui:build-discard", args=[made.pk]))
    assert client.get(reverse("adminui:health-json")).json()["build_vms"][0]["status"] == "discarding"
    run_worker()
    assert client.get(reverse("adminui:health-json")).json()["build_vms"] == []
