"""Where and whether a VM runs: power on/off, guest shutdown, relocation."""

from __future__ import annotations

import logging

from apps.vsphere import tasks
from apps.vsphere.errors import InvalidPowerState, InvalidSpec, VSphereError
from apps.vsphere.operations._common import TASK_TIMEOUT, _vm
from apps.vsphere.operations.lookup import get_vm
from apps.vsphere.session import Connection
from apps.vsphere.types import VMInfo
from apps.vsphere.vmomi import vim

log = logging.getLogger(__name__)


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


def reset(conn: Connection, moid: str, *, timeout: float = TASK_TIMEOUT) -> str:
    """Hard-reset a running VM (as its reset button would); an off VM is powered on instead."""
    vm = _vm(conn, moid)
    values = tasks.read(conn, vm, ["name", "runtime.powerState"], operation="reset", name=moid)
    if values.get("runtime.powerState") != "poweredOn":
        return power_on(conn, moid, timeout=timeout)
    tasks.run_task(conn, vm.ResetVM_Task, operation="reset", obj=values.get("name", moid), timeout=timeout)
    return "poweredOn"


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

