from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from apps.pools.models import Pool, VMState


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
