"""Mirroring vCenter inventories into the database.

``sync_inventory`` reads a whole vCenter (apps.vsphere.inventory, a handful of calls)
and then writes the difference in one transaction: new rows inserted, changed rows
updated, vanished rows deleted, unchanged rows untouched. ``apply_changes`` writes what
the watcher (apps.vsphere.watcher) saw change in between: VMs, hosts, and the names of
datastores and folders (a renamed folder's path, and those of everything under it).
vSphere is never called while a transaction is open.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import models, transaction
from django.db.models import F, Max, Value, Window
from django.db.models.deletion import ProtectedError
from django.db.models.functions import Concat, RowNumber, Substr
from django.utils import timezone

from apps.inventory.models import (
    Cluster,
    Datacenter,
    Datastore,
    Folder,
    Host,
    HostLoadSample,
    InventoryVM,
    Network,
    VCenter,
)
from apps.inventory.status import mark_unreachable, observe
from apps.vsphere.errors import VSphereError
from apps.vsphere.inventory import Inventory, fetch_inventory
from apps.vsphere.session import Endpoint, connect
from apps.vsphere.watcher import Change, DatastoreChange, FolderChange, HostChange, VMChange

log = logging.getLogger(__name__)

# Load history: what the host pages chart. Older samples and samples beyond the cap
# (per host) are pruned by every full sync, so the table stays bounded even when the
# watcher records often.
SAMPLE_RETENTION = timedelta(hours=24)
SAMPLES_PER_HOST = 2880
# The watcher sees quick-stat changes every few seconds; one sample per host per this
# interval is enough for a chart.
WATCH_SAMPLE_INTERVAL = timedelta(seconds=30)
BATCH_SIZE = 1000


@dataclass
class Counts:
    created: int = 0
    updated: int = 0
    removed: int = 0
    # Vanished in vCenter but still referenced by a pool (PROTECT); kept until the
    # admin re-points the pool, so the pool keeps a readable reference.
    kept: int = 0

    def __str__(self) -> str:
        text = f"+{self.created} ~{self.updated} -{self.removed}"
        return f"{text} (kept {self.kept})" if self.kept else text


@dataclass
class SyncReport:
    vcenter: str
    ok: bool = True
    error: str = ""
    counts: dict[str, Counts] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)  # rows per type after the sync
    vsphere_calls: int = 0
    fetch_seconds: float = 0.0
    write_seconds: float = 0.0
    seconds: float = 0.0
    samples_recorded: int = 0
    samples_pruned: int = 0

    def __str__(self) -> str:
        if not self.ok:
            return f"{self.vcenter}: sync failed: {self.error}"
        parts = ", ".join(f"{kind} {self.totals.get(kind, 0)} ({counts})" for kind, counts in self.counts.items())
        return (
            f"{self.vcenter}: {parts}; load samples +{self.samples_recorded} -{self.samples_pruned}; "
            f"{self.vsphere_calls} vSphere calls; {self.seconds:.2f} s "
            f"(read {self.fetch_seconds:.2f} s, write {self.write_seconds:.2f} s)"
        )


@dataclass
class ApplyReport:
    created: int = 0
    updated: int = 0
    removed: int = 0
    # Changes about objects we cannot place yet (e.g. a VM in a folder created after the
    # last full sync); the next full sync brings them in.
    deferred: int = 0
    samples_recorded: int = 0

    @property
    def changed(self) -> int:
        return self.created + self.updated + self.removed


# --- full sync ---------------------------------------------------------------------------


def sync_inventory(vcenter: VCenter) -> SyncReport:
    """Mirror ``vcenter`` into the inventory tables; never raises for vCenter problems.

    An unreachable vCenter (or a refused login) sets its status to unreachable with the
    reason and returns a report with ``ok=False``; the rows stay as last seen.
    """
    started = time.perf_counter()
    report = SyncReport(vcenter=vcenter.name)
    try:
        with connect(Endpoint.from_vcenter(vcenter)) as conn:
            inventory = fetch_inventory(conn)
    except VSphereError as exc:
        report.ok, report.error = False, str(exc)
        report.seconds = time.perf_counter() - started
        mark_unreachable(vcenter, str(exc))
        log.warning("inventory sync of %s failed: %s", vcenter.name, exc)
        return report
    report.vsphere_calls = inventory.calls
    report.fetch_seconds = inventory.seconds

    written = time.perf_counter()
    now = timezone.now()
    with transaction.atomic():
        _lock(vcenter)
        _write_inventory(vcenter, inventory, report, now)
        report.samples_recorded = _record_samples(vcenter, inventory, now)
        report.samples_pruned = prune_load_samples(vcenter, now=now)
        observe(vcenter, VCenter.Status.REACHABLE, status_reason="", latency_ms=inventory.latency_ms,
                last_sync_at=now, updated_at=now)
    report.write_seconds = time.perf_counter() - written
    report.seconds = time.perf_counter() - started
    return report


def _lock(vcenter: VCenter) -> None:
    """Serialise writers of one vCenter's rows (syncs, watcher, other processes).

    Held for the write only (never while vSphere is called); without it two writers'
    bulk upserts could interleave and deadlock, or a delete race an insert.
    """
    VCenter.objects.select_for_update(no_key=True).filter(pk=vcenter.pk).values_list("pk", flat=True).first()


class _Mirror:
    """Writes one object type's rows of one vCenter: only what differs from the table."""

    def __init__(self, model: type[models.Model], vcenter: VCenter, fields: list[str], now: datetime) -> None:
        self.model, self.vcenter, self.fields, self.now = model, vcenter, fields, now
        self.counts = Counts()
        self.existing: dict[str, tuple[int, tuple[Any, ...]]] = {}
        self.seen: set[str] = set()

    def write(self, rows: Mapping[str, Mapping[str, Any]], *, want_ids: bool = True) -> dict[str, int]:
        qs = self.model._default_manager.filter(vcenter=self.vcenter)
        self.existing = {moid: (pk, tuple(values)) for pk, moid, *values in qs.values_list("pk", "moid", *self.fields)}
        self.seen = set(rows)
        pending = []
        for moid, values in rows.items():
            old = self.existing.get(moid)
            new = tuple(values[f] for f in self.fields)
            if old is None:
                self.counts.created += 1
            elif old[1] != new:
                self.counts.updated += 1
            else:
                continue
            pending.append(self.model(vcenter=self.vcenter, moid=moid, synced_at=self.now, **values))
        if pending:
            # INSERT .. ON CONFLICT DO UPDATE: also right if the watcher inserted the row
            # since we read the table.
            self.model._default_manager.bulk_create(
                pending, batch_size=BATCH_SIZE, update_conflicts=True, unique_fields=["vcenter", "moid"],
                update_fields=[*self.fields, "synced_at"],
            )
        if not want_ids:
            return {}
        if not pending:
            return {moid: pk for moid, (pk, _) in self.existing.items()}
        return dict(qs.values_list("moid", "pk"))

    def remove_vanished(self) -> None:
        gone = [pk for moid, (pk, _) in self.existing.items() if moid not in self.seen]
        if not gone:
            return
        try:
            with transaction.atomic():
                self.counts.removed += self.model._default_manager.filter(pk__in=gone).delete()[1].get(
                    self.model._meta.label, 0)
            return
        except ProtectedError:
            pass
        for pk in gone:  # some are protected (a pool points at them): keep just those
            try:
                with transaction.atomic():
                    self.model._default_manager.filter(pk=pk).delete()
                self.counts.removed += 1
            except ProtectedError:
                self.counts.kept += 1


