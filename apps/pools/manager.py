"""The pool manager: keep every pool at its size, safely, through crashes and outages.

Reconcile is pure database work and runs often (the poolmanager loop, and right after
anything that changes a pool). It decides; jobs act on vSphere:

* ``pools.fill``   one per pool at a time; a few threads each claim a VM slot, clone,
                   power on and wait for the guest, until the pool is full. Slots are
                   claimed under the vCenter row lock, so the per-vCenter and global task
                   limits hold however many workers run, on however many machines.
* ``pools.destroy`` destroys one VM (idempotent: a VM already gone counts as destroyed).
* ``pools.purge``  finds VMs in our folders that no pool knows, and leaked clones.

A VM row exists before its clone starts, and every clone carries our ownership marker, so
a worker killed mid-clone leaves a row that the next reconcile cleans up, never an
unknown VM.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from apps.audit import services as audit
from apps.core.errors import DATABASE_OUTAGES
from apps.core.states import StaleState, TransitionError
from apps.inventory.models import Folder, Host, VCenter
from apps.jobs import runner
from apps.jobs.models import Job
from apps.pools import autosize, guest_setup, templates
from apps.pools.instance import instance_id
from apps.pools.models import (
    VM,
    Pool,
    Template,
    TemplateBuild,
    TemplateCopy,
    TemplateStatus,
    VMState,
    copy_vm_name,
)
from apps.vsphere import errors as vsphere_errors

log = logging.getLogger(__name__)

_GLOBAL_LOCK_ID = 0x766D706F  # "vmpo": serialises slot accounting across vCenters


@dataclass
class ReconcileReport:
    pool: str
    fill_started: bool = False
    destroy: list[int] = field(default_factory=list)
    timed_out: list[int] = field(default_factory=list)
    orphaned: list[int] = field(default_factory=list)
    expired_leases: list[int] = field(default_factory=list)
    deficit: int = 0

    def __str__(self) -> str:
        return (
            f"{self.pool}: deficit {self.deficit}, fill {'started' if self.fill_started else '-'}, "
            f"destroy {len(self.destroy)}, boot timeouts {len(self.timed_out)}, orphaned clones {len(self.orphaned)}, "
            f"expired leases {len(self.expired_leases)}"
        )


# Work of the layers above that reconcile runs without importing them (leases registers lease
# expiry and on-demand recovery from its AppConfig.ready): a pool step runs first in each
# reconcile_pool, inside its transaction with the pool row locked; a cycle step once per
# reconcile_all, after the pools.
PoolStep = Callable[[Pool, ReconcileReport], None]
_pool_steps: list[PoolStep] = []
_cycle_steps: list[Callable[[], object]] = []


def on_reconcile(step: PoolStep) -> None:
    if step not in _pool_steps:
        _pool_steps.append(step)


def on_cycle(step: Callable[[], object]) -> None:
    if step not in _cycle_steps:
        _cycle_steps.append(step)


def global_clone_limit() -> int:
    return getattr(settings, "VMPORTAL_CLONE_LIMIT", 20)


def _lock_global() -> None:
    # SQLite serialises writers already (IMMEDIATE transactions); PostgreSQL needs a lock
    # that every process honours, so one transaction-scoped advisory lock guards the count.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_GLOBAL_LOCK_ID])


def new_vm_name(pool: Pool) -> str:
    return f"{pool.name[:40]}-{uuid.uuid4().hex[:8]}"


# A destroy not done after this long (job failed, Redis lost it, vCenter was down) is retried.
DESTROY_RETRY_AFTER = timedelta(minutes=2)
# A destroy whose job failed for a transient vSphere error (vCenter unreachable, timed out,
# session lost) is retried this long after that job ended: once vCenter answers again the
# VMs an outage left destroying go within a cycle or two, and while it is still away each
# VM gets one quick, cheap attempt per interval, not a storm.
DESTROY_FAILED_BACKOFF = timedelta(seconds=10)
# How often each pool folder is checked for leaked or unknown VMs.
PURGE_EVERY = timedelta(minutes=5)


def _fill_job_alive(pool: Pool) -> bool:
    # A dead worker's job does not stay unfinished: the runner's reaper fails it.
    return runner.unfinished("pools.fill", pool).exists()


# The class names a job failed by a database outage records (see _transient).
DATABASE_OUTAGE_NAMES = frozenset(cls.__name__ for cls in DATABASE_OUTAGES)


def _transient(error: str) -> bool:
    """Whether a failed job's error (the runner records ``"<class>: <message>"``) is worth
    trying again soon: a vSphere error its class marks as not permanent, or a database outage."""
    name = error.partition(":")[0].strip()
    if name in DATABASE_OUTAGE_NAMES:
        return True
    cls = getattr(vsphere_errors, name, None)
    return isinstance(cls, type) and issubclass(cls, vsphere_errors.VSphereError) and not cls.permanent


def _destroy_due(vm: VM, now: datetime) -> bool:
    """Whether a destroying VM's destroy is to be enqueued again: none is queued or running,
    and its last one failed for a transient error a short backoff ago, or nothing has
    moved it for DESTROY_RETRY_AFTER (a permanent fault, or a job Redis lost)."""
    if runner.unfinished("pools.destroy", vm).exists():
        return False
    if vm.state_changed_at < now - DESTROY_RETRY_AFTER:
        return True
    last = (Job.objects.filter(kind="pools.destroy", object_type=vm._meta.label_lower, object_id=str(vm.pk))
            .order_by("-pk").values("status", "error", "finished_at").first())
    return (last is not None and last["status"] == Job.Status.FAILED and last["finished_at"] is not None
            and last["finished_at"] <= now - DESTROY_FAILED_BACKOFF and _transient(last["error"]))


def fail_orphaned_clones(vms: QuerySet[VM], reason: str) -> list[int]:
    """Fail the "cloning" VMs of ``vms`` whose job is gone, freeing their clone slots.

    Reconcile then destroys them: a clone vCenter finished anyway is found by its name and
    ownership marker, and the address is released when the row becomes destroyed.
    """
    failed = []
    for vm in vms.filter(state=VMState.CLONING):
        try:
            vm.move_to(VMState.FAILED, state_reason=reason)
        except TransitionError:
            continue  # its job moved it after all
        failed.append(vm.pk)
    return failed


def _destroy(vm: VM, reason: str, report: ReconcileReport | None = None) -> None:
    vm.move_to(VMState.DESTROYING, state_reason=reason)
    audit.record("vm.destroy", target=vm, pool=vm.pool_id, message=reason)
    runner.enqueue("pools.destroy", target=vm, vm_id=vm.pk)
    if report is not None:
        report.destroy.append(vm.pk)


def discard_vm(vm: VM, reason: str) -> None:
    """Destroy a VM the pool no longer hands out: its lease ended, or its on-demand request
    was withdrawn. Call inside a transaction."""
    _destroy(vm, reason)


# What a pool's size counts (its own VMs, not on-demand ones): reconcile and claim_slots.
# Unlike models.LIVE_STATES, not leased VMs.
LIVE = (VMState.READY, VMState.BOOTING, VMState.CLONING)
DRAINABLE = (VMState.READY, VMState.BOOTING)


# _census's counts, in its columns' order.
CENSUS = ("live", "booting", "cloning", "timed_out", "failed", "destroying", "old_template", "elsewhere", "stale")


@cache
def _census_sql() -> str:
    states = (*LIVE, VMState.FAILED, VMState.DESTROYING)

    def among(values: tuple[str, ...]) -> str:
        return f"v.state IN ({', '.join(repr(str(v)) for v in values)})"  # the model's own choices

    own = "NOT v.on_demand"
    # Only table and column names from the models and state choices are formatted in;
    # the pool and the times are parameters.
    return f"""SELECT
        COUNT(CASE WHEN {own} AND {among(LIVE)} THEN 1 END),
        COUNT(CASE WHEN {own} AND v.state = '{VMState.BOOTING}' THEN 1 END),
        COUNT(CASE WHEN {own} AND v.state = '{VMState.CLONING}' THEN 1 END),
        COUNT(CASE WHEN v.state = '{VMState.BOOTING}' AND v.state_changed_at < %s THEN 1 END),
        COUNT(CASE WHEN v.state = '{VMState.FAILED}' THEN 1 END),
        COUNT(CASE WHEN v.state = '{VMState.DESTROYING}' THEN 1 END),
        COUNT(CASE WHEN {own} AND {among(DRAINABLE)} AND (v.template_id IS NULL OR v.template_id <> %s) THEN 1 END),
        COUNT(CASE WHEN {own} AND {among(DRAINABLE)} AND COALESCE(h.cluster_id, v.cluster_id) <> %s THEN 1 END),
        COUNT(CASE WHEN {own} AND v.state = '{VMState.READY}' AND v.ready_at < %s THEN 1 END)
        FROM {VM._meta.db_table} v LEFT JOIN {Host._meta.db_table} h ON h.id = v.host_id
        WHERE v.pool_id = %s AND {among(states)}"""  # noqa: S608


def _census(pool: Pool, now: datetime) -> dict[str, int]:
    """The pool's VMs counted by what reconcile would do with them, in one scan of the
    (pool, state) index: ``live`` (its own VMs ready, booting or cloning: what its size
    counts), ``booting``, ``cloning``, and how many are due to time out (``timed_out``), be destroyed
    (``failed``, ``destroying``) or drained (``old_template``, ``elsewhere``: placed in
    another cluster than the pool's, ``stale``: ready beyond its TTL). Reconcile runs a
    step's locking query only when its count is not zero. Without locks: holding every
    ready VM until commit would leave concurrent checkouts (SKIP LOCKED) none to take, and
    a fill recounts under its own lock anyway.

    Each checkout burst nudges a reconcile: loading a big pool's ready VMs to count them,
    and scanning them twice more to find none to drain, was most of the pool manager's CPU
    per checkout. As SQL: the ORM's form of eight filtered counts cost more to compile than
    the scan."""
    adapt = connection.ops.adapt_datetimefield_value
    stale_before = adapt(now - pool.ready_ttl) if pool.ready_ttl else None  # NULL: none is stale
    with connection.cursor() as cursor:
        cursor.execute(_census_sql(), [adapt(now - pool.boot_timeout), pool.template_id, pool.cluster_id,
                                       stale_before, pool.pk])
        return dict(zip(CENSUS, cursor.fetchone(), strict=True))


@transaction.atomic
def reconcile_pool(pool_id: int) -> ReconcileReport:
    """Bring one pool towards its desired state. Safe to run from many processes at once."""
    # Lock order, as everywhere: the pool row, then VM rows in id order. FOR NO KEY UPDATE
    # serialises reconciles and reconfigures of the pool, yet lets a checkout or return
    # commit: their foreign-key checks take KEY SHARE on this row, which FOR UPDATE would
    # block while this transaction waits for the VM rows they hold (a deadlock).
    pool = Pool.objects.select_for_update(no_key=True, of=("self",)).select_related("template").get(pk=pool_id)
    report = ReconcileReport(pool=pool.name)
    now = timezone.now()
    vms = pool.vms.select_for_update(no_key=True).order_by("pk")
    # The pool's own VMs: those cloned for an on-demand request are neither counted nor
    # drained here (their request's job owns them until they are leased or failed).
    own = vms.filter(on_demand=False)

    for step in _pool_steps:
        step(pool, report)
    # Automatic sizing first: the size it sets, and audits, is the one this reconcile fills
    # or shrinks to (written through the admin's path, under this same pool row lock).
    pool.size = autosize.autosize_pool(pool).size

    census = _census(pool, now)
    if census["cloning"] and not _fill_job_alive(pool):
        # Only a fill makes the pool's own clones, and it moves each on before it ends, or
        # its hook fails them: rows still cloning with no fill queued or running are ones
        # that hook never reached (seen when PostgreSQL dropped every session twice in a
        # second). Failed, they are destroyed below and their clone found by its marker.
        # No fill can start meanwhile: only a reconcile, under this pool's lock, starts one.
        report.orphaned = fail_orphaned_clones(own, "Its clone job ended without recording the clone.")
    if census["timed_out"]:
        for vm in vms.filter(state=VMState.BOOTING, state_changed_at__lt=now - pool.boot_timeout):
            vm.move_to(VMState.FAILED, state_reason=f"The guest did not become usable within {pool.boot_timeout}.")
            report.timed_out.append(vm.pk)
    if census["failed"] or report.timed_out or report.orphaned:
        for vm in vms.filter(state=VMState.FAILED):
            _destroy(vm, vm.state_reason or "failed", report)
    if census["destroying"]:
        for vm in vms.filter(state=VMState.DESTROYING):
            if _destroy_due(vm, now):
                VM.objects.filter(pk=vm.pk).update(state_changed_at=now)  # next retry after another interval
                runner.enqueue("pools.destroy", target=vm, vm_id=vm.pk)

    # Draining: VMs of an old template or cluster, beyond the TTL or the size. Leased VMs
    # are never touched here; they go when their lease ends.
    if census["old_template"]:
        for vm in own.filter(state__in=DRAINABLE).exclude(template=pool.template_id):
            _destroy(vm, "The pool's template changed.", report)
    if census["elsewhere"]:
        # A clone-target change drains the old cluster the same way. Where a VM is: its host's
        # cluster (where it landed), else the cluster its slot was claimed for.
        elsewhere = (
            VM.objects.filter(pool=pool, on_demand=False, state__in=DRAINABLE)
            .annotate(where=Coalesce("host__cluster_id", "cluster_id"))
            .filter(where__isnull=False).exclude(where=pool.cluster_id).values("pk")
        )
        for vm in own.filter(pk__in=elsewhere):
            _destroy(vm, "The pool's cluster (clone target) changed.", report)
    if census["stale"] and pool.ready_ttl:
        for vm in own.filter(state=VMState.READY, ready_at__lt=now - pool.ready_ttl):
            _destroy(vm, f"Ready for longer than {pool.ready_ttl}; recycled.", report)
    if report.destroy or report.timed_out or report.orphaned:
        census = _census(pool, now)  # what is left to count, now that some went
    target = pool.size if pool.enabled else 0
    # Shrink: destroy ready VMs, oldest first; clones in flight finish and are trimmed
    # on a later cycle, so no vSphere task is pulled out from under a worker. A VM a
    # checkout holds is being leased: skipped, and no longer ready when this one commits.
    excess = census["live"] - target
    if excess > 0:
        oldest = pool.vms.filter(on_demand=False, state=VMState.READY).order_by("ready_at", "pk")[:excess]
        shrink = own.filter(pk__in=list(oldest.values_list("pk", flat=True)), state=VMState.READY)
        for vm in shrink.select_for_update(no_key=True, skip_locked=True):
            _destroy(vm, "The pool shrank.", report)

    report.deficit = max(0, target - census["live"])
    can_clone = (
        # A pool its vCenter's outage degraded gets a fill even when full: the fill's first
        # look is what tells that vCenter answers again and returns the pool to OK.
        # So does a pool with booting guests and no fill: only a fill watches guests boot,
        # and the one that started them may have died with its worker.
        (report.deficit > 0 or pool.unreachable_since is not None or census["booting"])
        and pool.health != Pool.Health.FAILING
        and (pool.retry_at is None or pool.retry_at <= now)
        and pool.template.status == TemplateStatus.READY
        # A running fill keeps claiming slots until the pool is full (and looks for the
        # template copy itself): while checkouts drain a pool, that is the common case.
        and not _fill_job_alive(pool)
        # No ready copy in the pool's cluster (or on its datastore): one is made, and the
        # pool fills once it is ready (its copy job nudges it).
        and (report.deficit == 0 or templates.ensure_copy(pool) is not None)
    )
    if can_clone:
        runner.enqueue("pools.fill", target=pool, pool_id=pool.pk)
        report.fill_started = True
    return report


def reconcile_all() -> list[ReconcileReport]:
    # Lost jobs first: their compensation frees slots and rows this cycle then acts on.
    runner.reap_lost()
    reports = []
    for pool_id in Pool.objects.values_list("pk", flat=True):
        try:
            reports.append(reconcile_pool(pool_id))
        except Exception:  # one broken pool must not stop the others
            log.exception("Reconcile of pool %s failed", pool_id)
    schedule_purges()
    for step in _cycle_steps:
        step()
    templates.sweep_uploads()
    templates.remove_unused_copies()
    runner.requeue_lost()
    return reports


def schedule_purges(*, every: timedelta = PURGE_EVERY) -> int:
    """Enqueue a purge of each pool folder not checked within ``every``."""
    started = 0
    since = timezone.now() - every
    for folder in Folder.objects.filter(pools__isnull=False).distinct():
        recent = Job.objects.filter(
            kind="pools.purge", object_type="inventory.folder", object_id=str(folder.pk), created_at__gte=since
        )
        if not recent.exists():
            with transaction.atomic():
                runner.enqueue("pools.purge", target=folder, folder_id=folder.pk)
            started += 1
    return started


@dataclass(frozen=True)
class Stray:
    """A VM found in a pool folder that no live VM row accounts for, and what purge does with it."""

    moid: str
    name: str
    owner: str | None  # its ownership marker as the scan read it
    kind: str  # LEAKED_CLONE, FOREIGN_CLONE or UNKNOWN_VM
    destroy: bool
    reason: str = ""  # why it is left alone


LEAKED_CLONE = "leaked clone"
FOREIGN_CLONE = "clone of another installation"
UNKNOWN_VM = "unknown VM"


def _our_row_id(owner: str | None) -> int | None:
    """The VM row id in one of our markers; None for any other marker, or none."""
    rest = (owner or "").removeprefix(f"{instance_id()}:")
    return int(rest) if rest != (owner or "") and rest.isdigit() else None


def _claimed(vcenter_id: int, vms: list[tuple[str, str, str | None]]) -> set[str]:
    """The moids of ``vms`` (moid, name, marker) that a row accounts for: a VM row by the moid
    it recorded, or, for a clone whose row is mid-clone and has no moid yet, by our marker;
    and template work (see ``_template_claims``)."""
    rows = VM.objects.filter(vcenter=vcenter_id)
    claimed = set(rows.exclude(state=VMState.DESTROYED).filter(moid__in=[moid for moid, _, _ in vms])
                  .values_list("moid", flat=True))
    by_row = {row_id: moid for moid, _, owner in vms if (row_id := _our_row_id(owner)) is not None}
    claimed.update(by_row[pk] for pk in rows.live().filter(pk__in=by_row).values_list("pk", flat=True))
    template_moids, template_names = _template_claims(vcenter_id)
    claimed.update(moid for moid, name, _ in vms if moid in template_moids or name in template_names)
    return claimed


def _template_claims(vcenter_id: int) -> tuple[set[str], set[str]]:
    """Moids, and names while their clone runs, of the template work on one vCenter: copies and
    build VMs. Not templates yet, they look like unknown VMs; a build VM (an admin's work) or a
    capture may even carry a pool VM's marker, copied from the VM or template it was cloned from,
    and pass for a leaked clone once that VM is gone. Purge never destroys them: discarding a
    build, or failing a copy, removes its VM."""
    builds = TemplateBuild.objects.filter(vcenter=vcenter_id).exclude(status=TemplateBuild.Status.DISCARDED)
    copies = TemplateCopy.objects.filter(template__vcenter=vcenter_id)
    moids = set(builds.exclude(moid="").values_list("moid", flat=True))
    moids.update(copies.exclude(moid="").values_list("moid", flat=True))
    in_flight = (TemplateStatus.PENDING, TemplateStatus.DEPLOYING, TemplateStatus.PREPARING)
    names = set(builds.filter(status__in=(TemplateBuild.Status.CLONING, TemplateBuild.Status.CAPTURING))
                .values_list("vm_name", flat=True))
    names.update(Template.objects.filter(vcenter=vcenter_id, status__in=in_flight).values_list("name", flat=True))
    names.update(copy_vm_name(*n) for n in copies.filter(status__in=in_flight).values_list(
        "template__name", "cluster__name", "datastore__name"))
    return moids, names


def find_strays(folder: Folder, vms: list) -> list[Stray]:
    """Which of ``vms`` (apps.vsphere VMInfo of one folder) no pool knows, and which of those
    purge destroys: our leaked clones, and unknown VMs when the folder allows it. Never a
    template or template work (a copy, a build VM), a name on the folder's allowlist, or a VM
    carrying another installation's marker (two installations may share a folder; each purges
    only its own)."""
    vms = [vm for vm in vms if not vm.is_template]
    claimed = _claimed(folder.vcenter_id, [(vm.moid, vm.name, vm.owner) for vm in vms])
    allowlist = set(folder.purge_allowlist or [])
    strays = []
    for vm in vms:
        if vm.moid in claimed:
            continue
        owner = vm.owner or None
        if _our_row_id(owner) is not None:
            kind, destroy, reason = LEAKED_CLONE, True, ""
        elif owner:
            kind, destroy, reason = FOREIGN_CLONE, False, f"it carries another installation's marker {owner!r}"
        else:
            kind, destroy = UNKNOWN_VM, folder.purge_unknown
            reason = "" if destroy else f"purge of unknown VMs is off for {folder.path}"
        if vm.name in allowlist:
            destroy, reason = False, f"{vm.name} is on the allowlist of {folder.path}"
        strays.append(Stray(vm.moid, vm.name, owner, kind, destroy, reason))
    return strays


def still_stray(folder: Folder, stray: Stray) -> bool:
    """Whether no row has claimed ``stray`` since the scan (asked right before destroying it)."""
    return not _claimed(folder.vcenter_id, [(stray.moid, stray.name, stray.owner)])


# ----------------------------------------------------------------------- fill slots


def claim_slots(pool_id: int, most: int = 1, *, on_demand: bool = False) -> list[VM]:
    """Reserve up to ``most`` clone slots: new VM rows in "cloning", within every limit.

    Empty when the pool is full, failing, backing off, or the task limits are reached.
    The vCenter row lock and the global advisory lock make the count-then-insert atomic
    across every worker on every machine. ``on_demand`` slots are for one request: they
    are not bounded by the pool's size nor held back by its backoff, only by task limits.
    """
    with transaction.atomic():
        # The pool's vCenter row, found and locked in one statement; then the pool as it is
        # now that no other claim on this vCenter can run, with what a fill's clones follow
        # (the new rows carry it: a fill clones what they record).
        vcenter = (VCenter.objects.select_for_update(no_key=True)
                   .filter(pk=Subquery(Pool.objects.filter(pk=pool_id).values("template__vcenter_id"))).first())
        if vcenter is None:
            raise Pool.DoesNotExist(f"pool {pool_id} was deleted")
        _lock_global()
        # The pool's live VMs and the clones in flight here and everywhere, in one scan, and
        # only then the pool: a clone failure moves its VM to failed and sets the pool's
        # backoff in one commit, so counted first, a failure that commits in between is
        # either still counted as a live VM (no slot for it) or its backoff is seen. Read
        # the other way round, it was neither, and the pool cloned again at once.
        own = Q(pool=pool_id, on_demand=False, state__in=LIVE)
        cloning = Q(state=VMState.CLONING)
        counts = VM.objects.filter(own | cloning).aggregate(
            own=Count("pk", filter=own), here=Count("pk", filter=cloning & Q(vcenter=vcenter)),
            everywhere=Count("pk", filter=cloning),
        )
        pool = Pool.objects.select_related("template", "cluster", "folder", "datastore").get(pk=pool_id)
        now = timezone.now()
        if (
            not pool.enabled
            or pool.health == Pool.Health.FAILING
            or (not on_demand and pool.retry_at and pool.retry_at > now)
            or pool.template.status != TemplateStatus.READY
            # Cloned from a copy beside them or not at all; an on-demand request's first
            # claim is what starts the copy it then waits for.
            or templates.ensure_copy(pool) is None
        ):
            return []
        n = min(
            most,
            most if on_demand else pool.size - counts["own"],
            vcenter.task_limit - counts["here"],
            global_clone_limit() - counts["everywhere"],
        )
        if n <= 0:
            return []
        # Fixed addresses are handed out in this same transaction (fewer VMs if the range runs out).
        return guest_setup.guest().allocate_addresses(pool, VM.objects.bulk_create(
            VM(vcenter=vcenter, pool=pool, template=pool.template, cluster_id=pool.cluster_id,
               name=new_vm_name(pool), tries=1, on_demand=on_demand)
            for _ in range(n)
        ))


def claim_slot(pool_id: int) -> VM | None:
    """One slot (see claim_slots)."""
    claimed = claim_slots(pool_id, 1)
    return claimed[0] if claimed else None


# An outage is retried soon, so the pool notices vCenter's return within one reconcile
# of the retry time, and backs off (to the cap) so a long one does not churn clone slots.
UNREACHABLE_RETRY_MIN = timedelta(seconds=5)
UNREACHABLE_RETRY_MAX = timedelta(seconds=30)


def record_clone_failure(vm: VM, reason: str, *, permanent: bool, outage: bool = False) -> None:
    """A clone failed: fail the VM, and back the pool off (or stop it for good).

    ``outage``: vCenter did not answer (unreachable, timeout, session lost). That says
    nothing about the pool, so it never counts toward ``max_tries``; every slot of a batch
    failing for one outage is one event (see ``_mark_unreachable``).
    """
    with transaction.atomic():
        # FOR NO KEY UPDATE: only non-key columns change, and a checkout's foreign-key
        # check (KEY SHARE) on this pool row must not wait for it.
        if vm.pool_id is None:
            raise Pool.DoesNotExist(f"the pool of {vm.name} was deleted")
        pool = Pool.objects.select_for_update(no_key=True).get(pk=vm.pool_id)
        vm.move_to(VMState.FAILED, state_reason=reason)
        if outage:
            _mark_unreachable(pool, vm.vcenter_id, reason)
            return
        failures = pool.consecutive_failures + 1
        # unreachable_since cleared: the health below describes a real fault now.
        counts = {"consecutive_failures": failures, "unreachable_since": None}
        if pool.health == Pool.Health.FAILING:
            # The other slots of the batch that failed it: the first reason stands, one event.
            pool.move_health(Pool.Health.FAILING, **counts)
        elif permanent or failures >= pool.max_tries:
            why = reason if permanent else f"{failures} clones in a row failed; last: {reason}"
            pool.move_health(Pool.Health.FAILING, health_reason=why, retry_at=None, **counts)
            audit.record("pool.failing", target=pool, pool=pool, message=why)
        else:
            backoff = min(5 * 2 ** (failures - 1), 300)
            pool.move_health(Pool.Health.DEGRADED, health_reason=f"Clone failed ({reason}); retrying in {backoff}s.",
                             retry_at=timezone.now() + timedelta(seconds=backoff), **counts)


def record_clone_success(vm: VM) -> None:
    record_clone_successes([vm])


def record_clone_successes(vms: list[VM]) -> None:
    """Clones became usable: their pools' failure counts and health reset (one look per pool
    and vCenter, not per VM: a fill records a batch at once)."""
    pool_ids = {vm.pool_id for vm in vms if vm.pool_id is not None}  # None: the pool was deleted meanwhile
    for pool in Pool.objects.filter(pk__in=pool_ids).filter(
        ~Q(consecutive_failures=0) | ~Q(health=Pool.Health.OK) | Q(unreachable_since__isnull=False)
    ).exclude(health=Pool.Health.FAILING).only("pk", "name", "health").order_by("pk"):
        with suppress(StaleState):  # failed meanwhile by another slot: that verdict stands
            pool.move_health(Pool.Health.OK, consecutive_failures=0, health_reason="", retry_at=None,
                             unreachable_since=None)
    # vCenter answered: other pools it left degraded need not wait for their own retry.
    for vcenter_id in sorted({vm.vcenter_id for vm in vms}):
        record_reachable(vcenter_id=vcenter_id)


def record_unreachable(pool_id: int, reason: str) -> None:
    """vCenter did not answer a pool's job: degrade the pool (never to failing) and retry soon."""
    with transaction.atomic():
        pool = Pool.objects.select_for_update(no_key=True, of=("self",)).select_related("template").get(pk=pool_id)
        _mark_unreachable(pool, pool.template.vcenter_id, reason)


