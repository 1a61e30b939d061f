"""Everything vmportal asks of vCenter, as plain-data operations.

Each function takes a ``Connection`` (from ``session.connect``) and moids or paths, and
returns dataclasses from ``apps.vsphere.types``; faults arrive as ``apps.vsphere.errors``.
Operations are idempotent where vSphere allows it (power on/off, destroy, folders,
template preparation), so a job that died half-way can simply run again.

Properties are always read through the PropertyCollector with explicit paths: one
round trip for many values, and no lazy attribute fetches, which the simulator answers
by dropping the connection when a property is unset.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import os
import re
import tarfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO
from xml.etree import ElementTree

from pyVmomi import vim, vmodl

from apps.vsphere import tasks
from apps.vsphere.errors import (
    DuplicateName,
    InvalidPowerState,
    InvalidSpec,
    InvalidState,
    ObjectNotFound,
    OperationTimeout,
    TransientFault,
    VSphereError,
    fault_text,
    translate,
)
from apps.vsphere.session import Connection, https_connection
from apps.vsphere.types import (
    BASE_SNAPSHOT,
    OWNER_KEY,
    CloneResult,
    CloneSpec,
    Customization,
    DiskInfo,
    FolderInfo,
    GuestExpectation,
    GuestInfo,
    OwnedDestroy,
    SnapshotInfo,
    TaskHandle,
    TemplateCopy,
    TemplateInfo,
    VMInfo,
)

log = logging.getLogger(__name__)

PC = vmodl.query.PropertyCollector
ProgressCallback = Callable[[int], None]

# Bounds for waits on vCenter tasks; real clones of big disks take minutes.
TASK_TIMEOUT = 30 * 60.0
DEPLOY_TIMEOUT = 2 * 60 * 60.0
UPLOAD_CHUNK = 1024 * 1024

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


# ---------------------------------------------------------------- small helpers


def _moid(obj: Any) -> str | None:
    return getattr(obj, "_moId", None)


def _vm(conn: Connection, moid: str) -> vim.VirtualMachine:
    return conn.ref(vim.VirtualMachine, moid)


def _find_by_path(conn: Connection, path: str, *, operation: str) -> Any:
    return conn.call(conn.content.searchIndex.FindByInventoryPath, path, operation=operation, obj=path)


def _find_child(conn: Connection, parent: Any, name: str, *, operation: str) -> Any:
    return conn.call(conn.content.searchIndex.FindChild, parent, name, operation=operation, obj=name)


def name_taken(conn: Connection, folder_moid: str, name: str) -> bool:
    """Whether the folder directly holds anything (VM, template, folder, vApp) named ``name``."""
    return _find_child(conn, conn.ref(vim.Folder, folder_moid), name, operation="look up a name in folder") is not None


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


# ---------------------------------------------------------------- lookups


def find_vm(conn: Connection, *, path: str | None = None, instance_uuid: str | None = None) -> VMInfo | None:
    """A VM or template by inventory path or instanceUuid; None if there is none."""
    if bool(path) == bool(instance_uuid):
        raise InvalidSpec("give exactly one of path or instance_uuid", operation="find VM")
    if path:
        found = _find_by_path(conn, path, operation="find VM")
        if found is None:
            return None
        if not isinstance(found, vim.VirtualMachine):
            raise InvalidSpec(f"'{path}' is a {_kind(found)}, not a VM", operation="find VM", obj=path)
    else:
        found = conn.call(
            conn.content.searchIndex.FindByUuid,
            None,
            instance_uuid,
            True,
            True,
            operation="find VM by instance UUID",
            obj=instance_uuid or "",
        )
        if found is None:
            return None
    try:
        values = tasks.read(conn, found, VM_PATHS, operation="read VM", name=path or found._moId)
        return _vm_info(found._moId, values, path or entity_path(conn, found))
    except ObjectNotFound:
        return None  # deleted between the search and the read


def get_vm(conn: Connection, moid: str) -> VMInfo:
    """A VM by moid; ObjectNotFound if it is gone."""
    vm = _vm(conn, moid)
    values = tasks.read(conn, vm, VM_PATHS, operation="read VM", name=moid)
    return _vm_info(moid, values, entity_path(conn, vm))


def list_folder_vms(conn: Connection, folder: str) -> list[VMInfo]:
    """The VMs and templates directly in a folder (path or moid); never sub-folders.

    One RetrievePropertiesEx for all of them, however many there are.
    """
    operation = "list VMs of folder"
    ref = _resolve_folder(conn, folder, operation=operation)
    folder_path = folder if "/" in folder else entity_path(conn, ref, operation=operation)
    children = PC.TraversalSpec(name="children", type=vim.Folder, path="childEntity", skip=False)
    spec = PC.FilterSpec(
        # skip=True: the folder itself is not reported; the VirtualMachine-only property
        # spec drops sub-folders and vApps that the traversal also reaches.
        objectSet=[PC.ObjectSpec(obj=ref, skip=True, selectSet=[children])],
        propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=VM_PATHS)],
    )
    vms = []
    for oc in tasks.retrieve(conn, spec, operation=operation, obj=folder):
        if not isinstance(oc.obj, vim.VirtualMachine):
            continue
        values = tasks.props(oc)
        vms.append(_vm_info(oc.obj._moId, values, f"{folder_path}/{values.get('name', '')}"))
    return sorted(vms, key=lambda v: v.name)


def create_folder(conn: Connection, parent: str, name: str) -> FolderInfo:
    """Create ``name`` under ``parent`` (path or moid); an existing folder is returned as is."""
    operation = "create folder"
    if not name or "/" in name or len(name) > 80:
        raise InvalidSpec("a folder name needs 1-80 characters and no '/'", operation=operation, obj=name)
    parent_ref = _resolve_folder(conn, parent, operation=operation)
    parent_path = parent if "/" in parent else entity_path(conn, parent_ref, operation=operation)
    existing = _find_child(conn, parent_ref, name, operation=operation)
    if existing is None:
        try:
            existing = conn.call(
                parent_ref.CreateFolder, name, operation=operation, obj=f"{parent_path}/{name}", idempotent=False
            )
        except DuplicateName:
            # Another worker created it between our lookup and our create: same result.
            existing = _find_child(conn, parent_ref, name, operation=operation)
            if existing is None:
                raise
    if not isinstance(existing, vim.Folder):
        raise DuplicateName(
            f"a {_kind(existing)} named '{name}' is in the way", operation=operation, obj=f"{parent_path}/{name}"
        )
    return FolderInfo(moid=existing._moId, name=name, path=f"{parent_path}/{name}")


# ---------------------------------------------------------------- templates


def register_template(conn: Connection, inventory_path: str) -> TemplateInfo:
    """Look up an existing template (or VM meant to become one) by inventory path."""
    operation = "register template"
    found = _find_by_path(conn, inventory_path, operation=operation)
    if found is None:
        raise ObjectNotFound(
            f"there is no VM or template at '{inventory_path}'", operation=operation, obj=inventory_path
        )
    if not isinstance(found, vim.VirtualMachine):
        raise InvalidSpec(
            f"'{inventory_path}' is a {_kind(found)}, not a VM or template", operation=operation, obj=inventory_path
        )
    return _template_info(conn, found._moId, operation=operation)


def prepare_template(
    conn: Connection, moid: str, *, snapshot_name: str = BASE_SNAPSHOT, timeout: float = TASK_TIMEOUT
) -> TemplateInfo:
    """Give a template its linked-clone base snapshot and mark it as a template.

    Idempotent: a present snapshot is reused, an existing template stays one. Safe to
    run concurrently on the same VM: every step re-reads and converges.
    """
    operation = "prepare template"
    vm = _vm(conn, moid)
    last_error: VSphereError | None = None
    for _ in range(3):
        values = tasks.read(
            conn,
            vm,
            ["name", "config.template", "snapshot", "runtime.powerState", "runtime.host"],
            operation=operation,
            name=moid,
        )
        name = values.get("name", moid)
        is_template = bool(values.get("config.template"))
        has_snapshot = _find_snapshot(values, snapshot_name) is not None
        if is_template and has_snapshot:
            return _template_info(conn, moid, snapshot_name=snapshot_name, operation=operation)
        if not is_template and values.get("runtime.powerState") != "poweredOff":
            # Checked before the snapshot, so a refused VM is left exactly as it was.
            raise InvalidPowerState(
                "power the VM off first; only a powered-off VM can become a template", operation=operation, obj=name
            )
        try:
            if not has_snapshot:
                if is_template:
                    # vCenter refuses snapshots of templates: briefly turn it back into a VM.
                    _mark_as_vm(conn, vm, values.get("runtime.host"), name=name)
                tasks.run_task(
                    conn,
                    vm.CreateSnapshot_Task,
                    name=snapshot_name,
                    description="Base disk layer for vmportal linked clones; do not delete.",
                    memory=False,
                    quiesce=False,
                    operation="create base snapshot of",
                    obj=name,
                    timeout=timeout,
                )
                _drop_duplicate_snapshots(conn, vm, snapshot_name, name=name, timeout=timeout)
            conn.call(vm.MarkAsTemplate, operation="mark as template", obj=name, idempotent=False)
        except (InvalidState, InvalidSpec) as exc:
            # MarkAsTemplate twice gives NotSupported and a racing preparer's
            # MarkAsVirtualMachine gives InvalidState: re-read and converge.
            last_error = exc
            continue
    info = _template_info(conn, moid, snapshot_name=snapshot_name, operation=operation)
    if info.ready_for_linked_clones:
        return info
    raise last_error or InvalidState("the template did not settle", operation=operation, obj=moid)


def _mark_as_vm(conn: Connection, vm: vim.VirtualMachine, host: Any, *, name: str) -> None:
    if host is None:
        raise InvalidState(
            "the template has no host, so it cannot be turned back into a VM", operation="prepare template", obj=name
        )
    compute = tasks.read(conn, host, ["parent"], operation="prepare template", name=name)["parent"]
    pool = tasks.read(conn, compute, ["resourcePool"], operation="prepare template", name=name)["resourcePool"]
    conn.call(vm.MarkAsVirtualMachine, pool=pool, host=host, operation="mark as VM", obj=name, idempotent=False)


def _drop_duplicate_snapshots(
    conn: Connection, vm: vim.VirtualMachine, snapshot_name: str, *, name: str, timeout: float
) -> None:
    # Two preparers can each create the snapshot (vSphere allows duplicate snapshot
    # names). The oldest one is canonical; later duplicates are removed again.
    values = tasks.read(conn, vm, ["snapshot"], operation="prepare template", name=name)
    same = [n for n in _walk_snapshots(values) if n.name == snapshot_name]
    for node in same[1:]:
        with contextlib.suppress(ObjectNotFound):
            tasks.run_task(
                conn,
                node.snapshot.RemoveSnapshot_Task,
                removeChildren=False,
                operation="remove duplicate snapshot of",
                obj=name,
                timeout=timeout,
            )


def copy_template_to_cluster(
    conn: Connection,
    *,
    template_moid: str,
    name: str,
    folder_moid: str,
    resource_pool_moid: str,
    datastore_moid: str | None = None,
    host_moid: str | None = None,
    snapshot_name: str = BASE_SNAPSHOT,
    timeout: float = TASK_TIMEOUT,
) -> TemplateCopy:
    """Make (or find) a prepared copy of a template in another cluster/datastore.

    Concurrent callers with the same ``name`` and folder de-duplicate on vSphere's
    DuplicateName: one clones and prepares, the others wait (bounded) until the
    winner's copy is a template with the base snapshot.
    """
    operation = "copy template"
    folder = conn.ref(vim.Folder, folder_moid)
    existing = _find_child(conn, folder, name, operation=operation)
    if existing is None:
        source = tasks.read(conn, _vm(conn, template_moid), ["name"], operation=operation, name=template_moid)
        location = vim.vm.RelocateSpec(pool=conn.ref(vim.ResourcePool, resource_pool_moid))
        if datastore_moid:
            location.datastore = conn.ref(vim.Datastore, datastore_moid)
        if host_moid:
            location.host = conn.ref(vim.HostSystem, host_moid)
        # A VM, not a template: the base snapshot must be taken before it becomes one.
        spec = vim.vm.CloneSpec(location=location, powerOn=False, template=False)
        try:
            copy_moid = tasks.run_task(
                conn,
                _vm(conn, template_moid).CloneVM_Task,
                folder=folder,
                name=name,
                spec=spec,
                operation=f"copy template '{source.get('name', template_moid)}' as",
                obj=name,
                timeout=timeout,
            )
        except DuplicateName:
            existing = _find_child(conn, folder, name, operation=operation)
            if existing is None:
                raise
        else:
            assert copy_moid is not None
            try:
                return TemplateCopy(
                    prepare_template(conn, copy_moid, snapshot_name=snapshot_name, timeout=timeout), created=True
                )
            except VSphereError:
                # A half-prepared copy would make every later caller wait for nothing.
                with contextlib.suppress(VSphereError):
                    destroy_vm(conn, copy_moid, allow_template=True)
                raise
    if not isinstance(existing, vim.VirtualMachine):
        raise DuplicateName(f"a {_kind(existing)} named '{name}' is in the way", operation=operation, obj=name)
    return TemplateCopy(_wait_for_prepared(conn, existing, snapshot_name, name=name, timeout=timeout), created=False)


def _wait_for_prepared(
    conn: Connection, vm: vim.VirtualMachine, snapshot_name: str, *, name: str, timeout: float
) -> TemplateInfo:
    def check(values: dict[str, Any]) -> str | None:
        if _find_snapshot(values, snapshot_name) is None:
            return f"it has no '{snapshot_name}' snapshot yet"
        if not values.get("config.template"):
            return "it is not marked as a template yet"
        return None

    try:
        tasks.wait_for_condition(
            conn,
            vm,
            ["config.template", "snapshot"],
            check,
            timeout=timeout,
            operation="wait for the template copy",
            name=name,
        )
    except OperationTimeout as exc:
        exc.detail += "; another worker started this copy and has not finished it (delete it if that worker died)"
        raise
    return _template_info(conn, vm._moId, snapshot_name=snapshot_name, operation="wait for the template copy")


# ---------------------------------------------------------------- clones

_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def customization_script_supported(conn: Connection) -> bool:
    """Whether LinuxPrep's customisation script reaches this vCenter.

    ``scriptText`` is a vSphere 7.0 property; pyVmomi silently leaves it out of requests
    to older APIs (the simulator speaks 6.5), so the caller can say what did not happen.
    """
    from pyVmomi.VmomiSupport import IsChildVersion  # noqa: PLC0415 - pyVmomi internals, used once

    return IsChildVersion(conn.si._stub.version, "vim.version.v7_0")


def _customization(c: Customization) -> vim.vm.customization.Specification:
    if not _HOSTNAME.match(c.hostname) or (c.windows and len(c.hostname) > 15):
        limit = 15 if c.windows else 63
        raise InvalidSpec(
            f"'{c.hostname}' is not a valid host name (letters, digits, '-', at most {limit})",
            operation="customise",
            obj=c.hostname,
        )
    if c.windows:
        identity: Any = vim.vm.customization.Sysprep(
            guiUnattended=vim.vm.customization.GuiUnattended(
                # Sysprep takes the password in clear text (or encrypted with a key only
                # vCenter holds); it travels only inside this TLS request.
                password=vim.vm.customization.Password(value=c.admin_password, plainText=True)
                if c.admin_password
                else None,
                timeZone=c.windows_timezone,
                autoLogon=False,
                autoLogonCount=0,
            ),
            userData=vim.vm.customization.UserData(
                computerName=vim.vm.customization.FixedName(name=c.hostname),
                fullName="vmportal",
                orgName=c.organization,
                productId="",
            ),
            identification=vim.vm.customization.Identification(joinWorkgroup=c.workgroup),
        )
    else:
        identity = vim.vm.customization.LinuxPrep(
            hostName=vim.vm.customization.FixedName(name=c.hostname),
            domain=c.domain or "localdomain",
            timeZone=c.timezone,
            hwClockUTC=True,
        )
        if c.script:
            identity.scriptText = c.script
    if c.ip:
        try:
            ipaddress.ip_address(c.ip)
        except ValueError as exc:
            raise InvalidSpec(f"'{c.ip}' is not an IP address", operation="customise", obj=c.hostname) from exc
        adapter = vim.vm.customization.IPSettings(
            ip=vim.vm.customization.FixedIp(ipAddress=c.ip),
            subnetMask=c.netmask or "255.255.255.0",
            gateway=[c.gateway] if c.gateway else [],
            dnsDomain=c.domain or None,
            dnsServerList=list(c.dns) if c.windows else [],
        )
    else:
        adapter = vim.vm.customization.IPSettings(ip=vim.vm.customization.DhcpIpGenerator())
    return vim.vm.customization.Specification(
        identity=identity,
        globalIPSettings=vim.vm.customization.GlobalIPSettings(
            dnsServerList=list(c.dns), dnsSuffixList=[c.domain] if c.domain else []
        ),
        nicSettingMap=[vim.vm.customization.AdapterMapping(adapter=adapter)],
    )


def _cdrom_change(conn: Connection, spec: CloneSpec) -> vim.vm.device.VirtualDeviceSpec:
    """A device change that puts ``spec.cdrom_iso`` in the clone's CD-ROM drive.

    The template's own drive is reused when it has one; otherwise a new drive goes on
    the first IDE controller with a free slot (vCenter: two devices per IDE channel).
    """
    values = tasks.read(conn, _vm(conn, spec.template_moid), ["config.hardware.device"], operation="clone",
                        name=spec.template_moid)
    devices = values.get("config.hardware.device") or []
    backing = vim.vm.device.VirtualCdrom.IsoBackingInfo(fileName=spec.cdrom_iso)
    connectable = vim.vm.device.VirtualDevice.ConnectInfo(startConnected=True, connected=True, allowGuestControl=True)
    for device in devices:
        if isinstance(device, vim.vm.device.VirtualCdrom):
            device.backing, device.connectable = backing, connectable
            return vim.vm.device.VirtualDeviceSpec(operation="edit", device=device)
    for ide in devices:
        if not isinstance(ide, vim.vm.device.VirtualIDEController):
            continue
        used = {d.unitNumber for d in devices if getattr(d, "controllerKey", None) == ide.key}
        free = [u for u in (0, 1) if u not in used]
        if free:
            drive = vim.vm.device.VirtualCdrom(
                key=-200, controllerKey=ide.key, unitNumber=free[0], backing=backing, connectable=connectable
            )
            return vim.vm.device.VirtualDeviceSpec(operation="add", device=drive)
    raise InvalidSpec(
        "the template has no CD-ROM drive and no free IDE slot for one; the seed ISO cannot be attached",
        operation="clone",
        obj=spec.name,
    )


def _clone_spec(conn: Connection, spec: CloneSpec) -> vim.vm.CloneSpec:
    location = vim.vm.RelocateSpec(pool=conn.ref(vim.ResourcePool, spec.resource_pool_moid))
    if spec.host_moid:
        location.host = conn.ref(vim.HostSystem, spec.host_moid)
    if spec.datastore_moid:
        location.datastore = conn.ref(vim.Datastore, spec.datastore_moid)
    config = vim.vm.ConfigSpec(
        extraConfig=[vim.option.OptionValue(key=k, value=str(v)) for k, v in spec.extra_config.items()]
    )
    if spec.cpus:
        config.numCPUs = spec.cpus
    if spec.memory_mb:
        config.memoryMB = spec.memory_mb
    if spec.annotation:
        config.annotation = spec.annotation
    # Powering on inside the clone task saves a task per VM. vCenters (and simulators)
    # that ignore it are caught by clone_many, which powers on what came back off.
    clone = vim.vm.CloneSpec(location=location, powerOn=spec.power_on, template=False, config=config)
    if spec.linked:
        snapshot_moid = spec.snapshot_moid
        if not snapshot_moid:
            values = tasks.read(
                conn, _vm(conn, spec.template_moid), ["name", "snapshot"], operation="clone", name=spec.template_moid
            )
            node = _find_snapshot(values, BASE_SNAPSHOT)
            if node is None:
                raise InvalidSpec(
                    f"template '{values.get('name', spec.template_moid)}' has no '{BASE_SNAPSHOT}' snapshot; "
                    "prepare it for linked clones or use a full clone",
                    operation="clone",
                    obj=spec.name,
                )
            snapshot_moid = node.snapshot._moId
        clone.snapshot = conn.ref(vim.vm.Snapshot, snapshot_moid)
        location.diskMoveType = "createNewChildDiskBacking"
    if spec.customization is not None:
        clone.customization = _customization(spec.customization)
    if spec.cdrom_iso:
        config.deviceChange = [_cdrom_change(conn, spec)]
    return clone


def start_clone(conn: Connection, spec: CloneSpec, *, check_name: bool = True) -> TaskHandle:
    """Check the name, build the spec and start CloneVM_Task; wait with ``wait_for_tasks``.

    The simulator's stock build allows duplicate names in a folder, and a vCenter only
    notices them late, so the name is checked here first (``check_name=False`` for
    callers whose names are unique already, e.g. by a database constraint).
    """
    folder = conn.ref(vim.Folder, spec.folder_moid)
    if check_name and _find_child(conn, folder, spec.name, operation="clone") is not None:
        raise DuplicateName(f"the folder already holds a VM named '{spec.name}'", operation="clone", obj=spec.name)
    clone = _clone_spec(conn, spec)
    return tasks.start_task(
        conn,
        _vm(conn, spec.template_moid).CloneVM_Task,
        folder=folder,
        name=spec.name,
        spec=clone,
        operation="clone",
        obj=spec.name,
    )


def clone_many(
    conn: Connection,
    specs: Sequence[CloneSpec],
    *,
    timeout: float = TASK_TIMEOUT,
    check_names: bool = True,
    executor: Executor | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[CloneResult | VSphereError]:
    """Clone several VMs at once: all tasks in flight together, waited on through one filter.

    Returns one CloneResult or error per spec, in order. A clone whose power-on failed
    is destroyed again, so a failure never leaves an unknown VM behind.
    ``on_progress(index, percent)`` hears the clone tasks' progress as vCenter reports it.
    """
    deadline = time.monotonic() + timeout
    results: list[CloneResult | VSphereError | None] = [None] * len(specs)
    handles: dict[int, TaskHandle] = {}
    # Starting a task is a round trip of its own; with an executor they overlap (the
    # session's HTTP connection pool is thread-safe), and the wait below is one filter.
    submit = executor.submit if executor is not None else _run_now
    started = {i: submit(start_clone, conn, spec, check_name=check_names) for i, spec in enumerate(specs)}
    for i, future in started.items():
        try:
            handles[i] = future.result()
        except VSphereError as exc:
            results[i] = exc
    index = {h.moid: i for i, h in handles.items()}
    report = (lambda h, percent: on_progress(index[h.moid], percent)) if on_progress else None
    outcomes = tasks.wait_for_tasks(
        conn, list(handles.values()), max(1.0, deadline - time.monotonic()), on_progress=report
    )
    made: dict[int, str] = {}
    for i, outcome in zip(handles, outcomes, strict=True):
        if outcome.ok and outcome.result_moid:
            made[i] = outcome.result_moid
        else:
            results[i] = outcome.error or VSphereError(
                "the clone task gave no VM", operation="clone", obj=specs[i].name
            )
    fresh = tasks.read_many(
        conn,
        vim.VirtualMachine,
        [_vm(conn, m) for m in made.values()],
        ["name", "config.instanceUuid", "runtime.powerState", "runtime.host", "datastore"],
        operation="read clones",
    )
    power: dict[int, TaskHandle] = {}
    for i, moid in made.items():
        if specs[i].power_on and fresh.get(moid, {}).get("runtime.powerState") != "poweredOn":
            try:
                power[i] = tasks.start_task(
                    conn, _vm(conn, moid).PowerOnVM_Task, operation="power on", obj=specs[i].name
                )
            except VSphereError as exc:
                results[i] = exc
    for i, outcome in zip(
        power, tasks.wait_for_tasks(conn, list(power.values()), max(1.0, deadline - time.monotonic())), strict=True
    ):
        if outcome.ok:
            fresh.setdefault(made[i], {})["runtime.powerState"] = "poweredOn"
        else:
            results[i] = outcome.error
    for i, moid in made.items():
        if results[i] is not None:
            with contextlib.suppress(VSphereError):
                destroy_vm(conn, moid)
    folder_paths: dict[str, str] = {}
    for i, moid in made.items():
        if results[i] is not None:
            continue
        values = fresh.get(moid, {})
        folder_moid = specs[i].folder_moid
        if folder_moid not in folder_paths:
            folder_paths[folder_moid] = _folder_path(conn, folder_moid)
        results[i] = CloneResult(
            moid=moid,
            name=values.get("name", specs[i].name),
            path=f"{folder_paths[folder_moid]}/{values.get('name', specs[i].name)}",
            instance_uuid=values.get("config.instanceUuid") or "",
            power_state=str(values.get("runtime.powerState", "")),
            host_moid=_moid(values.get("runtime.host")),
            datastore_moids=tuple(d._moId for d in values.get("datastore") or []),
        )
    return [r for r in results if r is not None]


def _run_now(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    future: Future = Future()
    try:
        future.set_result(fn(*args, **kwargs))
    except BaseException as exc:  # delivered by future.result(), like an executor would
        future.set_exception(exc)
    return future


_folder_paths: dict[tuple[str, str], str] = {}


def _folder_path(conn: Connection, folder_moid: str) -> str:
    # Pool folders are few and rarely renamed; a path per clone would be a round trip each.
    key = (conn.endpoint.host, folder_moid)
    if key not in _folder_paths:
        _folder_paths[key] = entity_path(conn, conn.ref(vim.Folder, folder_moid))
    return _folder_paths[key]


def clone_vm(
    conn: Connection, spec: CloneSpec, *, timeout: float = TASK_TIMEOUT, check_name: bool = True
) -> CloneResult:
    """Clone one VM (linked or full), optionally customised, and power it on."""
    result = clone_many(conn, [spec], timeout=timeout, check_names=check_name)[0]
    if isinstance(result, VSphereError):
        raise result
    return result


_GUEST_PATHS = ["name", "runtime.powerState", "guest.ipAddress", "guest.hostName", "guest.toolsRunningStatus"]


def _not_usable(
    values: Mapping[str, Any],
    *,
    require_ip: bool,
    expected_hostname: str | None,
    expected_ip: str | None = None,
    tools_running: bool = False,
) -> str | None:
    """What is still missing before the VM is usable, or None when it is."""
    state = values.get("runtime.powerState")
    if state != "poweredOn":
        return f"the VM is {state or 'in an unknown power state'}"
    ip = _usable_ip(values.get("guest.ipAddress"))
    hostname = values.get("guest.hostName") or ""
    tools = values.get("guest.toolsRunningStatus") or "unknown"
    if tools_running and tools != "guestToolsRunning":
        return f"VMware Tools are not running in the guest yet ({tools})"
    if expected_hostname and hostname.split(".")[0].lower() != expected_hostname.split(".")[0].lower():
        return f"hostname mismatch: the guest reports '{hostname or '(none)'}', expected '{expected_hostname}'"
    if expected_ip and ip != expected_ip:
        return f"address mismatch: the guest reports {ip or 'no usable IP address'}, expected {expected_ip}"
    if require_ip and not ip:
        return f"the guest has no usable IP address yet (tools: {tools})"
    if not (ip or hostname or tools == "guestToolsRunning"):
        return "the guest shows no sign of life yet (no IP, host name or running tools)"
    return None


def _guest(values: Mapping[str, Any]) -> GuestInfo:
    return GuestInfo(
        ip=_usable_ip(values.get("guest.ipAddress")),
        hostname=values.get("guest.hostName") or None,
        tools_status=values.get("guest.toolsRunningStatus") or None,
    )


def check_usable(
    conn: Connection,
    moids: Sequence[str],
    *,
    require_ip: bool = True,
    expect: Mapping[str, GuestExpectation] | None = None,
) -> dict[str, GuestInfo | str]:
    """One look at many booting VMs: GuestInfo for the usable ones, else what is missing.

    One RetrievePropertiesEx however many VMs, so a pool manager can watch a whole
    burst of booting clones at the cost of a single call per look. ``expect`` (by moid)
    adds what first boot promised: running tools, the host name and the address.
    """
    values = tasks.read_many(conn, vim.VirtualMachine, [_vm(conn, m) for m in moids], _GUEST_PATHS,
                             operation="check guests")
    out: dict[str, GuestInfo | str] = {}
    for moid in moids:
        if moid not in values:
            out[moid] = "the VM no longer exists"
            continue
        want = (expect or {}).get(moid) or GuestExpectation()
        missing = _not_usable(values[moid], require_ip=require_ip, expected_hostname=want.hostname,
                              expected_ip=want.ip, tools_running=want.tools_running)
        out[moid] = missing if missing else _guest(values[moid])
    return out


def wait_until_usable(
    conn: Connection, moid: str, *, timeout: float, require_ip: bool = True, expected_hostname: str | None = None
) -> GuestInfo:
    """Wait until the VM is powered on and its guest reports in (bounded, event-driven).

    Usable means: powered on, the expected hostname if one is given, and a routable
    guest IP (``require_ip``) or else any sign of life (IP, hostname or running tools).
    """

    def check(values: dict[str, Any]) -> str | None:
        return _not_usable(values, require_ip=require_ip, expected_hostname=expected_hostname)

    values = tasks.wait_for_condition(
        conn, _vm(conn, moid), _GUEST_PATHS, check, timeout=timeout, operation="wait until usable", name=moid
    )
    return _guest(values)


# ---------------------------------------------------------------- first-boot media


_datastore_locations: dict[tuple[str, str], tuple[str, str]] = {}


def _datastore_location(conn: Connection, datastore_moid: str) -> tuple[str, str]:
    """(datacenter inventory path, datastore name): what /folder URLs and datastore paths need."""
    key = (conn.endpoint.host, datastore_moid)
    if key not in _datastore_locations:
        operation = "find datastore"
        ds = conn.ref(vim.Datastore, datastore_moid)
        name = tasks.read(conn, ds, ["name"], operation=operation, name=datastore_moid).get("name", "")
        parent = tasks.read(conn, ds, ["parent"], operation=operation, name=name).get("parent")
        while parent is not None and not isinstance(parent, vim.Datacenter):
            parent = tasks.read(conn, parent, ["parent"], operation=operation, name=name).get("parent")
        if parent is None:
            raise ObjectNotFound("the datastore is in no datacenter", operation=operation, obj=name)
        _datastore_locations[key] = (entity_path(conn, parent, operation=operation), name)
    return _datastore_locations[key]


def datastore_path(conn: Connection, datastore_moid: str, path: str) -> str:
    """``[name] path``, the form VM devices and FileManager take."""
    return f"[{_datastore_location(conn, datastore_moid)[1]}] {path}"


def upload_datastore_file(conn: Connection, datastore_moid: str, path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` on a datastore (HTTP PUT /folder, session cookie); returns
    the datastore path. Overwrites: uploads are retried by whole jobs, never appended."""
    operation = "upload to datastore"
    dc_path, ds_name = _datastore_location(conn, datastore_moid)
    folder = path.rsplit("/", 1)[0] if "/" in path else ""
    if folder:
        with contextlib.suppress(DuplicateName):
            conn.call(
                conn.content.fileManager.MakeDirectory,
                name=f"[{ds_name}] {folder}",
                datacenter=conn.ref(vim.Datacenter, _datacenter_moid(conn, dc_path)),
                createParentDirectories=True,
                operation="create datastore folder",
                obj=f"[{ds_name}] {folder}",
            )
    query = urllib.parse.urlencode({"dcPath": dc_path, "dsName": ds_name})
    url = f"/folder/{urllib.parse.quote(path)}?{query}"
    http_conn = https_connection(conn.endpoint, conn.endpoint.hostname, conn.endpoint.port)
    try:
        http_conn.putrequest("PUT", url)
        http_conn.putheader("Content-Type", "application/octet-stream")
        http_conn.putheader("Content-Length", str(len(data)))
        # /folder authenticates by the SOAP session's cookie, like NFC.
        http_conn.putheader("Cookie", conn.session_cookie)
        http_conn.endheaders()
        http_conn.send(data)
        resp = http_conn.getresponse()
        resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise translate(exc, operation=operation, obj=path) from exc
    finally:
        http_conn.close()
    if resp.status >= 300:
        raise TransientFault(
            f"HTTP {resp.status} {resp.reason}", operation=operation, obj=f"[{ds_name}] {path}", from_vcenter=False
        )
    return f"[{ds_name}] {path}"


