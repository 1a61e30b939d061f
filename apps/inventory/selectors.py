"""Read helpers over the mirrored inventory (no vSphere calls)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, QuerySet
from django.utils import timezone

from apps.inventory.models import Cluster, Datastore, Host, HostLoadSample
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
    # (x, width, title): a hover target per slice of the chart, with the values it holds.
    columns: list[tuple[float, float, str]] = field(default_factory=list)

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

    def _total(self, used: str, capacity: str) -> float | None:
        # Hosts whose numbers are unknown count in neither sum, so they never read as idle.
        known = [r.host for r in self.hosts if getattr(r.host, used) is not None and getattr(r.host, capacity)]
        return _pct(sum(getattr(h, used) for h in known), sum(getattr(h, capacity) for h in known)) if known else None

    @property
    def cpu_percent(self) -> float | None:
        return self._total("cpu_usage_mhz", "cpu_capacity_mhz")

    @property
    def memory_percent(self) -> float | None:
        return self._total("memory_usage_mb", "memory_capacity_mb")


RANGES = {"1h": timedelta(hours=1), "24h": timedelta(hours=24)}
COLUMNS = 30


def hover_columns(history: list[tuple[datetime, float | None, float | None]], *, since: datetime, window: timedelta,
                  width: int = SPARK_W) -> list[tuple[float, float, str]]:
    """COLUMNS slices of ``window`` from ``since``, each with the highest CPU and memory percent
    sampled in it, for the chart's hover titles; slices without samples are left out."""
    slice_ = window / COLUMNS
    peaks: dict[int, tuple[float | None, float | None]] = {}
    for at, cpu, mem in history:
        i = min(max(int((at - since) / slice_), 0), COLUMNS - 1)
        old_cpu, old_mem = peaks.get(i, (None, None))
        peaks[i] = (max((v for v in (old_cpu, cpu) if v is not None), default=None),
                    max((v for v in (old_mem, mem) if v is not None), default=None))
    w = width / COLUMNS
    out = []
    for i, (cpu, mem) in sorted(peaks.items()):
        start = timezone.localtime(since + slice_ * i)
        text = ", ".join(f"{name} {'unknown' if v is None else f'{v:.0f}%'}"
                         for name, v in (("CPU", cpu), ("memory", mem)))
        out.append((round(i * w, 1), round(w, 2), f"{start:%H:%M}: {text} (peak)"))
    return out


def datastores() -> QuerySet[Datastore]:
    """Every datastore with its capacity, for the host load page."""
    return Datastore.objects.select_related("vcenter").order_by("name")


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
    stamps: dict[int, list[datetime]] = defaultdict(list)
    for host_id, at, cpu, mem in (HostLoadSample.objects.filter(host__in=[h.pk for h in hosts], at__gte=since)
                                  .order_by("at").values_list("host_id", "at", "cpu_usage_mhz", "memory_usage_mb")):
        samples[host_id].append((cpu, mem))
        stamps[host_id].append(at)
    groups: dict[int | None, ClusterLoad] = {}
    for h in hosts:
        group = groups.setdefault(h.cluster_id, ClusterLoad(cluster=h.cluster))
        history = samples.get(h.pk, [])
        group.hosts.append(HostRow(
            host=h, vm_count=h.vm_count,
            cpu_points=sparkline_points([_pct(cpu, h.cpu_capacity_mhz) for cpu, _ in history]),
            mem_points=sparkline_points([_pct(mem, h.memory_capacity_mb) for _, mem in history]),
            columns=hover_columns([(at, _pct(cpu, h.cpu_capacity_mhz), _pct(mem, h.memory_capacity_mb))
                                   for at, (cpu, mem) in zip(stamps.get(h.pk, []), history, strict=True)],
                                  since=since, window=window),
        ))
    return list(groups.values())
