"""Guest setup: what a clone needs beyond vSphere's copy (fixed addresses, first-boot
passwords and seeds, checks that the guest is usable, cleaning up after it).

apps.firstboot provides it, and sits above pools: provisioning and the manager call it
through this interface, which that app registers from its AppConfig.ready.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from apps.core.errors import VmPortalError
from apps.pools.models import VM, Pool
from apps.vsphere.session import Connection
from apps.vsphere.types import Customization, GuestExpectation, GuestInfo


class GuestSetupError(VmPortalError):
    """A pool's guest setup cannot produce what a clone needs."""

    permanent = True


class ClonePlan(Protocol):
    """What one clone's spec gets from the guest setup."""

    extra_config: dict[str, str]
    customization: Customization | None
    cdrom_iso: str | None


class GuestSetup(Protocol):
    def allocate_addresses(self, pool: Pool, vms: list[VM]) -> list[VM]: ...

    def release(self, vm: VM, *, keep_back_until: datetime | None = None) -> int: ...

    def plan_clones(self, pool: Pool, vms: list[VM]) -> Mapping[int, ClonePlan]: ...

    def upload_seeds(self, conn: Connection, plans: Iterable[Any]) -> None: ...

    def discard_seeds(self, conn: Connection, vms: Iterable[VM]) -> int: ...

    def sweep_seeds(self, conn: Connection, *, vcenter_id: int, older_than: timedelta = ...) -> int: ...

    def expectations(self, vms: Iterable[VM]) -> dict[str, GuestExpectation]: ...

    def finish_usable(
        self, conn: Connection, booting: Mapping[str, VM], seen: Mapping[str, GuestInfo | str]
    ) -> dict[str, GuestInfo | str]: ...


_registered: GuestSetup | None = None


def register(setup: GuestSetup) -> None:
    global _registered
    _registered = setup


def guest() -> GuestSetup:
    if _registered is None:
        raise RuntimeError("No guest setup is registered: apps.firstboot must be in INSTALLED_APPS.")
    return _registered