_datacenter_moids: dict[tuple[str, str], str] = {}


def _datacenter_moid(conn: Connection, dc_path: str) -> str:
    key = (conn.endpoint.host, dc_path)
    if key not in _datacenter_moids:
        found = _find_by_path(conn, dc_path, operation="find datacenter")
        if found is None:
            raise ObjectNotFound(f"there is no datacenter at '{dc_path}'", operation="find datacenter", obj=dc_path)
        _datacenter_moids[key] = found._moId
    return _datacenter_moids[key]


def delete_datastore_file(conn: Connection, datastore_moid: str, path: str, *, timeout: float = TASK_TIMEOUT) -> bool:
    """Delete a datastore file; False if it was already gone (idempotent)."""
    dc_path, ds_name = _datastore_location(conn, datastore_moid)
    name = f"[{ds_name}] {path}"
    try:
        tasks.run_task(
            conn,
            conn.content.fileManager.DeleteDatastoreFile_Task,
            name=name,
            datacenter=conn.ref(vim.Datacenter, _datacenter_moid(conn, dc_path)),
            operation="delete datastore file",
            obj=name,
            timeout=timeout,
        )
    except ObjectNotFound:
        return False
    return True


def datastore_file_exists(conn: Connection, datastore_moid: str, path: str) -> bool:
    """Whether ``path`` is on the datastore (HTTP HEAD on /folder)."""
    dc_path, ds_name = _datastore_location(conn, datastore_moid)
    query = urllib.parse.urlencode({"dcPath": dc_path, "dsName": ds_name})
    http_conn = https_connection(conn.endpoint, conn.endpoint.hostname, conn.endpoint.port)
    try:
        http_conn.request("HEAD", f"/folder/{urllib.parse.quote(path)}?{query}",
                          headers={"Cookie": conn.session_cookie})
        resp = http_conn.getresponse()
        resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise translate(exc, operation="look for datastore file", obj=path) from exc
    finally:
        http_conn.close()
    if resp.status == 404:
        return False
    if resp.status >= 300:
        raise TransientFault(f"HTTP {resp.status} {resp.reason}", operation="look for datastore file",
                             obj=f"[{ds_name}] {path}", from_vcenter=False)
    return True


