"""Templates: registering one, preparing it for linked clones, copying it to other clusters."""

from __future__ import annotations

import contextlib
from typing import Any

from apps.vsphere import tasks
from apps.vsphere.errors import (
    DuplicateName,
    InvalidPowerState,
    InvalidSpec,
    InvalidState,
    ObjectNotFound,
    OperationTimeout,
    VSphereError,
)
from apps.vsphere.operations._common import (
    TASK_TIMEOUT,
    _extra,
    _find_by_path,
    _find_child,
    _find_snapshot,
    _kind,
    _template_info,
    _vm,
    _walk_snapshots,
)
from apps.vsphere.operations.destroy import destroy_vm
from apps.vsphere.session import Connection
from apps.vsphere.types import BASE_SNAPSHOT, OWNER_KEY, TemplateCopy, TemplateInfo
from apps.vsphere.vmomi import vim


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
    owner: str | None = None,
    snapshot_name: str = BASE_SNAPSHOT,
    timeout: float = TASK_TIMEOUT,
) -> TemplateCopy:
    """Make (or find) a prepared copy of a template in another cluster/datastore.

    Concurrent callers with the same ``name`` and folder de-duplicate on vSphere's
    DuplicateName: one clones and prepares, the others wait (bounded) until the
    winner's copy is a template with the base snapshot. With ``owner`` the copy carries
    it as its ownership marker, and a VM of that name carrying another marker is not
    adopted (DuplicateName): it is someone else's, not a racing copier's.
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
        if owner:
            spec.config = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=OWNER_KEY, value=owner)])
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
    if owner:
        found = _extra(tasks.read(conn, existing, ["config.extraConfig"], operation=operation, name=name))
        # No marker: a copy made before copies carried one, or by hand; adopted like ours.
        if found.get(OWNER_KEY) not in (None, owner):
            raise DuplicateName(
                f"a VM named '{name}' is in the way and carries the marker {found[OWNER_KEY]!r}, not "
                f"{owner!r}; rename or remove it", operation=operation, obj=name)
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

