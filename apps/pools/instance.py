"""This installation's id: the owner part of the marker every clone carries.

Purge destroys only VMs whose marker starts with it, so it must differ between
installations that share a vCenter folder, and be the same on every host of one.
"""

from __future__ import annotations

import logging
import uuid

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from apps.pools.models import VM, Installation

log = logging.getLogger(__name__)

# The id every installation used before ids were generated; clones made then carry it.
LEGACY_INSTANCE_ID = "vmportal"

_cached: str | None = None


def new_instance_id() -> str:
    return f"vmportal-{uuid.uuid4().hex[:12]}"


def instance_id() -> str:
    """VMPORTAL_INSTANCE_ID if set, else the id stored in the database (made by the
    migration that created its table). Read once per process: it never changes."""
    global _cached  # noqa: PLW0603 - a per-process cache of a value that never changes
    if _cached is None:
        _cached = settings.VMPORTAL_INSTANCE_ID or _stored()
    return _cached


def marker(vm: VM) -> str:
    """The ownership marker of one of our clones."""
    return f"{instance_id()}:{vm.pk}"


def forget() -> None:
    """Drop the cached id (tests that replace the database between them)."""
    global _cached  # noqa: PLW0603
    _cached = None


def _stored() -> str:
    stored = Installation.objects.filter(pk=1).values_list("instance_id", flat=True).first()
    if stored:
        return stored
    # The row the migration made is gone (a flushed database). A new id makes any clone
    # of the old one foreign, and purge leaves foreign clones alone: the safe direction.
    # Racing processes insert at most one row; every one of them then reads the winner.
    Installation.objects.bulk_create([Installation(pk=1, instance_id=new_instance_id())], ignore_conflicts=True)
    stored = Installation.objects.values_list("instance_id", flat=True).get(pk=1)
    if VM.objects.exists():
        log.warning("No stored instance id; this installation is now %r. Clones marked with an earlier id "
                    "will not be purged.", stored)
    return stored


@receiver(setting_changed)
def _setting_changed(*, setting: str, **kwargs) -> None:
    if setting == "VMPORTAL_INSTANCE_ID":
        forget()
