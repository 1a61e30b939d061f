"""Reading a vCenter's inventory in a constant number of round trips.

One ContainerView over the root folder holds every object type we mirror, and one
PropertyCollector ``RetrievePropertiesEx`` (one PropertySpec per type, explicit
``pathSet``) reads them all; ``ContinueRetrievePropertiesEx`` follows the token when
vCenter pages the answer. We never read attributes of managed objects: each read is a
round trip, and on the simulator an unset property drops the connection.

Paths ("DC0/vm/Templates/debian-12") and datacenters are computed here from the
``parent`` references of the objects we already have, never by asking per object.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from apps.vsphere.errors import ObjectNotFound
from apps.vsphere.types import OWNER_KEY
from apps.vsphere.vmomi import PropertyCollector as PC
from apps.vsphere.vmomi import vim, vmodl

if TYPE_CHECKING:
    from apps.vsphere.session import Connection


# vCenter may cap a page lower; we follow the token either way.
PAGE_SIZE = 2000
MIB = 1024 * 1024

# vCenter accepts a key index into extraConfig, so it returns only our marker; vcsim
# 0.24 answers InvalidProperty for it (support came in govmomi 0.38). Servers that
# did so once get the whole extraConfig straight away, saving the probe round trip.
# Only a hint for speed: a wrong entry costs bytes, never correctness.
_NO_KEYED_PATHS: set[str] = set()


@dataclass(frozen=True, slots=True)
class DatacenterRecord:
    moid: str
    name: str
    path: str


@dataclass(frozen=True, slots=True)
class ClusterRecord:
    moid: str
    name: str
    datacenter_moid: str
    path: str
    resource_pool_moid: str


@dataclass(frozen=True, slots=True)
class HostRecord:
    moid: str
    name: str
    datacenter_moid: str
    cluster_moid: str | None
    connection_state: str
    in_maintenance: bool
    config_issues: int
    overall_status: str
    cpu_capacity_mhz: int | None
    memory_capacity_mb: int | None
    # None: vCenter sent no quick stats, so the load is unknown (never read it as 0).
    cpu_usage_mhz: int | None
    memory_usage_mb: int | None
    cpu_threads: int | None = None  # the most vCPUs one VM on this host can have
    datastore_moids: tuple[str, ...] = ()
    network_moids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DatastoreRecord:
    moid: str
    name: str
    datacenter_moid: str
    capacity_bytes: int | None
    free_bytes: int | None
    accessible: bool


@dataclass(frozen=True, slots=True)
class NetworkRecord:
    moid: str
    name: str
    datacenter_moid: str


@dataclass(frozen=True, slots=True)
class FolderRecord:
    """A VM folder (one that can hold VMs), with its inventory path."""

    moid: str
    name: str
    datacenter_moid: str
    path: str
    parent_moid: str | None


@dataclass(frozen=True, slots=True)
class VMRecord:
    moid: str
    name: str
    datacenter_moid: str
    folder_moid: str | None
    path: str
    host_moid: str | None
    power_state: str
    is_template: bool
    tools_status: str
    guest_ip: str
    guest_hostname: str
    instance_uuid: str
    marker: str


@dataclass
class Inventory:
    datacenters: list[DatacenterRecord] = field(default_factory=list)
    clusters: list[ClusterRecord] = field(default_factory=list)
    hosts: list[HostRecord] = field(default_factory=list)
    datastores: list[DatastoreRecord] = field(default_factory=list)
    networks: list[NetworkRecord] = field(default_factory=list)
    folders: list[FolderRecord] = field(default_factory=list)
    vms: list[VMRecord] = field(default_factory=list)
    calls: int = 0  # vSphere calls this fetch made
    seconds: float = 0.0
    # Fastest small round trip of the fetch: a latency figure without an extra call.
    latency_ms: float | None = None


class CallCounter:
    """Routes calls through ``conn.call`` and counts them (the bench reports the count)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.count = 0
        self.fastest: float | None = None

    def __call__(self, fn: Callable[..., Any], *args: Any, operation: str, obj: str = "", **options: Any) -> Any:
        self.count += 1
        started = time.perf_counter()
        endpoint = getattr(self.conn, "endpoint", None)
        obj = obj or (endpoint.host if endpoint is not None else "")
        result = self.conn.call(fn, *args, operation=operation, obj=obj, **options)
        elapsed = time.perf_counter() - started
        self.fastest = elapsed if self.fastest is None else min(self.fastest, elapsed)
        return result