def _write_inventory(vcenter: VCenter, inv: Inventory, report: SyncReport, now: datetime) -> None:
    mirrors: dict[str, _Mirror] = {}

    def mirror(kind: str, model: type[models.Model], fields: list[str]) -> _Mirror:
        mirrors[kind] = _Mirror(model, vcenter, fields, now)
        return mirrors[kind]

    dcs = mirror("datacenters", Datacenter, ["name"]).write({d.moid: {"name": d.name} for d in inv.datacenters})

    def dc(moid: str) -> int | None:
        return dcs.get(moid)

    clusters = mirror("clusters", Cluster, ["name", "datacenter_id", "resource_pool_moid"]).write({
        c.moid: {"name": c.name, "datacenter_id": dc(c.datacenter_moid), "resource_pool_moid": c.resource_pool_moid}
        for c in inv.clusters
    })
    datastores = mirror(
        "datastores", Datastore, ["name", "datacenter_id", "capacity_bytes", "free_bytes", "accessible"]
    ).write({
        d.moid: {
            "name": d.name, "datacenter_id": dc(d.datacenter_moid), "capacity_bytes": d.capacity_bytes,
            "free_bytes": d.free_bytes, "accessible": d.accessible,
        }
        for d in inv.datastores
    })
    networks = mirror("networks", Network, ["name", "datacenter_id"]).write(
        {n.moid: {"name": n.name, "datacenter_id": dc(n.datacenter_moid)} for n in inv.networks}
    )
    hosts = mirror("hosts", Host, [
        "name", "datacenter_id", "cluster_id", "connection_state", "in_maintenance", "config_issues",
        "overall_status", "cpu_capacity_mhz", "memory_capacity_mb", "cpu_usage_mhz", "memory_usage_mb", "cpu_threads",
    ]).write({
        h.moid: {
            "name": h.name, "datacenter_id": dc(h.datacenter_moid),
            "cluster_id": clusters.get(h.cluster_moid) if h.cluster_moid else None,
            "connection_state": h.connection_state, "in_maintenance": h.in_maintenance,
            "config_issues": h.config_issues, "overall_status": h.overall_status,
            "cpu_capacity_mhz": h.cpu_capacity_mhz, "memory_capacity_mb": h.memory_capacity_mb,
            "cpu_usage_mhz": h.cpu_usage_mhz, "memory_usage_mb": h.memory_usage_mb, "cpu_threads": h.cpu_threads,
        }
        for h in inv.hosts
    })
    _write_links(Host.datastores.through, "datastore_id", vcenter, {
        (hosts[h.moid], datastores[m]) for h in inv.hosts for m in h.datastore_moids if m in datastores
    })
    _write_links(Host.networks.through, "network_id", vcenter, {
        (hosts[h.moid], networks[m]) for h in inv.hosts for m in h.network_moids if m in networks
    })
    folders = mirror("folders", Folder, ["name", "datacenter_id", "path"]).write(
        {f.moid: {"name": f.name, "datacenter_id": dc(f.datacenter_moid), "path": f.path} for f in inv.folders}
    )
    mirror("vms", InventoryVM, [
        "name", "datacenter_id", "folder_id", "host_id", "path", "power_state", "is_template", "tools_status",
        "guest_ip", "guest_hostname", "instance_uuid", "marker",
    ]).write({
        v.moid: {
            "name": v.name, "datacenter_id": dc(v.datacenter_moid),
            "folder_id": folders.get(v.folder_moid) if v.folder_moid else None,
            "host_id": hosts.get(v.host_moid) if v.host_moid else None,
            "path": v.path, "power_state": v.power_state, "is_template": v.is_template,
            "tools_status": v.tools_status, "guest_ip": v.guest_ip, "guest_hostname": v.guest_hostname,
            "instance_uuid": v.instance_uuid, "marker": v.marker,
        }
        for v in inv.vms
    }, want_ids=False)

    # Children first, so a vanished datacenter's objects are counted as removed
    # before the cascade would take them silently.
    for kind in ("vms", "folders", "hosts", "networks", "datastores", "clusters", "datacenters"):
        mirrors[kind].remove_vanished()
    for kind in ("datacenters", "clusters", "hosts", "datastores", "networks", "folders", "vms"):
        report.counts[kind] = mirrors[kind].counts
        m = mirrors[kind]
        report.totals[kind] = len(m.seen) + m.counts.kept


