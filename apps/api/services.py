"""vmpooler's pool configuration calls, on top of the one reconfigure service.

vmpooler keeps API changes as overrides that can be undone (PoolOverride); everything
else (locking, validation, audit, nudging the pool manager) is apps.pools.reconfigure's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from apps.api.models import PoolOverride
from apps.core.errors import Conflict, NotFound, VmPortalError
from apps.inventory.models import Cluster
from apps.pools import reconfigure as pool_services
from apps.pools.manager import discard_vm
from apps.pools.models import VM, Pool, Template, VMState


def _reconfigure(pool_id: int, action: str, refuse: Callable[[Pool], None] | None = None,
                 **changes: Any) -> Pool | None:
    """Through the one pool-reconfigure service (lock, validation, audit, nudge); the pool
    as it was before, or None when nothing changed. ``refuse`` sees the locked row first and
    may raise."""
    pool = Pool.objects.select_for_update(of=("self",), no_key=True).select_related("template").get(pk=pool_id)
    if refuse is not None:
        refuse(pool)
    if all(getattr(pool, name) == value for name, value in changes.items()):
        return None
    try:
        pool_services.update_pool(pool_id=pool_id, changes=changes, action=action)
    except ValidationError as exc:
        raise VmPortalError(" ".join(exc.messages)) from None
    return pool


@transaction.atomic
def set_pool_size(*, pool_id: int, size: int) -> bool:
    """Set a pool's size; True when it changed. Callers check that the user is an admin."""
    if size < 0 or size > settings.VMPORTAL_MAX_POOL_SIZE:
        raise VmPortalError(f"A pool size must be between 0 and {settings.VMPORTAL_MAX_POOL_SIZE}.")
    before = _reconfigure(pool_id, "pool.resize", refuse=_sizes_itself, size=size)
    if before is not None:
        PoolOverride.objects.get_or_create(pool=before, field=PoolOverride.Field.SIZE,
                                           defaults={"original": before.size})
    return before is not None


def _sizes_itself(pool: Pool) -> None:
    if pool.autosize:
        # Automatic sizing would write over the size at the pool manager's next look.
        raise Conflict(f"{pool.name} sizes itself (automatic size, {pool.min_size}..{pool.max_size}): change its "
                       "minimum and maximum on its pool page, or turn automatic sizing off there first.")


@transaction.atomic
def set_pool_target(*, pool_id: int, template_name: str | None = None, cluster_name: str | None = None) -> bool:
    """Point a pool at another template or cluster (same vCenter); True when it changed.

    The template must be ready in the target cluster; ready VMs of the old template stay
    until the pool manager drains them, leased ones until they are returned.
    """
    pool = Pool.objects.select_related("cluster").get(pk=pool_id)
    vcenter_id = pool.cluster.vcenter_id
    changes: dict = {}
    if template_name is not None:
        changes["template"] = Template.objects.filter(vcenter_id=vcenter_id, name=template_name).first()
        if changes["template"] is None:
            raise NotFound(f"No template {template_name[:80]!r} on the pool's vCenter.")
    if cluster_name is not None:
        changes["cluster"] = Cluster.objects.filter(vcenter_id=vcenter_id, name=cluster_name).first()
        if changes["cluster"] is None:
            raise NotFound(f"No cluster {cluster_name[:80]!r} on the pool's vCenter.")
    before = _reconfigure(pool_id, "pool.retarget", **changes)
    if before is not None and "template" in changes and changes["template"].pk != before.template_id:
        PoolOverride.objects.get_or_create(pool=before, field=PoolOverride.Field.TEMPLATE,
                                           defaults={"original": before.template.name})
    return before is not None


@transaction.atomic
def undo_override(*, pool_id: int, field: str) -> tuple[object, object]:
    """Put a pool's size or template back to what it was before the API changed it.

    Returns (value before the overrides, value just before this reset), vmpooler's
    ``pool_size_before_overrides`` / ``pool_size_before_reset``.
    """
    pool = Pool.objects.select_for_update(of=("self",), no_key=True).select_related("template").get(pk=pool_id)
    current = pool.size if field == PoolOverride.Field.SIZE else pool.template.name
    override = PoolOverride.objects.filter(pool=pool, field=field).first()
    if override is None:
        return current, current
    if field == PoolOverride.Field.SIZE:
        _reconfigure(pool_id, "pool.resize", size=int(override.original))
    else:
        template = Template.objects.filter(vcenter_id=pool.template.vcenter_id, name=override.original).first()
        if template is None:
            raise NotFound(f"The pool's original template {override.original!r} no longer exists.")
        _reconfigure(pool_id, "pool.retarget", template=template)
    override.delete()
    return override.original, current


@transaction.atomic
def reset_pool(*, pool_id: int) -> None:
    """vmpooler's poolreset: clear the pool's failures and rebuild its ready VMs (leased
    ones stay with their lessees)."""
    pool_services.reset(pool_id=pool_id)
    # After the pool row (locked by reset), VM rows in id order: the one lock order.
    ready = VM.objects.filter(pool_id=pool_id, on_demand=False, state__in=(VMState.READY, VMState.BOOTING))
    for vm in ready.select_for_update(no_key=True).order_by("pk"):
        discard_vm(vm, "The pool was reset through the API.")
