"""Copies of a ready template in other clusters (and datastores), so pools there can clone it.

An admin may copy a template to a cluster; the pool manager does it by itself for a pool
whose cluster or datastore has no ready copy (``ensure_copy``), and removes those automatic
copies again once no pool or VM needs them (``remove_unused_copies``).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from apps.audit import services as audit
from apps.core.errors import Conflict, VmPortalError
from apps.core.states import StaleState
from apps.inventory.models import Cluster
from apps.inventory.selectors import host_candidates
from apps.jobs import runner
from apps.pools import nudge, placement
from apps.pools.instance import instance_id
from apps.pools.models import VM, Pool, Template, TemplateBuild, TemplateCopy, TemplateStatus, VMState
from apps.pools.templates import leftovers
from apps.pools.templates.recovery import copy_failed, lost_to, pools_of, pools_served_again
from apps.vsphere import operations as ops
from apps.vsphere.placement import least_loaded_host
from apps.vsphere.session import Endpoint, connect

log = logging.getLogger(__name__)

# A failed automatic copy a pool still needs is tried again after this long.
COPY_RETRY_AFTER = timedelta(minutes=2)
# An automatic copy unused for this long is removed (a pool flipping back and forth between
# templates or clusters does not remake its copies each time).
KEEP_UNUSED_COPY = timedelta(minutes=10)


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


def copy_marker(name: str) -> str:
    """The ownership marker of this installation's copy named ``name``: every worker racing
    for that copy writes and accepts the same one, another installation's differs."""
    return f"{instance_id()}:template-copy:{name}"


def ensure_copy(pool: Pool) -> TemplateCopy | None:
    """The ready copy the pool clones from; else None, once a copy is on its way.

    The first caller that finds none (a reconcile, a fill, an on-demand request) inserts the
    (template, cluster, datastore) row and enqueues its copy job; the unique constraint makes
    every concurrent caller, on any machine, wait for that one instead. Call inside a
    transaction: the job is enqueued when it commits.
    """
    ready = placement.copies_serving(pool.template_id, pool.cluster_id, pool.datastore_id).first()
    if ready is not None:
        return ready
    template = pool.template
    if template.status != TemplateStatus.READY or pool.template.vcenter_id != pool.cluster.vcenter_id:
        return None
    key = {"template": template, "cluster_id": pool.cluster_id, "datastore_id": pool.datastore_id}
    copy = TemplateCopy.objects.filter(**key).first()
    if copy is None:
        try:
            with transaction.atomic():
                copy = TemplateCopy.objects.create(**key, automatic=True, status=TemplateStatus.PREPARING)
        except IntegrityError:
            return None  # a concurrent caller inserted it first: its job makes the copy
    elif copy.status == TemplateStatus.FAILED and copy.status_changed_at < timezone.now() - COPY_RETRY_AFTER:
        try:
            copy.move_to(TemplateStatus.PREPARING, status_reason="")
        except StaleState:
            return None  # another caller retries it
    else:
        return None  # on its way, failed a moment ago, or being removed (remade afterwards)
    audit.record("template.copy", target=template, pool=pool,
                 message=f"Copy {template} to cluster {pool.cluster}: pool {pool} needs it",
                 after={"cluster": str(pool.cluster), "datastore": str(pool.datastore or ""), "automatic": True})
    runner.enqueue("templates.copy_to_cluster", target=template, copy_id=copy.pk)
    return None


def _copy_host(copy: TemplateCopy) -> str | None:
    """A host of the copy's cluster that mounts its datastore (the least loaded); None lets
    vSphere place a copy without one."""
    if copy.datastore is None:
        return None
    try:
        return least_loaded_host(host_candidates(copy.cluster_id), copy.datastore.moid).moid
    except VmPortalError:
        return None  # inventory not synced, or no usable host now: vSphere decides (or refuses)


