"""Provisioning: what pool jobs do to vSphere. Fill a pool (claim slots, clone a batch, power
on, watch guests boot), destroy a VM, purge a folder of strays. Decisions (which slots, what to
destroy) are the pool manager's (apps.pools.manager); the jobs (apps.pools.jobs) only call these."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import CharField, F, Subquery, Value
from django.db.models.functions import Cast, Concat
from django.utils import timezone

from apps.audit import services as audit
from apps.core.states import StaleState, TransitionError, transition_many
from apps.inventory.models import Folder
from apps.jobs import runner
from apps.jobs.models import Job
from apps.pools import guest_setup, instance, nudge, placement
from apps.pools.manager import (
    PURGE_EVERY,
    Stray,
    claim_slots,
    fail_orphaned_clones,
    find_strays,
    record_clone_failure,
    record_clone_successes,
    record_reachable,
    record_unreachable,
    still_stray,
)
from apps.pools.models import VM, VM_TRANSITIONS, Pool, VMState
from apps.vsphere import operations as ops
from apps.vsphere.errors import VSphereError
from apps.vsphere.session import Connection, Endpoint, connect, probe
from apps.vsphere.types import OWNER_KEY, CloneSpec

log = logging.getLogger(__name__)
BOOT_POLL = 0.5  # seconds between looks at booting guests when there is nothing to clone
# A fill stops claiming new slots after this long and ends once its guests are up; the
# nudge it sends at the end starts the next one. Without a bound, a pool that is drained
# as fast as it fills keeps one job running for ever, and a worker asked to stop warmly
# (a deploy, a rolling restart) would wait for it just as long.
FILL_CLAIM_FOR = 20.0  # seconds
# A clone whose moid was never recorded (its worker was killed, or the connection broke while
# it ran) may still be running in vCenter after its row is destroyed. It lands within the clone
# deadline, carrying our marker, and the next purge destroys it; until then its address is kept
# back, or the late clone would boot with an address another VM has.
LATE_CLONE_BOUND = timedelta(seconds=ops.TASK_TIMEOUT) + PURGE_EVERY
DESTROY_BATCH = 50  # destroying VMs one destroy job takes over from queued jobs of the same vCenter
DESTROY_STARTERS = 8  # threads starting a batch's tasks (each start is a round trip)


def marker_for(vm: VM) -> str:
    return instance.marker(vm)


def release_fill_slots(job: Job, reason: str) -> None:
    """``pools.fill``'s hook when its worker died or it raised: the slots it claimed and
    left "cloning" fail now (freeing them), and reconcile cleans them up."""
    pool_id = job.args["pool_id"]
    others = Job.objects.filter(kind=job.kind, object_type=job.object_type, object_id=job.object_id,
                                status=Job.Status.RUNNING).exclude(pk=job.pk)
    if others.exists():
        return  # at most one fill runs per pool; should another, its rows are not ours to fail
    fail_orphaned_clones(VM.objects.filter(pool_id=pool_id, on_demand=False),
                         f"Its clone job ended before the clone was recorded: {reason}")
    nudge.nudge(pool_id)


def fill_pool(pool_id: int, job: runner.JobContext) -> None:
    """Clone until the pool is full, ``task_limit`` clone tasks in flight at a time.

    One thread drives the pipeline: claim a batch of slots, start its clones together
    (their SOAP calls overlap on a few threads) and wait for them through one filter;
    then take one look at every booting VM of the batch and earlier ones (at most every
    BOOT_POLL). Booting does not hold a task slot, so the next batch starts while guests
    come up.
    """
    pool = Pool.objects.select_related("template__vcenter", "cluster").get(pk=pool_id)
    vcenter = pool.template.vcenter
    width = max(1, min(vcenter.task_limit, settings.VMPORTAL_CLONE_LIMIT, pool.size))
    endpoint = Endpoint.from_vcenter(vcenter)
    # Guests a fill before this one started and did not see through (its worker died) are
    # watched here too: one fill runs per pool, so every booting VM of the pool is ours.
    booting: dict[str, VM] = {
        vm.moid: vm for vm in pool.vms.filter(state=VMState.BOOTING, on_demand=False).exclude(moid="")
    }
    counts = {"ready": 0, "failed": 0}
    claiming = True
    claim_until = time.monotonic() + FILL_CLAIM_FOR
    last_look = 0.0
    with ThreadPoolExecutor(width, thread_name_prefix="clone") as starters:
        if pool.unreachable_since is not None and not vcenter_answers(pool, endpoint, job):
            return
        while claiming or booting:
            claiming = claiming and time.monotonic() < claim_until
            batch = claim_slots(pool_id, width) if claiming else []
            if batch:
                # An admin may have changed the template or clone target since this job
                # started: clone what the pool said when the slots were claimed (read under
                # the claim's locks, with what clone_batch follows), the template the new
                # VM rows record, so no clone is ever mislabelled.
                pool = batch[0].pool or pool
                ok = clone_batch(pool, batch, endpoint, starters, job)
                booting.update((vm.moid, vm) for vm in ok)
                counts["failed"] += len(batch) - len(ok)
                claiming = len(ok) == len(batch)  # a failure backs the pool off: stop here
            elif claiming and not booting:
                break  # full, or at a task limit with nothing of ours in flight
            # Guests are looked at after each batch, but no more often than BOOT_POLL while
            # batches come faster than that (a fast vCenter, the simulator): a look finds
            # little that soon after the clone, and costs a vSphere read and the database
            # work of the move on the path of every next batch.
            if booting and (not batch or time.monotonic() - last_look >= BOOT_POLL):
                last_look = time.monotonic()
                ready, failed = check_boots(pool, booting, endpoint, job)
                counts["ready"] += ready
                counts["failed"] += failed
                if booting and not batch:
                    time.sleep(BOOT_POLL)
    job.log(f"{counts['ready']} VMs ready, {counts['failed']} failed")
    nudge.nudge(pool_id)


def clone_batch(pool: Pool, batch: list[VM], endpoint: Endpoint, starters: Executor, job: runner.JobContext,
                on_progress: Callable[[VM, int], None] | None = None) -> list[VM]:
    """Clone and power on ``batch``; returns the VMs now booting (with their moids).

    ``on_progress(vm, percent)`` hears the clone tasks' progress."""
    try:
        source = placement.template_copy_for(pool)
        hosts = placement.choose_hosts(pool, len(batch))
        boot = guest_setup.guest().plan_clones(pool, batch)  # passwords, user-data, seed ISOs (database only)
    except (placement.NoPlacement, guest_setup.GuestSetupError) as exc:
        for vm in batch:
            record_clone_failure(vm, str(exc), permanent=exc.permanent)
        return []
    specs = [
        CloneSpec(
            template_moid=source.moid,
            snapshot_moid=source.snapshot_moid or None,
            name=vm.name,
            folder_moid=pool.folder.moid if pool.folder else "",
            resource_pool_moid=pool.cluster.resource_pool_moid,
            host_moid=host.moid if host else None,
            datastore_moid=pool.datastore.moid if pool.datastore else None,
            linked=pool.linked_clones,
            cpus=pool.cpus,
            memory_mb=pool.memory_mb,
            annotation=f"vmportal pool {pool.name}",
            extra_config={OWNER_KEY: marker_for(vm), "guestinfo.hostname": vm.name, **boot[vm.pk].extra_config},
            customization=boot[vm.pk].customization,
            cdrom_iso=boot[vm.pk].cdrom_iso,
            power_on=True,
        )
        for vm, host in zip(batch, hosts, strict=True)
    ]
    try:
        with connect(endpoint) as conn:
            guest_setup.guest().upload_seeds(conn, boot.values())
            # Names are unique by the database constraint on live VMs: no FindChild needed.
            results = ops.clone_many(
                conn, specs, check_names=False, executor=starters, with_paths=False,
                on_progress=(lambda i, percent: on_progress(batch[i], percent)) if on_progress else None,
            )
            guest_setup.guest().discard_seeds(conn, [vm for vm, r in zip(batch, results, strict=True)
                                           if isinstance(r, VSphereError)])
    except VSphereError as exc:  # the session itself failed: nothing was started
        results = [exc] * len(batch)
    moves = []
    for vm, host, result in zip(batch, hosts, results, strict=True):
        if isinstance(result, VSphereError):
            job.log(f"{vm.name}: {result}")
            record_clone_failure(vm, str(result), permanent=result.permanent, outage=result.outage)
            continue
        moves.append((vm, {"moid": result.moid, "instance_uuid": result.instance_uuid,
                           "host_id": host.pk if host else None}))
    # The whole batch's moves and history rows in one statement: per VM, they were most
    # of a fill's SQL and of its worker's CPU.
    refused = {e.obj.pk: e for e in transition_many(moves, VMState.BOOTING, allowed=VM_TRANSITIONS)}
    for refusal in refused.values():
        job.log(str(refusal))  # moved meanwhile (drained, failed by the reaper): its new state's owner cleans up
    return [vm for vm, _ in moves if vm.pk not in refused]


