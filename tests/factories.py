"""Small builders for model rows (no vSphere involved)."""

from __future__ import annotations

import itertools

from apps.inventory.models import Cluster, Datacenter, Host, VCenter
from apps.pools.models import VM, Pool, Template, TemplateStatus

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
