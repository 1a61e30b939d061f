"""Build VMs: derive a template from another through a VM the admin works on, then capture
it; capture a pool VM as a new template; discard a build."""

from __future__ import annotations

from django.db import transaction

from apps.audit import services as audit
from apps.core.errors import Conflict
from apps.core.states import StaleState
from apps.inventory.models import Cluster, InventoryVM, VCenter
from apps.jobs import runner
from apps.pools.models import VM, Template, TemplateBuild, TemplateCopy, TemplateStatus, VMState
from apps.pools.templates import leftovers
from apps.pools.templates.copies import copy_to_clone
from apps.pools.templates.recovery import job_failed, lost_to
from apps.pools.templates.register import mark_ready, new_template
from apps.vsphere import operations as ops
from apps.vsphere.errors import VSphereError
from apps.vsphere.session import Endpoint, connect
from apps.vsphere.types import CloneSpec

BUILD_BOOT_TIMEOUT = 300.0  # seconds a build VM's guest gets to report an IP address

def _taken_message(folder_path: str, name: str) -> str:
    return f"{folder_path} already holds a VM named {name}; choose another name (or remove that VM)."


def _clash_beside(vcenter: VCenter, moid: str, name: str) -> str | None:
    """Why ``name`` is taken in the folder of VM ``moid``, as the synced inventory has it."""
    beside = InventoryVM.objects.filter(vcenter=vcenter, moid=moid).select_related("folder").first()
    if beside is None or beside.folder is None:
        return None
    if InventoryVM.objects.filter(vcenter=vcenter, folder=beside.folder, name=name).exists():
        return _taken_message(beside.folder.path, name)
    return None


def derive_name_clash(source: Template, cluster: Cluster, name: str) -> str | None:
    """A message if the derive's build VM ``name`` is taken next to the copy it clones."""
    copies = TemplateCopy.objects.filter(template=source, status=TemplateStatus.READY).exclude(moid="")
    copy = copies.filter(cluster=cluster).first() or copies.first()
    return _clash_beside(source.vcenter, copy.moid, name) if copy else None


def _capture_beside(vm: VM) -> str:
    """The moid whose folder a capture of ``vm`` lands in: its template's, else its own."""
    source_copy = (TemplateCopy.objects.filter(template_id=vm.template_id).exclude(moid="").first()
                   if vm.template_id else None)
    return source_copy.moid if source_copy else vm.moid


def capture_name_clash(vm: VM, name: str) -> str | None:
    """A message if the capture's new template ``name`` is taken in the folder it lands in."""
    return _clash_beside(vm.vcenter, _capture_beside(vm), name) if vm.moid else None


def _refuse_taken_name(conn, beside, name: str) -> None:
    """Fail at once when vSphere has ``name`` in the folder of ``beside`` (a VMInfo): a clone
    would be refused, and copy_template_to_cluster would wait for that other VM to become
    a template (or, worse, take it for ours if it already is one)."""
    if beside.folder_moid and ops.name_taken(conn, beside.folder_moid, name):
        raise Conflict(_taken_message(beside.path.rsplit("/", 1)[0], name))


@transaction.atomic
def start_derive(*, source: Template, cluster: Cluster, name: str, os_name: str = "", user=None) -> TemplateBuild:
    """Clone ``source`` into a build VM the admin works on; ``capture`` makes it a template."""
    if cluster.vcenter_id != source.vcenter_id:
        raise Conflict(f"Cluster {cluster} is not on {source.vcenter}, where {source} lives.")
    copy_to_clone(source, cluster)
    clash = derive_name_clash(source, cluster, name)
    if clash:
        raise Conflict(clash)
    template = new_template(
        vcenter=source.vcenter, name=name, status=TemplateStatus.PENDING, os_name=os_name or source.os_name,
        source=Template.Source.DERIVED, parent=source,
        status_reason="Its build VM is being cloned; capture it when your changes are done.",
    )
    build = TemplateBuild.objects.create(
        kind=TemplateBuild.Kind.DERIVE, vcenter=source.vcenter, template=template, template_name=name,
        source_template=source, cluster=cluster, vm_name=name, created_by=user,
    )
    audit.record("template.derive", target=template, message=f"Derive {name} from {source}",
                 after={"parent": source.name, "cluster": str(cluster), "build_vm": build.vm_name})
    runner.enqueue("templates.build_vm", target=build, build_id=build.pk)
    return build


