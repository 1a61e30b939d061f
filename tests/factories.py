"""Small builders for model rows (no vSphere involved)."""

from __future__ import annotations

import itertools

from apps.inventory.models import Cluster, Datacenter, Host, VCenter
from apps.pools.models import VM, Pool, Template, TemplateStatus, VMState

_seq = itertools.count(1)


def vcenter(**kw) -> VCenter:
    n = next(_seq)
    defaults = {"name": f"vc{n}", "host": "127.0.0.1:1", "username": "u", "password": "p"}
    return VCenter.objects.create(**{**defaults, **kw})


def cluster(vc: VCenter | None = None, **kw) -> Cluster:
    vc = vc or vcenter()
    n = next(_seq)
    dc, _ = Datacenter.objects.get_or_create(vcenter=vc, moid="datacenter-2", defaults={"name": "DC0"})
    return Cluster.objects.create(vcenter=vc, datacenter=dc, moid=f"domain-c{n}", name=f"C{n}", **kw)


def host(cluster: Cluster, **kw) -> Host:
    n = Host.objects.count() + 1
    defaults = {"moid": f"host-{n}", "name": f"esx{n}.example", "cpu_capacity_mhz": 10_000,
                "memory_capacity_mb": 65_536}
    return Host.objects.create(vcenter=cluster.vcenter, datacenter=cluster.datacenter, cluster=cluster,
                               **{**defaults, **kw})


def template(vc: VCenter | None = None, **kw) -> Template:
    vc = vc or vcenter()
    n = next(_seq)
    defaults = {"name": f"tmpl-{n}", "os_name": "Debian 12", "status": TemplateStatus.READY}
    return Template.objects.create(vcenter=vc, **{**defaults, **kw})


def pool(**kw) -> Pool:
    vc = kw.pop("vcenter", None) or vcenter()
    n = next(_seq)
    defaults = {"name": f"pool-{n}", "size": 2}
    if "template" not in kw:
        kw["template"] = template(vc)
    if "cluster" not in kw:
        kw["cluster"] = cluster(vc)
    return Pool.objects.create(**{**defaults, **kw})


def vm(pool: Pool, **kw) -> VM:
    n = next(_seq)
    defaults = {"name": f"{pool.name}-{n}", "vcenter_id": pool.template.vcenter_id, "template": pool.template}
    return VM.objects.create(pool=pool, **{**defaults, **kw})


def pool_with_ready_vms(n: int) -> Pool:
    """A pool of size ``n``, full of ready VMs."""
    full = pool(size=n)
    for _ in range(n):
        vm(full, state=VMState.READY)
    return full


def host_with_load(cluster: Cluster) -> Host:
    """A host with an hour of load samples (every 2 minutes) and a datastore beside it: what
    the host load pages and charts draw."""
    from datetime import timedelta

    from django.utils import timezone

    from apps.inventory.models import Datastore, HostLoadSample

    esx = host(cluster, name="esx-01.lab.example", cpu_usage_mhz=4_000, memory_usage_mb=20_000)
    now = timezone.now()
    HostLoadSample.objects.bulk_create(
        HostLoadSample(host=esx, at=now - timedelta(minutes=m), cpu_usage_mhz=2_000 + 150 * (m % 40),
                       memory_usage_mb=20_000 + 300 * (m % 25)) for m in range(0, 60, 2))
    dc = cluster.datacenter
    Datastore.objects.create(vcenter=dc.vcenter, datacenter=dc, moid="ds-1", name="ssd-01",
                             capacity_bytes=1000 * 2**30, free_bytes=180 * 2**30)
    return esx
