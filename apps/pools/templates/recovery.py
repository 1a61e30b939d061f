"""What template work leaves behind when it fails: its rows failed once (by the job's
``on_failure`` hook or, for a worker that died, its ``on_lost`` hook), what it made in
vSphere removed when a racing writer failed its rows first, failed templates forgotten,
and uploads nobody will read swept."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet

from apps.audit import services as audit
from apps.core.errors import Conflict
from apps.core.states import StaleState
from apps.inventory.models import VCenter
from apps.jobs import runner
from apps.jobs.models import Job
from apps.pools import placement
from apps.pools.downloads import human_size
from apps.pools.models import Pool, Template, TemplateBuild, TemplateCopy, TemplateStatus
from apps.pools.templates import leftovers
from apps.vsphere import operations as ops
from apps.vsphere.session import Endpoint, connect

log = logging.getLogger(__name__)

# States in which a template, copy or build is no longer some job's work in flight: failing
# what a job left behind never touches them (a racing job or reaper settled them first).
_SETTLED: dict[type, tuple[str, ...]] = {
    Template: (TemplateStatus.READY, TemplateStatus.FAILED),
    TemplateCopy: (TemplateStatus.READY, TemplateStatus.FAILED),
    TemplateBuild: (TemplateBuild.Status.READY, TemplateBuild.Status.CAPTURED, TemplateBuild.Status.FAILED,
                    TemplateBuild.Status.DISCARDED),
}


def fail_unsettled(obj: Template | TemplateCopy | TemplateBuild, reason: str) -> bool:
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


def fail_template(template_id: int | None, reason: str, *, copy_id: int | None = None,
                   build_id: int | None = None) -> bool:
    """Fail what a job left in flight (its build, copy and template), and audit it once.

    Called by the job on its own failure and by the reaper for a job whose worker died:
    whichever comes second finds them settled and changes nothing. A build that had
    settled (say, ready for the admin's work) keeps its template as it is.
    """
    with transaction.atomic():
        build = TemplateBuild.objects.select_for_update(no_key=True).filter(pk=build_id).first() if build_id else None
        if build is not None and not fail_unsettled(build, reason):
            return False
        copy = TemplateCopy.objects.filter(pk=copy_id).first() if copy_id else None
        if copy is not None and fail_unsettled(copy, reason):
            degrade_pools_waiting(copy, reason)
        template = Template.objects.filter(pk=template_id).first() if template_id else None
        if template is None or not fail_unsettled(template, reason):
            return False
        audit.record("template.failed", target=template, message=reason)
        return True


def lost_to(job: runner.JobContext, lost: StaleState, conn_vcenter: VCenter, made_moid: str) -> None:
    """This job's work was done, but a racing writer (the reaper, believing its worker dead)
    failed its rows first. Their verdict stands; what the job made in vSphere has no row
    that will ever use it, and a failed template must leave nothing there, so it goes."""
    job.log(f"{lost} Stopping; removing what this job made ({made_moid}).")
    with connect(Endpoint.from_vcenter(conn_vcenter)) as conn:
        ops.destroy_vm(conn, made_moid, allow_template=True)


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


TEMPLATE_JOB_KINDS = ("templates.deploy_ovf", "templates.build_vm", "templates.capture_build",
                      "templates.capture_vm", "templates.copy_to_cluster", "templates.discard_build",
                      "pools.prepare_template")


def job_lost(job: Job, reason: str) -> None:
    """The ``on_lost`` hook of every template job: fail the templates and builds it left in
    flight, and have what it was making in vSphere removed (see ``leftovers``).

    The runner's reaper calls it (in its transaction) once the job's heartbeat stopped, so
    its worker was killed (SIGKILL, host lost) and nothing else will ever finish it. Without
    this its template would say "deploying" forever and keep its name reserved.
    """
    _fail_rows(job, reason)
    leftovers.remove_later(job)


def _fail_rows(job: Job, reason: str) -> None:
    build_id, copy_id = job.args.get("build_id"), job.args.get("copy_id")
    template_id = job.args.get("template_id")
    if template_id is None and build_id:
        template_id = TemplateBuild.objects.filter(pk=build_id).values_list("template_id", flat=True).first()
    if template_id is None and copy_id:
        template_id = TemplateCopy.objects.filter(pk=copy_id).values_list("template_id", flat=True).first()
    fail_template(template_id, reason, copy_id=copy_id, build_id=build_id)




def job_failed(job: Job, reason: str) -> None:
    """The ``on_failure`` hook of the template jobs that make something (deploy, build, capture):
    what the job left in flight fails, as when its worker dies. A job that raised has removed
    what it made itself (or, for a name taken by another VM, made nothing): no leftover search."""
    _fail_rows(job, reason)


def copy_failed(job: Job, reason: str) -> None:
    """``templates.copy_to_cluster``'s ``on_failure`` hook: the copy fails; its template, ready
    in its other clusters, stays as it is."""
    copy = TemplateCopy.objects.select_related("template", "cluster").filter(pk=job.args["copy_id"]).first()
    if copy is not None and fail_unsettled(copy, reason):
        audit.record("template.copy_failed", target=copy.template, message=f"{copy.cluster}: {reason}")
        degrade_pools_waiting(copy, reason)


# How the health reason of a pool waiting for a failed copy begins (see pools_served_again).
WAITING_FOR_COPY = "No ready copy of its template in cluster"


def pools_of(copy: TemplateCopy) -> QuerySet[Pool]:
    """The pools that clone from ``copy``: of its template, in its cluster."""
    return Pool.objects.filter(template=copy.template_id, cluster=copy.cluster_id)


def _waiting(copy: TemplateCopy) -> list[Pool]:
    """Pools of ``copy`` that no ready copy serves."""
    return [pool for pool in pools_of(copy).order_by("pk")
            if not placement.copies_serving(pool.template_id, pool.cluster_id, pool.datastore_id).exists()]


def degrade_pools_waiting(copy: TemplateCopy, reason: str) -> None:
    """The pools that can clone only once ``copy`` is made stay empty meanwhile: degraded,
    with why, so the health page and health.json list them rather than calling them OK.

    Never failing, and no backoff: the pool manager tries the copy again by itself
    (COPY_RETRY_AFTER), and the pool returns to OK once the copy is ready
    (pools_served_again) or its first clone succeeds. A pool failing for a reason of its
    own keeps that reason."""
    for pool in _waiting(copy):
        if pool.health == Pool.Health.FAILING:
            continue
        with contextlib.suppress(StaleState):  # its health moved meanwhile: that verdict stands
            pool.move_health(Pool.Health.DEGRADED, health_reason=(
                f"{WAITING_FOR_COPY} {copy.cluster}: making it failed ({reason}). It is tried again "
                "every few minutes; remove or rename what is in its way, or pick another cluster."))


def pools_served_again(copy: TemplateCopy) -> None:
    """``copy`` is ready: the pools degraded only for want of it are OK again."""
    for pool in pools_of(copy).filter(health=Pool.Health.DEGRADED, health_reason__startswith=WAITING_FOR_COPY):
        with contextlib.suppress(StaleState):
            pool.move_health(Pool.Health.OK, health_reason="")


runner.compensate(*TEMPLATE_JOB_KINDS, on_lost=job_lost)


UPLOAD_NAME = re.compile(r"[0-9a-f]{32}-.+")  # what apps/pools/uploads.py names a stored upload


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