def eject_cdrom(conn: Connection, moid: str, iso: str, *, timeout: float = TASK_TIMEOUT) -> bool:
    """Take the ISO ``iso`` (datastore path) out of the VM's CD-ROM drive.

    The drive stays, empty and disconnected, so the guest sees no hardware change.
    False when no drive holds that ISO (idempotent; the VM may be gone too).
    """
    vm = _vm(conn, moid)
    try:
        values = tasks.read(conn, vm, ["name", "config.hardware.device"], operation="eject CD-ROM", name=moid)
    except ObjectNotFound:
        return False
    name = values.get("name", moid)
    changes = []
    for device in values.get("config.hardware.device") or []:
        if isinstance(device, vim.vm.device.VirtualCdrom) and getattr(device.backing, "fileName", None) == iso:
            device.backing = vim.vm.device.VirtualCdrom.RemotePassthroughBackingInfo(deviceName="", exclusive=False)
            device.connectable = vim.vm.device.VirtualDevice.ConnectInfo(
                startConnected=False, connected=False, allowGuestControl=True
            )
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=device))
    if not changes:
        return False
    tasks.run_task(conn, vm.ReconfigVM_Task, spec=vim.vm.ConfigSpec(deviceChange=changes),
                   operation="eject CD-ROM of", obj=name, timeout=timeout)
    return True


