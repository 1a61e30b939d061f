"""Read side of the system health page: vCenters, RQ queues and workers, troubled pools,
VMs in pool folders that no pool row owns, and build VMs left running (no vSphere calls)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from redis.exceptions import RedisError
from rq import Worker

from apps.core.redis_client import redis_client, rq_queue
from apps.inventory.models import InventoryVM, VCenter
from apps.pools.models import LIVE_STATES, VM, Pool, TemplateBuild


def queue_stats() -> dict[str, Any]:
    """RQ queue depths and failed counts; Redis being down is a fact to show, not an error."""
    queues = []
    try:
        for index, name in enumerate(settings.RQ_QUEUES):
            queue = rq_queue(name)
            queues.append({"name": name, "index": index, "depth": queue.count,
                           "failed": queue.failed_job_registry.count})
        workers = Worker.all(connection=redis_client())
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
    # One anti-join with a limit: the page polls this, and a folder holds thousands of VMs.
    owned = VM.objects.filter(state__in=LIVE_STATES, vcenter_id=OuterRef("vcenter_id"), name=OuterRef("name"))
    return list(
        InventoryVM.objects.filter(folder_id__in=Pool.objects.exclude(folder=None).values("folder_id"),
                                   is_template=False)
        .exclude(Exists(owned)).select_related("folder").order_by("name")[:limit]
    )


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
