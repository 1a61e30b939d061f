"""Host balance at checkout (Pool.balance_hosts): a VM handed out on an overloaded host moves
(vMotion) to a much less loaded host of its cluster, after the lease was answered.

The rule and its thresholds are clone placement's (apps.vsphere.placement.balance_target).
Checkout's transaction only enqueues a ``pools.migrate`` job; the job decides, claims one of
the vCenter's migration slots (VMs with ``moving_to`` set, counted under the vCenter row
lock, so the limit holds across every worker on every machine), relocates, and records how
it ended on the VM. A failed move leaves the VM where it was; the lease is never touched.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.audit import services as audit
from apps.core.errors import VmPortalError
from apps.inventory.models import Host, VCenter
from apps.inventory.selectors import host_candidates
from apps.jobs import runner
from apps.jobs.models import Job
from apps.pools.models import VM, VMState
from apps.vsphere import operations as ops
from apps.vsphere.placement import balance_target
from apps.vsphere.session import Endpoint, connect

log = logging.getLogger(__name__)

MIGRATE_JOB = "pools.migrate"


def in_flight_bound() -> timedelta:
    """A move older than this no longer holds a slot: its worker died past the task timeout."""
    return timedelta(seconds=ops.TASK_TIMEOUT) + runner.stale_after()


def request_moves(vms: list[VM]) -> None:
    """Called inside checkout's transaction: the jobs start once it commits."""
    for vm in vms:
        runner.enqueue(MIGRATE_JOB, target=vm, vm_id=vm.pk)


def _note(vm_id: int, note: str, **changes: object) -> None:
    VM.objects.filter(pk=vm_id).update(move_note=note[:500], **changes)


def migrate_vm(vm_id: int, job: runner.JobContext | None = None) -> str:
    """Move a checked-out VM off an overloaded host when the rule says so; returns what happened."""
    vm = VM.objects.select_related("vcenter", "host").get(pk=vm_id)
    if vm.state != VMState.LEASED or not vm.moid:
        return _stay(vm, job, f"not moved: the VM is {vm.get_state_display().lower()}")
    endpoint = Endpoint.from_vcenter(vm.vcenter)
    try:
        # Where it runs now, from vCenter: DRS or an admin may have moved it since the clone.
        with connect(endpoint) as conn:
            info = ops.get_vm(conn, vm.moid)
    except VmPortalError as exc:
        return _stay(vm, job, f"not moved: vCenter could not say where it runs ({exc})")
    with transaction.atomic():
        VCenter.objects.select_for_update(no_key=True).get(pk=vm.vcenter_id)
        source = Host.objects.filter(vcenter=vm.vcenter_id, moid=info.host_moid or "").first()
        candidates = host_candidates(source.cluster_id) if source and source.cluster_id else []
        current = next((c for c in candidates if source and c.moid == source.moid), None)
        decision = balance_target(current, candidates, datastore_moids=info.datastore_moids)
        if decision.target is None:
            return _stay(vm, job, f"Stays on {source or info.host_moid}: {decision.reason}.")
        now = timezone.now()
        moving = VM.objects.filter(vcenter=vm.vcenter_id, moving_to__isnull=False,
                                   moving_since__gt=now - in_flight_bound()).count()
        limit = settings.VMPORTAL_MIGRATIONS_PER_VCENTER
        if moving >= limit:
            return _stay(vm, job, f"Stays on {source}: {moving} moves already running on vCenter {vm.vcenter} "
                                  f"(VMPORTAL_MIGRATIONS_PER_VCENTER={limit}); {decision.reason}.")
        target = Host.objects.get(vcenter=vm.vcenter_id, moid=decision.target.moid)
        _note(vm.pk, "", moving_to=target, moving_since=now)
    if job:
        job.log(f"moving {vm} from {source} to {target}: {decision.reason}")
    try:
        with connect(endpoint) as conn:
            ops.relocate_vm(conn, vm.moid, host_moid=target.moid)
    except VmPortalError as exc:
        log.warning("%s stays on %s: the move to %s failed: %s", vm, source, target, exc)
        return _stay(vm, job, f"Stays on {source}: the move to {target} failed ({exc}).",
                     moving_to=None, moving_since=None)
    with transaction.atomic():
        note = f"Moved from {source} to {target}: {decision.reason}."
        _note(vm.pk, note, host=target, moving_to=None, moving_since=None)
        audit.record("vm.migrate", target=vm, pool=vm.pool_id, before={"host": str(source)},
                     after={"host": str(target)}, message=decision.reason)
    if job:
        job.log(note)
    return note


def _stay(vm: VM, job: runner.JobContext | None, note: str, **changes: object) -> str:
    _note(vm.pk, note, **changes)
    log.info("%s: %s", vm, note)
    if job:
        job.log(note)
    return note


def abandon_move(job: Job, reason: str) -> None:
    """A migrate job whose worker died or that raised: its slot is freed; vCenter may still
    finish the vMotion, which the inventory then shows (the lease is unaffected either way)."""
    vm_id = job.args.get("vm_id")
    VM.objects.filter(pk=vm_id, moving_to__isnull=False).update(
        moving_to=None, moving_since=None, move_note=f"The move did not finish: {reason}"[:500])