# --- what we ask for --------------------------------------------------------------------

_PATHS: dict[type, list[str]] = {
    vim.Datacenter: ["name", "parent"],
    # ComputeResource also matches clusters (a subtype); standalone hosts sit in one.
    vim.ComputeResource: ["name", "parent", "resourcePool"],
    vim.HostSystem: [
        "name",
        "parent",
        "runtime.connectionState",
        "runtime.inMaintenanceMode",
        "configIssue",
        "overallStatus",
        "summary.hardware.cpuMhz",
        "summary.hardware.numCpuCores",
        "summary.hardware.numCpuThreads",
        "summary.hardware.memorySize",
        "summary.quickStats.overallCpuUsage",
        "summary.quickStats.overallMemoryUsage",
        "datastore",
        "network",
    ],
    vim.Datastore: ["name", "parent", "summary.capacity", "summary.freeSpace", "summary.accessible"],
    vim.Network: ["name", "parent"],  # includes distributed port groups
    vim.Folder: ["name", "parent", "childType"],
    vim.VirtualMachine: [
        "name",
        "parent",
        "runtime.powerState",
        "runtime.host",
        "config.template",
        "config.instanceUuid",
        "guest.toolsRunningStatus",
        "guest.ipAddress",
        "guest.hostName",
    ],
}

MARKER_PATH = f'config.extraConfig["{OWNER_KEY}"]'
EXTRA_CONFIG_PATH = "config.extraConfig"


def _server_key(conn: Connection) -> str:
    about = conn.content.about
    return f"{about.instanceUuid}/{about.fullName}"


def _container_spec(view: vim.view.ContainerView, specs: dict[type, list[str]]) -> PC.FilterSpec:
    traverse = PC.TraversalSpec(name="view", type=vim.view.ContainerView, path="view", skip=False)
    return PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=view, skip=True, selectSet=[traverse])],
        propSet=[PC.PropertySpec(type=kind, pathSet=paths) for kind, paths in specs.items()],
    )


def _retrieve(call: CallCounter, pc: vmodl.query.PropertyCollector, spec: PC.FilterSpec) -> Iterator[Any]:
    """All ObjectContents of ``spec``, following continuation tokens."""
    result = call(pc.RetrievePropertiesEx, [spec], PC.RetrieveOptions(maxObjects=PAGE_SIZE),
                  operation="read the inventory of")
    while result is not None:
        yield from result.objects
        if not result.token:
            return
        result = call(pc.ContinueRetrievePropertiesEx, result.token, operation="read the next inventory page of")


def _moid(value: Any) -> str | None:
    return value._moId if value is not None else None


def _moids(values: Iterable[Any] | None) -> tuple[str, ...]:
    return tuple(v._moId for v in values or ())


def _props(content: Any) -> dict[str, Any]:
    return {p.name: p.val for p in content.propSet or ()}


def _missing_invalid(content: Any, path: str) -> bool:
    return any(m.path == path and isinstance(m.fault, vmodl.query.InvalidProperty) for m in content.missingSet or ())


def _marker_from(value: Any) -> str:
    """The marker from either the keyed path (one OptionValue) or the whole extraConfig."""
    if value is None:
        return ""
    options = [value] if isinstance(value, vim.option.OptionValue) else value
    for option in options:
        if getattr(option, "key", None) == OWNER_KEY:
            return "" if option.value is None else str(option.value)
    return ""


def _mb(value: int | None) -> int | None:
    return None if value is None else int(value) // MIB


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


class _Tree:
    """Names and parents of every object we read, to compute paths and datacenters."""

    def __init__(self) -> None:
        self.name: dict[str, str] = {}
        self.parent: dict[str, str | None] = {}
        self.datacenters: set[str] = set()
        self._path: dict[str, str] = {}
        self._dc: dict[str, str | None] = {}

    def add(self, moid: str, name: str, parent: str | None, *, datacenter: bool = False) -> None:
        self.name[moid] = name
        self.parent[moid] = parent
        if datacenter:
            self.datacenters.add(moid)

    def path(self, moid: str) -> str:
        # The root folder is not in the view, so a chain ends where its parent is unknown;
        # that matches SearchIndex.FindByInventoryPath, which starts below the root.
        if moid in self._path:
            return self._path[moid]
        parts: list[str] = []
        seen: set[str] = set()
        node: str | None = moid
        while node is not None and node in self.name and node not in seen:
            seen.add(node)
            if node in self._path:
                parts.append(self._path[node])
                break
            parts.append(self.name[node])
            node = self.parent.get(node)
        path = "/".join(reversed(parts))
        self._path[moid] = path
        return path

    def datacenter(self, moid: str | None) -> str | None:
        if moid is None:
            return None
        if moid in self._dc:
            return self._dc[moid]
        chain: list[str] = []
        node: str | None = moid
        found: str | None = None
        while node is not None and node not in chain:
            if node in self._dc:
                found = self._dc[node]
                break
            if node in self.datacenters:
                found = node
                break
            chain.append(node)
            node = self.parent.get(node)
        for visited in chain:
            self._dc[visited] = found
        return found