def _mark_unreachable(pool: Pool, vcenter_id: int, reason: str) -> None:
    if pool.health == Pool.Health.FAILING:
        return  # a real fault was recorded first; it stays until an admin resets the pool
    now = timezone.now()
    first = pool.unreachable_since is None
    since = pool.unreachable_since or now
    # Each retry waits about as long as the outage has lasted so far, within the bounds.
    delay = min(max(now - since, UNREACHABLE_RETRY_MIN), UNREACHABLE_RETRY_MAX)
    name = VCenter.objects.filter(pk=vcenter_id).values_list("name", flat=True).first() or "?"
    pool.move_health(Pool.Health.DEGRADED, health_reason=f"vCenter {name} unreachable: {reason}; retrying",
                     retry_at=now + delay, unreachable_since=since)
    if first:  # one outage, one event, however many slots and retries it fails
        audit.record("pool.unreachable", target=pool, pool=pool, message=pool.health_reason)


def record_reachable(*, vcenter_id: int) -> int:
    """vCenter answers again: every pool degraded only by its outage returns to OK now.

    Returns how many pools recovered."""
    recovered = 0
    now = timezone.now()
    for pool_id in Pool.objects.filter(template__vcenter_id=vcenter_id, unreachable_since__isnull=False) \
            .values_list("pk", flat=True):
        with transaction.atomic():
            pool = Pool.objects.select_for_update(no_key=True).filter(
                pk=pool_id, unreachable_since__isnull=False).first()
            if pool is None or pool.unreachable_since is None:
                continue  # another process saw vCenter answer first
            lasted = int((now - pool.unreachable_since).total_seconds())
            if pool.health == Pool.Health.DEGRADED:
                # consecutive_failures is kept: real faults before the outage still count.
                pool.move_health(Pool.Health.OK, health_reason="", retry_at=None, unreachable_since=None)
            else:
                pool.move_health(pool.health, unreachable_since=None)
            audit.record("pool.reachable", target=pool, pool=pool,
                         message=f"vCenter answers again after about {lasted}s; the pool resumes.")
            recovered += 1
    return recovered

