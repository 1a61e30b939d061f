"""Read side of the admin pages: audit search, host load, system health (no vSphere calls)."""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from apps.audit.models import AuditEvent
from apps.inventory.models import Cluster, Host, HostLoadSample, InventoryVM, VCenter
from apps.pools.models import LIVE_STATES, VM, Pool, TemplateBuild

# --- audit log ----------------------------------------------------------------------------


def filter_audit(*, actor: str = "", action: str = "", pool: Pool | None = None,
                 since: datetime | None = None, until: datetime | None = None, q: str = "") -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.all()
    if actor:
        events = events.filter(actor_name=actor)
    if action:
        # "pool." finds every pool action; a full name finds just that one.
        events = events.filter(action__startswith=action)
    if pool is not None:
        events = events.filter(pool_id=pool.pk)
    if since is not None:
        events = events.filter(at__gte=since)
    if until is not None:
        events = events.filter(at__lt=until)
    if q:
        events = events.filter(
            Q(target_repr__icontains=q) | Q(message__icontains=q) | Q(action__icontains=q)
            | Q(actor_name__icontains=q) | Q(request_id=q)
        )
    return events.order_by("-at", "-id")


def encode_cursor(event: AuditEvent) -> str:
    raw = f"{event.at.isoformat()}|{event.pk}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int] | None:
    """(at, id) of the last row seen, or None for a cursor that is not ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at_text, id_text = raw.rsplit("|", 1)
        at = parse_datetime(at_text)
        return (at, int(id_text)) if at is not None else None
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


@dataclass
class Page:
    events: list[AuditEvent]
    next_cursor: str | None


def audit_page(events: QuerySet[AuditEvent], *, after: str = "", size: int = 50) -> Page:
    """One page, newest first, after the cursor (keyset: an index range scan, never OFFSET or COUNT)."""
    position = decode_cursor(after) if after else None
    if position is not None:
        at, pk = position
        events = events.filter(Q(at__lt=at) | Q(at=at, pk__lt=pk))
    rows = list(events[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return Page(events=rows, next_cursor=encode_cursor(rows[-1]) if more and rows else None)


@dataclass
class DiffRow:
    key: str
    before: Any
    after: Any

    @property
    def changed(self) -> bool:
        return self.before != self.after


def audit_diff(event: AuditEvent) -> list[DiffRow]:
    before = event.before if isinstance(event.before, dict) else {}
    after = event.after if isinstance(event.after, dict) else {}
    keys = list(dict.fromkeys([*before, *after]))
    return [DiffRow(key=k, before=before.get(k), after=after.get(k)) for k in keys]


# --- host load ---------------------------------------------------------------------------

SPARK_W, SPARK_H = 120, 24


def sparkline_points(values: list[float | None], *, width: int = SPARK_W, height: int = SPARK_H) -> str:
    """SVG polyline points for percentages 0–100, oldest first; unknown samples are skipped."""
    if not values:
        return ""
    step = width / max(1, len(values) - 1)
    points = []
    for i, v in enumerate(values):
        if v is None:
            continue
        v = max(0.0, min(100.0, v))
        points.append(f"{i * step:.1f},{height - v * height / 100:.1f}")
    return " ".join(points)


def _pct(used: int | None, capacity: int | None) -> float | None:
    if used is None or not capacity:
        return None
    return 100.0 * used / capacity


@dataclass
class HostRow:
    host: Host
    vm_count: int
    cpu_points: str = ""
    mem_points: str = ""

    @property
    def badges(self) -> list[tuple[str, str]]:
        h = self.host
        out = []
        if h.connection_state != "connected":
            out.append(("bad", h.connection_state))
        if h.in_maintenance:
            out.append(("warn", "maintenance"))
        if h.config_issues:
            out.append(("warn", f"{h.config_issues} config issue{'s' if h.config_issues != 1 else ''}"))
        if h.overall_status in ("red", "yellow"):
            out.append(("bad" if h.overall_status == "red" else "warn", f"status {h.overall_status}"))
        return out


@dataclass
class ClusterLoad:
    cluster: Cluster | None
    hosts: list[HostRow] = field(default_factory=list)


def host_load(*, window: timedelta = timedelta(hours=1)) -> list[ClusterLoad]:
    """Every host by cluster, with VM counts and the last ``window`` of load, in three queries."""
    hosts = list(
        Host.objects.select_related("cluster", "vcenter")
        .annotate(vm_count=Count("vms"))
        .order_by("cluster__name", "name")
    )
    since = timezone.now() - window
    samples: dict[int, list[HostLoadSample]] = defaultdict(list)
    for s in HostLoadSample.objects.filter(host__in=[h.pk for h in hosts], at__gte=since).order_by("at"):
        samples[s.host_id].append(s)
    groups: dict[int | None, ClusterLoad] = {}
    for h in hosts:
        group = groups.setdefault(h.cluster_id, ClusterLoad(cluster=h.cluster))
        history = samples.get(h.pk, [])
        group.hosts.append(HostRow(
            host=h, vm_count=h.vm_count,
            cpu_points=sparkline_points([_pct(s.cpu_usage_mhz, h.cpu_capacity_mhz) for s in history]),
            mem_points=sparkline_points([_pct(s.memory_usage_mb, h.memory_capacity_mb) for s in history]),
        ))
    return list(groups.values())


# --- system health -----------------------------------------------------------------------


def queue_stats() -> dict[str, Any]:
    """RQ queue depths and failed counts; Redis being down is a fact to show, not an error."""
    import django_rq
    from redis.exceptions import RedisError
    from rq import Worker

    queues = []
    try:
        for index, name in enumerate(settings.RQ_QUEUES):
            queue = django_rq.get_queue(name)
            queues.append({"name": name, "index": index, "depth": queue.count,
                           "failed": queue.failed_job_registry.count})
        workers = Worker.all(connection=django_rq.get_connection("default"))
        return {"ok": True, "message": "", "queues": queues,
                "workers": len(workers), "scheduler_workers": sum(1 for w in workers if _has_scheduler(w))}
    except (RedisError, OSError) as exc:
        return {"ok": False, "message": f"Redis is unavailable: {exc}", "queues": queues,
                "workers": None, "scheduler_workers": None}


def _has_scheduler(worker: Any) -> bool:
    # rq ≥ 2 workers started --with-scheduler report a scheduler pid or attribute; be lenient.
    return bool(getattr(worker, "scheduler_pid", None) or getattr(worker, "scheduler", None))


def unowned_vms(limit: int = 200) -> list[InventoryVM]:
    """VMs in folders our pools clone into that match no live VM row (leaks or strays)."""
    folder_ids = set(Pool.objects.exclude(folder=None).values_list("folder_id", flat=True))
    if not folder_ids:
        return []
    live = set(VM.objects.filter(state__in=LIVE_STATES).values_list("vcenter_id", "name"))
    candidates = InventoryVM.objects.filter(folder_id__in=folder_ids, is_template=False).select_related("folder")
    out = []
    for vm in candidates.order_by("name").iterator(chunk_size=1000):
        if (vm.vcenter_id, vm.name) not in live:
            out.append(vm)
            if len(out) >= limit:
                break
    return out


BUILD_VM_OLD = timedelta(days=3)  # a build VM this old is probably forgotten


@dataclass
class BuildVM:
    build: TemplateBuild
    age: timedelta

    @property
    def old(self) -> bool:
        return self.age >= BUILD_VM_OLD


def build_vms(*, now: datetime | None = None) -> list[BuildVM]:
    """Derive build VMs that exist (or are being cloned) in vSphere, oldest first.

    Each holds a full clone, powered on, until its admin captures or discards it; one
    forgotten costs CPU, memory and disk silently, so health lists them with their age.
    """
    now = now or timezone.now()
    S = TemplateBuild.Status
    builds = (TemplateBuild.objects.filter(kind=TemplateBuild.Kind.DERIVE)
              .filter(Q(status__in=(S.CLONING, S.READY, S.CAPTURING, S.DISCARDING)) | Q(status=S.FAILED, moid__gt=""))
              .select_related("vcenter", "template", "source_template", "cluster", "created_by")
              .order_by("created_at"))
    return [BuildVM(build=b, age=now - b.created_at) for b in builds]


def system_health() -> dict[str, Any]:
    vcenters = list(VCenter.objects.order_by("name"))
    troubled = list(
        Pool.objects.exclude(health=Pool.Health.OK).select_related("template", "cluster").order_by("name")
    )
    rq = queue_stats()
    orphans = unowned_vms()
    ok = (
        rq["ok"]
        and all(v.status != VCenter.Status.UNREACHABLE for v in vcenters if v.enabled)
        and not any(p.health == Pool.Health.FAILING for p in troubled)
    )
    # Build VMs are a cost to watch, not a fault: they never turn the status to "problem".
    return {"ok": ok, "vcenters": vcenters, "pools": troubled, "rq": rq, "unowned": orphans,
            "build_vms": build_vms(), "build_vm_old_days": BUILD_VM_OLD.days}


def system_health_json(facts: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": "ok" if facts["ok"] else "problem",
        "vcenters": [
            {"name": v.name, "enabled": v.enabled, "status": v.status, "reason": v.status_reason,
             "latency_ms": v.latency_ms, "last_sync_at": v.last_sync_at.isoformat() if v.last_sync_at else None}
            for v in facts["vcenters"]
        ],
        "rq": {k: v for k, v in facts["rq"].items()},
        "pools": [
            {"name": p.name, "health": p.health, "reason": p.health_reason,
             "consecutive_failures": p.consecutive_failures,
             "retry_at": p.retry_at.isoformat() if p.retry_at else None}
            for p in facts["pools"]
        ],
        "unowned_vms": [
            {"name": vm.name, "moid": vm.moid, "folder": vm.folder.path if vm.folder else "",
             "vcenter_id": vm.vcenter_id}
            for vm in facts["unowned"]
        ],
        "build_vms": [
            {"name": b.build.vm_name, "moid": b.build.moid, "vcenter": b.build.vcenter.name,
             "cluster": b.build.cluster.name, "template": b.build.template_name,
             "source_template": b.build.source_template.name if b.build.source_template else None,
             "status": b.build.status, "ip": b.build.ip_address or None,
             "created_by": b.build.created_by.get_username() if b.build.created_by else None,
             "created_at": b.build.created_at.isoformat(), "age_seconds": int(b.age.total_seconds()),
             "old": b.old}
            for b in facts["build_vms"]
        ],
    }
