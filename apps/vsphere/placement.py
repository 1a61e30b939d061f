"""Which host a clone goes to: pure Python over plain host records, no vSphere calls.

A host is usable when it is connected, not in maintenance, has no configuration issue,
is not red, mounts the target datastore, reports quick stats (missing stats mean the
load is unknown, so the host is skipped, never counted as idle) and is under the
utilisation limit. Among usable hosts the least loaded win; a burst of clones is spread
over the least-loaded hosts, counting the clones already placed on each, so ten clones
started together do not all land on the host that looked emptiest a moment ago.

Checkout balancing (pools with balance_hosts) uses the same rule: a VM handed out on a host
over the limit moves to a usable host at least the balance gap under it (``balance_target``).
Both thresholds come from settings (VMPORTAL_HOST_OVERLOAD_PCT, VMPORTAL_HOST_BALANCE_GAP_PCT).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

from apps.core.errors import Unavailable

if TYPE_CHECKING:
    from apps.vsphere.inventory import HostRecord



@dataclass(frozen=True)
class Thresholds:
    """Shares 0..1. ``overload``: a host above it of its CPU or memory gets no new clones, and
    its checked-out VMs may move. ``gap``: a burst of clones is spread over the hosts within it
    of the least loaded (a nearly full host is not "spread onto" for fairness), and a VM moves
    only to a host at least this far under ``overload`` (a vMotion to a host nearly as busy is
    not worth its cost)."""

    overload: float
    gap: float

    @property
    def move_below(self) -> float:
        return self.overload - self.gap

    @property
    def overload_pct(self) -> int:
        return round(self.overload * 100)

    @property
    def move_below_pct(self) -> int:
        return round(self.move_below * 100)

    @property
    def gap_pct(self) -> int:
        return round(self.gap * 100)


def thresholds() -> Thresholds:
    return Thresholds(overload=settings.VMPORTAL_HOST_OVERLOAD_PCT / 100,
                      gap=settings.VMPORTAL_HOST_BALANCE_GAP_PCT / 100)


_CONNECTION_STATES = {"disconnected": "disconnected", "notResponding": "not responding"}


@dataclass(frozen=True)
class HostCandidate:
    moid: str
    name: str
    connection_state: str
    in_maintenance: bool
    config_issues: int
    overall_status: str
    cpu_usage_mhz: int | None
    cpu_capacity_mhz: int | None
    memory_usage_mb: int | None
    memory_capacity_mb: int | None
    datastore_moids: frozenset[str] = frozenset()

    @property
    def cpu_share(self) -> float | None:
        if self.cpu_usage_mhz is None or not self.cpu_capacity_mhz:
            return None
        return self.cpu_usage_mhz / self.cpu_capacity_mhz

    @property
    def memory_share(self) -> float | None:
        if self.memory_usage_mb is None or not self.memory_capacity_mb:
            return None
        return self.memory_usage_mb / self.memory_capacity_mb

    @property
    def load(self) -> float | None:
        """The busier of CPU and memory, 0..1; None when either is unknown."""
        cpu, memory = self.cpu_share, self.memory_share
        if cpu is None or memory is None:
            return None
        return max(cpu, memory)

    @classmethod
    def from_info(cls, info: HostRecord) -> HostCandidate:
        """From a freshly fetched inventory record (apps.vsphere.inventory)."""
        return cls(
            moid=info.moid, name=info.name, connection_state=info.connection_state,
            in_maintenance=info.in_maintenance, config_issues=info.config_issues,
            overall_status=info.overall_status, cpu_usage_mhz=info.cpu_usage_mhz,
            cpu_capacity_mhz=info.cpu_capacity_mhz, memory_usage_mb=info.memory_usage_mb,
            memory_capacity_mb=info.memory_capacity_mb, datastore_moids=frozenset(info.datastore_moids),
        )


@dataclass(frozen=True)
class Rejection:
    host: str
    reason: str

    def __str__(self) -> str:
        return f"{self.host}: {self.reason}"


class NoUsableHost(Unavailable):
    """No host of the cluster can take a clone now; ``rejections`` say why, per host."""

    # Hosts leave maintenance and load drops: the pool manager tries again later.
    permanent = False

    def __init__(self, rejections: list[Rejection], *, datastore: str | None = None) -> None:
        self.rejections = rejections
        target = f" with datastore {datastore}" if datastore else ""
        if rejections:
            detail = "; ".join(str(r) for r in rejections)
            message = f"No usable host{target}: {detail}."
        else:
            message = f"No usable host{target}: the cluster has no hosts (is the inventory synced?)."
        super().__init__(message)


def rejection_reason(
    host: HostCandidate, *, datastore_moid: str | None = None, limit: float | None = None,
    datastore_moids: Iterable[str] = (),
) -> str | None:
    """Why ``host`` cannot take a clone (or a VM on ``datastore_moids``), or None when it can."""
    if limit is None:
        limit = thresholds().overload
    if host.connection_state != "connected":
        return _CONNECTION_STATES.get(host.connection_state, f"connection state {host.connection_state or 'unknown'}")
    if host.in_maintenance:
        return "in maintenance mode"
    if host.config_issues:
        return f"{host.config_issues} configuration issue{'s' if host.config_issues != 1 else ''}"
    if host.overall_status == "red":
        return "status red"
    if datastore_moid is not None and datastore_moid not in host.datastore_moids:
        return "target datastore not mounted"
    if not set(datastore_moids) <= host.datastore_moids:
        return "the VM's datastore not mounted"
    if host.cpu_usage_mhz is None or host.memory_usage_mb is None:
        return "no quick stats (load unknown)"
    if not host.cpu_capacity_mhz or not host.memory_capacity_mb:
        return "no hardware capacity reported (load unknown)"
    cpu, memory = host.cpu_share or 0.0, host.memory_share or 0.0
    if cpu > limit or memory > limit:
        busiest, share = ("CPU", cpu) if cpu >= memory else ("memory", memory)
        return f"{busiest} at {share:.0%}, over the {limit:.0%} limit"
    return None


def rank_hosts(
    hosts: Iterable[HostCandidate], *, datastore_moid: str | None = None, limit: float | None = None,
    datastore_moids: Iterable[str] = (),
) -> list[HostCandidate]:
    """Usable hosts, least loaded first (ties by name, so the order is stable).

    Raises NoUsableHost, listing every host's reason, when none is usable.
    """
    usable: list[HostCandidate] = []
    rejected: list[Rejection] = []
    for host in hosts:
        reason = rejection_reason(host, datastore_moid=datastore_moid, limit=limit, datastore_moids=datastore_moids)
        if reason is None:
            usable.append(host)
        else:
            rejected.append(Rejection(host.name, reason))
    if not usable:
        raise NoUsableHost(sorted(rejected, key=lambda r: r.host), datastore=datastore_moid)
    return sorted(usable, key=lambda h: (h.load, h.name))


def choose_hosts(
    hosts: Iterable[HostCandidate],
    count: int = 1,
    datastore_moid: str | None = None,
    *,
    limit: float | None = None,
    spread: int | None = None,
    placed: Mapping[str, int] | None = None,
) -> list[HostCandidate]:
    """A host for each of ``count`` clones, spread over the least-loaded usable hosts.

    ``spread`` caps how many hosts share the burst (default: every usable host within
    the balance gap of the least loaded). ``placed`` counts clones already started on a host
    (by moid) but not yet visible in its quick stats; they count like this burst's own.
    Each clone goes to the host with the fewest clones so far, the less loaded on a tie,
    which is a round-robin in load order when nothing was placed before.
    """
    if count < 1:
        return []
    ranked = rank_hosts(hosts, datastore_moid=datastore_moid, limit=limit)
    best = ranked[0].load or 0.0
    pool = [h for h in ranked if (h.load or 0.0) - best <= thresholds().gap]
    if spread is not None:
        pool = pool[: max(1, spread)]
    rank = {h.moid: i for i, h in enumerate(pool)}
    burst: Counter[str] = Counter({h.moid: (placed or {}).get(h.moid, 0) for h in pool})
    chosen: list[HostCandidate] = []
    for _ in range(count):
        host = min(pool, key=lambda h: (burst[h.moid], rank[h.moid]))
        burst[host.moid] += 1
        chosen.append(host)
    return chosen


def least_loaded_host(
    hosts: Iterable[HostCandidate], datastore_moid: str | None = None, *, limit: float | None = None
) -> HostCandidate:
    return rank_hosts(hosts, datastore_moid=datastore_moid, limit=limit)[0]


@dataclass(frozen=True)
class Balance:
    """Where a checked-out VM should run: ``target`` None means it stays, for ``reason``."""

    target: HostCandidate | None
    reason: str


def balance_target(
    current: HostCandidate | None, hosts: Iterable[HostCandidate], *, datastore_moids: Iterable[str] = (),
    limits: Thresholds | None = None,
) -> Balance:
    """The clone-time rule applied to a VM already running on ``current``: it moves when its
    host is over the overload limit and a host that would take a clone (same checks, the VM's
    datastores mounted) is at least the gap under that limit; to the least loaded of those."""
    limits = limits or thresholds()
    if current is None:
        return Balance(None, "its host is not in the inventory")
    if current.load is None:
        return Balance(None, f"the load of {current.name} is unknown")
    if current.load <= limits.overload:
        return Balance(None, f"{current.name} at {current.load:.0%}, within the {limits.overload:.0%} limit")
    others = [h for h in hosts if h.moid != current.moid]
    try:
        best = rank_hosts(others, limit=limits.move_below, datastore_moids=datastore_moids)[0]
    except NoUsableHost as exc:
        detail = "; ".join(str(r) for r in exc.rejections) or "no other host in the cluster"
        return Balance(None, f"{current.name} at {current.load:.0%}, but no host is at or under "
                             f"{limits.move_below:.0%} ({detail})")
    return Balance(best, f"{current.name} at {current.load:.0%}, over the {limits.overload:.0%} limit; "
                         f"{best.name} at {best.load or 0:.0%}")
