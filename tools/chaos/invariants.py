"""The invariants of DESIGN.md "Invariants in operation", read from the database and the
simulator, and the wait for a system to recover after a fault.

Needs Django set up (run.py does it) against the chaos database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections
from django.db.models import Count, Q
from django.utils import timezone

from apps.firstboot.models import IPAllocation
from apps.inventory.models import VCenter
from apps.jobs.models import Job
from apps.leases.models import Lease, OnDemandRequest, VMTask
from apps.pools.models import VM, Pool, Template, TemplateBuild, TemplateCopy, TemplateStatus, VMState
from apps.vsphere.errors import VSphereError
from apps.vsphere.inventory import fetch_inventory
from apps.vsphere.session import Endpoint, close_all, connect


def stuck_after() -> timedelta:
    """How long a row may stay in flight after its last change before it is stuck.

    DESIGN.md: a job whose heartbeat stopped (VMPORTAL_JOB_STALE_AFTER) is failed and its
    work retried or compensated within a minute. Booting VMs get their pool's boot timeout
    on top."""
    return timedelta(seconds=getattr(settings, "VMPORTAL_JOB_STALE_AFTER", 90) + 60)


TRANSIENT_VM = (VMState.CLONING, VMState.BOOTING, VMState.DESTROYING, VMState.FAILED)
UNFINISHED_JOB = (Job.Status.QUEUED, Job.Status.RUNNING)
UNFINISHED_TEMPLATE = (TemplateStatus.PENDING, TemplateStatus.DEPLOYING, TemplateStatus.PREPARING)

# The rows of the table, in order: (key, label, counts toward failure)
ROWS = [
    ("orphans", "VMs in the simulator without a row", True),
    ("ghosts", "live rows whose VM is gone from the simulator", True),
    ("stuck", "rows stuck past their bound", True),
    ("doubled", "VMs leased twice", True),
    ("lost", "leases lost (leased VM without lease, or lease on a VM not leased)", True),
    ("addresses", "addresses held by destroyed VMs", True),
    ("errors_5xx", "5xx answers", True),
]


@dataclass
class Snapshot:
    """One reading of every invariant (0 is good) and what the pools look like."""

    counts: dict[str, int]
    details: dict[str, list[str]] = field(default_factory=dict)
    identities: dict[str, set[str]] = field(default_factory=dict)  # everything found, for the next fault
    carried: dict[str, int] = field(default_factory=dict)  # found, but left by an earlier fault
    pools: dict[str, str] = field(default_factory=dict)  # name -> "ready/size health"
    pools_full: bool = False
    leftovers: int = 0  # rows in flight that were in flight before the fault ended
    vsphere_error: str = ""

    @property
    def clean(self) -> bool:
        return not any(self.counts.get(key) for key, _, fails in ROWS if fails) and not self.vsphere_error


def _vsphere_vms() -> list:
    """Every VM and template in every vCenter of the chaos database."""
    vms = []
    for vc in VCenter.objects.all():
        with connect(Endpoint.from_vcenter(vc)) as conn:
            vms += [(vc.pk, rec) for rec in fetch_inventory(conn).vms]
    return vms


def _stuck(now: datetime, bound: timedelta) -> dict[str, str]:
    cutoff = now - bound
    out = {}
    for vm in VM.objects.filter(state__in=TRANSIENT_VM).select_related("pool"):
        limit = bound + (vm.pool.boot_timeout if vm.pool and vm.state == VMState.BOOTING else timedelta(0))
        if vm.state_changed_at < now - limit:
            out[f"VM#{vm.pk}"] = (f"VM {vm.name} {vm.state} since {vm.state_changed_at:%H:%M:%S} "
                                  f"({vm.state_reason[:80]})")
    for job in Job.objects.filter(status__in=UNFINISHED_JOB):
        last = job.heartbeat_at or job.started_at or job.created_at
        if last < cutoff:
            out[f"Job#{job.pk}"] = f"Job {job.kind} #{job.pk} {job.status} since {last:%H:%M:%S}"
    for req in OnDemandRequest.objects.filter(status__in=(OnDemandRequest.Status.QUEUED,
                                                          OnDemandRequest.Status.PROVISIONING),
                                              created_at__lt=cutoff):
        out[f"request#{req.pk}"] = f"on-demand request {req.request_id} {req.status} since {req.created_at:%H:%M:%S}"
    for task in VMTask.objects.filter(status=VMTask.Status.QUEUED, created_at__lt=cutoff):
        out[f"task#{task.pk}"] = f"VM task {task.kind} #{task.pk} queued since {task.created_at:%H:%M:%S}"
    for copy in TemplateCopy.objects.filter(status__in=UNFINISHED_TEMPLATE, status_changed_at__lt=cutoff):
        out[f"copy#{copy.pk}"] = f"template copy {copy} {copy.status} since {copy.status_changed_at:%H:%M:%S}"
    for t in Template.objects.filter(status__in=UNFINISHED_TEMPLATE, status_changed_at__lt=cutoff):
        out[f"template#{t.pk}"] = f"template {t} {t.status} since {t.status_changed_at:%H:%M:%S}"
    return out


def _known(vcenter_id: int, rec, rows: dict) -> bool:
    if rec.moid in rows["moids"][vcenter_id]:
        return True
    prefix = f"{settings.VMPORTAL_INSTANCE_ID}:"
    marker = rec.marker or ""
    if marker.startswith(prefix) and marker.removeprefix(prefix).isdigit():
        # A clone whose row has not recorded its moid yet (mid-clone): known while the row lives.
        return int(marker.removeprefix(prefix)) in rows["live_ids"]
    # A template copy or build VM being made: its row knows it by name until the job records the moid.
    return rec.name in rows["names"][vcenter_id]


def _rows_by_vcenter() -> dict:
    moids: dict[int, set[str]] = {vc: set() for vc in VCenter.objects.values_list("pk", flat=True)}
    names: dict[int, set[str]] = {vc: set() for vc in moids}
    for vc, moid in VM.objects.exclude(state=VMState.DESTROYED).exclude(moid="").values_list("vcenter_id", "moid"):
        moids[vc].add(moid)
    for vc, moid in TemplateCopy.objects.exclude(moid="").values_list("template__vcenter_id", "moid"):
        moids[vc].add(moid)
    for copy in TemplateCopy.objects.filter(status__in=UNFINISHED_TEMPLATE).select_related("template", "cluster"):
        names[copy.template.vcenter_id].add(f"{copy.template.name}-{copy.cluster.name}"[:80])
    for vc, moid in TemplateBuild.objects.exclude(moid="").values_list("vcenter_id", "moid"):
        moids[vc].add(moid)
    for vc, name in TemplateBuild.objects.filter(
            status__in=(TemplateBuild.Status.CLONING, TemplateBuild.Status.CAPTURING)).values_list("vcenter_id",
                                                                                                 "vm_name"):
        names[vc].add(name)
    live_ids = set(VM.objects.exclude(state=VMState.DESTROYED).values_list("pk", flat=True))
    return {"moids": moids, "names": names, "live_ids": live_ids}


def pools_state() -> tuple[dict[str, str], bool]:
    out, full = {}, True
    ready = Count("vms", filter=Q(vms__state=VMState.READY, vms__on_demand=False))
    for pool in Pool.objects.filter(enabled=True).annotate(ready=ready).order_by("name"):
        out[pool.name] = f"{pool.ready}/{pool.size} {pool.health}"
        full &= pool.ready >= pool.size and pool.health == Pool.Health.OK
    return out, full


def check(*, errors_5xx: int = 0, fault_ended_at: datetime | None = None, bound: timedelta | None = None,
          originals: frozenset[str] = frozenset(), carried: dict[str, set[str]] | None = None) -> Snapshot:
    """Read every invariant once. ``originals`` are the simulator's own VMs (its templates);
    ``carried`` the violations an earlier fault left, by invariant and identity: they are
    reported apart, so each fault is judged by what it did."""
    close_old_connections()
    bound = bound or stuck_after()
    carried = carried or {}
    now = timezone.now()
    found: dict[str, dict[str, str]] = {key: {} for key, _, _ in ROWS}
    snap = Snapshot(dict.fromkeys(found, 0))
    try:
        inventory = _vsphere_vms()
    except VSphereError as exc:
        close_all()  # a restarted simulator does not know our old sessions
        snap.vsphere_error = str(exc)
        inventory = None
    rows = _rows_by_vcenter()
    if inventory is not None:
        found["orphans"] = {f"vm:{vc}:{rec.moid}": f"{rec.name} ({rec.moid}, marker {rec.marker or '-'})"
                            for vc, rec in inventory if rec.moid not in originals and not _known(vc, rec, rows)}
        present = {(vc, rec.moid) for vc, rec in inventory}
        found["ghosts"] = {f"VM#{vm.pk}": f"VM {vm.name} {vm.state} ({vm.moid})" for vm in
                           VM.objects.filter(state__in=(VMState.READY, VMState.LEASED)).exclude(moid="")
                           if (vm.vcenter_id, vm.moid) not in present}
    found["stuck"] = _stuck(now, bound)
    doubled = Lease.objects.values("vm_id").annotate(n=Count("pk")).filter(n__gt=1).values_list("vm_id", flat=True)
    found["doubled"] = {f"VM#{pk}": f"VM id {pk}" for pk in doubled}
    found["lost"] = {f"VM#{vm.pk}": f"VM {vm.name} leased, no active lease" for vm in
                     VM.objects.filter(state=VMState.LEASED).exclude(lease__ended_at__isnull=True)}
    found["lost"] |= {f"lease#{lease.pk}": f"lease {lease.pk} active on {lease.vm.name} ({lease.vm.state})"
                      for lease in Lease.objects.active().exclude(vm__state=VMState.LEASED).select_related("vm")}
    found["addresses"] = {f"ip#{a.pk}": f"{a.address} held by destroyed {a.vm.name}" for a in
                          IPAllocation.objects.filter(vm__state=VMState.DESTROYED).select_related("vm")}
    for key, items in found.items():
        new = {k: v for k, v in items.items() if k not in carried.get(key, set())}
        snap.counts[key] = len(new)
        snap.details[key] = list(new.values())
        snap.identities[key] = set(items)
        if len(new) < len(items):
            snap.carried[key] = len(items) - len(new)
    snap.counts["errors_5xx"] = errors_5xx
    snap.pools, snap.pools_full = pools_state()
    if fault_ended_at is not None:
        old = set(carried.get("stuck", set()))
        left = [f"VM#{pk}" for pk in VM.objects.filter(state__in=TRANSIENT_VM, state_changed_at__lte=fault_ended_at)
                .values_list("pk", flat=True)]
        left += [f"Job#{pk}" for pk in Job.objects.filter(status__in=UNFINISHED_JOB, created_at__lte=fault_ended_at)
                 .exclude(kind="pools.purge").values_list("pk", flat=True)]
        snap.leftovers = len([x for x in left if x not in old])
    return snap


def wait_for_recovery(*, fault_ended_at: datetime, deadline_s: float, errors_5xx=lambda: 0,
                      bound: timedelta | None = None, originals: frozenset[str] = frozenset(),
                      carried: dict[str, set[str]] | None = None, progress=print) -> tuple[Snapshot, float | None]:
    """Poll until every invariant is 0, every pool is full and healthy and nothing in flight
    dates from before the fault ended; returns the last reading and the seconds it took
    (None when the deadline passed first, in which case the reading is taken with the
    rows' bounds already exceeded)."""
    started = time.monotonic()
    offset = (timezone.now() - fault_ended_at).total_seconds()
    last_print = 0.0
    while True:
        snap = check(errors_5xx=errors_5xx(), fault_ended_at=fault_ended_at, bound=bound, originals=originals,
                     carried=carried)
        elapsed = time.monotonic() - started + offset
        # 5xx answers are history, not state: they fail the scenario but do not delay recovery.
        settled = not any(snap.counts[k] for k, _, _ in ROWS if k != "errors_5xx")
        if settled and snap.pools_full and not snap.leftovers and not snap.vsphere_error:
            return snap, elapsed
        if elapsed > deadline_s:
            return snap, None
        if time.monotonic() - last_print > 15:
            last_print = time.monotonic()
            progress(f"    waiting {elapsed:5.0f}s: pools {snap.pools}, leftovers {snap.leftovers}, "
                     + ", ".join(f"{k} {v}" for k, v in snap.counts.items() if v)
                     + (f", vSphere: {snap.vsphere_error[:80]}" if snap.vsphere_error else ""))
        time.sleep(2)


def table(title: str, snap: Snapshot, recovery: float | None) -> str:
    lines = [f"  {title}", f"    {'invariant':<70} {'count':>6}"]
    for key, label, _ in ROWS:
        lines.append(f"    {label:<70} {snap.counts.get(key, 0):>6}")
    rec = f"{recovery:.1f} s" if recovery is not None else "NOT RECOVERED"
    lines.append(f"    {'time to recover (fault end -> invariants 0, pools full)':<70} {rec:>6}")
    lines.append(f"    pools: {', '.join(f'{k} {v}' for k, v in snap.pools.items())}")
    if snap.carried:
        lines.append("    not counted, left by an earlier fault: "
                     + ", ".join(f"{k} {v}" for k, v in snap.carried.items()))
    for key, items in snap.details.items():
        for item in items[:8]:
            lines.append(f"      {key}: {item}")
        if len(items) > 8:
            lines.append(f"      {key}: ... {len(items) - 8} more")
    if snap.vsphere_error:
        lines.append(f"      simulator unreadable: {snap.vsphere_error}")
    return "\n".join(lines)

