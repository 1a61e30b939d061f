"""The on-demand pipeline: clone, boot and lease the VMs of one request, waiting out clone
slots and vCenter outages; and a lessee's VM task (disk, snapshot, revert) in vCenter. Built
on the pool's provisioning (apps.pools.provisioning); the jobs (apps.leases.jobs) only call these."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from apps.jobs import runner
from apps.jobs.models import Job
from apps.leases import ondemand, vmtasks
from apps.leases.models import OnDemandRequest, VMTask
from apps.pools import nudge
from apps.pools.manager import UNREACHABLE_RETRY_MAX, UNREACHABLE_RETRY_MIN, claim_slots, fail_orphaned_clones
from apps.pools.models import VM, Pool, VMState
from apps.pools.provisioning import check_boots, clone_batch, vcenter_answers
from apps.pools.selectors import NoSuchPool, pools_named, template_copy_state
from apps.vsphere import operations as ops
from apps.vsphere.errors import VSphereError
from apps.vsphere.session import Endpoint, connect

POLL = 0.5  # seconds between looks while guests boot or clone slots are taken
# How long a request may wait for a clone slot (task limits) before it gives up.
SLOT_WAIT = timedelta(minutes=10)
# How long a request waits for an unreachable vCenter to answer again before it gives up.
OUTAGE_WAIT = timedelta(minutes=10)


@dataclass
class _Outage:
    """A pool's vCenter did not answer this request's job: since when, and when to ask it again."""

    since: datetime
    next_look: datetime


def request_ended(job: Job, reason: str) -> None:
    """``leases.ondemand``'s hook when its worker died or it raised: the request fails with
    the reason, and the clones it left "cloning" fail too (freeing their slots)."""
    req = OnDemandRequest.objects.filter(pk=job.args["request_pk"]).first()
    if req is None:
        return
    ondemand.fail(req, f"Stopped before the VMs were ready: {reason.rstrip('.')}. Retry the request.")
    fail_orphaned_clones(req.vms.all(), f"Its on-demand job ended before the clone was recorded: {reason}")


def provision_request(job: runner.JobContext, request_pk: int) -> None:
    """The ``leases.ondemand`` job: make and lease the VMs of request ``request_pk``, or fail it
    with the reason."""
    req = ondemand.start(request_pk)
    if req is None:
        job.log("the request was withdrawn before it started")
        return
    reason = _provision(job, req)
    if reason:
        job.log(f"failed: {reason}")
        ondemand.fail(req, reason)


def _provision(job: runner.JobContext, req: OnDemandRequest) -> str:
    """Make every VM of ``req`` and lease them; the reason it could not, or ''."""
    try:
        pools = pools_named(req.wanted, Pool.objects.select_related("template__vcenter", "cluster", "folder",
                                                                    "datastore"))
    except NoSuchPool as exc:
        return str(exc)
    need = dict(req.wanted)
    failures = dict.fromkeys(pools, 0)
    booting: dict[str, dict[str, VM]] = {name: {} for name in pools}  # by pool, by moid
    ready: list[VM] = []
    outages: dict[str, _Outage] = {}  # by pool name
    copy_waits: set[str] = set()  # pools whose template copy this request waits for
    endpoints = {name: Endpoint.from_vcenter(p.template.vcenter) for name, p in pools.items()}
    started = timezone.now()
    width = max(1, min(settings.VMPORTAL_CLONE_LIMIT, req.total))

    def progress(vm: VM, percent: int) -> None:
        ondemand.set_progress(req, vm, percent)

    with ThreadPoolExecutor(width, thread_name_prefix="ondemand") as starters:
        while any(need.values()) or any(booting.values()):
            if ondemand.is_cancelled(req):
                job.log("cancelled; cleaning up")
                ondemand.fail(req, "Cancelled.")
                return ""
            cloned = False
            for name, pool in pools.items():
                if not need[name]:
                    continue
                if name in outages:
                    if not _vcenter_back(req, pool, endpoints[name], job, outages):
                        continue
                    started = timezone.now()  # the wait for a slot starts again
                batch = claim_slots(pool.pk, need[name], on_demand=True)
                if not batch:
                    pool.refresh_from_db()
                    if pool.health == Pool.Health.FAILING:
                        return f"Pool {name} is failing: {pool.health_reason}"
                    if waiting := template_copy_state(pool).waiting:
                        ondemand.note(req, f"{name}: {waiting}")  # its first claim started the copy
                        copy_waits.add(name)
                        started = timezone.now()  # a copy is not a busy vCenter: no slot wait yet
                    continue
                if name in copy_waits:
                    copy_waits.discard(name)
                    ondemand.note(req, "")
                cloned = True
                ondemand.add_vms(req, batch)
                need[name] -= len(batch)
                job.log(f"cloning {len(batch)} for {name}: {', '.join(vm.name for vm in batch)}")
                ok = clone_batch(pool, batch, endpoints[name], starters, job, on_progress=progress)
                booting[name].update((vm.moid, vm) for vm in ok)
                failed = [vm for vm in batch if vm not in ok]
                if failed:
                    reason = _retry_or_reason(req, pool, failed, need, failures, outages)
                    if reason:
                        return reason
            for name, pool in pools.items():
                if not booting[name]:
                    continue
                before = dict(booting[name])
                check_boots(pool, booting[name], endpoints[name], job)
                done = [vm for moid, vm in before.items() if moid not in booting[name]]
                ready += [vm for vm in done if vm.state == VMState.READY]
                failed = [vm for vm in done if vm.state != VMState.READY]
                if failed:
                    reason = _retry_or_reason(req, pool, failed, need, failures, outages)
                    if reason:
                        return reason
            if not cloned:
                now = timezone.now()
                for name, outage in outages.items():
                    if now - outage.since > OUTAGE_WAIT:
                        return (f"{name}: vCenter did not answer for {OUTAGE_WAIT}; retry later. "
                                f"Last: {pools[name].health_reason}")
                if any(need.values()) and not any(booting.values()) and not outages and now - started > SLOT_WAIT:
                    return f"No clone slot came free within {SLOT_WAIT}; the vCenter is busy. Retry later."
                time.sleep(POLL)
    if ondemand.deliver(req, ready):
        job.log(f"leased {', '.join(vm.name for vm in ready)} to {req.user.get_username()}")
    for name in pools:
        nudge.nudge(pools[name].pk)
    return ""


def _retry_or_reason(req: OnDemandRequest, pool: Pool, failed: list[VM], need: dict[str, int],
                     failures: dict[str, int], outages: dict[str, _Outage]) -> str:
    """Put failed VMs back on the to-do list, or give the request's failure reason once
    the pool's ``max_tries`` clones for this request have failed.

    Failures because vCenter did not answer (the clone path marked the pool unreachable)
    are not counted: they say nothing about the request, and retrying at once would spend
    every try within seconds of one outage. The pool then waits for vCenter instead."""
    pool.refresh_from_db(fields=["health", "health_reason", "retry_at", "unreachable_since"])
    if pool.unreachable_since is not None and pool.health != Pool.Health.FAILING:
        now = timezone.now()
        since = outages[pool.name].since if pool.name in outages else now
        outages[pool.name] = _Outage(since=since, next_look=_next_look(pool, now))
        ondemand.note(req, pool.health_reason)
        need[pool.name] += len(failed)
        return ""
    failures[pool.name] += len(failed)
    if failures[pool.name] >= pool.max_tries:
        last = VM.objects.filter(pk=failed[-1].pk).values_list("state_reason", flat=True).first() or "unknown"
        return f"{pool.name}: {failures[pool.name]} clones failed (the pool allows {pool.max_tries}); last: {last}"
    need[pool.name] += len(failed)
    return ""


def _next_look(pool: Pool, now: datetime) -> datetime:
    """The pool's own retry time (it grows with the outage), within the outage bounds."""
    retry_at = pool.retry_at or now
    return min(max(retry_at, now + UNREACHABLE_RETRY_MIN), now + UNREACHABLE_RETRY_MAX)


