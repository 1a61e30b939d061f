"""Template deploy, derive and capture end to end: the admin pages, real RQ worker
processes on the `deploy` queue, real PostgreSQL and Redis, and vcsim."""

from __future__ import annotations

import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.inventory.models import Cluster, Datastore, Folder, Network
from apps.jobs.models import Job
from apps.leases import services as leases
from apps.pools.models import VM, Pool, Template, TemplateBuild, TemplateStatus, VMState
from apps.vsphere import operations as ops
from apps.vsphere.session import Endpoint, connect
from tests.live import GUEST, make_pool, settle, site, worker
from tests.vsphere import http_server
from tests.vsphere.test_templates import DISK, OVF, ova_bytes

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]


def run_worker(timeout: float = 120) -> None:
    assert worker().wait(timeout=timeout) == 0


def deploy_fields(vc, **overrides) -> dict:
    cluster = Cluster.objects.get(vcenter=vc, name="DC0_C0")
    fields = {
        "name": "tiny", "os_name": "Tiny Linux", "url": "",
        "cluster": cluster.pk,
        "folder": Folder.objects.get(vcenter=vc, path="DC0/vm/Templates").pk,
        "datastore": Datastore.objects.get(vcenter=vc, name="LocalDS_0").pk,
    }
    fields.update(overrides)
    return fields


def vm_in_vsphere(vc, path: str):
    with connect(Endpoint.from_vcenter(vc)) as conn:
        return ops.find_vm(conn, path=path)


def test_admin_deploys_an_uploaded_ova_with_progress_and_gets_a_ready_template(
        client, admin_user, vcsim_factory, redis_conn, settings, tmp_path):
    settings.VMPORTAL_UPLOAD_DIR = tmp_path / "uploads"
    vc, _ = site(vcsim_factory())
    client.force_login(admin_user)
    upload = SimpleUploadedFile("tiny.ova", ova_bytes(), content_type="application/x-tar")
    response = client.post(reverse("adminui:template-deploy"), {**deploy_fields(vc), "file": upload})
    template = Template.objects.get(name="tiny")
    assert response.status_code == 302
    assert response["Location"] == reverse("adminui:template-detail", args=[template.pk])
    assert (template.status, template.source, template.progress) == (TemplateStatus.DEPLOYING, "ovf", 0)
    [stored] = list((tmp_path / "uploads").iterdir())  # streamed to the upload directory
    assert stored.read_bytes() == ova_bytes()

    # While it deploys, the page polls a fragment that shows the bar and keeps polling.
    live = client.get(reverse("adminui:template-detail", args=[template.pk]), HTTP_HX_REQUEST="true")
    assert live.status_code == 200 and b"<progress" in live.content and b"deploying 0%" in live.content

    started = time.monotonic()
    run_worker()
    elapsed = time.monotonic() - started
    template.refresh_from_db()
    assert (template.status, template.progress) == (TemplateStatus.READY, 100), template.status_reason
    assert template.inventory_path == "DC0/vm/Templates/tiny"
    copy = template.copies.get()
    assert copy.status == TemplateStatus.READY and copy.moid and copy.snapshot_moid
    info = vm_in_vsphere(vc, "DC0/vm/Templates/tiny")
    assert info is not None and info.is_template
    job = Job.objects.get(kind="templates.deploy_ovf")
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert "upload 0%" in job.log and "upload 100%" in job.log and "ready as DC0/vm/Templates/tiny" in job.log
    assert not stored.exists()  # the job removes the upload once vCenter has it
    actions = list(AuditEvent.objects.filter(target_type="pools.template").order_by("id")
                   .values_list("action", "actor_name"))
    assert actions == [("template.deploy", "alice-admin"), ("template.ready", "system")]

    done = client.get(reverse("adminui:template-detail", args=[template.pk]), HTTP_HX_REQUEST="true")
    assert done.status_code == 286  # HTMX stops polling once settled
    assert b"badge ok" in done.content
    print(f"\nOVA upload deploy through a worker: {elapsed:.2f}s")  # noqa: T201 - a number for the notes