@runner.handler("templates.copy_to_cluster", queue="deploy", on_failure=copy_failed)
def copy_to_cluster_job(job: runner.JobContext, *, copy_id: int) -> None:
    copy = TemplateCopy.objects.select_related("template__vcenter", "cluster", "datastore").get(pk=copy_id)
    template = copy.template
    if copy.status != TemplateStatus.PREPARING:
        job.log(f"{copy} is {copy.status}; nothing to do")
        return
    source = copy_to_clone(template, copy.cluster)
    name = copy.vm_name
    with connect(Endpoint.from_vcenter(template.vcenter)) as conn:
        folder = ops.get_vm(conn, source.moid).folder_moid or ""
        leftovers.announce(job, vcenter_id=template.vcenter_id, name=name, folder_moid=folder, copy=True)
        made = ops.copy_template_to_cluster(
            conn, template_moid=source.moid, name=name,
            folder_moid=folder, resource_pool_moid=copy.cluster.resource_pool_moid,
            datastore_moid=copy.datastore.moid if copy.datastore else None, host_moid=_copy_host(copy),
            owner=copy_marker(name),
        )
    info = made.template
    if not made.created:
        job.log(f"{name} was made by another worker; adopted {info.moid}")
    try:
        with transaction.atomic():
            copy.move_to(TemplateStatus.READY, moid=info.moid, snapshot_moid=info.snapshot_moid or "",
                         status_reason="", progress=100)
            audit.record("template.copied", target=template, after={
                "cluster": str(copy.cluster), "datastore": str(copy.datastore or ""), "path": info.path,
                "adopted": not made.created})
            pools_served_again(copy)
            for pool_id in pools_of(copy).values_list("pk", flat=True):
                nudge.nudge(pool_id)  # the pools waiting for it fill now, not at the next cycle
    except StaleState as lost:
        current = TemplateCopy.objects.filter(pk=copy.pk).values_list("status", "moid").first()
        if not made.created or current == (TemplateStatus.READY, info.moid):
            job.log(f"{lost} The copy is another worker's; nothing to remove.")
            return
        lost_to(job, lost, template.vcenter, info.moid)
        return
    job.log(f"{template} ready in {copy.cluster} as {info.path}")


def _needed(copy: TemplateCopy) -> bool:
    """Whether a pool or VM may still clone from, or run on, ``copy``: a pool of its template
    in its cluster, a VM of its template not destroyed there (a linked clone reads its base
    disk for its whole life), or a build VM being cloned from its template."""
    where = Q(cluster=copy.cluster_id) | Q(host__cluster=copy.cluster_id)
    return (pools_of(copy).exists()
            or VM.objects.filter(where, template=copy.template_id).exclude(state=VMState.DESTROYED).exists()
            or TemplateBuild.objects.filter(source_template=copy.template_id,
                                            status=TemplateBuild.Status.CLONING).exists())


def remove_unused_copies(*, keep: timedelta = KEEP_UNUSED_COPY) -> list[int]:
    """Remove the automatic copies no pool or VM has needed for ``keep`` (a pool moved to
    another template or cluster, its VMs drained): the ids of the copies it started removing.

    Only automatic copies: a template's own copy and those an admin made stay. A ready (or
    failed-to-remove) copy is moved to removing under its row lock, after the check, so a
    pool needing it again waits for its removal and then gets a new one."""
    since = timezone.now() - keep
    started = []
    candidates = TemplateCopy.objects.filter(automatic=True, status_changed_at__lt=since).filter(
        Q(status=TemplateStatus.READY) | Q(status=TemplateStatus.FAILED))
    for copy_id in candidates.values_list("pk", flat=True):
        with transaction.atomic():
            copy = (TemplateCopy.objects.select_for_update(no_key=True, of=("self",))
                    .select_related("template", "cluster").filter(pk=copy_id).first())
            if copy is None or copy.status not in (TemplateStatus.READY, TemplateStatus.FAILED) or _needed(copy):
                continue
            if not copy.moid:  # a copy that failed before it was made: nothing in vSphere
                audit.record("template.copy_forgotten", target=copy.template, message=f"{copy}: no pool needs it")
                copy.delete()
                continue
            copy.move_to(TemplateStatus.REMOVING, status_reason="No pool or VM needs it any more.")
            audit.record("template.copy_remove", target=copy.template, message=f"Remove {copy}: no pool or VM "
                         f"has needed it for {keep}", after={"cluster": str(copy.cluster), "moid": copy.moid})
            runner.enqueue("templates.remove_copy", target=copy.template, copy_id=copy.pk)
            started.append(copy.pk)
    return started


# A removal that failed, or whose worker died, leaves the copy failed: the next cycle tries again.
@runner.handler("templates.remove_copy", queue="deploy", on_failure=copy_failed, on_lost=copy_failed)
def remove_copy_job(job: runner.JobContext, *, copy_id: int) -> None:
    copy = TemplateCopy.objects.select_related("template__vcenter", "cluster", "datastore").filter(pk=copy_id).first()
    if copy is None or copy.status != TemplateStatus.REMOVING:
        job.log(f"copy #{copy_id} is {copy.status if copy else 'gone'}; nothing to do")
        return
    with connect(Endpoint.from_vcenter(copy.template.vcenter)) as conn:
        # Only a VM carrying our marker for this copy goes: never one someone renamed into place.
        gone = ops.destroy_vm(conn, copy.moid, expected_owner=copy_marker(copy.vm_name), allow_template=True)
    with transaction.atomic():
        audit.record("template.copy_removed", target=copy.template, message=f"{copy} destroyed",
                     after={"cluster": str(copy.cluster), "moid": copy.moid})
        copy.delete()
    job.log(f"{copy} {'destroyed' if gone else 'was already gone'}")