def cdrom_isos(conn: Connection, moid: str) -> list[str]:
    """The ISO files in the VM's CD-ROM drives (datastore paths)."""
    values = tasks.read(conn, _vm(conn, moid), ["config.hardware.device"], operation="read CD-ROMs", name=moid)
    return [
        d.backing.fileName
        for d in values.get("config.hardware.device") or []
        if isinstance(d, vim.vm.device.VirtualCdrom)
        and isinstance(d.backing, vim.vm.device.VirtualCdrom.IsoBackingInfo)
    ]


def set_extra_config(conn: Connection, moid: str, values: Mapping[str, str], *, timeout: float = TASK_TIMEOUT) -> None:
    """Set extraConfig keys; an empty value removes the key (how vSphere deletes them)."""
    vm = _vm(conn, moid)
    options = [vim.option.OptionValue(key=k, value=v) for k, v in values.items()]
    tasks.run_task(conn, vm.ReconfigVM_Task, spec=vim.vm.ConfigSpec(extraConfig=options),
                   operation="reconfigure", obj=moid, timeout=timeout)


def extra_config(conn: Connection, moid: str) -> dict[str, str]:
    """The VM's extraConfig as a dict."""
    return _extra(tasks.read(conn, _vm(conn, moid), ["config.extraConfig"], operation="read extraConfig", name=moid))


