"""Finding VMs and folders by path, moid or instance UUID; creating folders."""

from __future__ import annotations

from apps.vsphere import tasks
from apps.vsphere.errors import DuplicateName, InvalidSpec, ObjectNotFound
from apps.vsphere.operations._common import (
    PC,
    VM_PATHS,
    _find_by_path,
    _find_child,
    _kind,
    _resolve_folder,
    _vm,
    _vm_info,
    entity_path,
)
from apps.vsphere.session import Connection
from apps.vsphere.types import FolderInfo, VMInfo
from apps.vsphere.vmomi import vim


def name_taken(conn: Connection, folder_moid: str, name: str) -> bool:
    """Whether the folder directly holds anything (VM, template, folder, vApp) named ``name``."""
    return _find_child(conn, conn.ref(vim.Folder, folder_moid), name, operation="look up a name in folder") is not None



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
            conn.search_index.FindByUuid,
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