def vcenter_answers(pool: Pool, endpoint: Endpoint, job: runner.JobContext) -> bool:
    """After an outage, one cheap call (CurrentTime, after a login if needed) before any slot is
    claimed: while vCenter is still away no VM rows churn, and once it answers the pool
    returns to OK now rather than after its next successful clone."""
    try:
        probe(endpoint)
    except VSphereError as exc:
        if not exc.outage:
            return True  # vCenter answered with a real fault: the clone path records it
        job.log(f"vCenter still unreachable: {exc}")
        record_unreachable(pool.pk, str(exc))
        return False
    recovered = record_reachable(vcenter_id=pool.template.vcenter_id)
    job.log(f"vCenter answers again; {recovered} pools back to OK")
    return True


def check_boots(pool: Pool, booting: dict[str, VM], endpoint: Endpoint, job: runner.JobContext) -> tuple[int, int]:
    """One look at every booting VM: usable ones become ready, overdue ones fail."""
    try:
        with connect(endpoint) as conn:
            seen = ops.check_usable(conn, list(booting), expect=guest_setup.guest().expectations(booting.values()))
            seen = guest_setup.guest().finish_usable(conn, booting, seen)  # ejects seed ISOs, scrubs user-data
    except VSphereError as exc:
        seen = dict.fromkeys(booting, str(exc))
        if exc.outage:
            record_unreachable(pool.pk, str(exc))
        outage = exc.outage
    else:
        outage = False
    failed = 0
    now = timezone.now()
    usable = [(booting[moid], {"ip_address": outcome.ip or "", "hostname": outcome.hostname or "", "ready_at": now})
              for moid, outcome in seen.items() if not isinstance(outcome, str)]
    refused = {e.obj.pk: e for e in transition_many(usable, VMState.READY, allowed=VM_TRANSITIONS)}
    for refusal in refused.values():
        job.log(str(refusal))  # moved meanwhile (drained, timed out by reconcile): not ours to hand out
    made_ready = [vm for vm, _ in usable if vm.pk not in refused]
    record_clone_successes(made_ready)
    for vm, _ in usable:
        del booting[vm.moid]
    for moid, outcome in seen.items():
        if not isinstance(outcome, str):
            continue
        vm = booting[moid]
        if now - vm.state_changed_at > pool.boot_timeout:
            reason = f"The guest did not become usable within {pool.boot_timeout}: {outcome}."
            job.log(f"{vm.name}: {reason}")
            # Boot failures count like clone failures: a template that never boots must
            # back the pool off, not churn clones forever. Not so when vCenter could not
            # be asked: that says nothing about the guest.
            record_clone_failure(vm, reason, permanent=False, outage=outage)
            failed += 1
            del booting[moid]
    return len(made_ready), failed + len(refused)


