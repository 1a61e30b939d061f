"""Copies of a ready template in other clusters, so pools there can clone it."""

from __future__ import annotations

from django.db import transaction

from apps.audit import services as audit
from apps.core.errors import Conflict
from apps.core.states import StaleState
from apps.inventory.models import Cluster
from apps.jobs import runner
from apps.pools.models import Template, TemplateCopy, TemplateStatus
from apps.pools.templates import leftovers
from apps.pools.templates.recovery import copy_failed, lost_to
from apps.vsphere import operations as ops
from apps.vsphere.session import Endpoint, connect


def copy_to_clone(source: Template, cluster: Cluster) -> TemplateCopy:
    copies = TemplateCopy.objects.filter(template=source, status=TemplateStatus.READY).exclude(moid="")
    copy = copies.filter(cluster=cluster).first() or copies.first()
    if source.status != TemplateStatus.READY or copy is None:
        raise Conflict(f"Template {source} is not ready; derive from a ready template.")
    return copy


@transaction.atomic
def start_copy_to_cluster(*, template: Template, cluster: Cluster) -> TemplateCopy:
    """Enqueue a prepared copy of a ready template in ``cluster`` (so pools there can use it).

    The unique (template, cluster) row de-duplicates concurrent requests: a second one
    finds the row and gets it back instead of starting another copy.
    """
    if cluster.vcenter_id != template.vcenter_id:
        raise Conflict(f"Cluster {cluster} is not on {template.vcenter}, where {template} lives.")
    source = copy_to_clone(template, cluster)
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


@runner.handler("templates.copy_to_cluster", queue="deploy", on_failure=copy_failed)
def copy_to_cluster_job(job: runner.JobContext, *, copy_id: int) -> None:
    copy = TemplateCopy.objects.select_related("template__vcenter", "cluster").get(pk=copy_id)
    template = copy.template
    if copy.status != TemplateStatus.PREPARING:
        job.log(f"{copy} is {copy.status}; nothing to do")
        return
    source = copy_to_clone(template, copy.cluster)
    with connect(Endpoint.from_vcenter(template.vcenter)) as conn:
        folder = ops.get_vm(conn, source.moid).folder_moid or ""
        name = f"{template.name}-{copy.cluster.name}"[:80]
        leftovers.announce(job, vcenter_id=template.vcenter_id, name=name, folder_moid=folder, copy=True)
        made = ops.copy_template_to_cluster(
            conn, template_moid=source.moid, name=name,
            folder_moid=folder, resource_pool_moid=copy.cluster.resource_pool_moid,
        )
    info = made.template
    try:
        with transaction.atomic():
            copy.move_to(TemplateStatus.READY, moid=info.moid, snapshot_moid=info.snapshot_moid or "",
                         status_reason="", progress=100)
            audit.record("template.copied", target=template, after={"cluster": str(copy.cluster), "path": info.path})
    except StaleState as lost:
        lost_to(job, lost, template.vcenter, info.moid)
        return
    job.log(f"{template} ready in {copy.cluster} as {info.path}")
