"""Deleting VMs: by moid with an owner check, and a purge's check-then-destroy."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, Future
from typing import Any

from apps.vsphere import tasks
from apps.vsphere.errors import InvalidPowerState, InvalidSpec, ObjectNotFound, VSphereError
from apps.vsphere.operations._common import TASK_TIMEOUT, _extra, _moid, _run_now, _vm
from apps.vsphere.session import Connection
from apps.vsphere.types import OWNER_KEY, OwnedDestroy, TaskHandle
from apps.vsphere.vmomi import vim


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



DESTROY_PATHS = ["name", "runtime.powerState", "config.template", "config.extraConfig"]


def destroy_many(
    conn: Connection,
    targets: Sequence[tuple[str, str | None]],
    *,
    timeout: float = TASK_TIMEOUT,
    executor: Executor | None = None,
) -> list[bool | VSphereError]:
    """Power off and delete many VMs at once, each ``(moid, expected_owner)`` checked as
    ``destroy_vm`` checks one: their states read in one round trip, the power-offs started
    together and waited on through one filter, then the Destroy_Tasks the same way.

    One result per target, in order: True (destroyed), False (already gone) or the error
    that VM met; one VM's fault never stops the others.
    """
    deadline = time.monotonic() + timeout
    results: list[bool | VSphereError | None] = [None] * len(targets)
    values = _read_targets(conn, [moid for moid, _ in targets])
    for i, (moid, owner) in enumerate(targets):
        if moid not in values:
            results[i] = False
            continue
        name = values[moid].get("name", moid)
        if values[moid].get("config.template"):
            results[i] = InvalidSpec(f"'{name}' is a template; refusing to delete it", operation="destroy", obj=name)
        elif owner is not None and _extra(values[moid]).get(OWNER_KEY) != owner:
            results[i] = InvalidSpec(
                f"'{name}' is not marked as ours ({OWNER_KEY}={_extra(values[moid]).get(OWNER_KEY)!r})",
                operation="destroy",
                obj=name,
            )
    submit = executor.submit if executor is not None else _run_now

    def run_all(method: str, operation: str, wanted: list[int]) -> None:
        started: dict[int, Future] = {
            i: submit(tasks.start_task, conn, getattr(_vm(conn, targets[i][0]), method), operation=operation,
                      obj=values[targets[i][0]].get("name", targets[i][0]))
            for i in wanted
        }
        handles: dict[int, TaskHandle] = {}
        for i, future in started.items():
            try:
                handles[i] = future.result()
            except VSphereError as exc:
                results[i] = _settled(exc, operation)
        outcomes = tasks.wait_for_tasks(conn, list(handles.values()), max(1.0, deadline - time.monotonic()))
        for i, outcome in zip(handles, outcomes, strict=True):
            if not outcome.ok:
                assert outcome.error is not None
                results[i] = _settled(outcome.error, operation)

    run_all("PowerOffVM_Task", "power off", [
        i for i, (moid, _) in enumerate(targets)
        if results[i] is None and values[moid].get("runtime.powerState") in ("poweredOn", "suspended")
    ])
    run_all("Destroy_Task", "destroy", [i for i in range(len(targets)) if results[i] is None])
    return [True if r is None else r for r in results]


def _settled(exc: VSphereError, operation: str) -> bool | VSphereError | None:
    """A task's error as a result: a VM gone is done (False); one already off goes on to be
    destroyed (None); anything else is that VM's failure."""
    if isinstance(exc, ObjectNotFound):
        return False
    if isinstance(exc, InvalidPowerState) and operation == "power off":
        return None
    return exc


def _read_targets(conn: Connection, moids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The destroy checks' properties of the VMs that still exist, by moid."""
    try:
        return tasks.read_many(conn, vim.VirtualMachine, [_vm(conn, m) for m in moids], DESTROY_PATHS,
                               operation="destroy")
    except ObjectNotFound:
        pass  # one VM already gone may fail the whole read: ask one by one
    found = {}
    for moid in moids:
        with contextlib.suppress(ObjectNotFound):
            found[moid] = tasks.read(conn, _vm(conn, moid), DESTROY_PATHS, operation="destroy", name=moid)
    return found