# ---------------------------------------------------------------- power, destroy, relocate


def _power(conn: Connection, moid: str, *, want: str, timeout: float) -> str:
    vm = _vm(conn, moid)
    values = tasks.read(conn, vm, ["name", "runtime.powerState"], operation=f"power {want}", name=moid)
    name = values.get("name", moid)
    target = "poweredOn" if want == "on" else "poweredOff"
    if values.get("runtime.powerState") == target:
        return target
    method = vm.PowerOnVM_Task if want == "on" else vm.PowerOffVM_Task
    try:
        tasks.run_task(conn, method, operation=f"power {want}", obj=name, timeout=timeout)
    except InvalidPowerState:
        # Someone else switched it meanwhile; fine if it is now where we wanted it.
        now = tasks.read(conn, vm, ["runtime.powerState"], operation=f"power {want}", name=name)
        if now.get("runtime.powerState") != target:
            raise
    return target


def power_on(conn: Connection, moid: str, *, timeout: float = TASK_TIMEOUT) -> str:
    """Power a VM on; already on is fine. Returns the power state."""
    return _power(conn, moid, want="on", timeout=timeout)


def power_off(conn: Connection, moid: str, *, timeout: float = TASK_TIMEOUT) -> str:
    """Power a VM off (hard); already off is fine. Returns the power state."""
    return _power(conn, moid, want="off", timeout=timeout)


def shut_down(conn: Connection, moid: str, *, timeout: float = 300.0) -> str:
    """Ask the guest to shut down, and power off (hard) if it is not off within ``timeout``.

    Used before a VM becomes a template, so its disks are clean when the guest cooperates.
    Already off is fine. Returns the power state.
    """
    vm = _vm(conn, moid)
    values = tasks.read(conn, vm, ["name", "runtime.powerState"], operation="shut down", name=moid)
    name = values.get("name", moid)
    if values.get("runtime.powerState") == "poweredOff":
        return "poweredOff"
    try:
        conn.call(vm.ShutdownGuest, operation="shut down the guest of", obj=name, idempotent=False)
        tasks.wait_for_condition(
            conn,
            vm,
            ["runtime.powerState"],
            lambda v: None if v.get("runtime.powerState") == "poweredOff" else "the guest is still running",
            timeout=timeout,
            operation="wait for the guest to shut down",
            name=name,
        )
        return "poweredOff"
    except VSphereError as exc:  # no tools, or the guest ignored us: pull the plug
        log.info("%s: guest shutdown did not finish (%s); powering off", name, exc)
        return power_off(conn, moid)


def destroy_vm(
    conn: Connection,
    moid: str,
    *,
    expected_owner: str | None = None,
    allow_template: bool = False,
    timeout: float = TASK_TIMEOUT,
) -> bool:
    """Power off and delete a VM. Returns False if it was already gone (idempotent).

    ``expected_owner`` refuses to delete a VM whose ownership marker differs: moids
    and even uuids get reused after delete-and-recreate, so a stale id must not hit a
    stranger's VM. Templates are refused unless ``allow_template``.
    """
    vm = _vm(conn, moid)
    try:
        values = tasks.read(
            conn,
            vm,
            ["name", "runtime.powerState", "config.template", "config.extraConfig"],
            operation="destroy",
            name=moid,
        )
        name = values.get("name", moid)
        if values.get("config.template") and not allow_template:
            raise InvalidSpec(f"'{name}' is a template; refusing to delete it", operation="destroy", obj=name)
        if expected_owner is not None and _extra(values).get(OWNER_KEY) != expected_owner:
            raise InvalidSpec(
                f"'{name}' is not marked as ours ({OWNER_KEY}={_extra(values).get(OWNER_KEY)!r})",
                operation="destroy",
                obj=name,
            )
        if values.get("runtime.powerState") in ("poweredOn", "suspended"):
            with contextlib.suppress(InvalidPowerState):  # already off: what we wanted
                tasks.run_task(conn, vm.PowerOffVM_Task, operation="power off", obj=name, timeout=timeout)
        tasks.run_task(conn, vm.Destroy_Task, operation="destroy", obj=name, timeout=timeout)
        return True
    except ObjectNotFound:
        return False