def _write_links(through: type[models.Model], target: str, vcenter: VCenter, wanted: set[tuple[int, int]]) -> None:
    rows = through._default_manager.filter(host__vcenter=vcenter).values_list("pk", "host_id", target)
    have = {(host, other): pk for pk, host, other in rows}
    stale = [pk for pair, pk in have.items() if pair not in wanted]
    if stale:
        through._default_manager.filter(pk__in=stale).delete()
    missing = [through(host_id=host, **{target: other}) for host, other in wanted if (host, other) not in have]
    if missing:
        through._default_manager.bulk_create(missing, batch_size=BATCH_SIZE, ignore_conflicts=True)


# --- load history ------------------------------------------------------------------------


def _record_samples(vcenter: VCenter, inv: Inventory, now: datetime) -> int:
    ids = dict(Host.objects.filter(vcenter=vcenter).values_list("moid", "pk"))
    samples = [
        HostLoadSample(host_id=ids[h.moid], at=now, cpu_usage_mhz=h.cpu_usage_mhz, memory_usage_mb=h.memory_usage_mb)
        for h in inv.hosts
        # Missing stats are unknown load: no sample rather than a false zero.
        if h.moid in ids and h.cpu_usage_mhz is not None and h.memory_usage_mb is not None
    ]
    HostLoadSample.objects.bulk_create(samples, batch_size=BATCH_SIZE)
    return len(samples)


