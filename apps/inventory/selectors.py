"""Read helpers over the mirrored inventory (no vSphere calls)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, FloatField, Func, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from apps.inventory.models import Cluster, Datastore, Host, HostLoadSample, InventoryVM
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
    step, scale = width / max(1, len(values) - 1), height / 100
    return " ".join(f"{i * step:.1f},{height - (0.0 if v < 0 else 100.0 if v > 100 else v) * scale:.1f}"
                    for i, v in enumerate(values) if v is not None)


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

    def hover_rects(self) -> SafeString:
        """The columns as SVG rects, built here: 30 per host through the template language were
        most of the host load page's render at 50 hosts (issue 14)."""
        # x and width are floats, the height a constant: only the title needs escaping.
        return mark_safe("".join(f'<rect class="hover" x="{x}" y="0" width="{w}" height="{SPARK_H}">'  # noqa: S308
                                 f"<title>{escape(title)}</title></rect>" for x, w, title in self.columns))

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


class Epoch(Func):
    """A datetime as seconds since 1970 (UTC): a float loads far faster than a timestamp, and the
    host page reads one per sample (psycopg's datetime parsing was a fifth of its time, issue 14)."""

    output_field = FloatField()

    def get_db_converters(self, connection) -> list:  # type: ignore[no-untyped-def]
        # Both templates below give a float already: no float() per row (6,000 rows a poll).
        return []

    def as_sql(self, compiler, connection, **extra):  # type: ignore[no-untyped-def, override]
        return super().as_sql(compiler, connection, template="EXTRACT(EPOCH FROM %(expressions)s)::float8", **extra)

    def as_sqlite(self, compiler, connection, **extra):  # type: ignore[no-untyped-def]
        # Django stores SQLite datetimes as UTC text; julianday's day 2440587.5 is the epoch.
        return super().as_sql(compiler, connection, template="((julianday(%(expressions)s) - 2440587.5) * 86400.0)",
                              **extra)


def hover_columns(history: list[tuple[float, float | None, float | None]], *, since: datetime, window: timedelta,
                  width: int = SPARK_W) -> list[tuple[float, float, str]]:
    """COLUMNS slices of ``window`` from ``since``, each with the highest CPU and memory percent
    sampled in it, for the chart's hover titles; slices without samples are left out. Samples
    are (Unix time, CPU %, memory %)."""
    slice_ = window / COLUMNS
    start_s, slice_s = since.timestamp(), slice_.total_seconds()
    peaks: dict[int, tuple[float | None, float | None]] = {}
    # Plain comparisons, no generators: this loop runs once per sample (3,000 an hour at 50
    # hosts) on every poll of the host load page (issue 14).
    for at, cpu, mem in history:
        i = int((at - start_s) / slice_s)
        i = 0 if i < 0 else COLUMNS - 1 if i >= COLUMNS else i
        old_cpu, old_mem = peaks.get(i, (None, None))
        if old_cpu is not None and (cpu is None or old_cpu > cpu):
            cpu = old_cpu
        if old_mem is not None and (mem is None or old_mem > mem):
            mem = old_mem
        peaks[i] = (cpu, mem)
    w = width / COLUMNS
    out = []
    zone = timezone.get_current_timezone()  # once, not once per column (its lookup is a thread-local)
    for i, (cpu, mem) in sorted(peaks.items()):
        start = (since + slice_ * i).astimezone(zone)
        text = ", ".join(f"{name} {'unknown' if v is None else f'{v:.0f}%'}"
                         for name, v in (("CPU", cpu), ("memory", mem)))
        out.append((round(i * w, 1), round(w, 2), f"{start:%H:%M}: {text} (peak)"))
    return out


def datastores() -> QuerySet[Datastore]:
    """Every datastore with its capacity, for the host load page."""
    return Datastore.objects.select_related("vcenter").order_by("name")


def host_load(*, window: timedelta = timedelta(hours=1)) -> list[ClusterLoad]:
    """Every host by cluster, with VM counts and the last ``window`` of load, in two queries."""
    # The VM count as a subquery per host (its host_id index), not a join of every inventory
    # VM grouped by the wide host rows: 13 ms of the page at 11,600 VMs, now ~8 (issue 14).
    vm_count = (InventoryVM.objects.filter(host=OuterRef("pk")).order_by().values("host")
                .annotate(n=Count("pk")).values("n"))
    hosts = list(
        Host.objects.select_related("cluster__vcenter", "vcenter")
        .annotate(vm_count=Coalesce(Subquery(vm_count, output_field=IntegerField()), 0))
        .order_by("cluster__name", "name")
    )
    since = timezone.now() - window
    # Tuples, not model instances: thousands of samples per poll, and only two numbers of each.
    samples: dict[int, list[tuple[int | None, int | None]]] = defaultdict(list)
    stamps: dict[int, list[float]] = defaultdict(list)
    for host_id, at, cpu, mem in (HostLoadSample.objects.filter(host__in=[h.pk for h in hosts], at__gte=since)
                                  .order_by("at").values_list("host_id", Epoch("at"), "cpu_usage_mhz",
                                                              "memory_usage_mb")):
        samples[host_id].append((cpu, mem))
        stamps[host_id].append(at)
    groups: dict[int | None, ClusterLoad] = {}
    for h in hosts:
        group = groups.setdefault(h.cluster_id, ClusterLoad(cluster=h.cluster))
        history = samples.get(h.pk, [])
        cpus = [_pct(cpu, h.cpu_capacity_mhz) for cpu, _ in history]
        mems = [_pct(mem, h.memory_capacity_mb) for _, mem in history]
        group.hosts.append(HostRow(
            host=h, vm_count=h.vm_count, cpu_points=sparkline_points(cpus), mem_points=sparkline_points(mems),
            columns=hover_columns(list(zip(stamps.get(h.pk, []), cpus, mems, strict=True)), since=since, window=window),
        ))
    return list(groups.values())