def fetch_inventory(conn: Connection) -> Inventory:
    """Everything vmportal mirrors from one vCenter, as plain dataclasses.

    Calls: CreateContainerView, RetrievePropertiesEx (+ one ContinueRetrievePropertiesEx
    per further page), DestroyView; plus, on servers without keyed property paths (the
    simulator), one more RetrievePropertiesEx for the VMs' extraConfig.
    """
    started = time.perf_counter()
    call = CallCounter(conn)
    content = conn.content
    server = _server_key(conn)
    keyed_marker = server not in _NO_KEYED_PATHS
    specs = dict(_PATHS)
    specs[vim.VirtualMachine] = [*_PATHS[vim.VirtualMachine], MARKER_PATH if keyed_marker else EXTRA_CONFIG_PATH]

    view = call(conn.view_manager.CreateContainerView, content.rootFolder, list(_PATHS), True,
                operation="create an inventory view on")
    try:
        rows: list[tuple[Any, dict[str, Any]]] = []
        marker_unsupported = False
        for oc in _retrieve(call, content.propertyCollector, _container_spec(view, specs)):
            rows.append((oc.obj, _props(oc)))
            if keyed_marker and isinstance(oc.obj, vim.VirtualMachine) and _missing_invalid(oc, MARKER_PATH):
                marker_unsupported = True
        extra_configs: dict[str, Any] = {}
        if marker_unsupported:
            _NO_KEYED_PATHS.add(server)
            spec = _container_spec(view, {vim.VirtualMachine: [EXTRA_CONFIG_PATH]})
            for oc in _retrieve(call, content.propertyCollector, spec):
                extra_configs[oc.obj._moId] = _props(oc).get(EXTRA_CONFIG_PATH)
    finally:
        # A view left behind by a broken connection is freed with its session anyway.
        with contextlib.suppress(Exception):
            call(view.DestroyView, operation="destroy the inventory view on")

    inventory = _build(rows, extra_configs if marker_unsupported else None)
    inventory.calls = call.count
    inventory.seconds = time.perf_counter() - started
    inventory.latency_ms = None if call.fastest is None else call.fastest * 1000
    return inventory