def prune_load_samples(vcenter: VCenter, *, now: datetime | None = None) -> int:
    """Drop samples older than SAMPLE_RETENTION and beyond SAMPLES_PER_HOST per host."""
    now = now or timezone.now()
    samples = HostLoadSample.objects.filter(host__vcenter=vcenter)
    pruned = samples.filter(at__lt=now - SAMPLE_RETENTION).delete()[0]
    excess = samples.annotate(
        position=Window(RowNumber(), partition_by=[F("host_id")], order_by=[F("at").desc(), F("pk").desc()])
    ).filter(position__gt=SAMPLES_PER_HOST).values_list("pk", flat=True)
    excess_ids = list(excess)
    if excess_ids:
        pruned += HostLoadSample.objects.filter(pk__in=excess_ids).delete()[0]
    return pruned


# --- watcher changes ---------------------------------------------------------------------

_VM_FIELDS = ("name", "power_state", "is_template", "tools_status", "guest_ip", "guest_hostname",
              "instance_uuid", "marker")
_HOST_FIELDS = ("name", "connection_state", "in_maintenance", "config_issues", "overall_status",
                "cpu_capacity_mhz", "memory_capacity_mb", "cpu_usage_mhz", "memory_usage_mb", "cpu_threads")
_TEXT = {"name", "power_state", "tools_status", "guest_ip", "guest_hostname", "instance_uuid", "marker",
         "connection_state", "overall_status"}


def _column_value(name: str, value: Any) -> Any:
    """An event value as its column stores it: text columns are never NULL."""
    if name in _TEXT:
        return "" if value is None else str(value)
    if name in ("is_template", "in_maintenance"):
        return bool(value)
    if name == "config_issues":
        return int(value or 0)
    return value  # quick stats and capacities: None stays None (unknown)


