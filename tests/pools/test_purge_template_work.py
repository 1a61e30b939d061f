"""Purge never destroys template work: an admin's build VM, a capture or a template copy whose
clone is still running, even in a pool folder with "purge unknown VMs" on, and even when the
VM carries a pool VM's marker it was copied with. Real PostgreSQL, the purge job and vcsim."""

from __future__ import annotations

import pytest

from apps.inventory.models import Cluster
from apps.inventory.services import sync_inventory
from apps.jobs import runner
from apps.jobs.models import Job
from apps.pools import instance
from apps.pools.models import VM, Template, TemplateBuild, TemplateCopy, TemplateStatus, VMState
from apps.pools.templates import register_template, start_derive
from apps.vsphere import operations as ops
from apps.vsphere.session import Endpoint, connect
from apps.vsphere.types import OWNER_KEY, CloneSpec
from tests.live import GUEST, site

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]


def put_vm(vc, folder, name: str, owner: str | None = None) -> str:
    cluster = Cluster.objects.get(vcenter=vc, name="DC0_C0")
    with connect(Endpoint.from_vcenter(vc)) as conn:
        template = ops.find_vm(conn, path="DC0/vm/Templates/debian-12")
        spec = CloneSpec(template_moid=template.moid, name=name, folder_moid=folder.moid,
                         resource_pool_moid=cluster.resource_pool_moid, linked=False, power_on=True,
                         extra_config={OWNER_KEY: owner} if owner else {})
        return ops.clone_vm(conn, spec).moid


def names_in(vc, folder) -> set[str]:
    with connect(Endpoint.from_vcenter(vc)) as conn:
        return {v.name for v in ops.list_folder_vms(conn, folder.moid) if not v.is_template}


def purge(folder) -> Job:
    job = runner.enqueue("pools.purge", target=folder, folder_id=folder.pk)
    assert runner.run(job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    return Job.objects.get(pk=job.pk)


def test_an_admins_build_vm_in_a_pool_folder_survives_a_purge_of_unknown_vms(vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    folder.purge_unknown = True
    folder.save()
    cluster = Cluster.objects.get(vcenter=vc, name="DC0_C0")
    # The admin keeps a golden template in the pool folder, so derived build VMs land there too.
    with connect(Endpoint.from_vcenter(vc)) as conn:
        debian = ops.find_vm(conn, path="DC0/vm/Templates/debian-12")
        ops.copy_template_to_cluster(conn, template_moid=debian.moid, name="golden", folder_moid=folder.moid,
                                     resource_pool_moid=cluster.resource_pool_moid)
    assert sync_inventory(vc).ok
    golden = register_template(vcenter=vc, name="golden", inventory_path="DC0/vm/vmportal/golden",
                               prepare_now=True)
    build = start_derive(source=golden, cluster=cluster, name="golden-next")
    assert runner.run(Job.objects.get(kind="templates.build_vm").pk) == "succeeded"
    build.refresh_from_db()
    assert build.status == TemplateBuild.Status.READY and build.moid
    put_vm(vc, folder, "stranger")

    job = purge(folder)
    assert names_in(vc, folder) == {"golden-next"}, job.log  # the stranger goes, the admin's work stays
    assert "golden-next" not in job.log


def test_template_work_carrying_a_pool_vms_marker_or_still_cloning_is_never_purged(vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory())
    cluster = Cluster.objects.get(vcenter=vc, name="DC0_C0")
    gone = VM.objects.create(vcenter=vc, name="deb-0001", state=VMState.DESTROYED)
    marker = f"{instance.instance_id()}:{gone.pk}"  # what a capture of that VM was copied with
    parent = Template.objects.create(vcenter=vc, name="debian-12", status=TemplateStatus.READY)

    # A derive's build VM, cloned from a template captured from a pool VM since destroyed.
    build_moid = put_vm(vc, folder, "build-vm", owner=marker)
    TemplateBuild.objects.create(kind=TemplateBuild.Kind.DERIVE, vcenter=vc, template_name="next",
                                 source_template=parent, cluster=cluster, vm_name="build-vm", moid=build_moid,
                                 status=TemplateBuild.Status.READY)
    # A capture whose clone is still running: no moid recorded yet, the source VM's marker.
    put_vm(vc, folder, "captured", owner=marker)
    TemplateBuild.objects.create(kind=TemplateBuild.Kind.CAPTURE_VM, vcenter=vc, template_name="captured",
                                 cluster=cluster, vm_name="captured", status=TemplateBuild.Status.CAPTURING)
    # A template copy to another cluster, cloned but not yet marked as a template.
    copying = Template.objects.create(vcenter=vc, name="copying", status=TemplateStatus.READY)
    put_vm(vc, folder, "copying-DC0_C1")
    TemplateCopy.objects.create(template=copying, cluster=Cluster.objects.get(vcenter=vc, name="DC0_C1"),
                                status=TemplateStatus.PREPARING)
    folder.purge_unknown = True
    folder.save()
    # A discarded build's VM has no claim: a leaked clone of ours goes as usual.
    TemplateBuild.objects.create(kind=TemplateBuild.Kind.DERIVE, vcenter=vc, template_name="old",
                                 cluster=cluster, vm_name="old-build", status=TemplateBuild.Status.DISCARDED)
    put_vm(vc, folder, "old-build", owner=marker)

    job = purge(folder)
    assert names_in(vc, folder) == {"build-vm", "captured", "copying-DC0_C1"}, job.log
