"""Templates: register an existing vSphere template, deploy one from an OVF/OVA, derive one
from another through a build VM, capture a pool VM; and prepare each for linked clones."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction

from apps.audit import services as audit
from apps.core.errors import Conflict, VmPortalError
from apps.core.states import StaleState
from apps.inventory.models import Cluster, Datastore, Folder, InventoryVM, Network, VCenter
from apps.jobs import runner
from apps.jobs.models import Job
from apps.pools.downloads import PackageDownload, check_url, human_size
from apps.pools.models import VM, Template, TemplateBuild, TemplateCopy, TemplateStatus, VMState
from apps.vsphere import operations as ops
from apps.vsphere.errors import VSphereError
from apps.vsphere.session import Endpoint, connect
from apps.vsphere.types import CloneSpec


def _cluster_of(vcenter: VCenter, moid: str) -> Cluster | None:
    seen = InventoryVM.objects.filter(vcenter=vcenter, moid=moid).select_related("host__cluster").first()
    return seen.host.cluster if seen and seen.host else None


def register_template(*, vcenter: VCenter, name: str, inventory_path: str, os_name: str = "",
                      description: str = "", prepare_now: bool = False) -> Template:
    """Record a template that already exists in vSphere, then prepare it (job or inline).

    Re-registering the same name with the same path returns the existing row.
    """
    with connect(Endpoint.from_vcenter(vcenter)) as conn:
        info = ops.register_template(conn, inventory_path)
    cluster = _cluster_of(vcenter, info.moid)
    if cluster is None:
        raise VmPortalError(
            f"{inventory_path} is not in the synced inventory yet (or not on a clustered host); "
            "sync the inventory and try again."
        )
    with transaction.atomic():
        existing = Template.objects.filter(vcenter=vcenter, name=name).first()
        if existing is not None:
            if existing.inventory_path != inventory_path:
                raise Conflict(f"A template named {name} already exists for {existing.inventory_path}.")
            template = existing
        else:
            try:
                template = Template.objects.create(
                    vcenter=vcenter, name=name, os_name=os_name, description=description,
                    source=Template.Source.REGISTERED, inventory_path=inventory_path,
                    status=TemplateStatus.PREPARING,
                )
            except IntegrityError:
                raise Conflict(f"A template named {name} was registered at the same moment.") from None
            audit.record("template.register", target=template, after={"path": inventory_path, "os": os_name})
        copy, _ = TemplateCopy.objects.get_or_create(
            template=template, cluster=cluster, defaults={"moid": info.moid, "status": TemplateStatus.PREPARING}
        )
        # Registering a failed one again is how an admin retries its preparation.
        for obj in (template, copy):
            if obj.status == TemplateStatus.FAILED:
                obj.move_to(TemplateStatus.PREPARING, status_reason="")
        if not prepare_now and copy.status != TemplateStatus.READY:
            runner.enqueue("pools.prepare_template", target=template, copy_id=copy.pk)
    if prepare_now and copy.status != TemplateStatus.READY:
        prepare_copy(copy.pk)
        template.refresh_from_db()
    return template


def prepare_copy(copy_id: int) -> TemplateCopy:
    """Give a template copy its linked-clone base snapshot and mark it as a template."""
    copy = TemplateCopy.objects.select_related("template__vcenter", "cluster").get(pk=copy_id)
    template = copy.template
    if copy.status != TemplateStatus.PREPARING:
        return copy  # prepared (or failed) by another run of this job meanwhile
    try:
        with connect(Endpoint.from_vcenter(template.vcenter)) as conn:
            info = ops.prepare_template(conn, copy.moid)
    except VmPortalError as exc:
        _fail_template(template.pk, str(exc), copy_id=copy.pk)
        raise
    # Losing to a racing writer (StaleState, a 409 when inline) leaves nothing behind: the
    # template was the admin's in vSphere before, and preparing it again is harmless.
    with transaction.atomic():
        copy.move_to(TemplateStatus.READY, snapshot_moid=info.snapshot_moid or "", status_reason="", progress=100)
        if template.status != TemplateStatus.READY:
            template.move_to(TemplateStatus.READY, status_reason="")
        audit.record("template.ready", target=template, after={"cluster": str(copy.cluster)})
    return copy



# ---------------------------------------------------------------- deploy from OVF/OVA
#
# The services below write rows, audit and enqueue in one transaction and never call
# vSphere; the job handlers after them do the vSphere work on the `deploy` queue and
# record progress and outcome on the rows the pages poll.

log = logging.getLogger(__name__)

OVF_SUFFIXES = (".ova", ".ovf")
BUILD_BOOT_TIMEOUT = 300.0  # seconds a build VM's guest gets to report an IP address
DOWNLOAD_TIMEOUT = 60.0


@dataclass(frozen=True)
class DeployTarget:
    """Where an OVF/OVA lands: the cluster (its root resource pool), folder, datastore, network."""

    cluster: Cluster
    folder: Folder
    datastore: Datastore
    network: Network | None = None


def _new_template(*, vcenter: VCenter, name: str, status: str, **fields) -> Template:
    try:
        with transaction.atomic():
            return Template.objects.create(vcenter=vcenter, name=name, status=status, **fields)
    except IntegrityError:
        raise Conflict(f"A template named {name} already exists on {vcenter}.") from None


def deployable_url(url: str) -> str:
    """The URL, if it is one we can deploy from; else a ValueError that says why.

    Its host must resolve only to addresses the URL policy allows (UrlRefused otherwise);
    the job checks again on every connection, since DNS may answer differently by then.
    """
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("Only http:// and https:// URLs can be deployed.")
    if not parts.path.lower().endswith(OVF_SUFFIXES):
        raise ValueError("The URL must name an .ova or .ovf file.")
    check_url(url.strip())
    return url.strip()


@transaction.atomic
def start_ovf_deploy(*, name: str, target: DeployTarget, url: str = "", upload_path: str = "",
                     os_name: str = "", description: str = "") -> Template:
    """Record a template to deploy from ``url`` or an uploaded file, and enqueue the deploy.

    ``upload_path`` is a file under VMPORTAL_UPLOAD_DIR; the job deletes it when done.
    """
    if bool(url) == bool(upload_path):
        raise ValueError("Give a URL or an uploaded file, not both or neither.")
    if url:
        url = deployable_url(url)
    vcenter = target.cluster.vcenter
    template = _new_template(
        vcenter=vcenter, name=name, status=TemplateStatus.DEPLOYING, os_name=os_name, description=description,
        source=Template.Source.OVF, ovf_url=url, progress=0,
    )
    copy = TemplateCopy.objects.create(template=template, cluster=target.cluster, status=TemplateStatus.DEPLOYING)
    origin = url or f"uploaded file {Path(upload_path).name}"
    audit.record("template.deploy", target=template, message=f"Deploy {name} from {origin}",
                 after={"source": url or "upload", "cluster": str(target.cluster), "folder": target.folder.path,
                        "datastore": str(target.datastore),
                        "network": str(target.network) if target.network else None})
    runner.enqueue(
        "templates.deploy_ovf", target=template, template_id=template.pk, copy_id=copy.pk,
        url=url, upload_path=upload_path, folder_moid=target.folder.moid,
        resource_pool_moid=target.cluster.resource_pool_moid, datastore_moid=target.datastore.moid,
        network_moid=target.network.moid if target.network else "",
    )
    return template


def _upload_file(upload_path: str) -> Path:
    # The web host named the file under its own mount of the shared upload directory; this
    # worker's may be mounted elsewhere, so the file is found by its name (as sweep_uploads
    # does), or where the web host put it when the mounts agree. Names are random: no clash.
    here = Path(settings.VMPORTAL_UPLOAD_DIR) / Path(upload_path).name
    return here if here.is_file() or not Path(upload_path).is_file() else Path(upload_path)


@contextlib.contextmanager
def _ovf_source(url: str, upload_path: str, download: PackageDownload):
    """What deploy_ovf reads: the uploaded file or the OVA at ``url``, both through the
    download's byte count; or, for an .ovf, its URL (deploy_ovf fetches the disks next to it
    through ``download`` too)."""
    if upload_path:
        path = _upload_file(upload_path)
        if not path.is_file():
            raise VmPortalError(
                f"The uploaded file {path.name} is not in VMPORTAL_UPLOAD_DIR ({path.parent}) on this worker host: "
                "it was deleted, or the web server that took the upload keeps it on a disk of its own. With deploy "
                "workers on other hosts than the web servers, VMPORTAL_UPLOAD_DIR must be shared storage mounted "
                "on all of them. Upload the file again once it is.")
        with open(path, "rb") as f:
            yield io.BufferedReader(download.wrap(f, path.name))
        return
    if not urllib.parse.urlsplit(url).path.lower().endswith(".ova"):
        yield url
        return
    with io.BufferedReader(download.open(url, DOWNLOAD_TIMEOUT), buffer_size=1024 * 1024) as stream:
        yield stream


# States in which a template, copy or build is no longer some job's work in flight: failing
# what a job left behind never touches them (a racing job or reaper settled them first).
_SETTLED: dict[type, tuple[str, ...]] = {
    Template: (TemplateStatus.READY, TemplateStatus.FAILED),
    TemplateCopy: (TemplateStatus.READY, TemplateStatus.FAILED),
    TemplateBuild: (TemplateBuild.Status.READY, TemplateBuild.Status.CAPTURED, TemplateBuild.Status.FAILED,
                    TemplateBuild.Status.DISCARDED),
}


def _fail_unsettled(obj: Template | TemplateCopy | TemplateBuild, reason: str) -> bool:
    """Fail ``obj`` unless it has settled; True if this call failed it."""
    for _ in range(5):
        if obj.status in _SETTLED[type(obj)]:
            return False
        try:
            obj.move_to(TemplateStatus.FAILED, status_reason=reason)
            return True
        except StaleState as exc:
            if exc.current is None:
                return False  # deleted meanwhile (a discarded build's template)
            obj.status = exc.current  # moved meanwhile: look again at where it is now
    return False


def _fail_template(template_id: int | None, reason: str, *, copy_id: int | None = None,
                   build_id: int | None = None) -> bool:
    """Fail what a job left in flight (its build, copy and template), and audit it once.

    Called by the job on its own failure and by the reaper for a job whose worker died:
    whichever comes second finds them settled and changes nothing. A build that had
    settled (say, ready for the admin's work) keeps its template as it is.
    """
    with transaction.atomic():
        build = TemplateBuild.objects.select_for_update(no_key=True).filter(pk=build_id).first() if build_id else None
        if build is not None and not _fail_unsettled(build, reason):
            return False
        copy = TemplateCopy.objects.filter(pk=copy_id).first() if copy_id else None
        if copy is not None:
            _fail_unsettled(copy, reason)
        template = Template.objects.filter(pk=template_id).first() if template_id else None
        if template is None or not _fail_unsettled(template, reason):
            return False
        audit.record("template.failed", target=template, message=reason)
        return True


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, VmPortalError) else f"Unexpected error: {type(exc).__name__}: {exc}"


def _mark_ready(template: Template, copy: TemplateCopy, info, *, action: str = "template.ready") -> None:
    """Ready the template and its copy from the states this job left them in; StaleState
    (nothing written) if someone else moved either first."""
    with transaction.atomic():
        for obj in (copy, template):
            if obj.status == TemplateStatus.DEPLOYING:  # an upload whose progress never said 100
                obj.move_to(TemplateStatus.PREPARING, progress=100)
        copy.move_to(TemplateStatus.READY, moid=info.moid, snapshot_moid=info.snapshot_moid or "",
                     status_reason="", progress=100)
        template.move_to(TemplateStatus.READY, status_reason="", progress=100, inventory_path=info.path)
        audit.record(action, target=template,
                     after={"cluster": str(copy.cluster), "moid": info.moid, "path": info.path})


def _lost_to(job: runner.JobContext, lost: StaleState, conn_vcenter: VCenter, made_moid: str) -> None:
    """This job's work was done, but a racing writer (the reaper, believing its worker dead)
    failed its rows first. Their verdict stands; what the job made in vSphere has no row
    that will ever use it, and a failed template must leave nothing there, so it goes."""
    job.log(f"{lost} Stopping; removing what this job made ({made_moid}).")
    with connect(Endpoint.from_vcenter(conn_vcenter)) as conn:
        ops.destroy_vm(conn, made_moid, allow_template=True)


@runner.handler("templates.deploy_ovf", queue="deploy")
def deploy_ovf_job(job: runner.JobContext, *, template_id: int, copy_id: int, url: str, upload_path: str,
                   folder_moid: str, resource_pool_moid: str, datastore_moid: str, network_moid: str = "") -> None:
    """ImportVApp + NFC upload with progress on the rows, then the linked-clone snapshot."""
    template = Template.objects.select_related("vcenter").get(pk=template_id)
    copy = TemplateCopy.objects.select_related("cluster").get(pk=copy_id)
    if template.status != TemplateStatus.DEPLOYING:
        job.log(f"{template} is {template.status}; nothing to do")
        if upload_path:
            _upload_file(upload_path).unlink(missing_ok=True)
        return
    started = time.monotonic()
    logged = [-1]

    def progress(percent: int) -> None:
        if percent >= 100:
            # The upload is done; deploy_ovf goes on to snapshot and mark as template. A
            # racing writer that failed the rows meanwhile wins at _mark_ready, not here in
            # the middle of vSphere's upload.
            with contextlib.suppress(StaleState), transaction.atomic():
                for obj in (template, copy):
                    if obj.status == TemplateStatus.DEPLOYING:
                        obj.move_to(TemplateStatus.PREPARING, progress=100)
        else:
            Template.objects.filter(pk=template_id, status=TemplateStatus.DEPLOYING).update(progress=percent)
            TemplateCopy.objects.filter(pk=copy_id, status=TemplateStatus.DEPLOYING).update(progress=percent)
        if percent // 25 > logged[0]:
            logged[0] = percent // 25
            job.log(f"upload {percent}%")

    download = PackageDownload()
    try:
        with (_ovf_source(url, upload_path, download) as source,
              connect(Endpoint.from_vcenter(template.vcenter)) as conn):
            info = ops.deploy_ovf(
                conn, source=source, name=template.name, folder_moid=folder_moid,
                resource_pool_moid=resource_pool_moid, datastore_moid=datastore_moid,
                network_mapping={"*": network_moid} if network_moid else None, progress=progress,
                open_url=download,
            )
    except Exception as exc:
        _fail_template(template_id, _reason(exc), copy_id=copy_id)
        raise
    finally:
        if upload_path:
            _upload_file(upload_path).unlink(missing_ok=True)
    try:
        _mark_ready(template, copy, info)
    except StaleState as lost:
        _lost_to(job, lost, template.vcenter, info.moid)
        return
    job.log(f"{template.name} ready as {info.path} in {time.monotonic() - started:.1f}s")


# ---------------------------------------------------------------- derive and capture


def _copy_to_clone(source: Template, cluster: Cluster) -> TemplateCopy:
    copies = TemplateCopy.objects.filter(template=source, status=TemplateStatus.READY).exclude(moid="")
    copy = copies.filter(cluster=cluster).first() or copies.first()
    if source.status != TemplateStatus.READY or copy is None:
        raise Conflict(f"Template {source} is not ready; derive from a ready template.")
    return copy


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
    _copy_to_clone(source, cluster)
    clash = derive_name_clash(source, cluster, name)
    if clash:
        raise Conflict(clash)
    template = _new_template(
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


@runner.handler("templates.build_vm", queue="deploy")
def build_vm_job(job: runner.JobContext, *, build_id: int) -> None:
    """A full clone of the source template, powered on, for the admin to work on."""
    build = TemplateBuild.objects.select_related("vcenter", "cluster", "source_template").get(pk=build_id)
    if build.status != TemplateBuild.Status.CLONING:
        job.log(f"{build} is {build.status}; nothing to do")
        return
    try:
        copy = _copy_to_clone(build.source_template, build.cluster)
        with connect(Endpoint.from_vcenter(build.vcenter)) as conn:
            beside = ops.get_vm(conn, copy.moid)
            _refuse_taken_name(conn, beside, build.vm_name)
            folder = beside.folder_moid
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
    except Exception as exc:
        _fail_template(build.template_id, _reason(exc), build_id=build.pk)
        raise
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
        _mark_ready(build.template, copy, info, action="template.captured")


@runner.handler("templates.capture_build", queue="deploy")
def capture_build_job(job: runner.JobContext, *, build_id: int) -> None:
    build = TemplateBuild.objects.select_related("vcenter", "cluster", "template").get(pk=build_id)
    if build.status != TemplateBuild.Status.CAPTURING:
        job.log(f"{build} is {build.status}; nothing to do")
        return
    try:
        with connect(Endpoint.from_vcenter(build.vcenter)) as conn:
            ops.shut_down(conn, build.moid)
            info = ops.prepare_template(conn, build.moid)
    except Exception as exc:
        _fail_template(build.template_id, _reason(exc), build_id=build.pk)
        raise
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
    template = _new_template(
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


@runner.handler("templates.capture_vm", queue="deploy")
def capture_vm_job(job: runner.JobContext, *, build_id: int) -> None:
    """Full clone of the running VM next to its template, then snapshot and mark as template."""
    build = TemplateBuild.objects.select_related("vcenter", "cluster", "template", "source_vm").get(pk=build_id)
    if build.status != TemplateBuild.Status.CAPTURING:
        job.log(f"{build} is {build.status}; nothing to do")
        return
    try:
        vm = build.source_vm
        if vm is None or not vm.moid:
            raise Conflict("The VM to capture is gone.")
        with connect(Endpoint.from_vcenter(build.vcenter)) as conn:
            beside = ops.get_vm(conn, _capture_beside(vm))
            _refuse_taken_name(conn, beside, build.vm_name)
            folder = beside.folder_moid or ""
            made = ops.copy_template_to_cluster(
                conn, template_moid=vm.moid, name=build.vm_name, folder_moid=folder,
                resource_pool_moid=build.cluster.resource_pool_moid,
            )
    except Exception as exc:
        _fail_template(build.template_id, _reason(exc), build_id=build.pk)
        raise
    try:
        _captured(build, made.template)
    except StaleState as lost:
        _lost_to(job, lost, build.vcenter, made.template.moid)
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


# ---------------------------------------------------------------- copies in other clusters


@transaction.atomic
def start_copy_to_cluster(*, template: Template, cluster: Cluster) -> TemplateCopy:
    """Enqueue a prepared copy of a ready template in ``cluster`` (so pools there can use it).

    The unique (template, cluster) row de-duplicates concurrent requests: a second one
    finds the row and gets it back instead of starting another copy.
    """
    if cluster.vcenter_id != template.vcenter_id:
        raise Conflict(f"Cluster {cluster} is not on {template.vcenter}, where {template} lives.")
    source = _copy_to_clone(template, cluster)
    copy, created = TemplateCopy.objects.get_or_create(
        template=template, cluster=cluster, defaults={"status": TemplateStatus.PREPARING})
    if not created and copy.status != TemplateStatus.FAILED:
        return copy
    if not created:
        # Two admins retrying at once: one moves it, the other gets a 409 (StaleState).
        copy.move_to(TemplateStatus.PREPARING, status_reason="")
    audit.record("template.copy", target=template, message=f"Copy {template} to cluster {cluster}",
                 after={"cluster": str(cluster), "from": str(source.cluster)})
    runner.enqueue("templates.copy_to_cluster", target=template, copy_id=copy.pk)
    copy.refresh_from_db()
    return copy


@runner.handler("templates.copy_to_cluster", queue="deploy")
def copy_to_cluster_job(job: runner.JobContext, *, copy_id: int) -> None:
    copy = TemplateCopy.objects.select_related("template__vcenter", "cluster").get(pk=copy_id)
    template = copy.template
    if copy.status != TemplateStatus.PREPARING:
        job.log(f"{copy} is {copy.status}; nothing to do")
        return
    try:
        source = _copy_to_clone(template, copy.cluster)
        with connect(Endpoint.from_vcenter(template.vcenter)) as conn:
            folder = ops.get_vm(conn, source.moid).folder_moid or ""
            made = ops.copy_template_to_cluster(
                conn, template_moid=source.moid, name=f"{template.name}-{copy.cluster.name}"[:80],
                folder_moid=folder, resource_pool_moid=copy.cluster.resource_pool_moid,
            )
    except Exception as exc:
        reason = _reason(exc)
        with transaction.atomic():
            if _fail_unsettled(copy, reason):
                audit.record("template.copy_failed", target=template, message=f"{copy.cluster}: {reason}")
        raise
    info = made.template
    try:
        with transaction.atomic():
            copy.move_to(TemplateStatus.READY, moid=info.moid, snapshot_moid=info.snapshot_moid or "",
                         status_reason="", progress=100)
            audit.record("template.copied", target=template, after={"cluster": str(copy.cluster), "path": info.path})
    except StaleState as lost:
        _lost_to(job, lost, template.vcenter, info.moid)
        return
    job.log(f"{template} ready in {copy.cluster} as {info.path}")


@transaction.atomic
def forget_failed_template(*, template_id: int) -> str:
    """Remove a failed template's row (its name becomes free to deploy again).

    Only failed ones, used by no pool and parent of no other: a deploy or capture that
    failed has already removed what it made in vSphere, so nothing is left behind there.
    """
    template = Template.objects.select_for_update().filter(pk=template_id).first()
    if template is None:
        raise Conflict("That template is already gone.")
    if template.status != TemplateStatus.FAILED:
        raise Conflict(f"{template} is {template.get_status_display().lower()}; only a failed template is removed.")
    if template.pools.exists() or Template.objects.filter(parent=template).exists():
        raise Conflict(f"{template} is still used by a pool or is the parent of another template.")
    if template.builds.filter(moid__gt="").exclude(status__in=(TemplateBuild.Status.DISCARDED,)).exists():
        raise Conflict(f"{template} still has a build VM in vSphere; discard the build first.")
    name = template.name
    audit.record("template.forget", target=template, before={"name": name, "status": template.status,
                                                              "reason": template.status_reason})
    template.delete()
    return name


# ---------------------------------------------------------------- workers that died

TEMPLATE_JOB_KINDS = ("templates.deploy_ovf", "templates.build_vm", "templates.capture_build",
                      "templates.capture_vm", "templates.copy_to_cluster", "templates.discard_build",
                      "pools.prepare_template")


def job_lost(job: Job, reason: str) -> None:
    """The ``on_lost`` hook of every template job: fail the templates and builds it left in flight.

    The runner's reaper calls it (in its transaction) once the job's heartbeat stopped, so
    its worker was killed (SIGKILL, host lost) and nothing else will ever finish it. Without
    this its template would say "deploying" forever and keep its name reserved.
    """
    build_id, copy_id = job.args.get("build_id"), job.args.get("copy_id")
    template_id = job.args.get("template_id")
    if template_id is None and build_id:
        template_id = TemplateBuild.objects.filter(pk=build_id).values_list("template_id", flat=True).first()
    if template_id is None and copy_id:
        template_id = TemplateCopy.objects.filter(pk=copy_id).values_list("template_id", flat=True).first()
    _fail_template(template_id, reason, copy_id=copy_id, build_id=build_id)

runner.compensate(*TEMPLATE_JOB_KINDS, on_lost=job_lost)


# ---------------------------------------------------------------- uploads nobody will read

UPLOAD_NAME = re.compile(r"[0-9a-f]{32}-.+")  # what apps/adminui/uploads.py names a stored upload


def sweep_uploads(*, now: float | None = None) -> list[Path]:
    """Delete uploads older than VMPORTAL_UPLOAD_MAX_AGE that no queued or running deploy names.

    A deploy job deletes its file when it is done; the file stays when the request died
    between storing the upload and committing its job, or the job's worker died (see
    job_lost). Only files named the way the upload handler names them are touched;
    a file is matched to a job by its name, so web and worker hosts may mount the shared
    upload directory at different paths.
    """
    directory = Path(settings.VMPORTAL_UPLOAD_DIR)
    cutoff = (now if now is not None else time.time()) - settings.VMPORTAL_UPLOAD_MAX_AGE
    old: list[tuple[Path, os.stat_result]] = []
    try:
        for path in directory.iterdir():
            if not UPLOAD_NAME.fullmatch(path.name) or path.is_symlink():
                continue
            with contextlib.suppress(FileNotFoundError):  # its job just deleted it
                stat = path.stat()
                if path.is_file() and stat.st_mtime < cutoff:
                    old.append((path, stat))
    except FileNotFoundError:
        return []
    except OSError:
        log.exception("Cannot list the upload directory %s", directory)
        return []
    if not old:
        return []
    # Read after listing: a job created meanwhile names a fresh file, not one of these.
    live = Job.objects.filter(kind="templates.deploy_ovf", status__in=(Job.Status.QUEUED, Job.Status.RUNNING))
    needed = {Path(p).name for p in live.values_list("args__upload_path", flat=True) if p}
    deleted = []
    for path, stat in old:
        if path.name in needed:
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError:
            log.exception("Cannot delete stale upload %s", path)
            continue
        deleted.append(path)
        log.warning("Deleted stale upload %s (%s, %.1f hours old): no queued or running deploy needs it",
                    path, human_size(stat.st_size), (cutoff + settings.VMPORTAL_UPLOAD_MAX_AGE - stat.st_mtime) / 3600)
    return deleted
