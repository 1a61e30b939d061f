"""A VM's devices and settings: CD-ROM ISOs, extraConfig, added disks."""

from __future__ import annotations

from collections.abc import Mapping

from apps.vsphere import tasks
from apps.vsphere.errors import InvalidSpec, ObjectNotFound, VSphereError
from apps.vsphere.operations._common import TASK_TIMEOUT, _extra, _vm
from apps.vsphere.session import Connection
from apps.vsphere.types import DiskInfo
from apps.vsphere.vmomi import vim


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