def _vcenter_back(req: OnDemandRequest, pool: Pool, endpoint: Endpoint, job: runner.JobContext,
                  outages: dict[str, _Outage]) -> bool:
    """Whether the pool's vCenter answers again, asked once its retry time has come; one
    cheap call, so no VM rows churn while it is away."""
    outage = outages[pool.name]
    now = timezone.now()
    if now < outage.next_look:
        return False
    if not vcenter_answers(pool, endpoint, job):
        pool.refresh_from_db(fields=["health", "health_reason", "retry_at", "unreachable_since"])
        outage.next_look = _next_look(pool, now)
        ondemand.note(req, pool.health_reason)
        return False
    del outages[pool.name]
    if not outages:
        ondemand.note(req, "")
    return True


def vm_task_ended(job: Job, reason: str) -> None:
    """``leases.vm_task``'s hook when its worker died or it raised: the task fails with the
    reason (a disk or snapshot vCenter made anyway is the lessee's to see; we do not guess)."""
    task = VMTask.objects.filter(pk=job.args["task_id"]).first()
    if task is not None:
        vmtasks.finish(task, f"Stopped before it was done: {reason.rstrip('.')}. Try again.")


def run_vm_task(job: runner.JobContext, task_id: int) -> None:
    """The ``leases.vm_task`` job: add the disk, take or revert the snapshot in vCenter, and
    record how it went."""
    task = VMTask.objects.select_related("lease__vm__vcenter").get(pk=task_id)
    vm = task.lease.vm
    if task.status != VMTask.Status.QUEUED:
        job.log(f"task {task.pk} is {task.status}; nothing to do")
        return
    disk_gb = task.disk_gb or 0
    if task.kind == VMTask.Kind.DISK and disk_gb < 1:  # vmtasks.add_disk never queues one
        vmtasks.finish(task, "The task names no disk size.")
        return
    try:
        with connect(Endpoint.from_vcenter(vm.vcenter)) as conn:
            if task.kind == VMTask.Kind.DISK:
                disk = ops.add_disk(conn, vm.moid, disk_gb)
                job.log(f"{vm.name}: added {disk_gb} GB disk {disk}")
            elif task.kind == VMTask.Kind.SNAPSHOT:
                ops.create_snapshot(conn, vm.moid, task.snapshot, description=f"vmportal lease {task.lease_id}")
                job.log(f"{vm.name}: snapshot {task.snapshot}")
            elif task.kind == VMTask.Kind.REVERT:
                ops.revert_snapshot(conn, vm.moid, task.snapshot)
                job.log(f"{vm.name}: reverted to {task.snapshot}")
            else:
                action = {VMTask.Kind.POWER_OFF: ops.power_off, VMTask.Kind.POWER_ON: ops.power_on,
                          VMTask.Kind.RESET: ops.reset}[VMTask.Kind(task.kind)]
                job.log(f"{vm.name}: {task.get_kind_display().lower()}: {action(conn, vm.moid)}")
    except VSphereError as exc:
        vmtasks.finish(task, str(exc))
        job.log(f"{vm.name}: {exc}")
        return
    vmtasks.finish(task)
