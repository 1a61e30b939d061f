"""Where a pool's next clone goes: which template copy, which host."""

from __future__ import annotations

from collections import Counter

from apps.core.errors import VmPortalError
from apps.inventory.models import Host
from apps.inventory.selectors import host_candidates
from apps.pools.models import VM, Pool, TemplateCopy, TemplateStatus, VMState
from apps.vsphere.placement import choose_hosts as rank_and_spread


class NoPlacement(VmPortalError):
    permanent = False


def template_copy_for(pool: Pool) -> TemplateCopy:
    """The template's copy in the pool's cluster, else any ready copy of it."""
    copies = TemplateCopy.objects.filter(template=pool.template_id, status=TemplateStatus.READY).exclude(moid="")
    copy = copies.filter(cluster=pool.cluster_id).first() or copies.first()
    if copy is None:
        raise NoPlacement(f"Template {pool.template} has no ready copy; prepare it first.")
    return copy


def choose_hosts(pool: Pool, count: int) -> list[Host | None]:
    """Hosts for ``count`` clones: least loaded first, spread over the burst and the
    clones already in flight. [None, ...] when the inventory is not synced yet, so
    vSphere places them in the cluster's resource pool."""
    candidates = host_candidates(pool.cluster_id)
    if not candidates:
        return [None] * count
    datastore = pool.datastore.moid if pool.datastore_id else None
    in_flight = Counter(
        VM.objects.filter(host__cluster=pool.cluster_id, state__in=(VMState.CLONING, VMState.BOOTING))
        .values_list("host__moid", flat=True)
    )
    try:
        chosen = rank_and_spread(candidates, count=count, datastore_moid=datastore, placed=in_flight)
    except VmPortalError as exc:
        raise NoPlacement(str(exc)) from None
    hosts = {h.moid: h for h in Host.objects.filter(vcenter_id=pool.cluster.vcenter_id,
                                                   moid__in={c.moid for c in chosen})}
    return [hosts[c.moid] for c in chosen]