@runner.handler("templates.build_vm", queue="deploy", on_failure=job_failed)
def build_vm_job(job: runner.JobContext, *, build_id: int) -> None:
    """A full clone of the source template, powered on, for the admin to work on."""
    build = TemplateBuild.objects.select_related("vcenter", "cluster", "source_template").get(pk=build_id)
    if build.status != TemplateBuild.Status.CLONING:
        job.log(f"{build} is {build.status}; nothing to do")
        return
    copy = copy_to_clone(build.source_template, build.cluster)
    with connect(Endpoint.from_vcenter(build.vcenter)) as conn:
        beside = ops.get_vm(conn, copy.moid)
        _refuse_taken_name(conn, beside, build.vm_name)
        folder = beside.folder_moid
        leftovers.announce(job, vcenter_id=build.vcenter_id, name=build.vm_name, folder_moid=folder or "")
        result = ops.clone_vm(conn, CloneSpec(
            template_moid=copy.moid, name=build.vm_name, folder_moid=folder or "",
            resource_pool_moid=build.cluster.resource_pool_moid, linked=False, power_on=True,
            annotation=f"vmportal build VM for template {build.template_name}",
        ))
        TemplateBuild.objects.filter(pk=build.pk).update(moid=result.moid)
        job.log(f"cloned {result.path}; waiting for its guest")
        try:
            guest = ops.wait_until_usable(conn, result.moid, timeout=BUILD_BOOT_TIMEOUT)
            ip, hostname, note = guest.ip or "", guest.hostname or "", ""
        except VSphereError as exc:
            ip, hostname = "", ""
            note = f"The guest reported no IP address yet ({exc}); use the vSphere console."
    try:
        with transaction.atomic():
            build.move_to(TemplateBuild.Status.READY, ip_address=ip, hostname=hostname, status_reason=note)
            Template.objects.filter(pk=build.template_id, status=TemplateStatus.PENDING).update(
                status_reason=f"Build VM {build.vm_name} is on{f' at {ip}' if ip else ''}; "
                              "capture it when your changes are done.")
            audit.record("template.build_ready", target=build, message=f"{build.vm_name} {ip or 'has no IP yet'}")
    except StaleState as lost:
        # Failed by the reaper meanwhile: the build VM stays (its moid is recorded), so the
        # admin still discards it from the failed build as usual.
        job.log(f"{lost} Stopping.")
        return
    job.log(f"{build.vm_name} is up{f' at {ip}' if ip else ''}")


@transaction.atomic
def request_capture(*, build_id: int) -> TemplateBuild:
    """Turn a derive's build VM into the new template (shut down, snapshot, mark)."""
    build = TemplateBuild.objects.select_for_update(no_key=True).get(pk=build_id)
    if build.kind != TemplateBuild.Kind.DERIVE:
        raise Conflict("Only a derive's build VM can be captured again.")
    if build.status not in (TemplateBuild.Status.READY, TemplateBuild.Status.FAILED) or not build.moid:
        raise Conflict(f"The build VM is {build.get_status_display().lower()}; it can be captured once it is ready.")
    build.move_to(TemplateBuild.Status.CAPTURING, status_reason="")
    build.template.move_to(TemplateStatus.PREPARING, status_reason=f"Capturing build VM {build.vm_name}.")
    audit.record("template.capture", target=build.template, message=f"Capture {build.vm_name} as {build.template_name}")
    runner.enqueue("templates.capture_build", target=build, build_id=build.pk)
    build.refresh_from_db()
    return build


def _captured(build: TemplateBuild, info) -> None:
    """The build, its template and the template's copy in the build's cluster, all at once;
    StaleState (nothing written) if a racing writer moved any of them first."""
    with transaction.atomic():
        copy, _ = TemplateCopy.objects.get_or_create(template_id=build.template_id, cluster=build.cluster,
                                                     defaults={"status": TemplateStatus.PREPARING})
        build.move_to(TemplateBuild.Status.CAPTURED, moid=info.moid, status_reason="")
        mark_ready(build.template, copy, info, action="template.captured")


@runner.handler("templates.capture_build", queue="deploy", on_failure=job_failed)
def capture_build_job(job: runner.JobContext, *, build_id: int) -> None:
    build = TemplateBuild.objects.select_related("vcenter", "cluster", "template").get(pk=build_id)
    if build.status != TemplateBuild.Status.CAPTURING:
        job.log(f"{build} is {build.status}; nothing to do")
        return
    with connect(Endpoint.from_vcenter(build.vcenter)) as conn:
        ops.shut_down(conn, build.moid)
        info = ops.prepare_template(conn, build.moid)
    try:
        _captured(build, info)
    except StaleState as lost:
        # The build VM is now a vSphere template, but it is the admin's work: it stays,
        # recorded on the failed build, to be captured again or discarded.
        job.log(f"{lost} Stopping.")
        return
    job.log(f"{build.vm_name} captured as template {info.path}")


