from __future__ import annotations

import pytest

from apps.inventory.models import Host
from apps.pools.models import TemplateCopy, TemplateStatus
from tests import factories


@pytest.fixture
def ready_pool(db):
    """A pool whose template has a ready copy in its cluster (so it may be reconfigured)."""
    pool = factories.pool(size=2)
    TemplateCopy.objects.create(template=pool.template, cluster=pool.cluster, moid="vm-1",
                                status=TemplateStatus.READY, progress=100)
    return pool


def make_host(cluster, **kw) -> Host:
    n = Host.objects.count() + 1
    defaults = {"moid": f"host-{n}", "name": f"esx{n}.example", "cpu_capacity_mhz": 10_000,
                "memory_capacity_mb": 65_536}
    return Host.objects.create(vcenter=cluster.vcenter, datacenter=cluster.datacenter, cluster=cluster,
                               **{**defaults, **kw})