def destroy_again(job: Job, reason: str) -> None:
    """``pools.destroy``'s hook when its worker died: destroy is idempotent, so run it again."""
    vm = VM.objects.filter(pk=job.args["vm_id"], state=VMState.DESTROYING).first()
    if vm is not None and not runner.unfinished("pools.destroy", vm).exists():
        runner.enqueue("pools.destroy", target=vm, vm_id=vm.pk)


def destroy_vm(vm_id: int, job: runner.JobContext) -> None:
    """Destroy a VM's clone and record it; safe to run twice (a VM already gone is destroyed).

    Its worker also takes over up to DESTROY_BATCH other destroying VMs of the same vCenter
    (fewer when its task limit is lower) whose destroy jobs are still queued, and destroys
    them all at once: a return wave makes hundreds of destroys, and one at a time they drain
    far slower than vCenter could."""
    vm = VM.objects.select_related("vcenter", "pool__folder").get(pk=vm_id)
    if vm.state != VMState.DESTROYING:
        job.log(f"{vm.name} is {vm.state}; nothing to do")
        return
    taken = _take_over_destroys(vm, job)
    if taken:
        job.log(f"destroying {len(taken)} more VMs of {vm.vcenter} with it")
    # The taken jobs' own runs found them taken and beat nothing: beat for them here. A
    # worker killed meanwhile leaves them running without a beat: the reaper fails them and
    # ``destroy_again`` enqueues each anew, which is safe as destroy is idempotent.
    with runner.Heartbeat(*taken.values()):
        try:
            errors = _destroy_batch([vm, *taken], job)
        except Exception as exc:
            for sibling_job in taken.values():
                _finish_taken(sibling_job, job, exc)
            raise
    for sibling, sibling_job in taken.items():
        _finish_taken(sibling_job, job, errors.get(sibling.pk))
    if vm.pk in errors:
        raise errors[vm.pk]