@pytest.mark.parametrize("kind", ["ova", "ovf"])
def test_deploy_from_a_url_and_a_pool_clones_from_it(client, admin_user, vcsim_factory, redis_conn, tmp_path, kind):
    vc, folder = site(vcsim_factory(*GUEST))
    (tmp_path / "tiny.ovf").write_text(OVF)
    (tmp_path / "disk1.vmdk").write_bytes(DISK)
    (tmp_path / "tiny.ova").write_bytes(ova_bytes())
    client.force_login(admin_user)
    with http_server(tmp_path) as base:
        network = Network.objects.get(vcenter=vc, name="VM Network")
        fields = deploy_fields(vc, url=f"{base}tiny.{kind}", network=network.pk)
        response = client.post(reverse("adminui:template-deploy"), fields)
        assert response.status_code == 302, response.content.decode()[-2000:]
        run_worker()
    template = Template.objects.get(name="tiny")
    assert template.status == TemplateStatus.READY, template.status_reason
    assert template.ovf_url == f"{base}tiny.{kind}"

    pool = Pool.objects.create(name="tiny-pool", template=template, cluster=template.copies.get().cluster,
                               folder=folder, size=1)
    settle(pool)
    assert pool.vms.filter(state=VMState.READY).count() == 1


def test_a_broken_ova_fails_with_a_reason_the_admin_can_act_on(client, admin_user, vcsim_factory, redis_conn,
                                                               settings, tmp_path):
    settings.VMPORTAL_UPLOAD_DIR = tmp_path
    vc, _ = site(vcsim_factory())
    client.force_login(admin_user)
    upload = SimpleUploadedFile("broken.ova", ova_bytes(with_disk=False))
    assert client.post(reverse("adminui:template-deploy"), {**deploy_fields(vc), "file": upload}).status_code == 302
    run_worker()
    template = Template.objects.get(name="tiny")
    assert template.status == TemplateStatus.FAILED
    assert "the package lacks disk1.vmdk" in template.status_reason
    assert template.copies.get().status == TemplateStatus.FAILED
    assert vm_in_vsphere(vc, "DC0/vm/Templates/tiny") is None  # the half-made VM is gone
    page = client.get(reverse("adminui:template-detail", args=[template.pk]))
    assert b"the package lacks disk1.vmdk" in page.content
    assert list(tmp_path.iterdir()) == []
    assert AuditEvent.objects.filter(action="template.failed", target_id=str(template.pk)).exists()

    # The admin removes the failed template, and the name is free for the next try.
    assert client.post(reverse("adminui:template-forget", args=[template.pk])).status_code == 302
    assert not Template.objects.filter(name="tiny").exists()
    assert AuditEvent.objects.filter(action="template.forget", actor_name="alice-admin").exists()
    upload = SimpleUploadedFile("tiny.ova", ova_bytes())
    assert client.post(reverse("adminui:template-deploy"), {**deploy_fields(vc), "file": upload}).status_code == 302
    run_worker()
    assert Template.objects.get(name="tiny").status == TemplateStatus.READY


def test_only_a_failed_unused_template_can_be_removed(client, admin_user):
    from tests import factories

    client.force_login(admin_user)
    ready = factories.template()
    response = client.post(reverse("adminui:template-forget", args=[ready.pk]), follow=True)
    assert b"only a failed template is removed" in response.content
    failed = factories.template(status=TemplateStatus.FAILED)
    factories.pool(template=failed, vcenter=failed.vcenter)
    response = client.post(reverse("adminui:template-forget", args=[failed.pk]), follow=True)
    assert b"still used by a pool" in response.content
    assert Template.objects.filter(pk__in=[ready.pk, failed.pk]).count() == 2


