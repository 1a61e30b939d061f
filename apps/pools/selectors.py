from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from apps.core.errors import NotFound
from apps.pools import placement
from apps.pools.models import VM, Pool, TemplateCopy, TemplateStatus, VMState


class NoSuchPool(NotFound):
    """Pools asked for by name that do not exist; the message names each of them."""

    def __init__(self, names: Iterable[str]):
        self.names = sorted(set(names))
        super().__init__(f"No such pool: {', '.join(name[:64] for name in self.names)}.")


def pools_named(names: Iterable[str], pools: QuerySet[Pool] | None = None) -> dict[str, Pool]:
    """The pools of ``names`` (from ``pools``, all by default) by name; NoSuchPool naming every
    unknown one, so a request learns all its mistakes at once."""
    wanted = set(names)
    found = {p.name: p for p in (Pool.objects.all() if pools is None else pools).filter(name__in=wanted)}
    if unknown := wanted - set(found):
        raise NoSuchPool(unknown)
    return found


def pool_named(name: str, pools: QuerySet[Pool] | None = None) -> Pool:
    return pools_named([name], pools)[name]


def _live_count(*states: str) -> Coalesce:
    """How many of the pool's VMs are in ``states``: an index-only scan of (pool_id, state) per
    pool. A join of every VM grouped by pool read the destroyed ones too, which are never
    deleted (100 ms at 10k VMs, growing with every VM ever made)."""
    counted = (VM.objects.filter(pool=OuterRef("pk"), state__in=states).order_by().values("pool")
               .annotate(n=Count("*")).values("n"))
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


def pools_with_counts() -> QuerySet[Pool]:
    """Pools with their VM counts by state, in one query."""
    return (
        Pool.objects.select_related("template", "cluster")
        .annotate(
            ready_count=_live_count(VMState.READY),
            booting_count=_live_count(VMState.CLONING, VMState.BOOTING),
            leased_count=_live_count(VMState.LEASED),
        )
        .order_by("name")
    )


@dataclass(frozen=True)
class CopyState:
    """The template copy a pool clones from, or the one it waits for, as the pool page, the
    templates pages and on-demand requests all tell it."""

    copy: TemplateCopy | None
    waiting: str = ""  # "" once a ready copy serves the pool


def template_copy_state(pool: Pool) -> CopyState:
    ready = placement.copies_serving(pool.template_id, pool.cluster_id, pool.datastore_id).first()
    if ready is not None:
        return CopyState(ready)
    copy = (TemplateCopy.objects.filter(template=pool.template_id, cluster=pool.cluster_id,
                                        datastore=pool.datastore_id).first())
    waiting = f"waiting for template copy in {pool.cluster}"
    if copy is not None and copy.status == TemplateStatus.FAILED:
        waiting += f" (the last try failed: {copy.status_reason}; it is tried again shortly)"
    elif copy is not None and copy.status == TemplateStatus.REMOVING:
        waiting += " (an unused copy is being removed first)"
    elif pool.template.status != TemplateStatus.READY:
        waiting += f" (template {pool.template} is {pool.template.get_status_display().lower()})"
    return CopyState(copy, waiting)
