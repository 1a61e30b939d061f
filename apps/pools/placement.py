"""Where a pool's next clone goes: which template copy, which host."""

from __future__ import annotations

from collections import Counter

from django.db.models import F, Q, QuerySet

from apps.core.errors import VmPortalError
from apps.inventory.models import Host
from apps.inventory.selectors import host_candidates
from apps.pools.models import VM, Pool, TemplateCopy, TemplateStatus, VMState
from apps.vsphere.placement import choose_hosts as rank_and_spread


class NoPlacement(VmPortalError):
    permanent = False


def copies_serving(template_id: int, cluster_id: int, datastore_id: int | None) -> QuerySet[TemplateCopy]:
    """Ready copies a pool of ``template_id`` in ``cluster_id`` (on ``datastore_id``) clones
    from: in its cluster, on its datastore or placed by vSphere, the exact datastore first.

    Never another cluster's copy: a linked clone reads its base disk for its whole life, so
    it stays beside it; a pool without one waits for its own (templates.copies.ensure_copy)."""
    copies = TemplateCopy.objects.filter(template=template_id, cluster=cluster_id,
                                         status=TemplateStatus.READY).exclude(moid="")
    if datastore_id is not None:
        copies = copies.filter(Q(datastore=datastore_id) | Q(datastore__isnull=True))
        return copies.order_by(F("datastore_id").asc(nulls_last=True), "pk")
    return copies.order_by(F("datastore_id").asc(nulls_first=True), "pk")


def template_copy_for(pool: Pool) -> TemplateCopy:
    """The ready copy of the pool's template that serves its cluster and datastore."""
    copy = copies_serving(pool.template_id, pool.cluster_id, pool.datastore_id).first()
    if copy is None:
        raise NoPlacement(f"Template {pool.template} has no ready copy in cluster {pool.cluster} yet.")
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