def test_derive_clones_a_build_vm_with_an_ip_then_capture_makes_a_template(client, admin_user, vcsim_factory,
                                                                           redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, size=0)
    source = pool.template
    client.force_login(admin_user)
    response = client.post(reverse("adminui:template-derive", args=[source.pk]),
                           {"name": "debian-12-web", "os_name": "Debian 12 + nginx",
                            "cluster": source.copies.get().cluster_id})
    derived = Template.objects.get(name="debian-12-web")
    assert response.status_code == 302
    assert (derived.source, derived.parent, derived.status) == ("derived", source, TemplateStatus.PENDING)
    run_worker()
    build = TemplateBuild.objects.get(template=derived)
    assert build.status == TemplateBuild.Status.READY, build.status_reason
    assert build.ip_address.startswith("10.30.") and build.moid
    page = client.get(reverse("adminui:template-detail", args=[derived.pk]))
    assert build.vm_name.encode() in page.content and build.ip_address.encode() in page.content
    # The build VM waits for the admin (maybe for days): the page stops polling meanwhile.
    assert client.get(reverse("adminui:template-detail", args=[derived.pk]), HTTP_HX_REQUEST="true").status_code == 286
    info = vm_in_vsphere(vc, "DC0/vm/Templates/debian-12-web")
    assert info is not None and info.power_state == "poweredOn" and not info.is_template

    assert client.post(reverse("adminui:build-capture", args=[build.pk])).status_code == 302
    derived.refresh_from_db()
    assert derived.status == TemplateStatus.PREPARING
    run_worker()
    derived.refresh_from_db()
    build.refresh_from_db()
    assert (derived.status, build.status) == (TemplateStatus.READY, TemplateBuild.Status.CAPTURED)
    info = vm_in_vsphere(vc, "DC0/vm/Templates/debian-12-web")
    assert info.is_template and info.power_state == "poweredOff"
    assert derived.copies.get().snapshot_moid
    assert [e.action for e in AuditEvent.objects.filter(target_id=str(derived.pk), target_type="pools.template")
            .order_by("id")] == ["template.derive", "template.capture", "template.captured"]

    # A pool can use the derived template at once.
    web = Pool.objects.create(name="web", template=derived, cluster=derived.copies.get().cluster, folder=folder,
                              size=1)
    settle(web)
    assert web.vms.filter(state=VMState.READY).count() == 1


