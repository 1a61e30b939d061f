"""manage.py import_vmpooler on a sample vmpooler.yaml."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from apps.audit.models import AuditEvent
from apps.inventory.models import Cluster, Datacenter, Datastore, Folder, Host, VCenter
from apps.pools.models import Pool, Template, TemplateStatus

pytestmark = pytest.mark.django_db
SAMPLE = Path(__file__).with_name("vmpooler.yaml")


@pytest.fixture
def synced_inventory():
    """What sync_inventory would have mirrored for the sample's vCenter (named after its provider)."""
    vc = VCenter.objects.create(name="vsphere", host="vcenter.example.com", username="u", password="p")
    dc = Datacenter.objects.create(vcenter=vc, moid="datacenter-2", name="DC0")
    cluster = Cluster.objects.create(vcenter=vc, datacenter=dc, moid="domain-c1", name="cluster1")
    ds = Datastore.objects.create(vcenter=vc, datacenter=dc, moid="datastore-1", name="vmstorage")
    host = Host.objects.create(vcenter=vc, datacenter=dc, cluster=cluster, moid="host-1", name="esx1")
    host.datastores.add(ds)
    Folder.objects.create(vcenter=vc, datacenter=dc, moid="group-1", name="debian-12-x86_64",
                          path="DC0/vm/Pooled VMs/debian-12-x86_64")
    return vc


def run(*args) -> str:
    out = StringIO()
    call_command("import_vmpooler", str(SAMPLE), *args, stdout=out)
    return out.getvalue()


def test_import_creates_templates_and_pools_and_reports_the_rest(synced_inventory):
    output = run()
    pool = Pool.objects.get(name="debian-12-x86_64")
    assert pool.size == 5 and pool.cluster.name == "cluster1"
    assert pool.template.inventory_path == "DC0/vm/Templates/debian-12-x86_64"
    assert pool.template.status == TemplateStatus.PENDING
    assert pool.datastore.name == "vmstorage" and pool.folder.name == "debian-12-x86_64"
    assert pool.boot_timeout == timedelta(minutes=10) and pool.ready_ttl == timedelta(hours=24)
    assert pool.lease_lifetime == timedelta(hours=12) and pool.lease_max_lifetime == timedelta(hours=48)
    assert pool.linked_clones is False
    # The second pool's clone target is not in the inventory; its template is still recorded.
    assert not Pool.objects.filter(name="win-2022-x86_64").exists()
    assert Template.objects.filter(name="win-2022").exists()
    assert "skipped: pool win-2022-x86_64: cluster cluster9 is not in the synced inventory" in output
    assert "provider gce: provider_class gce is not vSphere" in output
    assert "pool ubuntu-24-x86_64: provider gce is not an imported vSphere provider" in output
    for unmapped in (":redis:", ":auth:", ":config: experimental_features",
                     ":providers: vsphere: connection_pool_timeout"):
        assert unmapped in output
    # vmpooler's alias and (global) domain carry over for the vmpooler API.
    assert pool.alias_list == ["debian-12"] and pool.domain == "example.com"
    assert "alias" not in output and ":config: domain" not in output
    assert AuditEvent.objects.filter(action="pool.import").count() == 1


def test_import_creates_the_vcenter_when_missing_and_is_repeatable(db):
    run()
    vc = VCenter.objects.get(name="vsphere")
    assert vc.host == "vcenter.example.com" and vc.insecure and vc.task_limit == 12 and vc.password == "swordfish"
    assert not Pool.objects.exists()  # no clusters synced yet: pools are reported, not guessed
    again = run()
    assert "kept: vCenter vsphere exists" in again
    assert Template.objects.filter(vcenter=vc).count() == 2


def test_dry_run_changes_nothing(synced_inventory):
    output = run("--dry-run")
    assert "would create: pool debian-12-x86_64" in output
    assert not Pool.objects.exists()


def test_bad_files_are_command_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: [unclosed")
    with pytest.raises(CommandError, match="not valid YAML"):
        call_command("import_vmpooler", str(bad))
    with pytest.raises(CommandError, match="Cannot read"):
        call_command("import_vmpooler", str(tmp_path / "missing.yaml"))
