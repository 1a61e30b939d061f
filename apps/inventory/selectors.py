"""Read helpers over the mirrored inventory (no vSphere calls)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import Count, QuerySet
from django.utils import timezone

from apps.inventory.models import Cluster, Host, HostLoadSample
from apps.vsphere.placement import HostCandidate


def host_candidates(cluster: Cluster | int) -> list[HostCandidate]:
    """The cluster's hosts as placement candidates (apps.vsphere.placement), in two queries."""
    cluster_id = cluster.pk if isinstance(cluster, Cluster) else cluster
    hosts = Host.objects.filter(cluster_id=cluster_id).prefetch_related("datastores")
    return [
        HostCandidate(
            moid=h.moid, name=h.name, connection_state=h.connection_state, in_maintenance=h.in_maintenance,
            config_issues=h.config_issues, overall_status=h.overall_status,
            cpu_usage_mhz=h.cpu_usage_mhz, cpu_capacity_mhz=h.cpu_capacity_mhz,
            memory_usage_mb=h.memory_usage_mb, memory_capacity_mb=h.memory_capacity_mb,
            datastore_moids=frozenset(d.moid for d in h.datastores.all()),
        )
        for h in hosts
    ]


def load_history(host: Host, *, limit: int = 288) -> QuerySet[HostLoadSample]:
    """The host's newest load samples, newest first (for charts)."""
    return host.load_samples.order_by("-at")[:limit]


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
    # Tuples, not model instances: thousands of samples per poll, and only two numbers of each.
    samples: dict[int, list[tuple[int | None, int | None]]] = defaultdict(list)
    for host_id, cpu, mem in (HostLoadSample.objects.filter(host__in=[h.pk for h in hosts], at__gte=since)
                              .order_by("at").values_list("host_id", "cpu_usage_mhz", "memory_usage_mb")):
        samples[host_id].append((cpu, mem))
    groups: dict[int | None, ClusterLoad] = {}
    for h in hosts:
        group = groups.setdefault(h.cluster_id, ClusterLoad(cluster=h.cluster))
        history = samples.get(h.pk, [])
        group.hosts.append(HostRow(
            host=h, vm_count=h.vm_count,
            cpu_points=sparkline_points([_pct(cpu, h.cpu_capacity_mhz) for cpu, _ in history]),
            mem_points=sparkline_points([_pct(mem, h.memory_capacity_mb) for _, mem in history]),
        ))
    return list(groups.values())
