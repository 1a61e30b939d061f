"""Thin RQ jobs: take ids, call the vSphere layer and the pool services, record the outcome."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from apps.audit import services as audit
from apps.inventory.models import Folder
from apps.jobs import runner
from apps.jobs.models import Job
from apps.pools import nudge, placement, templates
from apps.pools.models import VM, Pool, VMState
from apps.pools.services import (
    claim_slot,
    find_strays,
    mark_degraded,
    record_clone_failure,
    record_clone_success,
)
from apps.vsphere import operations as ops
from apps.vsphere.errors import Unreachable, VSphereError
from apps.vsphere.session import Endpoint, connect
from apps.vsphere.types import OWNER_KEY, CloneSpec

log = logging.getLogger(__name__)
HEARTBEAT_EVERY = 15.0


def marker_for(vm: VM) -> str:
    return f"{settings.VMPORTAL_INSTANCE_ID}:{vm.pk}"


class _Heartbeat:
    """Touches the Job row while the job lives, so reconcile can tell a dead one."""

    def __init__(self, job: Job):
        self.job_id, self.stop = job.pk, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        try:
            while not self.stop.is_set():
                Job.objects.filter(pk=self.job_id).update(heartbeat_at=timezone.now())
                self.stop.wait(HEARTBEAT_EVERY)
        finally:
            connection.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


@runner.handler("pools.fill", queue="clone")
def fill(job: runner.JobContext, *, pool_id: int) -> None:
    """Clone until the pool is full, ``task_limit`` clones at a time, then stop."""
    pool = Pool.objects.select_related("template__vcenter", "cluster").get(pk=pool_id)
    vcenter = pool.template.vcenter
    width = max(1, min(vcenter.task_limit, settings.VMPORTAL_CLONE_LIMIT, pool.size))
    endpoint = Endpoint.from_vcenter(vcenter)
    counts = {"ready": 0, "failed": 0}
    lock = threading.Lock()

    def slot_loop() -> None:
        close_old_connections()
        try:
            while (vm := claim_slot(pool_id)) is not None:
                outcome = clone_one(vm, endpoint, job)
                with lock:
                    counts[outcome] += 1
                if outcome != "ready":
                    return
        finally:
            connection.close()

    with _Heartbeat(job.job), ThreadPoolExecutor(width, thread_name_prefix=f"fill-{pool.name}") as pool_threads:
        for future in [pool_threads.submit(slot_loop) for _ in range(width)]:
            future.result()
    job.log(f"{counts['ready']} VMs ready, {counts['failed']} failed")
    nudge.nudge(pool_id)


def clone_one(vm: VM, endpoint: Endpoint, job: runner.JobContext) -> str:
    """Clone, power on and wait for one VM. Returns "ready" or "failed"."""
    pool = Pool.objects.select_related("template", "cluster", "datastore", "folder").get(pk=vm.pool_id)
    try:
        source = placement.template_copy_for(pool)
        host = placement.choose_host(pool)
        if host is not None:
            # Visible to the other fill threads at once, so the burst spreads over hosts.
            VM.objects.filter(pk=vm.pk).update(host=host)
        spec = CloneSpec(
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
            extra_config={OWNER_KEY: marker_for(vm), "guestinfo.hostname": vm.name},
            power_on=True,
        )
        with connect(endpoint) as conn:
            result = ops.clone_vm(conn, spec)
            VM.objects.filter(pk=vm.pk).update(moid=result.moid, instance_uuid=result.instance_uuid)
            vm.move_to(VMState.BOOTING)
            guest = ops.wait_until_usable(conn, result.moid, timeout=pool.boot_timeout.total_seconds())
    except (VSphereError, placement.NoPlacement) as exc:
        job.log(f"{vm.name}: {exc}")
        # Boot failures count like clone failures: a template that never boots must
        # back the pool off, not churn clones forever.
        record_clone_failure(vm, str(exc), permanent=getattr(exc, "permanent", True))
        if isinstance(exc, Unreachable):
            mark_degraded(pool, f"vCenter unreachable: {exc}")
        return "failed"
    vm.move_to(VMState.READY, ip_address=guest.ip or "", hostname=guest.hostname or "", ready_at=timezone.now())
    record_clone_success(vm)
    return "ready"


@runner.handler("pools.destroy", queue="purge")
def destroy(job: runner.JobContext, *, vm_id: int) -> None:
    vm = VM.objects.select_related("vcenter", "pool__folder").get(pk=vm_id)
    if vm.state != VMState.DESTROYING:
        job.log(f"{vm.name} is {vm.state}; nothing to do")
        return
    with connect(Endpoint.from_vcenter(vm.vcenter)) as conn:
        moid = vm.moid
        if not moid and vm.pool and vm.pool.folder:
            # The clone may exist though its moid was never recorded (worker killed
            # mid-clone): look for it in the pool's folder by name and our marker.
            found = [v for v in ops.list_folder_vms(conn, vm.pool.folder.moid)
                     if v.name == vm.name and v.owner == marker_for(vm)]
            moid = found[0].moid if found else ""
        if moid:
            ops.destroy_vm(conn, moid, expected_owner=marker_for(vm))
    vm.move_to(VMState.DESTROYED, destroyed_at=timezone.now())
    job.log(f"{vm.name} destroyed")
    audit.record("vm.destroyed", target=vm, pool=vm.pool_id)
    if vm.pool_id:
        nudge.nudge(vm.pool_id)


@runner.handler("pools.prepare_template", queue="deploy")
def prepare_template(job: runner.JobContext, *, copy_id: int) -> None:
    copy = templates.prepare_copy(copy_id)
    job.log(f"{copy} ready (snapshot {copy.snapshot_moid or 'none'})")


@runner.handler("pools.purge", queue="purge")
def purge(job: runner.JobContext, *, folder_id: int) -> None:
    """Destroy leaked clones of ours; report unknown VMs, destroying them only when the
    folder allows it and they are not on its allowlist. Never a folder, never outside it."""
    folder = Folder.objects.select_related("vcenter").get(pk=folder_id)
    with connect(Endpoint.from_vcenter(folder.vcenter)) as conn:
        strays = find_strays(folder, ops.list_folder_vms(conn, folder.moid))
        for stray in strays:
            allowed = stray.ours or (folder.purge_unknown and stray.name not in (folder.purge_allowlist or []))
            if not allowed:
                job.log(f"{stray.kind} {stray.name} ({stray.moid}) left alone: purge is off for {folder.path}")
                continue
            try:
                ops.destroy_vm(conn, stray.moid)
            except VSphereError as exc:
                job.log(f"{stray.kind} {stray.name}: could not destroy: {exc}")
                continue
            job.log(f"destroyed {stray.kind} {stray.name} ({stray.moid})")
            audit.record("purge.destroy", message=f"{stray.kind} {stray.name} in {folder.path}",
                         after={"moid": stray.moid, "name": stray.name, "folder": folder.path})
    job.log(f"{len(strays)} stray VMs in {folder.path}")