def _coalesce(events: Iterable[Change]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Per object: the net effect of its events, in order (enter+modify = enter, ...+leave = leave)."""
    net: dict[str, tuple[str, dict[str, Any]]] = {}
    for event in events:
        kind, values = net.get(event.moid, (None, {}))
        if event.kind == "leave":
            net[event.moid] = ("leave", {})
        elif event.kind == "enter" or kind is None or kind == "leave":
            net[event.moid] = (event.kind, dict(event.values))
        else:
            net[event.moid] = (kind, {**values, **event.values})
    return net


def apply_changes(vcenter: VCenter, events: Iterable[Change]) -> ApplyReport:
    """Write the watcher's changes: only rows whose values differ are touched."""
    events = list(events)
    report = ApplyReport()
    now = timezone.now()
    with transaction.atomic():
        _lock(vcenter)
        _apply_host_changes(vcenter, [e for e in events if isinstance(e, HostChange)], report, now)
        _apply_datastore_changes(vcenter, [e for e in events if isinstance(e, DatastoreChange)], report, now)
        # Folders before VMs: a VM's path is computed from its folder's.
        _apply_folder_changes(vcenter, [e for e in events if isinstance(e, FolderChange)], report, now)
        _apply_vm_changes(vcenter, [e for e in events if isinstance(e, VMChange)], report, now)
    return report


def _apply_datastore_changes(vcenter: VCenter, events: list[DatastoreChange], report: ApplyReport,
                             now: datetime) -> None:
    net = _coalesce(events)
    if not net:
        return
    existing = {d.moid: d for d in Datastore.objects.filter(vcenter=vcenter, moid__in=list(net))}
    changed: list[Datastore] = []
    changed_fields: set[str] = set()
    for moid, (kind, values) in net.items():
        datastore = existing.get(moid)
        if datastore is None or kind == "leave":
            # New datastores need their host links, and a vanished one a pool still uses is
            # kept: both are the full sync's to do.
            report.deferred += 1
            continue
        before = {f: getattr(datastore, f) for f in ("name", "accessible", "capacity_bytes", "free_bytes")}
        if "name" in values:
            datastore.name = _column_value("name", values["name"])
        if "accessible" in values:
            datastore.accessible = True if values["accessible"] is None else bool(values["accessible"])
        for name in ("capacity_bytes", "free_bytes"):
            if name in values:
                setattr(datastore, name, values[name])
        diff = {f for f, old in before.items() if getattr(datastore, f) != old}
        if diff:
            datastore.synced_at = now
            changed.append(datastore)
            changed_fields |= diff
    if changed:
        Datastore.objects.bulk_update(changed, [*sorted(changed_fields), "synced_at"], batch_size=BATCH_SIZE)
    report.updated += len(changed)


def _apply_folder_changes(vcenter: VCenter, events: list[FolderChange], report: ApplyReport, now: datetime) -> None:
    """Renamed or moved VM folders get their new name and path, and so does everything under them.

    Only VM folders are mirrored; changes of other folders (hosts, datastores, networks) are
    ignored. One folder at a time, parents first, each read afresh: renaming a parent
    rewrites its children's paths before a child's own rename is applied.
    """
    net = _coalesce(events)
    if not net:
        return
    folders = {f.moid: f for f in Folder.objects.filter(vcenter=vcenter, moid__in=list(net))}
    moved = sorted((f for f in folders.values() if net[f.moid][0] != "leave"), key=lambda f: f.path.count("/"))
    for moid, (kind, values) in net.items():
        if moid in folders:
            if kind == "leave":
                report.deferred += 1  # the full sync removes it, or keeps it while a pool uses it
        elif kind == "enter" and values.get("vm_folder"):
            parent = Folder.objects.filter(vcenter=vcenter, moid=values.get("parent_moid") or "").first()
            if parent is None or not values.get("name"):
                report.deferred += 1
                continue
            Folder.objects.create(vcenter=vcenter, moid=moid, name=values["name"], datacenter_id=parent.datacenter_id,
                                  path=f"{parent.path}/{values['name']}", synced_at=now)
            report.created += 1
    for folder in moved:
        folder.refresh_from_db(fields=["name", "path", "datacenter"])
        values = net[folder.moid][1]
        name = _column_value("name", values["name"]) if "name" in values else folder.name
        parent_moid = values.get("parent_moid") or ""
        parent = Folder.objects.filter(vcenter=vcenter, moid=parent_moid).first() if parent_moid else None
        if parent is not None:
            path, datacenter_id = f"{parent.path}/{name}", parent.datacenter_id
        elif "parent_moid" in values and not Datacenter.objects.filter(vcenter=vcenter, moid=parent_moid).exists():
            report.deferred += 1  # moved under a folder we have not synced yet
            continue
        else:  # a datacenter's top VM folder, or a rename in place
            path, datacenter_id = f"{folder.path.rpartition('/')[0]}/{name}".lstrip("/"), folder.datacenter_id
        if (name, path, datacenter_id) == (folder.name, folder.path, folder.datacenter_id):
            continue
        old = folder.path
        Folder.objects.filter(pk=folder.pk).update(name=name, path=path, datacenter_id=datacenter_id, synced_at=now)
        if path != old:
            for model in (Folder, InventoryVM):
                model._default_manager.filter(vcenter=vcenter, path__startswith=f"{old}/").update(
                    path=Concat(Value(path), Substr("path", len(old) + 1)), synced_at=now)
        report.updated += 1


def _apply_vm_changes(vcenter: VCenter, events: list[VMChange], report: ApplyReport, now: datetime) -> None:
    net = _coalesce(events)
    if not net:
        return
    existing = {vm.moid: vm for vm in InventoryVM.objects.filter(vcenter=vcenter, moid__in=list(net))}
    folders = {moid: (pk, path, dc) for moid, pk, path, dc in Folder.objects.filter(vcenter=vcenter).values_list(
        "moid", "pk", "path", "datacenter_id")}
    hosts = {moid: (pk, dc) for moid, pk, dc in Host.objects.filter(vcenter=vcenter).values_list(
        "moid", "pk", "datacenter_id")}
    folder_by_pk = {pk: (moid, path) for moid, (pk, path, _) in folders.items()}
    gone: list[int] = []
    created: list[InventoryVM] = []
    changed: dict[int, InventoryVM] = {}
    changed_fields: set[str] = set()

    for moid, (kind, values) in net.items():
        vm = existing.get(moid)
        if kind == "leave":
            if vm is not None:
                gone.append(vm.pk)
            continue
        if vm is None:
            folder = folders.get(values.get("folder_moid") or "")
            host = hosts.get(values.get("host_moid") or "")
            datacenter = folder[2] if folder else host[1] if host else None
            if datacenter is None or "name" not in values:
                report.deferred += 1
                continue
            vm = InventoryVM(vcenter=vcenter, moid=moid, datacenter_id=datacenter, synced_at=now)
        before = {f: getattr(vm, f) for f in (*_VM_FIELDS, "folder_id", "host_id", "path")}
        for name in _VM_FIELDS:
            if name in values:
                setattr(vm, name, _column_value(name, values[name]))
        if "folder_moid" in values:
            folder = folders.get(values["folder_moid"] or "")
            vm.folder_id = folder[0] if folder else None
        if "host_moid" in values:
            host = hosts.get(values["host_moid"] or "")
            vm.host_id = host[0] if host else None
        if vm.folder_id is not None and vm.folder_id in folder_by_pk:
            vm.path = f"{folder_by_pk[vm.folder_id][1]}/{vm.name}"
        elif "folder_moid" in values:
            vm.path = ""  # in a folder we have not synced yet (or a vApp): path unknown
        diff = {f for f, old in before.items() if getattr(vm, f) != old}
        if vm.pk is None:
            created.append(vm)
        elif diff:
            vm.synced_at = now
            changed[vm.pk] = vm
            changed_fields |= diff

    if created:
        InventoryVM.objects.bulk_create(
            created, batch_size=BATCH_SIZE, update_conflicts=True, unique_fields=["vcenter", "moid"],
            update_fields=[*_VM_FIELDS, "folder_id", "host_id", "path", "synced_at"],
        )
    if changed:
        InventoryVM.objects.bulk_update(list(changed.values()), [*sorted(changed_fields), "synced_at"],
                                        batch_size=BATCH_SIZE)
    if gone:
        InventoryVM.objects.filter(pk__in=gone).delete()
    report.created += len(created)
    report.updated += len(changed)
    report.removed += len(gone)


def _apply_host_changes(vcenter: VCenter, events: list[HostChange], report: ApplyReport, now: datetime) -> None:
    net = _coalesce(events)
    if not net:
        return
    existing = {h.moid: h for h in Host.objects.filter(vcenter=vcenter, moid__in=list(net))}
    clusters = {moid: (pk, dc) for moid, pk, dc in Cluster.objects.filter(vcenter=vcenter).values_list(
        "moid", "pk", "datacenter_id")}
    gone: list[int] = []
    changed: list[Host] = []
    changed_fields: set[str] = set()
    stats_changed: list[Host] = []

    for moid, (kind, values) in net.items():
        host = existing.get(moid)
        if kind == "leave":
            if host is not None:
                gone.append(host.pk)
            continue
        if host is None:
            # A new host: its datastores and networks come with the next full sync.
            report.deferred += 1
            continue
        before = {f: getattr(host, f) for f in (*_HOST_FIELDS, "cluster_id")}
        for name in _HOST_FIELDS:
            if name in values:
                setattr(host, name, _column_value(name, values[name]))
        if "cluster_moid" in values:
            cluster = clusters.get(values["cluster_moid"] or "")
            host.cluster_id = cluster[0] if cluster else None
        diff = {f for f, old in before.items() if getattr(host, f) != old}
        if diff:
            host.synced_at = now
            changed.append(host)
            changed_fields |= diff
            if diff & {"cpu_usage_mhz", "memory_usage_mb"}:
                stats_changed.append(host)

    if changed:
        Host.objects.bulk_update(changed, [*sorted(changed_fields), "synced_at"], batch_size=BATCH_SIZE)
    if gone:
        Host.objects.filter(pk__in=gone).delete()
    report.updated += len(changed)
    report.removed += len(gone)

    measured = [h for h in stats_changed if h.cpu_usage_mhz is not None and h.memory_usage_mb is not None]
    if measured:
        last = dict(HostLoadSample.objects.filter(host__in=measured).order_by().values("host_id").annotate(
            last=Max("at")).values_list("host_id", "last"))
        samples = [
            HostLoadSample(host=h, at=now, cpu_usage_mhz=h.cpu_usage_mhz, memory_usage_mb=h.memory_usage_mb)
            for h in measured
            if last.get(h.pk) is None or now - last[h.pk] >= WATCH_SAMPLE_INTERVAL
        ]
        HostLoadSample.objects.bulk_create(samples)
        report.samples_recorded += len(samples)