PURGE_CHECK_PATHS = ["name", "parent", "runtime.powerState", "config.template", "config.extraConfig"]


def _not_owned(values: Mapping[str, Any], *, expected_owner: str | None, folder_moid: str) -> str:
    """Why a VM is no longer what a purge scan saw, or "" if it still is."""
    name = values.get("name", "")
    owner = _extra(values).get(OWNER_KEY) or None
    if values.get("config.template"):
        return f"'{name}' is a template now"
    if _moid(values.get("parent")) != folder_moid:
        return f"'{name}' is no longer in the folder"
    if owner != expected_owner:
        return f"'{name}' is marked {OWNER_KEY}={owner!r} now, not {expected_owner!r}"
    return ""


def destroy_if_owned(
    conn: Connection,
    moid: str,
    *,
    expected_owner: str | None,
    folder_moid: str,
    timeout: float = TASK_TIMEOUT,
) -> OwnedDestroy:
    """Destroy a VM a purge scan found, only if it is still what the scan saw: in
    ``folder_moid``, not a template, and marked ``expected_owner`` (None: no marker at all).

    The scan and the destroy are minutes apart on a big folder; meanwhile an admin or
    another installation may have claimed, moved or converted the VM. The check is made
    right before each task (again after powering off, which can take a while), so only
    the tasks' own time is left for a change to slip through.
    """
    vm = _vm(conn, moid)
    try:
        values = tasks.read(conn, vm, PURGE_CHECK_PATHS, operation="destroy", name=moid)
        if why := _not_owned(values, expected_owner=expected_owner, folder_moid=folder_moid):
            return OwnedDestroy(destroyed=False, skipped=why)
        name = values.get("name", moid)
        if values.get("runtime.powerState") in ("poweredOn", "suspended"):
            with contextlib.suppress(InvalidPowerState):  # already off: what we wanted
                tasks.run_task(conn, vm.PowerOffVM_Task, operation="power off", obj=name, timeout=timeout)
            values = tasks.read(conn, vm, PURGE_CHECK_PATHS, operation="destroy", name=moid)
            if why := _not_owned(values, expected_owner=expected_owner, folder_moid=folder_moid):
                return OwnedDestroy(destroyed=False, skipped=why)
        tasks.run_task(conn, vm.Destroy_Task, operation="destroy", obj=name, timeout=timeout)
        return OwnedDestroy(destroyed=True)
    except ObjectNotFound:
        return OwnedDestroy(destroyed=False, gone=True)


def relocate_vm(
    conn: Connection,
    moid: str,
    *,
    host_moid: str | None = None,
    datastore_moid: str | None = None,
    resource_pool_moid: str | None = None,
    timeout: float = TASK_TIMEOUT,
) -> VMInfo:
    """Move a VM to another host, datastore and/or resource pool."""
    if not (host_moid or datastore_moid or resource_pool_moid):
        raise InvalidSpec("give a host, datastore or resource pool to move to", operation="relocate", obj=moid)
    vm = _vm(conn, moid)
    spec = vim.vm.RelocateSpec()
    if host_moid:
        spec.host = conn.ref(vim.HostSystem, host_moid)
    if datastore_moid:
        spec.datastore = conn.ref(vim.Datastore, datastore_moid)
    if resource_pool_moid:
        spec.pool = conn.ref(vim.ResourcePool, resource_pool_moid)
    name = tasks.read(conn, vm, ["name"], operation="relocate", name=moid).get("name", moid)
    tasks.run_task(conn, vm.RelocateVM_Task, spec=spec, operation="relocate", obj=name, timeout=timeout)
    return get_vm(conn, moid)


def add_disk(
    conn: Connection,
    moid: str,
    size_gb: float,
    *,
    thin: bool = True,
    datastore_name: str | None = None,
    timeout: float = TASK_TIMEOUT,
) -> DiskInfo:
    """Add a new empty virtual disk on the VM's first SCSI controller."""
    if size_gb <= 0:
        raise InvalidSpec("the disk size must be positive", operation="add disk", obj=moid)
    vm = _vm(conn, moid)
    values = tasks.read(conn, vm, ["name", "config.hardware.device"], operation="add disk", name=moid)
    name = values.get("name", moid)
    devices = values.get("config.hardware.device") or []
    controllers = [d for d in devices if isinstance(d, vim.vm.device.VirtualSCSIController)]
    if not controllers:
        raise InvalidSpec("the VM has no SCSI controller to attach a disk to", operation="add disk", obj=name)
    controller = controllers[0]
    used = {d.unitNumber for d in devices if d.controllerKey == controller.key}
    # Unit 7 is the controller itself; 16 units per controller.
    free = [u for u in range(16) if u != 7 and u not in used]
    if not free:
        raise InvalidSpec("the SCSI controller has no free slot", operation="add disk", obj=name)
    before = {d.key for d in devices}
    disk = vim.vm.device.VirtualDisk(
        key=-100,
        controllerKey=controller.key,
        unitNumber=free[0],
        capacityInKB=int(size_gb * 1024 * 1024),
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            diskMode="persistent",
            thinProvisioned=thin,
            fileName=f"[{datastore_name}]" if datastore_name else "",
        ),
    )
    change = vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk)
    tasks.run_task(
        conn,
        vm.ReconfigVM_Task,
        spec=vim.vm.ConfigSpec(deviceChange=[change]),
        operation="add disk to",
        obj=name,
        timeout=timeout,
    )
    after = tasks.read(conn, vm, ["config.hardware.device"], operation="add disk", name=name)
    new = [
        d
        for d in after.get("config.hardware.device") or []
        if isinstance(d, vim.vm.device.VirtualDisk) and d.key not in before
    ]
    if not new:
        raise VSphereError("vCenter reported success but the new disk is not there", operation="add disk to", obj=name)
    d = new[0]
    return DiskInfo(
        key=d.key,
        label=getattr(d.deviceInfo, "label", "") or "",
        capacity_gb=round((d.capacityInKB or 0) / 1024 / 1024, 2),
        file_name=getattr(d.backing, "fileName", "") or "",
        unit_number=d.unitNumber,
    )


# ---------------------------------------------------------------- snapshots


def list_snapshots(conn: Connection, moid: str) -> list[SnapshotInfo]:
    values = tasks.read(conn, _vm(conn, moid), ["snapshot"], operation="list snapshots", name=moid)
    current = _moid(getattr(values.get("snapshot"), "currentSnapshot", None))
    return [
        SnapshotInfo(
            moid=n.snapshot._moId,
            name=n.name,
            description=n.description or "",
            created=n.createTime,
            is_current=n.snapshot._moId == current,
        )
        for n in _walk_snapshots(values)
    ]


def create_snapshot(
    conn: Connection,
    moid: str,
    name: str,
    *,
    description: str = "",
    memory: bool = False,
    quiesce: bool = False,
    timeout: float = TASK_TIMEOUT,
) -> SnapshotInfo:
    vm = _vm(conn, moid)
    snap = tasks.run_task(
        conn,
        vm.CreateSnapshot_Task,
        name=name,
        description=description,
        memory=memory,
        quiesce=quiesce,
        operation="create snapshot of",
        obj=moid,
        timeout=timeout,
    )
    for info in list_snapshots(conn, moid):
        if info.moid == snap:
            return info
    raise ObjectNotFound("the new snapshot vanished", operation="create snapshot of", obj=moid)


def _snapshot_node(conn: Connection, moid: str, snapshot: str, *, operation: str) -> Any:
    values = tasks.read(conn, _vm(conn, moid), ["name", "snapshot"], operation=operation, name=moid)
    return values.get("name", moid), _find_snapshot(values, snapshot)