def _takeover_limit(vm: VM) -> int:
    """How many more VMs one destroy job takes: with its own, never more tasks at once than
    its vCenter's task limit (an admin's promise to that vCenter), nor DESTROY_BATCH + 1."""
    return max(0, min(DESTROY_BATCH, vm.vcenter.task_limit - 1))


def _take_over_destroys(vm: VM, job: runner.JobContext) -> dict[VM, int]:
    """Claim the queued destroy jobs of other destroying VMs of ``vm``'s vCenter: their rows
    become running here, so when RQ delivers them ``runner.run`` finds them taken."""
    siblings = (VM.objects.filter(vcenter_id=vm.vcenter_id, state=VMState.DESTROYING).exclude(pk=vm.pk)
                .annotate(key=Cast("pk", CharField())).values("key"))
    now = timezone.now()
    with transaction.atomic():
        # SKIP LOCKED: two destroy workers claiming at once split the queue instead of waiting.
        claimable = list(Job.objects.select_for_update(skip_locked=True)
                         .filter(kind="pools.destroy", status=Job.Status.QUEUED,
                                 object_type=VM._meta.label_lower, object_id__in=Subquery(siblings))
                         .order_by("pk").values_list("pk", "args")[:_takeover_limit(vm)])
        Job.objects.filter(pk__in=[pk for pk, _ in claimable], status=Job.Status.QUEUED).update(
            status=Job.Status.RUNNING, started_at=now, heartbeat_at=now)
    job_of = {args["vm_id"]: pk for pk, args in claimable}
    # A VM with two queued jobs (reconcile raced a return) is destroyed once: its other job
    # finishes as succeeded with it.
    vms = VM.objects.select_related("vcenter", "pool__folder").filter(pk__in=job_of, state=VMState.DESTROYING)
    taken = {v: job_of[v.pk] for v in vms}
    for pk, _ in claimable:
        if pk not in taken.values():
            _finish_taken(pk, job, None)
    return taken


def _finish_taken(job_id: int, by: runner.JobContext, error: Exception | None) -> None:
    """Record a taken-over job's end as ``runner.run`` would have: the error in the runner's
    "<class>: <message>" form, which reconcile reads to choose its retry."""
    taken = Job(pk=job_id, status=Job.Status.RUNNING)
    line = f"{timezone.now():%H:%M:%S} run by {by.job}\n"
    try:
        if error is None:
            taken.move_to(Job.Status.SUCCEEDED, finished_at=timezone.now(), log=Concat(F("log"), Value(line)))
        else:
            taken.move_to(Job.Status.FAILED, finished_at=timezone.now(), log=Concat(F("log"), Value(line)),
                          error=f"{type(error).__name__}: {error}"[:4000])
    except StaleState:
        pass  # the reaper declared it lost meanwhile and compensated: its verdict stands


