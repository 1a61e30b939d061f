"""Capturing or deriving into a name a VM already has in the target folder fails at once,
with a message that says so: at the form when the synced inventory knows the VM, else in
the job (a real worker, vcsim) before any clone is started, instead of waiting for it."""

from __future__ import annotations

import time

import pytest
from django.urls import reverse

from apps.inventory.services import sync_inventory
from apps.leases import services as leases
from apps.pools.models import VM, Template, TemplateBuild, TemplateStatus, VMState
from apps.vsphere import operations as ops
from apps.vsphere.session import Endpoint, connect
from apps.vsphere.types import CloneSpec
from tests.live import GUEST, make_pool, settle, site
from tests.pools.test_template_jobs import run_worker, vm_in_vsphere

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]


def squat(vc, template: Template, name: str) -> str:
    """Someone else's VM named ``name`` next to ``template``, made behind vmportal's back."""
    copy = template.copies.get()
    with connect(Endpoint.from_vcenter(vc)) as conn:
        folder = ops.get_vm(conn, copy.moid).folder_moid
        made = ops.clone_vm(conn, CloneSpec(template_moid=copy.moid, name=name, folder_moid=folder,
                                            resource_pool_moid=copy.cluster.resource_pool_moid, linked=False,
                                            power_on=False))
    return made.moid


def test_capturing_a_vm_into_a_taken_name_fails_at_once(client, admin_user, engineer, vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, size=1)
    settle(pool)
    [lease] = leases.checkout(user=engineer, pools=[pool])
    squatter = squat(vc, pool.template, "bobs-box")  # not in the synced inventory yet
    client.force_login(admin_user)

    assert client.post(reverse("adminui:vm-capture", args=[lease.vm_id]), {"name": "bobs-box"}).status_code == 302
    started = time.monotonic()
    run_worker()
    elapsed = time.monotonic() - started
    captured = Template.objects.get(name="bobs-box")
    assert captured.status == TemplateStatus.FAILED
    assert captured.status_reason == ("DC0/vm/Templates already holds a VM named bobs-box; "
                                      "choose another name (or remove that VM).")
    assert TemplateBuild.objects.get(template=captured).status == TemplateBuild.Status.FAILED
    assert elapsed < 30, elapsed  # it used to wait for the other VM to become a template (30 min)
    assert vm_in_vsphere(vc, "DC0/vm/Templates/bobs-box").moid == squatter  # the other VM is untouched
    vm = VM.objects.get(pk=lease.vm_id)
    assert vm.state == VMState.LEASED

    # Once the inventory knows the VM, the form says so before anything is queued.
    client.post(reverse("adminui:template-forget", args=[captured.pk]))
    assert sync_inventory(vc).ok
    response = client.post(reverse("adminui:vm-capture", args=[lease.vm_id]), {"name": "bobs-box"})
    assert response.status_code == 400
    assert "DC0/vm/Templates already holds a VM named bobs-box" in response.content.decode()
    assert not Template.objects.filter(name="bobs-box").exists()
    print(f"\ncapture into a taken name failed in {elapsed:.2f}s (worker start-up included)")  # noqa: T201


def test_deriving_into_a_taken_name_fails_at_once_and_the_form_knows_it_after_a_sync(
        client, admin_user, vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    source = make_pool(vc, folder, size=0).template
    squat(vc, source, "web")
    client.force_login(admin_user)
    fields = {"name": "web", "cluster": source.copies.get().cluster_id}
    assert client.post(reverse("adminui:template-derive", args=[source.pk]), fields).status_code == 302
    run_worker()
    derived = Template.objects.get(name="web")
    build = TemplateBuild.objects.get(template=derived)
    assert (derived.status, build.status, build.moid) == (TemplateStatus.FAILED, TemplateBuild.Status.FAILED, "")
    assert "DC0/vm/Templates already holds a VM named web" in derived.status_reason

    client.post(reverse("adminui:template-forget", args=[derived.pk]))
    assert sync_inventory(vc).ok
    response = client.post(reverse("adminui:template-derive", args=[source.pk]), fields)
    assert response.status_code == 400
    assert "DC0/vm/Templates already holds a VM named web; choose another name" in response.content.decode()
    # Another name is fine.
    assert client.post(reverse("adminui:template-derive", args=[source.pk]),
                       {**fields, "name": "web-2"}).status_code == 302
