"""Deleting VMs: by moid with an owner check, and a purge's check-then-destroy."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from apps.vsphere import tasks
from apps.vsphere.errors import InvalidPowerState, InvalidSpec, ObjectNotFound
from apps.vsphere.operations._common import TASK_TIMEOUT, _extra, _moid, _vm
from apps.vsphere.session import Connection
from apps.vsphere.types import OWNER_KEY, OwnedDestroy


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

