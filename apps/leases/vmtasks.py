"""Changes a lessee makes to their VM while they hold it: add a disk, snapshot, revert, power.

The request is checked and recorded at once (a VMTask row, audited) and carried out by
the ``leases.vm_task`` job, as vmpooler's disk and snapshot queues do.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from apps.audit import services as audit
from apps.core.errors import Conflict, NotFound, VmPortalError
from apps.core.states import StaleState
from apps.jobs import runner
from apps.leases.models import Lease, VMTask
from apps.leases.services import get_lease_for

MAX_DISK_GB = 2048  # vmpooler's bound


def _active_lease(user: User, lease_id: int) -> Lease:
    lease = get_lease_for(user, lease_id)
    if not lease.is_active:
        raise Conflict("This lease has ended.")
    if not lease.vm.moid:
        raise Conflict(f"{lease.vm.name} has no vSphere VM.")
    return lease


def _queue(lease: Lease, **fields: Any) -> VMTask:
    task = VMTask.objects.create(lease=lease, **fields)
    audit.record(f"vm.{task.kind}", target=lease, pool=lease.pool_id,
                 after={k: v for k, v in fields.items() if k != "kind"} | {"vm": lease.vm.name})
    runner.enqueue("leases.vm_task", target=task, task_id=task.pk)
    return task


@transaction.atomic
def add_disk(*, user: User, lease_id: int, size_gb: int) -> VMTask:
    if not 1 <= size_gb <= MAX_DISK_GB:
        raise VmPortalError(f"A disk must be between 1 and {MAX_DISK_GB} GB.")
    return _queue(_active_lease(user, lease_id), kind=VMTask.Kind.DISK, disk_gb=size_gb)


@transaction.atomic
def snapshot(*, user: User, lease_id: int) -> VMTask:
    return _queue(_active_lease(user, lease_id), kind=VMTask.Kind.SNAPSHOT, snapshot=uuid.uuid4().hex)


@transaction.atomic
def revert(*, user: User, lease_id: int, snapshot_id: str) -> VMTask:
    lease = _active_lease(user, lease_id)
    if not lease.vm_tasks.filter(kind=VMTask.Kind.SNAPSHOT, snapshot=snapshot_id).exclude(
            status=VMTask.Status.FAILED).exists():
        raise NotFound(f"{lease.vm.name} has no snapshot {snapshot_id[:64]}.")
    return _queue(lease, kind=VMTask.Kind.REVERT, snapshot=snapshot_id)


POWER_KINDS = (VMTask.Kind.POWER_OFF, VMTask.Kind.POWER_ON, VMTask.Kind.RESET)


@transaction.atomic
def power(*, user: User, lease_id: int, kind: str) -> VMTask:
    """Power the lessee's VM off or on, or reset it (vmpooler has no such call; the lease page does)."""
    if kind not in POWER_KINDS:
        raise VmPortalError("Choose power off, power on or reset.")
    return _queue(_active_lease(user, lease_id), kind=kind)


def finish(task: VMTask, error: str = "") -> bool:
    """Record a queued task's outcome; False if it already has one (a job run twice, or lost)."""
    if task.status != VMTask.Status.QUEUED:
        return False
    try:
        task.move_to(VMTask.Status.FAILED if error else VMTask.Status.DONE, error=error, finished_at=timezone.now())
    except StaleState:
        return False
    return True


def disks_of(lease: Lease) -> list[str]:
    return [f"+{t.disk_gb}gb" for t in lease.vm_tasks.all() if t.kind == VMTask.Kind.DISK
            and t.status == VMTask.Status.DONE]


def snapshots_of(lease: Lease) -> list[str]:
    return [t.snapshot for t in lease.vm_tasks.all() if t.kind == VMTask.Kind.SNAPSHOT
            and t.status == VMTask.Status.DONE]