def _destroy_batch(vms: list[VM], job: runner.JobContext) -> dict[int, Exception]:
    """Destroy ``vms`` (one vCenter) in vSphere together, then record each; the errors of
    those that failed, by VM id (they stay destroying)."""
    seen = {vm.pk: bool(vm.moid) for vm in vms}
    moids = {vm.pk: vm.moid for vm in vms}
    errors: dict[int, Exception] = {}
    try:
        with connect(Endpoint.from_vcenter(vms[0].vcenter)) as conn:
            folders = {vm.pool.folder.moid for vm in vms if not vm.moid and vm.pool and vm.pool.folder}
            # A clone may exist though its moid was never recorded (worker killed mid-clone):
            # look for it in the pool's folder by name and our marker, one listing per folder.
            listed = {f: ops.list_folder_vms(conn, f) for f in folders}
            for vm in vms:
                if not vm.moid and vm.pool and vm.pool.folder:
                    found = [v for v in listed[vm.pool.folder.moid]
                             if v.name == vm.name and v.owner == marker_for(vm)]
                    moids[vm.pk] = found[0].moid if found else ""
                    seen[vm.pk] = bool(found)
            targets = [vm for vm in vms if moids[vm.pk]]
            with ThreadPoolExecutor(min(DESTROY_STARTERS, max(1, len(targets))),
                                    thread_name_prefix="destroy") as starters:
                results = ops.destroy_many(conn, [(moids[vm.pk], marker_for(vm)) for vm in targets],
                                           executor=starters)
            errors = {vm.pk: r for vm, r in zip(targets, results, strict=True) if isinstance(r, VSphereError)}
            # Seed ISOs a failed clone or a crash left.
            guest_setup.guest().discard_seeds(conn, [vm for vm in vms if vm.pk not in errors])
    except VSphereError as exc:  # the session itself failed: every VM stays destroying
        return dict.fromkeys((vm.pk for vm in vms if vm.pk not in errors), exc) | errors
    for vm in vms:
        if vm.pk in errors:
            job.log(f"{vm.name}: {errors[vm.pk]}")
        else:
            _record_destroyed(vm, seen=seen[vm.pk], job=job)
    return errors


def _record_destroyed(vm: VM, *, seen: bool, job: runner.JobContext) -> None:
    # The row, its address and its audit event change together: a worker killed in between
    # leaves the VM destroying (retried), never destroyed with its address still held.
    with transaction.atomic():
        try:
            vm.move_to(VMState.DESTROYED, destroyed_at=timezone.now())
        except TransitionError:
            job.log(f"{vm.name}: another job recorded its end first")
            return
        lands_by = vm.created_at + LATE_CLONE_BOUND  # its clone started after its row was made
        keep_back_until = lands_by if not seen and lands_by > timezone.now() else None
        if guest_setup.guest().release(vm, keep_back_until=keep_back_until) and keep_back_until:
            job.log(f"{vm.name}: its clone was never seen; its address is kept back until {keep_back_until:%H:%M}")
        audit.record("vm.destroyed", target=vm, pool=vm.pool_id)
        if vm.pool_id:
            nudge.nudge(vm.pool_id)
    job.log(f"{vm.name} destroyed")


def purge_folder(folder_id: int, job: runner.JobContext) -> None:
    """Destroy leaked clones of ours; report unknown VMs, destroying them only when the
    folder allows it and they are not on its allowlist. Never a folder, never outside it,
    never a VM that changed since the scan (see ``ops.destroy_if_owned``)."""
    folder = Folder.objects.select_related("vcenter").get(pk=folder_id)
    with connect(Endpoint.from_vcenter(folder.vcenter)) as conn:
        if swept := guest_setup.guest().sweep_seeds(conn, vcenter_id=folder.vcenter_id):  # ISOs crashed workers left
            job.log(f"deleted {swept} stale seed ISOs")
        strays = find_strays(folder, ops.list_folder_vms(conn, folder.moid))
        for stray in strays:
            if not stray.destroy:
                job.log(f"{stray.kind} {stray.name} ({stray.moid}) left alone: {stray.reason}")
                continue
            _purge_one(job, conn, folder, stray)
    job.log(f"{len(strays)} stray VMs in {folder.path}")


def _purge_one(job: runner.JobContext, conn: Connection, folder: Folder, stray: Stray) -> None:
    what = f"{stray.kind} {stray.name} ({stray.moid})"
    if not still_stray(folder, stray):
        job.log(f"{what} left alone: a VM row claimed it since the scan")
        return
    try:
        outcome = ops.destroy_if_owned(conn, stray.moid, expected_owner=stray.owner, folder_moid=folder.moid)
    except VSphereError as exc:
        job.log(f"{what}: could not destroy: {exc}")
        return
    if outcome.gone:
        job.log(f"{what} was already gone")
    elif outcome.skipped:
        job.log(f"{what} left alone: it changed since the scan: {outcome.skipped}")
        audit.record("purge.skip", message=f"{what} in {folder.path} changed since the scan: {outcome.skipped}",
                     after={"moid": stray.moid, "name": stray.name, "folder": folder.path})
    else:
        job.log(f"destroyed {what}")
        audit.record("purge.destroy", message=f"{stray.kind} {stray.name} in {folder.path}",
                     after={"moid": stray.moid, "name": stray.name, "folder": folder.path})
