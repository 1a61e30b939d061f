"""Plain data that crosses the apps/vsphere boundary: no pyVmomi object ever leaves it.

Objects are named by moid (a vCenter-local id; never parse it, the simulator's datastore
moids contain '/' and '@') and, for people, by name or inventory path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apps.vsphere.errors import VSphereError

# The snapshot that is the shared, read-only disk layer of linked clones.
BASE_SNAPSHOT = "vmportal-base"
# extraConfig key that marks a VM as made by a vmportal installation (value: its
# instance id). Deliberately not guestinfo.*: a guest can rewrite its own guestinfo
# keys through VMware Tools, and whoever leases a VM has root in it.
OWNER_KEY = "vmportal.owner"


@dataclass(frozen=True)
class VMInfo:
    moid: str
    name: str
    path: str
    power_state: str  # poweredOn | poweredOff | suspended
    is_template: bool
    instance_uuid: str = ""
    host_moid: str | None = None
    resource_pool_moid: str | None = None
    folder_moid: str | None = None
    datastore_moids: tuple[str, ...] = ()
    cpus: int | None = None
    memory_mb: int | None = None
    annotation: str = ""
    ip: str | None = None
    hostname: str | None = None
    tools_status: str | None = None  # guest.toolsRunningStatus
    owner: str | None = None  # extraConfig[OWNER_KEY]


@dataclass(frozen=True)
class TemplateInfo:
    moid: str
    name: str
    path: str
    is_template: bool
    snapshot_moid: str | None  # the BASE_SNAPSHOT (or requested) snapshot, if present
    snapshot_name: str | None
    cpus: int | None = None
    memory_mb: int | None = None
    disk_gb: float | None = None  # sum of virtual disk capacities
    guest_id: str = ""
    instance_uuid: str = ""
    host_moid: str | None = None
    datastore_moids: tuple[str, ...] = ()

    @property
    def ready_for_linked_clones(self) -> bool:
        return self.is_template and self.snapshot_moid is not None


@dataclass(frozen=True)
class TemplateCopy:
    template: TemplateInfo
    created: bool  # False: another preparer had made it (or it already existed)


@dataclass(frozen=True)
class Customization:
    """vSphere guest customisation: LinuxPrep, or Sysprep for Windows (``windows``).

    Without ``ip`` the NIC uses DHCP. ``script`` is LinuxPrep's customisation script
    (vSphere 7.0+; older APIs drop it, see ``operations.customization_script_supported``);
    ``admin_password`` is Sysprep's administrator password. Both are secrets: never log
    a Customization (its repr hides them).
    """

    hostname: str
    domain: str = "localdomain"
    ip: str | None = None
    netmask: str | None = None
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    timezone: str = "UTC"
    windows: bool = False
    windows_timezone: int = 85  # Sysprep's index; 85 is GMT (UTC)
    workgroup: str = "WORKGROUP"
    organization: str = "vmportal"
    script: str = field(default="", repr=False)
    admin_password: str = field(default="", repr=False)


@dataclass(frozen=True)
class CloneSpec:
    template_moid: str
    name: str
    folder_moid: str
    resource_pool_moid: str
    host_moid: str | None = None
    datastore_moid: str | None = None
    linked: bool = True
    # The template's base snapshot, when the caller already knows it (saves a read).
    snapshot_moid: str | None = None
    cpus: int | None = None
    memory_mb: int | None = None
    annotation: str = ""
    extra_config: Mapping[str, str] = field(default_factory=dict)
    customization: Customization | None = None
    power_on: bool = True
    # Datastore path ("[ds] folder/file.iso") of an ISO to insert as a connected CD-ROM
    # (a cloud-init NoCloud seed); the first empty IDE slot gets a new CD-ROM drive.
    cdrom_iso: str | None = None


@dataclass(frozen=True)
class CloneResult:
    moid: str
    name: str
    path: str
    instance_uuid: str
    power_state: str
    host_moid: str | None
    datastore_moids: tuple[str, ...]


@dataclass(frozen=True)
class GuestExpectation:
    """What a booted guest must report before it counts as usable (vmpooler's
    hostname-mismatch check, plus the address first boot gave it)."""

    hostname: str | None = None
    ip: str | None = None
    tools_running: bool = False


@dataclass(frozen=True)
class GuestInfo:
    ip: str | None
    hostname: str | None
    tools_status: str | None


@dataclass(frozen=True)
class TaskHandle:
    """A started vCenter task; wait for many at once with ``tasks.wait_for_tasks``."""

    moid: str
    operation: str
    obj: str = ""


@dataclass(frozen=True)
class TaskOutcome:
    handle: TaskHandle
    state: str  # success | error | running (still running when the wait timed out)
    result_moid: str | None = None
    error: VSphereError | None = None

    @property
    def ok(self) -> bool:
        return self.state == "success"


@dataclass(frozen=True)
class SnapshotInfo:
    moid: str
    name: str
    description: str = ""
    created: datetime | None = None
    is_current: bool = False


@dataclass(frozen=True)
class FolderInfo:
    moid: str
    name: str
    path: str


@dataclass(frozen=True)
class DiskInfo:
    key: int
    label: str
    capacity_gb: float
    file_name: str
    unit_number: int | None


@dataclass(frozen=True)
class OwnedDestroy:
    """What ``destroy_if_owned`` did: destroyed, already gone, or left alone and why."""

    destroyed: bool
    gone: bool = False
    skipped: str = ""  # why the VM was left alone
