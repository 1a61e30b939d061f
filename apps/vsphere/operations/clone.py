"""Clones: the clone spec (customisation, seed CD-ROM), one clone or a batch in flight together."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from apps.vsphere import tasks
from apps.vsphere.errors import DuplicateName, InvalidSpec, VSphereError
from apps.vsphere.operations._common import TASK_TIMEOUT, _find_child, _find_snapshot, _moid, _run_now, _vm, entity_path
from apps.vsphere.operations.destroy import destroy_vm
from apps.vsphere.session import Connection
from apps.vsphere.types import BASE_SNAPSHOT, CloneResult, CloneSpec, Customization, TaskHandle
from apps.vsphere.vmomi import vim

_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")  # fullmatch, as "$" passes a final newline


def customization_script_supported(conn: Connection) -> bool:
    """Whether LinuxPrep's customisation script reaches this vCenter.

    ``scriptText`` is a vSphere 7.0 property; pyVmomi silently leaves it out of requests
    to older APIs (the simulator speaks 6.5), so the caller can say what did not happen.
    """
    from pyVmomi.VmomiSupport import IsChildVersion

    return IsChildVersion(conn.si._stub.version, "vim.version.v7_0")


def _customization(c: Customization) -> vim.vm.customization.Specification:
    if not _HOSTNAME.fullmatch(c.hostname) or (c.windows and len(c.hostname) > 15):
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
        config.memoryMB = spec.memory_mb  # type: ignore[assignment]  # pyVmomi's long is made at run time; mypy sees None
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
    with_paths: bool = True,
) -> list[CloneResult | VSphereError]:
    """Clone several VMs at once: all tasks in flight together, waited on through one filter.

    Returns one CloneResult or error per spec, in order. A clone whose power-on failed
    is destroyed again, so a failure never leaves an unknown VM behind.
    ``on_progress(index, percent)`` hears the clone tasks' progress as vCenter reports it.
    ``with_paths=False`` leaves each result's ``path`` empty: a round trip per folder fewer,
    for callers that do not show it (a fill, batch after batch).
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
        if with_paths and folder_moid not in folder_paths:
            folder_paths[folder_moid] = _folder_path(conn, folder_moid)
        results[i] = CloneResult(
            moid=moid,
            name=values.get("name", specs[i].name),
            path=f"{folder_paths[folder_moid]}/{values.get('name', specs[i].name)}" if with_paths else "",
            instance_uuid=values.get("config.instanceUuid") or "",
            power_state=str(values.get("runtime.powerState", "")),
            host_moid=_moid(values.get("runtime.host")),
            datastore_moids=tuple(d._moId for d in values.get("datastore") or []),
        )
    return [r for r in results if r is not None]


def _folder_path(conn: Connection, folder_moid: str) -> str:
    # Read once per batch (clone_many keeps it per folder), never cached across batches: a
    # folder renamed in vCenter must show its new path at once, on every worker host.
    return entity_path(conn, conn.ref(vim.Folder, folder_moid))


def clone_vm(
    conn: Connection, spec: CloneSpec, *, timeout: float = TASK_TIMEOUT, check_name: bool = True
) -> CloneResult:
    """Clone one VM (linked or full), optionally customised, and power it on."""
    result = clone_many(conn, [spec], timeout=timeout, check_names=check_name)[0]
    if isinstance(result, VSphereError):
        raise result
    return result