def _build(rows: list[tuple[Any, dict[str, Any]]], extra_configs: dict[str, Any] | None) -> Inventory:
    tree = _Tree()
    for obj, props in rows:
        tree.add(obj._moId, props.get("name", ""), _moid(props.get("parent")),
                 datacenter=isinstance(obj, vim.Datacenter))

    inv = Inventory()
    for obj, props in rows:
        moid = obj._moId
        name = props.get("name", "")
        dc = tree.datacenter(moid)
        if isinstance(obj, vim.Datacenter):
            inv.datacenters.append(DatacenterRecord(moid, name, tree.path(moid)))
            continue
        if dc is None:
            continue  # outside any datacenter (should not happen); nothing can use it
        if isinstance(obj, vim.ClusterComputeResource):
            inv.clusters.append(ClusterRecord(moid, name, dc, tree.path(moid), _moid(props.get("resourcePool")) or ""))
        elif isinstance(obj, vim.HostSystem):
            parent = props.get("parent")
            cores, mhz = props.get("summary.hardware.numCpuCores"), props.get("summary.hardware.cpuMhz")
            inv.hosts.append(HostRecord(
                moid=moid,
                name=name,
                datacenter_moid=dc,
                cluster_moid=_moid(parent) if isinstance(parent, vim.ClusterComputeResource) else None,
                connection_state=str(props.get("runtime.connectionState") or "unknown"),
                in_maintenance=bool(props.get("runtime.inMaintenanceMode")),
                config_issues=len(props.get("configIssue") or ()),
                overall_status=str(props.get("overallStatus") or "gray"),
                cpu_capacity_mhz=int(cores) * int(mhz) if cores is not None and mhz is not None else None,
                memory_capacity_mb=_mb(props.get("summary.hardware.memorySize")),
                cpu_usage_mhz=_int(props.get("summary.quickStats.overallCpuUsage")),
                memory_usage_mb=_int(props.get("summary.quickStats.overallMemoryUsage")),
                cpu_threads=_int(props.get("summary.hardware.numCpuThreads")),
                datastore_moids=_moids(props.get("datastore")),
                network_moids=_moids(props.get("network")),
            ))
        elif isinstance(obj, vim.Datastore):
            accessible = props.get("summary.accessible")
            inv.datastores.append(DatastoreRecord(
                moid, name, dc, _int(props.get("summary.capacity")), _int(props.get("summary.freeSpace")),
                True if accessible is None else bool(accessible),
            ))
        elif isinstance(obj, vim.Network):
            inv.networks.append(NetworkRecord(moid, name, dc))
        elif isinstance(obj, vim.Folder):
            if "VirtualMachine" in (props.get("childType") or ()):
                inv.folders.append(FolderRecord(moid, name, dc, tree.path(moid), _moid(props.get("parent"))))
        elif isinstance(obj, vim.VirtualMachine):
            parent = _moid(props.get("parent"))
            folder = parent if parent is not None and parent in tree.name else None
            if extra_configs is not None:
                marker_source = extra_configs.get(moid)
            else:  # the keyed path, or the whole extraConfig on servers known to lack it
                marker_source = props.get(MARKER_PATH, props.get(EXTRA_CONFIG_PATH))
            inv.vms.append(VMRecord(
                moid=moid,
                name=name,
                datacenter_moid=dc,
                folder_moid=folder,
                path=tree.path(moid) if folder else "",
                host_moid=_moid(props.get("runtime.host")),
                power_state=str(props.get("runtime.powerState") or ""),
                is_template=bool(props.get("config.template")),
                tools_status=str(props.get("guest.toolsRunningStatus") or ""),
                guest_ip=str(props.get("guest.ipAddress") or ""),
                guest_hostname=str(props.get("guest.hostName") or ""),
                instance_uuid=str(props.get("config.instanceUuid") or ""),
                marker=_marker_from(marker_source),
            ))
    return inv


def read_objects(conn: Connection, kind: type[Any], moids: Iterable[str], paths: list[str], *,
                 call: CallCounter | None = None) -> list[Any]:
    """ObjectContents of the given objects of one type, in one call; vanished ones left out."""
    call = call or CallCounter(conn)
    objs = [conn.ref(kind, moid) for moid in dict.fromkeys(moids)]

    def read(batch: list[Any]) -> list[Any]:
        spec = PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=obj, skip=False) for obj in batch],
            propSet=[PC.PropertySpec(type=kind, pathSet=paths)],
        )
        try:
            return list(_retrieve(call, conn.content.propertyCollector, spec))
        except ObjectNotFound:
            # A real vCenter fails the whole call when one object is gone (vcsim skips
            # it); then ask per object. Only when one vanished since we heard of it.
            if len(batch) == 1:
                return []
            return [oc for obj in batch for oc in read([obj])]

    return read(objs) if objs else []


def object_properties(content: Any) -> dict[str, Any]:
    """The propSet of an ObjectContent as a dict (unset properties are absent)."""
    return _props(content)


def fetch_vm_markers(conn: Connection, moids: Iterable[str], *, call: CallCounter | None = None) -> dict[str, str]:
    """Our marker on the given VMs, in one call (two on servers without keyed paths).

    VMs that vanished meanwhile are left out. Used by the watcher for VMs that appear.
    """
    call = call or CallCounter(conn)
    moids = list(moids)
    if not moids:
        return {}
    server = _server_key(conn)
    if server not in _NO_KEYED_PATHS:
        contents = read_objects(conn, vim.VirtualMachine, moids, [MARKER_PATH], call=call)
        if not any(_missing_invalid(oc, MARKER_PATH) for oc in contents):
            return {oc.obj._moId: _marker_from(_props(oc).get(MARKER_PATH)) for oc in contents}
        _NO_KEYED_PATHS.add(server)
    contents = read_objects(conn, vim.VirtualMachine, moids, [EXTRA_CONFIG_PATH], call=call)
    return {oc.obj._moId: _marker_from(_props(oc).get(EXTRA_CONFIG_PATH)) for oc in contents}