def revert_snapshot(conn: Connection, moid: str, snapshot: str, *, timeout: float = TASK_TIMEOUT) -> None:
    """Revert to a snapshot given by name or moid."""
    name, node = _snapshot_node(conn, moid, snapshot, operation="revert to snapshot")
    if node is None:
        raise ObjectNotFound(f"it has no snapshot '{snapshot}'", operation="revert to snapshot", obj=name)
    tasks.run_task(conn, node.snapshot.RevertToSnapshot_Task, operation="revert to snapshot", obj=name, timeout=timeout)


def remove_snapshot(
    conn: Connection, moid: str, snapshot: str, *, remove_children: bool = False, timeout: float = TASK_TIMEOUT
) -> bool:
    """Remove a snapshot by name or moid. False if there was none (idempotent)."""
    name, node = _snapshot_node(conn, moid, snapshot, operation="remove snapshot")
    if node is None:
        return False
    try:
        tasks.run_task(
            conn,
            node.snapshot.RemoveSnapshot_Task,
            removeChildren=remove_children,
            operation="remove snapshot",
            obj=f"{name}/{node.name}",
            timeout=timeout,
        )
    except ObjectNotFound:
        return False
    return True


# ---------------------------------------------------------------- OVF / OVA deploy

OvfSource = str | os.PathLike | BinaryIO
# Opens a package URL (the .ova, or an .ovf and each file it references): (url, timeout)
# -> a response with read(), headers and close(). The caller's opener may check addresses and
# count bytes; the default is plain urllib.
UrlOpener = Callable[[str, float], Any]


@dataclass
class _Upload:
    path: str  # the fileItem path (relative name in the package)
    url: str
    create: bool  # fileItem.create: PUT a new file, else POST a disk stream
    size: int | None
    thumbprint: str = ""  # the NFC host's certificate, as vCenter reports it


def _is_url(source: Any) -> bool:
    return isinstance(source, str) and urllib.parse.urlsplit(source).scheme in ("http", "https")


def _open_url(url: str, timeout: float) -> Any:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise InvalidSpec("only http(s) URLs can be deployed", operation="deploy OVF", obj=url)
    try:
        return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - scheme checked above
    except Exception as exc:
        raise InvalidSpec(f"cannot download '{url}': {exc}", operation="deploy OVF", obj=url) from exc


class _Package:
    """An OVF package: its descriptor and a way to stream each referenced file.

    OVA files (tar) are read strictly sequentially, so URLs and uploads stream without
    a temporary copy: the descriptor comes first (the OVA standard demands it), the
    lease is opened, then the disks are uploaded as the tar members go by.
    """

    def __init__(self, source: OvfSource, timeout: float, open_url: UrlOpener | None = None) -> None:
        self.source = source
        self.timeout = timeout
        self._open_url = open_url or _open_url
        self._closers: list[Any] = []
        self._tar: tarfile.TarFile | None = None
        self.descriptor = ""
        name = str(source) if isinstance(source, str | os.PathLike) else getattr(source, "name", "upload.ova")
        self.label = os.path.basename(urllib.parse.urlsplit(str(name)).path) or "package"
        is_ova = not isinstance(source, str | os.PathLike) or str(name).lower().split("?")[0].endswith(".ova")
        if is_ova:
            self._open_ova()
        elif _is_url(source):
            with self._open_url(str(source), timeout) as resp:
                self.descriptor = resp.read().decode("utf-8")
        else:
            path = Path(source)  # type: ignore[arg-type]
            if not path.is_file():
                raise ObjectNotFound(f"there is no file '{path}'", operation="deploy OVF", obj=str(path))
            self.descriptor = path.read_text(encoding="utf-8")

    def _open_ova(self) -> None:
        if _is_url(self.source):
            stream: IO[bytes] = self._open_url(str(self.source), self.timeout)
            self._closers.append(stream)
        elif isinstance(self.source, str | os.PathLike):
            stream = open(self.source, "rb")  # noqa: SIM115 - closed in close()
            self._closers.append(stream)
        else:
            stream = self.source
        try:
            self._tar = tarfile.open(fileobj=stream, mode="r|*")  # noqa: SIM115 - read lazily by files()
            for member in self._tar:
                if member.name.lower().endswith(".ovf"):
                    f = self._tar.extractfile(member)
                    self.descriptor = f.read().decode("utf-8") if f else ""
                    return
                if member.isfile() and not member.name.lower().endswith((".mf", ".cert")):
                    break
        except tarfile.TarError as exc:
            raise InvalidSpec(
                f"'{self.label}' is not a valid OVA (tar) file: {exc}", operation="deploy OVF", obj=self.label
            ) from exc
        raise InvalidSpec(
            f"'{self.label}' has no .ovf descriptor as its first file", operation="deploy OVF", obj=self.label
        )

    def files(self, wanted: Mapping[str, _Upload]) -> Iterator[tuple[_Upload, IO[bytes], int | None]]:
        """Yield (upload, stream, size) for each wanted file, in package order."""
        if self._tar is not None:
            for member in self._tar:
                key = os.path.basename(member.name)
                if member.isfile() and key in wanted:
                    f = self._tar.extractfile(member)
                    if f is not None:
                        yield wanted[key], f, member.size
            return
        for upload in wanted.values():
            if _is_url(self.source):
                resp = self._open_url(urllib.parse.urljoin(str(self.source), upload.path), self.timeout)
                with resp:
                    length = resp.headers.get("Content-Length")
                    yield upload, resp, int(length) if length else None
            else:
                path = Path(self.source).parent / upload.path  # type: ignore[arg-type]
                if not path.is_file():
                    raise ObjectNotFound(
                        f"the OVF references '{upload.path}', which is not next to it",
                        operation="deploy OVF",
                        obj=str(path),
                    )
                with open(path, "rb") as f:
                    yield upload, f, path.stat().st_size

    def close(self) -> None:
        for c in self._closers:
            with contextlib.suppress(Exception):
                c.close()


def _resolve_networks(conn: Connection, mapping: Mapping[str, str]) -> list[vim.OvfManager.NetworkMapping]:
    if not mapping:
        return []
    # A network moid alone does not say whether it is a Network or a DV portgroup, and
    # the SOAP reference must carry the right type; one view lookup resolves both.
    view = conn.call(
        conn.content.viewManager.CreateContainerView,
        conn.content.rootFolder,
        [vim.Network],
        True,
        operation="look up networks",
    )
    try:
        spec = PC.FilterSpec(
            objectSet=[
                PC.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[PC.TraversalSpec(name="view", type=vim.view.ContainerView, path="view", skip=False)],
                )
            ],
            propSet=[PC.PropertySpec(type=vim.Network, pathSet=["name"])],
        )
        networks = tasks.retrieve(conn, spec, operation="look up networks")
    finally:
        with contextlib.suppress(Exception):
            view.Destroy()
    by_key: dict[str, Any] = {}
    for oc in networks:
        by_key.setdefault(oc.obj._moId, oc.obj)
        by_key.setdefault(tasks.props(oc).get("name", ""), oc.obj)
    result = []
    for ovf_name, target in mapping.items():
        net = by_key.get(target)
        if net is None:
            raise ObjectNotFound(
                f"no network '{target}' for OVF network '{ovf_name}'", operation="deploy OVF", obj=target
            )
        result.append(vim.OvfManager.NetworkMapping(name=ovf_name, network=net))
    return result


def ovf_network_names(descriptor: str) -> list[str]:
    """The network names an OVF descriptor's NetworkSection declares (empty if unreadable)."""
    try:
        root = ElementTree.fromstring(descriptor)  # noqa: S314 - expat refuses entity expansion bombs
    except ElementTree.ParseError:
        return []
    names = []
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "Network":
            name = next((v for k, v in el.attrib.items() if k.rsplit("}", 1)[-1] == "name"), None)
            if name and name not in names:
                names.append(name)
    return names


