"""A vCenter's status: what the last look at it saw (a full sync, the watcher connecting or
losing its connection), moved through VCenter's map and recorded once per change."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.inventory.models import VCenter


def observe(vcenter: VCenter, status: str, *, same_writes: bool = True, **changes: Any) -> None:
    """Record what a look at ``vcenter`` saw. The last look wins, so the move starts from the
    row's status now (under its lock), not from the caller's copy: a watcher holds its
    vCenter for hours. A look that agrees with the row writes only ``changes`` (or nothing,
    ``same_writes=False``)."""
    with transaction.atomic(savepoint=False):
        current = VCenter.objects.select_for_update(no_key=True).filter(pk=vcenter.pk) \
            .values_list("status", flat=True).first()
        if current is None:
            return  # deleted meanwhile: nothing to record
        vcenter.status = current
        if current == status:
            if same_writes:
                VCenter.objects.filter(pk=vcenter.pk).update(**changes)
            for name, value in changes.items():
                setattr(vcenter, name, value)
        else:
            vcenter.move_to(status, **changes)


def mark_unreachable(vcenter: VCenter, reason: str) -> None:
    observe(vcenter, VCenter.Status.UNREACHABLE, status_reason=reason, latency_ms=None, updated_at=timezone.now())


def mark_reachable(vcenter: VCenter) -> None:
    # Already reachable: nothing to write (its reason was cleared when it became so).
    observe(vcenter, VCenter.Status.REACHABLE, same_writes=False, status_reason="", updated_at=timezone.now())
