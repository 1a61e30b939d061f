"""Everything vmportal asks of vCenter, as plain-data operations.

Each function takes a ``Connection`` (from ``session.connect``) and moids or paths, and
returns dataclasses from ``apps.vsphere.types``; faults arrive as ``apps.vsphere.errors``.
Operations are idempotent where vSphere allows it (power on/off, destroy, folders,
template preparation), so a job that died half-way can simply run again.

Properties are always read through the PropertyCollector with explicit paths: one
round trip for many values, and no lazy attribute fetches, which the simulator answers
by dropping the connection when a property is unset.

One module per concern; callers use this package (``from apps.vsphere import operations
as ops``), which re-exports the public names. A test that replaces a function or constant
patches the module that looks it up (e.g. ``operations.ovf.UPLOAD_CHUNK``).
"""

from apps.vsphere.operations._common import TASK_TIMEOUT, TEMPLATE_PATHS, VM_PATHS, ProgressCallback, entity_path
from apps.vsphere.operations.clone import clone_many, clone_vm, customization_script_supported, start_clone
from apps.vsphere.operations.datastore import (
    datastore_file_exists,
    datastore_path,
    delete_datastore_file,
    upload_datastore_file,
)
from apps.vsphere.operations.destroy import PURGE_CHECK_PATHS, destroy_if_owned, destroy_many, destroy_vm
from apps.vsphere.operations.devices import add_disk, cdrom_isos, eject_cdrom, extra_config, set_extra_config
from apps.vsphere.operations.lookup import create_folder, find_vm, get_vm, list_folder_vms, name_taken
from apps.vsphere.operations.ovf import DEPLOY_TIMEOUT, OvfSource, UrlOpener, deploy_ovf, ovf_network_names
from apps.vsphere.operations.power import power_off, power_on, relocate_vm, reset, shut_down
from apps.vsphere.operations.readiness import check_usable, wait_until_usable
from apps.vsphere.operations.snapshots import create_snapshot, list_snapshots, remove_snapshot, revert_snapshot
from apps.vsphere.operations.templates import copy_template_to_cluster, prepare_template, register_template

__all__ = [
    "DEPLOY_TIMEOUT",
    "PURGE_CHECK_PATHS",
    "TASK_TIMEOUT",
    "TEMPLATE_PATHS",
    "VM_PATHS",
    "OvfSource",
    "ProgressCallback",
    "UrlOpener",
    "add_disk",
    "cdrom_isos",
    "check_usable",
    "clone_many",
    "clone_vm",
    "copy_template_to_cluster",
    "create_folder",
    "create_snapshot",
    "customization_script_supported",
    "datastore_file_exists",
    "datastore_path",
    "delete_datastore_file",
    "deploy_ovf",
    "destroy_if_owned",
    "destroy_many",
    "destroy_vm",
    "eject_cdrom",
    "entity_path",
    "extra_config",
    "find_vm",
    "get_vm",
    "list_folder_vms",
    "list_snapshots",
    "name_taken",
    "ovf_network_names",
    "power_off",
    "power_on",
    "prepare_template",
    "register_template",
    "relocate_vm",
    "remove_snapshot",
    "reset",
    "revert_snapshot",
    "set_extra_config",
    "shut_down",
    "start_clone",
    "upload_datastore_file",
    "wait_until_usable",
]
