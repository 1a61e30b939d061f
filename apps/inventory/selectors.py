"""Read helpers over the mirrored inventory (no vSphere calls)."""

from __future__ import annotations

from django.db.models import QuerySet

from apps.inventory.models import Cluster, Host, HostLoadSample
from apps.vsphere.placement import HostCandidate


def host_candidates(cluster: Cluster | int) -> list[HostCandidate]:
    """The cluster's hosts as placement candidates (apps.vsphere.placement), in two queries."""
    cluster_id = cluster.pk if isinstance(cluster, Cluster) else cluster
    hosts = Host.objects.filter(cluster_id=cluster_id).prefetch_related("datastores")
    return [
        HostCandidate(
            moid=h.moid, name=h.name, connection_state=h.connection_state, in_maintenance=h.in_maintenance,
            config_issues=h.config_issues, overall_status=h.overall_status,
            cpu_usage_mhz=h.cpu_usage_mhz, cpu_capacity_mhz=h.cpu_capacity_mhz,
            memory_usage_mb=h.memory_usage_mb, memory_capacity_mb=h.memory_capacity_mb,
            datastore_moids=frozenset(d.moid for d in h.datastores.all()),
        )
        for h in hosts
    ]


def load_history(host: Host, *, limit: int = 288) -> QuerySet[HostLoadSample]:
    """The host's newest load samples, newest first (for charts)."""
    return host.load_samples.order_by("-at")[:limit]
