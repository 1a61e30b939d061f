"""Deploy a template from an OVF/OVA, by URL or upload.

The services write rows, audit and enqueue in one transaction and never call vSphere;
the job does the vSphere work on the `deploy` queue and records progress and outcome on
the rows the pages poll."""

from __future__ import annotations

import contextlib
import io
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction

from apps.audit import services as audit
from apps.core.errors import VmPortalError
from apps.core.states import StaleState
from apps.inventory.models import Cluster, Datastore, Folder, Network
from apps.jobs import runner
from apps.pools.downloads import PackageDownload, check_url
from apps.pools.models import Template, TemplateCopy, TemplateStatus
from apps.pools.templates import leftovers
from apps.pools.templates.recovery import job_failed, lost_to
from apps.pools.templates.register import mark_ready, new_template
from apps.vsphere import operations as ops
from apps.vsphere.session import Endpoint, connect

OVF_SUFFIXES = (".ova", ".ovf")
DOWNLOAD_TIMEOUT = 60.0

@dataclass(frozen=True)
class DeployTarget:
    """Where an OVF/OVA lands: the cluster (its root resource pool), folder, datastore, network."""

    cluster: Cluster
    folder: Folder
    datastore: Datastore
    network: Network | None = None


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
    template = new_template(
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


@runner.handler("templates.deploy_ovf", queue="deploy", on_failure=job_failed)
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
            # racing writer that failed the rows meanwhile wins at mark_ready, not here in
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
            if not ops.name_taken(conn, folder_moid, template.name):  # taken: deploy_ovf refuses, makes nothing
                leftovers.announce(job, vcenter_id=template.vcenter_id, name=template.name, folder_moid=folder_moid)
            info = ops.deploy_ovf(
                conn, source=source, name=template.name, folder_moid=folder_moid,
                resource_pool_moid=resource_pool_moid, datastore_moid=datastore_moid,
                network_mapping={"*": network_moid} if network_moid else None, progress=progress,
                open_url=download,
            )
    finally:
        if upload_path:
            _upload_file(upload_path).unlink(missing_ok=True)
    try:
        mark_ready(template, copy, info)
    except StaleState as lost:
        lost_to(job, lost, template.vcenter, info.moid)
        return
    job.log(f"{template.name} ready as {info.path} in {time.monotonic() - started:.1f}s")