def deploy_ovf(
    conn: Connection,
    *,
    source: OvfSource,
    name: str,
    folder_moid: str,
    resource_pool_moid: str,
    datastore_moid: str,
    network_mapping: Mapping[str, str] | None = None,
    host_moid: str | None = None,
    disk_provisioning: str = "thin",
    progress: ProgressCallback | None = None,
    snapshot_name: str = BASE_SNAPSHOT,
    timeout: float = DEPLOY_TIMEOUT,
    open_url: UrlOpener | None = None,
) -> TemplateInfo:
    """Deploy an OVF/OVA (URL, local path or file-like upload) as a prepared template.

    CreateImportSpec, ImportVApp, the NFC lease upload of every file (``progress`` gets
    0-100), HttpNfcLeaseComplete, then ``prepare_template``. On any failure the lease is
    aborted and the half-made VM is destroyed. ``open_url`` fetches every URL the
    package needs (an .ovf's disks are next to it, or wherever its hrefs point).
    """
    operation = "deploy OVF"
    deadline = time.monotonic() + timeout
    folder = conn.ref(vim.Folder, folder_moid)
    pool = conn.ref(vim.ResourcePool, resource_pool_moid)
    if _find_child(conn, folder, name, operation=operation) is not None:
        raise DuplicateName(f"the folder already holds a VM named '{name}'", operation=operation, obj=name)
    package = _Package(source, conn.endpoint.timeout, open_url)
    try:
        mapping = dict(network_mapping or {})
        if "*" in mapping:  # one target network for every network the package names
            target = mapping.pop("*")
            mapping = {**dict.fromkeys(ovf_network_names(package.descriptor), target), **mapping}
        params = vim.OvfManager.CreateImportSpecParams(
            entityName=name,
            diskProvisioning=disk_provisioning,
            networkMapping=_resolve_networks(conn, mapping),
        )
        isr = conn.call(
            conn.content.ovfManager.CreateImportSpec,
            ovfDescriptor=package.descriptor,
            resourcePool=pool,
            datastore=conn.ref(vim.Datastore, datastore_moid),
            cisp=params,
            operation=operation,
            obj=name,
        )
        if isr.error:
            raise InvalidSpec(
                "vCenter rejected the OVF: " + "; ".join(fault_text(e) for e in isr.error),
                operation=operation,
                obj=name,
            )
        for warning in isr.warning or []:
            log.warning("OVF %s: %s", name, fault_text(warning))
        lease = conn.call(
            pool.ImportVApp,
            spec=isr.importSpec,
            folder=folder,
            host=conn.ref(vim.HostSystem, host_moid) if host_moid else None,
            operation=operation,
            obj=name,
            idempotent=False,
        )
        vm_moid = _upload_through_lease(
            conn, lease, isr.fileItem or [], package, name=name, progress=progress, deadline=deadline
        )
    finally:
        package.close()
    try:
        return prepare_template(
            conn, vm_moid, snapshot_name=snapshot_name, timeout=max(1.0, deadline - time.monotonic())
        )
    except VSphereError:
        with contextlib.suppress(VSphereError):
            destroy_vm(conn, vm_moid, allow_template=True)
        raise


def _upload_through_lease(
    conn: Connection,
    lease: Any,
    file_items: Sequence[Any],
    package: _Package,
    *,
    name: str,
    progress: ProgressCallback | None,
    deadline: float,
) -> str:
    operation = "deploy OVF"

    def lease_ready(values: dict[str, Any]) -> str | None:
        state = values.get("state")
        if state == "error":
            raise translate(
                values.get("error") or vmodl.fault.SystemError(reason="lease failed"),
                operation=operation,
                obj=name,
                task=True,
            )
        return None if state == "ready" else f"the upload lease is {state or 'initializing'}"

    tasks.wait_for_condition(
        conn,
        lease,
        ["state", "error"],
        lease_ready,
        timeout=max(1.0, deadline - time.monotonic()),
        operation=operation,
        name=name,
    )
    info = tasks.read(conn, lease, ["info"], operation=operation, name=name)["info"]
    vm_moid = info.entity._moId
    try:
        urls = {du.importKey: du for du in info.deviceUrl or []}
        wanted: dict[str, _Upload] = {}
        for item in file_items:
            du = urls.get(item.deviceId)
            if du is None:
                raise InvalidSpec(f"vCenter gave no upload URL for '{item.path}'", operation=operation, obj=name)
            wanted[os.path.basename(item.path)] = _Upload(
                path=item.path,
                url=du.url,
                create=bool(item.create),
                size=item.size or None,
                thumbprint=getattr(du, "sslThumbprint", "") or "",
            )
        total = sum(u.size or 0 for u in wanted.values())
        reporter = _Progress(conn, lease, total, progress)
        done: set[str] = set()
        for upload, stream, size in package.files(wanted):
            _upload_file(conn, upload, stream, size, reporter, name=name)
            done.add(upload.path)
            if time.monotonic() > deadline:
                raise OperationTimeout("the upload took longer than allowed", operation=operation, obj=name)
        missing = sorted({u.path for u in wanted.values()} - done)
        if missing:
            raise InvalidSpec(f"the package lacks {', '.join(missing)}", operation=operation, obj=name)
        reporter.finish()
        conn.call(lease.HttpNfcLeaseComplete, operation=operation, obj=name, idempotent=False)
    except BaseException as exc:
        reason = str(exc)[:200] or type(exc).__name__
        with contextlib.suppress(Exception):
            lease.HttpNfcLeaseAbort(vmodl.fault.SystemError(reason=reason))
        # A real vCenter removes the VM on abort, the simulator does not; either way
        # the name must be free for the next attempt.
        with contextlib.suppress(VSphereError):
            destroy_vm(conn, vm_moid, allow_template=True)
        if isinstance(exc, VSphereError | KeyboardInterrupt | SystemExit):
            raise
        if isinstance(exc, OSError | http.client.HTTPException):
            raise translate(exc, operation="upload the disks of", obj=name) from exc
        raise
    return vm_moid


class _Progress:
    """Reports whole percents to the caller and keeps the lease alive meanwhile."""

    LEASE_EVERY = 5.0  # seconds; leases time out after about 5 min without progress

    def __init__(self, conn: Connection, lease: Any, total: int, callback: ProgressCallback | None) -> None:
        self.conn = conn
        self.lease = lease
        self.total = total
        self.callback = callback
        self.sent = 0
        self.percent = -1
        self.lease_at = 0.0
        self.report(0)

    def add(self, n: int) -> None:
        self.sent += n
        self.report(min(99, int(self.sent * 100 / self.total)) if self.total else 0)

    def report(self, percent: int) -> None:
        if percent == self.percent:
            return
        self.percent = percent
        if self.callback:
            self.callback(percent)
        now = time.monotonic()
        if now - self.lease_at >= self.LEASE_EVERY:
            self.lease_at = now
            self.conn.call(self.lease.HttpNfcLeaseProgress, percent, operation="report upload progress")

    def finish(self) -> None:
        self.lease_at = 0.0
        self.report(100)


def _upload_file(
    conn: Connection, upload: _Upload, stream: IO[bytes], size: int | None, reporter: _Progress, *, name: str
) -> None:
    # The lease URL names the host as '*' when it is the vCenter itself.
    url = upload.url.replace("*", conn.endpoint.host, 1) if "://*" in upload.url else upload.url
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or conn.endpoint.hostname
    port = parts.port or 443
    pin = (
        re.sub(r"[^0-9a-f]", "", upload.thumbprint.lower()) if upload.thumbprint and "://*" not in upload.url else None
    )
    http_conn = https_connection(conn.endpoint, host, port, pin=pin)
    length = size if size is not None else upload.size
    try:
        http_conn.putrequest(
            "PUT" if upload.create else "POST", parts.path + (f"?{parts.query}" if parts.query else "")
        )
        http_conn.putheader("Content-Type", "application/x-vnd.vmware-streamVmdk")
        # The NFC service authenticates uploads by the SOAP session's cookie.
        http_conn.putheader("Cookie", conn.session_cookie)
        if upload.create:
            http_conn.putheader("Overwrite", "t")
        if length is not None:
            http_conn.putheader("Content-Length", str(length))
            http_conn.endheaders()
            while chunk := stream.read(UPLOAD_CHUNK):
                http_conn.send(chunk)
                reporter.add(len(chunk))
        else:
            http_conn.putheader("Transfer-Encoding", "chunked")
            http_conn.endheaders()
            while chunk := stream.read(UPLOAD_CHUNK):
                http_conn.send(f"{len(chunk):X}\r\n".encode() + chunk + b"\r\n")
                reporter.add(len(chunk))
            http_conn.send(b"0\r\n\r\n")
        resp = http_conn.getresponse()
        resp.read()
        if resp.status >= 300:
            raise TransientFault(
                f"the upload of '{upload.path}' got HTTP {resp.status} {resp.reason}",
                operation="upload the disks of",
                obj=name,
                from_vcenter=False,
            )
    finally:
        http_conn.close()
