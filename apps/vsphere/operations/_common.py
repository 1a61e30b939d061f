"""What the operation modules share: task bounds, property paths, and moid, path and snapshot helpers."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any

from apps.vsphere import tasks
from apps.vsphere.errors import InvalidSpec, ObjectNotFound
from apps.vsphere.session import Connection
from apps.vsphere.types import BASE_SNAPSHOT, OWNER_KEY, TemplateInfo, VMInfo
from apps.vsphere.vmomi import PropertyCollector as PC
from apps.vsphere.vmomi import vim

ProgressCallback = Callable[[int], None]

# Bounds for waits on vCenter tasks; real clones of big disks take minutes.
TASK_TIMEOUT = 30 * 60.0

VM_PATHS = [
    "name",
    "parent",
    "runtime.powerState",
    "config.template",
    "config.instanceUuid",
    "runtime.host",
    "resourcePool",
    "datastore",
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
    "config.annotation",
    "guest.ipAddress",
    "guest.hostName",
    "guest.toolsRunningStatus",
    "config.extraConfig",
]
TEMPLATE_PATHS = [
    "name",
    "config.template",
    "snapshot",
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
    "config.hardware.device",
    "config.guestId",
    "config.instanceUuid",
    "runtime.host",
    "runtime.powerState",
    "datastore",
]


def _moid(obj: Any) -> str | None:
    return getattr(obj, "_moId", None)


def _vm(conn: Connection, moid: str) -> vim.VirtualMachine:
    return conn.ref(vim.VirtualMachine, moid)


def _find_by_path(conn: Connection, path: str, *, operation: str) -> Any:
    return conn.call(conn.search_index.FindByInventoryPath, path, operation=operation, obj=path)


def _find_child(conn: Connection, parent: Any, name: str, *, operation: str) -> Any:
    return conn.call(conn.search_index.FindChild, parent, name, operation=operation, obj=name)



def _resolve_folder(conn: Connection, folder: str, *, operation: str) -> vim.Folder:
    """A folder by inventory path (always contains '/', it starts with the datacenter) or moid."""
    if "/" not in folder:
        return conn.ref(vim.Folder, folder)
    found = _find_by_path(conn, folder, operation=operation)
    if found is None:
        raise ObjectNotFound(f"there is no folder at '{folder}'", operation=operation, obj=folder)
    if not isinstance(found, vim.Folder):
        raise InvalidSpec(f"'{folder}' is a {_kind(found)}, not a folder", operation=operation, obj=folder)
    return found


def _kind(obj: Any) -> str:
    return type(obj).__name__.rsplit(".", 1)[-1]


def entity_path(conn: Connection, obj: Any, *, operation: str = "read the path of") -> str:
    """Inventory path (``DC0/vm/Templates/x``) of an entity, in one round trip."""
    up = PC.TraversalSpec(
        name="up", type=vim.ManagedEntity, path="parent", skip=False, selectSet=[PC.SelectionSpec(name="up")]
    )
    spec = PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=obj, skip=False, selectSet=[up])],
        propSet=[PC.PropertySpec(type=vim.ManagedEntity, pathSet=["name", "parent"])],
    )
    found = {oc.obj._moId: tasks.props(oc) for oc in tasks.retrieve(conn, spec, operation=operation, obj=obj._moId)}
    if obj._moId not in found:
        raise ObjectNotFound(operation=operation, obj=obj._moId)
    names: list[str] = []
    moid: str | None = obj._moId
    while moid in found:
        values = found[moid]
        parent = values.get("parent")
        if parent is None:  # the root folder is not part of inventory paths
            break
        names.append(values.get("name", ""))
        moid = parent._moId
    return "/".join(reversed(names))


def _usable_ip(ip: str | None) -> str | None:
    # Link-local and APIPA addresses show up before DHCP or customisation finished;
    # nobody can reach the VM on them.
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    return None if addr.is_link_local or addr.is_unspecified else ip


def _extra(values: Mapping[str, Any]) -> dict[str, str]:
    return {o.key: str(o.value) for o in values.get("config.extraConfig") or []}


def _vm_info(moid: str, values: Mapping[str, Any], path: str) -> VMInfo:
    parent = values.get("parent")
    return VMInfo(
        moid=moid,
        name=values.get("name", ""),
        path=path,
        power_state=str(values.get("runtime.powerState", "")),
        is_template=bool(values.get("config.template", False)),
        instance_uuid=values.get("config.instanceUuid") or "",
        host_moid=_moid(values.get("runtime.host")),
        resource_pool_moid=_moid(values.get("resourcePool")),
        folder_moid=_moid(parent) if isinstance(parent, vim.Folder) else None,
        datastore_moids=tuple(d._moId for d in values.get("datastore") or []),
        cpus=values.get("config.hardware.numCPU"),
        memory_mb=values.get("config.hardware.memoryMB"),
        annotation=values.get("config.annotation") or "",
        ip=_usable_ip(values.get("guest.ipAddress")),
        hostname=values.get("guest.hostName") or None,
        tools_status=values.get("guest.toolsRunningStatus") or None,
        owner=_extra(values).get(OWNER_KEY),
    )


def _walk_snapshots(values: Mapping[str, Any]) -> Iterator[Any]:
    """Snapshot tree nodes, parents before children, siblings oldest first."""
    info = values.get("snapshot")
    stack = list(reversed(getattr(info, "rootSnapshotList", None) or []))
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.childSnapshotList or []))


def _find_snapshot(values: Mapping[str, Any], name: str) -> Any:
    for node in _walk_snapshots(values):
        if node.name == name or node.snapshot._moId == name:
            return node
    return None


def _template_info(
    conn: Connection, moid: str, *, snapshot_name: str = BASE_SNAPSHOT, operation: str = "read template"
) -> TemplateInfo:
    vm = _vm(conn, moid)
    values = tasks.read(conn, vm, TEMPLATE_PATHS, operation=operation, name=moid)
    node = _find_snapshot(values, snapshot_name)
    disks = [d for d in values.get("config.hardware.device") or [] if isinstance(d, vim.vm.device.VirtualDisk)]
    return TemplateInfo(
        moid=moid,
        name=values.get("name", ""),
        path=entity_path(conn, vm, operation=operation),
        is_template=bool(values.get("config.template", False)),
        snapshot_moid=node.snapshot._moId if node else None,
        snapshot_name=node.name if node else None,
        cpus=values.get("config.hardware.numCPU"),
        memory_mb=values.get("config.hardware.memoryMB"),
        disk_gb=round(sum((d.capacityInKB or 0) for d in disks) / 1024 / 1024, 2) if disks else None,
        guest_id=values.get("config.guestId") or "",
        instance_uuid=values.get("config.instanceUuid") or "",
        host_moid=_moid(values.get("runtime.host")),
        datastore_moids=tuple(d._moId for d in values.get("datastore") or []),
    )


def _run_now(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """Run ``fn`` at once and hand back a finished Future: the no-executor path of the
    batch operations (clone_many, destroy_many)."""
    future: Future = Future()
    try:
        future.set_result(fn(*args, **kwargs))
    except BaseException as exc:  # delivered by future.result(), like an executor would
        future.set_exception(exc)
    return future