@transaction.atomic
def start_vm_capture(*, vm: VM, name: str, os_name: str = "", user=None) -> TemplateBuild:
    """Copy a pool VM (leased or ready) into a new template; its lease carries on untouched."""
    vm = (VM.objects.select_for_update(of=("self",), no_key=True).select_related("template", "pool", "vcenter")
          .get(pk=vm.pk))
    if vm.state not in (VMState.LEASED, VMState.READY) or not vm.moid:
        raise Conflict(f"{vm} is {vm.get_state_display().lower()}; only a ready or leased VM can be captured.")
    cluster = vm.cluster or (vm.host.cluster if vm.host_id and vm.host.cluster_id else None) or (
        vm.pool.cluster if vm.pool_id else None)
    if cluster is None:
        raise Conflict(f"Cannot tell which cluster {vm} is in; sync the inventory and try again.")
    clash = capture_name_clash(vm, name)
    if clash:
        raise Conflict(clash)
    template = new_template(
        vcenter=vm.vcenter, name=name, status=TemplateStatus.PREPARING,
        os_name=os_name or (vm.template.os_name if vm.template else ""),
        source=Template.Source.DERIVED, parent=vm.template, status_reason=f"Copying VM {vm.name}.",
    )
    build = TemplateBuild.objects.create(
        kind=TemplateBuild.Kind.CAPTURE_VM, vcenter=vm.vcenter, template=template, template_name=name,
        source_template=vm.template, source_vm=vm, cluster=cluster, vm_name=name,
        status=TemplateBuild.Status.CAPTURING, created_by=user,
    )
    audit.record("vm.capture", target=vm, pool=vm.pool_id, message=f"Capture {vm.name} as template {name}",
                 after={"template": name, "cluster": str(cluster)})
    runner.enqueue("templates.capture_vm", target=build, build_id=build.pk)
    return build


@runner.handler("templates.capture_vm", queue="deploy", on_failure=job_failed)
def capture_vm_job(job: runner.JobContext, *, build_id: int) -> None:
    """Full clone of the running VM next to its template, then snapshot and mark as template."""
    build = TemplateBuild.objects.select_related("vcenter", "cluster", "template", "source_vm").get(pk=build_id)
    if build.status != TemplateBuild.Status.CAPTURING:
        job.log(f"{build} is {build.status}; nothing to do")
        return
    vm = build.source_vm
    if vm is None or not vm.moid:
        raise Conflict("The VM to capture is gone.")
    with connect(Endpoint.from_vcenter(build.vcenter)) as conn:
        beside = ops.get_vm(conn, _capture_beside(vm))
        _refuse_taken_name(conn, beside, build.vm_name)
        folder = beside.folder_moid or ""
        leftovers.announce(job, vcenter_id=build.vcenter_id, name=build.vm_name, folder_moid=folder)
        made = ops.copy_template_to_cluster(
            conn, template_moid=vm.moid, name=build.vm_name, folder_moid=folder,
            resource_pool_moid=build.cluster.resource_pool_moid,
        )
    try:
        _captured(build, made.template)
    except StaleState as lost:
        lost_to(job, lost, build.vcenter, made.template.moid)
        return
    job.log(f"{vm.name} captured as template {made.template.path}")


@transaction.atomic
def discard_build(*, build_id: int) -> TemplateBuild:
    """Destroy a build VM that will not become a template, and free the template's name."""
    build = TemplateBuild.objects.select_for_update(no_key=True).get(pk=build_id)
    if build.status not in (TemplateBuild.Status.READY, TemplateBuild.Status.FAILED):
        raise Conflict(f"The build is {build.get_status_display().lower()}; only a ready or failed one is discarded.")
    build.move_to(TemplateBuild.Status.DISCARDING)
    audit.record("template.build_discard", target=build, message=f"Discard {build.vm_name}")
    runner.enqueue("templates.discard_build", target=build, build_id=build.pk)
    build.refresh_from_db()
    return build


@runner.handler("templates.discard_build", queue="deploy")
def discard_build_job(job: runner.JobContext, *, build_id: int) -> None:
    build = TemplateBuild.objects.select_related("vcenter", "template").get(pk=build_id)
    if build.status != TemplateBuild.Status.DISCARDING:
        return
    if build.moid and build.kind == TemplateBuild.Kind.DERIVE:
        with connect(Endpoint.from_vcenter(build.vcenter)) as conn:
            ops.destroy_vm(conn, build.moid, allow_template=False)
    with transaction.atomic():
        build.move_to(TemplateBuild.Status.DISCARDED)
        template = build.template
        if template is not None and template.status != TemplateStatus.READY and not template.pools.exists():
            TemplateBuild.objects.filter(template=template).update(template=None)
            template.delete()
        audit.record("template.build_discarded", target=build, message=f"{build.vm_name} destroyed")
    job.log(f"{build.vm_name} destroyed")
