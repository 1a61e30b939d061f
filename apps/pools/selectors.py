from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Count, Q, QuerySet

from apps.core.errors import NotFound
from apps.pools.models import Pool, VMState


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


def pools_with_counts() -> QuerySet[Pool]:
    """Pools with their VM counts by state, in one query."""
    return (
        Pool.objects.select_related("template", "cluster")
        .annotate(
            ready_count=Count("vms", filter=Q(vms__state=VMState.READY)),
            booting_count=Count("vms", filter=Q(vms__state__in=(VMState.CLONING, VMState.BOOTING))),
            leased_count=Count("vms", filter=Q(vms__state=VMState.LEASED)),
        )
        .order_by("name")
    )