def test_discarding_a_build_destroys_its_vm_and_frees_the_name(client, admin_user, vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    source = make_pool(vc, folder, size=0).template
    client.force_login(admin_user)
    client.post(reverse("adminui:template-derive", args=[source.pk]),
                {"name": "scratch", "cluster": source.copies.get().cluster_id})
    run_worker()
    build = TemplateBuild.objects.get(template_name="scratch")
    assert build.status == TemplateBuild.Status.READY
    assert client.post(reverse("adminui:build-discard", args=[build.pk])).status_code == 302
    run_worker()
    build.refresh_from_db()
    assert build.status == TemplateBuild.Status.DISCARDED and build.template is None
    assert not Template.objects.filter(name="scratch").exists()
    assert vm_in_vsphere(vc, "DC0/vm/Templates/scratch") is None
    assert {"template.build_discard", "template.build_discarded"} <= set(
        AuditEvent.objects.values_list("action", flat=True))


def test_capture_a_leased_vm_as_a_template_leaves_the_lease_alone(client, admin_user, engineer, vcsim_factory,
                                                                  redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, size=1)
    settle(pool)
    [lease] = leases.checkout(user=engineer, pools=[pool])
    client.force_login(admin_user)
    assert client.get(reverse("adminui:vm-capture", args=[lease.vm_id])).status_code == 200
    response = client.post(reverse("adminui:vm-capture", args=[lease.vm_id]), {"name": "bobs-box"})
    assert response.status_code == 302
    captured = Template.objects.get(name="bobs-box")
    assert (captured.source, captured.parent, captured.status) == ("derived", pool.template, TemplateStatus.PREPARING)
    run_worker()
    captured.refresh_from_db()
    assert captured.status == TemplateStatus.READY, captured.status_reason
    info = vm_in_vsphere(vc, captured.inventory_path)
    assert info is not None and info.is_template
    vm = VM.objects.get(pk=lease.vm_id)
    assert vm.state == VMState.LEASED and vm_in_vsphere(vc, f"DC0/vm/vmportal/{vm.name}").power_state == "poweredOn"
    assert AuditEvent.objects.filter(action="vm.capture", target_id=str(vm.pk), actor_name="alice-admin").exists()


# ---------------------------------------------------------------- bad input, never a 500


def test_deploy_form_explains_bad_input(client, admin_user, vcsim_factory, redis_conn, settings, tmp_path):
    settings.VMPORTAL_UPLOAD_DIR = tmp_path
    vc, _ = site(vcsim_factory())
    client.force_login(admin_user)
    url = reverse("adminui:template-deploy")
    cases = [
        ({"url": "ftp://example.com/x.ova"}, "Only http:// and https:// URLs"),
        ({"url": "file:///etc/passwd"}, "Only http:// and https:// URLs"),
        ({"url": "https://example.com/readme.txt"}, "must name an .ova or .ovf"),
        ({}, "Give the URL of an OVF/OVA or upload an OVA"),
        ({"name": "not a slug!", "url": "https://example.com/x.ova"}, "Enter a valid"),
        ({"url": "https://example.com/x.ova", "file": SimpleUploadedFile("x.ova", b"x")}, "not both"),
        ({"file": SimpleUploadedFile("x.ovf", b"<Envelope/>")}, "Upload an .ova file"),
        ({"url": "https://example.com/x.ova", "cluster": "999999"}, "Select a valid choice"),
    ]
    for overrides, message in cases:
        response = client.post(url, {**deploy_fields(vc), **overrides})
        assert response.status_code == 400, overrides
        assert message in response.content.decode(), (overrides, message)
    assert not Template.objects.exists() and not Job.objects.exists()
    assert list(tmp_path.iterdir()) == []  # refused uploads are not kept


def test_an_upload_over_the_limit_is_refused_and_not_kept(client, admin_user, vcsim_factory, redis_conn, settings,
                                                          tmp_path):
    settings.VMPORTAL_UPLOAD_DIR = tmp_path
    settings.VMPORTAL_OVF_MAX_BYTES = 20 * 1024
    vc, _ = site(vcsim_factory())
    client.force_login(admin_user)
    big = SimpleUploadedFile("big.ova", ova_bytes())  # ~60 KB
    response = client.post(reverse("adminui:template-deploy"), {**deploy_fields(vc), "file": big})
    assert response.status_code == 400
    assert "the limit is 0.0 MiB (VMPORTAL_OVF_MAX_BYTES)" in response.content.decode()
    assert list(tmp_path.iterdir()) == [] and not Template.objects.exists()


def test_an_ova_url_over_the_limit_fails_the_deploy_with_the_reason(client, admin_user, vcsim_factory, redis_conn,
                                                                    monkeypatch, tmp_path):
    vc, _ = site(vcsim_factory())
    (tmp_path / "tiny.ova").write_bytes(ova_bytes())
    client.force_login(admin_user)
    with http_server(tmp_path) as base:
        client.post(reverse("adminui:template-deploy"), deploy_fields(vc, url=f"{base}tiny.ova"))
        monkeypatch.setenv("VMPORTAL_OVF_MAX_BYTES", str(10 * 1024))  # the worker's settings
        run_worker()
    template = Template.objects.get(name="tiny")
    assert template.status == TemplateStatus.FAILED
    assert "over the 10.0 KiB limit" in template.status_reason or "larger than the 10.0 KiB" in template.status_reason


def test_an_unknown_template_or_build_is_a_404_not_a_500(client, admin_user):
    client.force_login(admin_user)
    assert client.get(reverse("adminui:template-detail", args=[999999])).status_code == 404
    assert client.post(reverse("adminui:build-capture", args=[999999])).status_code == 404
    assert client.post(reverse("adminui:template-derive", args=[999999]), {"name": "x"}).status_code == 404
    assert client.get(reverse("adminui:vm-capture", args=[999999])).status_code == 404

