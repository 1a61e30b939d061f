"""Purge against the simulator and real PostgreSQL: what it destroys, what it leaves alone,
and that it looks again right before each destroy."""

from __future__ import annotations

import importlib
import re

import pytest
from django.apps import apps as django_apps

from apps.audit.models import AuditEvent
from apps.inventory.models import Cluster, VCenter
from apps.jobs import runner
from apps.jobs.models import Job
from apps.pools import instance, provisioning
from apps.pools.models import VM, Installation, VMState
from apps.vsphere import operations as ops
from apps.vsphere.session import Endpoint, connect
from apps.vsphere.types import OWNER_KEY, CloneSpec
from tests.live import site

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def lab(vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory())
    return vc, folder


def put_vm(vc, folder, name: str, owner: str | None = None) -> str:
    """A VM in the pool folder, as a clone (ours or another installation's) or a stranger's VM."""
    cluster = Cluster.objects.get(vcenter=vc, name="DC0_C0")
    with connect(Endpoint.from_vcenter(vc)) as conn:
        template = ops.find_vm(conn, path="DC0/vm/Templates/debian-12")
        spec = CloneSpec(template_moid=template.moid, name=name, folder_moid=folder.moid,
                         resource_pool_moid=cluster.resource_pool_moid, linked=False, power_on=True,
                         extra_config={OWNER_KEY: owner} if owner else {})
        return ops.clone_vm(conn, spec).moid


def names_in(vc, folder) -> set[str]:
    with connect(Endpoint.from_vcenter(vc)) as conn:
        return {v.name for v in ops.list_folder_vms(conn, folder.moid) if not v.is_template}


def purge(folder) -> Job:
    job = runner.enqueue("pools.purge", target=folder, folder_id=folder.pk)
    assert runner.run(job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    return Job.objects.get(pk=job.pk)


def row(vc, name: str, state: str) -> VM:
    return VM.objects.create(vcenter=vc, name=name, state=state)


def test_our_leaked_clones_are_destroyed_and_a_clone_whose_row_is_mid_clone_is_kept(lab):
    vc, folder = lab
    mid_clone = row(vc, "mid-clone", VMState.CLONING)  # its row has not recorded the moid yet
    finished = row(vc, "finished", VMState.DESTROYED)  # destroyed in the database, not in vCenter
    put_vm(vc, folder, "mid-clone", instance.marker(mid_clone))
    put_vm(vc, folder, "finished", instance.marker(finished))
    put_vm(vc, folder, "no-row", f"{instance.instance_id()}:987654")

    job = purge(folder)

    assert names_in(vc, folder) == {"mid-clone"}
    assert {e.message for e in AuditEvent.objects.filter(action="purge.destroy")} == {
        f"leaked clone finished in {folder.path}", f"leaked clone no-row in {folder.path}"}
    assert "3 stray" not in job.log and "2 stray VMs" in job.log


def test_a_clone_of_another_installation_is_kept_even_when_unknown_vms_are_purged(lab):
    vc, folder = lab
    folder.purge_unknown = True
    folder.save()
    gone = row(vc, "gone", VMState.DESTROYED)
    put_vm(vc, folder, "theirs", f"{instance.new_instance_id()}:{gone.pk}")
    put_vm(vc, folder, "old-default", f"vmportal:{gone.pk}")  # an installation still on the old shared id
    put_vm(vc, folder, "stranger")

    job = purge(folder)

    assert names_in(vc, folder) == {"theirs", "old-default"}
    assert "it carries another installation's marker" in job.log


def test_unknown_vms_are_kept_unless_purge_unknown_is_on_and_allowlisted_names_always(lab):
    vc, folder = lab
    folder.purge_allowlist = ["keep-stranger", "keep-leaked"]
    folder.save()
    put_vm(vc, folder, "stranger")
    put_vm(vc, folder, "keep-stranger")
    put_vm(vc, folder, "keep-leaked", f"{instance.instance_id()}:987654")

    job = purge(folder)
    assert names_in(vc, folder) == {"stranger", "keep-stranger", "keep-leaked"}
    assert f"purge of unknown VMs is off for {folder.path}" in job.log
    assert f"keep-leaked is on the allowlist of {folder.path}" in job.log

    folder.purge_unknown = True
    folder.save()
    purge(folder)
    assert names_in(vc, folder) == {"keep-stranger", "keep-leaked"}
    [event] = AuditEvent.objects.filter(action="purge.destroy")
    assert event.message == f"unknown VM stranger in {folder.path}"


def test_a_vm_that_changes_between_the_scan_and_the_destroy_is_left_alone(lab, monkeypatch):
    vc, folder = lab
    folder.purge_unknown = True
    folder.save()
    leaked = put_vm(vc, folder, "leaked", f"{instance.instance_id()}:987654")
    stranger = put_vm(vc, folder, "stranger")
    scan = provisioning.find_strays

    def scan_then_someone_claims_them(*args, **kwargs):
        strays = scan(*args, **kwargs)
        assert {s.name for s in strays} == {"leaked", "stranger"}
        with connect(Endpoint.from_vcenter(vc)) as conn:  # another installation adopts both meanwhile
            ops.set_extra_config(conn, leaked, {OWNER_KEY: "vmportal-0123456789ab:1"})
            ops.set_extra_config(conn, stranger, {OWNER_KEY: "vmportal-0123456789ab:2"})
        return strays

    monkeypatch.setattr(provisioning, "find_strays", scan_then_someone_claims_them)
    job = purge(folder)

    assert names_in(vc, folder) == {"leaked", "stranger"}
    assert not AuditEvent.objects.filter(action="purge.destroy").exists()
    assert AuditEvent.objects.filter(action="purge.skip").count() == 2
    assert "changed since the scan" in job.log


def test_a_vm_a_row_claims_between_the_scan_and_the_destroy_is_left_alone(lab, monkeypatch):
    vc, folder = lab
    moid = put_vm(vc, folder, "adopted", f"{instance.instance_id()}:987654")
    scan = provisioning.find_strays

    def scan_then_a_row_records_the_moid(*args, **kwargs):
        strays = scan(*args, **kwargs)
        VM.objects.create(vcenter=vc, name="adopted", state=VMState.READY, moid=moid)
        return strays

    monkeypatch.setattr(provisioning, "find_strays", scan_then_a_row_records_the_moid)
    job = purge(folder)

    assert names_in(vc, folder) == {"adopted"}
    assert "a VM row claimed it since the scan" in job.log


def test_two_installations_sharing_a_folder_never_destroy_each_others_clones(lab, settings):
    vc, folder = lab
    folder.purge_unknown = True
    folder.save()
    ours = instance.instance_id()
    theirs = instance.new_instance_id()  # what another installation's database generated
    assert theirs != ours
    # Row ids are per database: each installation's clones may carry an id the other
    # knows as a destroyed VM of its own.
    gone = row(vc, "gone", VMState.DESTROYED)
    put_vm(vc, folder, "ours-1", f"{ours}:{gone.pk}")
    put_vm(vc, folder, "theirs-1", f"{theirs}:{gone.pk}")

    purge(folder)
    assert names_in(vc, folder) == {"theirs-1"}

    put_vm(vc, folder, "ours-2", f"{ours}:{gone.pk}")
    settings.VMPORTAL_INSTANCE_ID = theirs  # the other installation's purge of the same folder
    purge(folder)
    assert names_in(vc, folder) == {"ours-2"}


# ---------------------------------------------------------------- the instance id


def test_a_new_installation_generates_its_own_id_once_and_stores_it():
    migration = importlib.import_module("apps.pools.migrations.0006_installation")
    Installation.objects.all().delete()
    migration.store_instance_id(django_apps, None)  # a new database: no VMs yet
    first = Installation.objects.get().instance_id
    assert re.fullmatch(r"vmportal-[0-9a-f]{12}", first)
    assert instance.instance_id() == first
    migration.store_instance_id(django_apps, None)
    assert Installation.objects.get().instance_id == first

    Installation.objects.all().delete()  # another installation (or a flushed database)
    instance.forget()
    second = instance.instance_id()
    assert re.fullmatch(r"vmportal-[0-9a-f]{12}", second) and second != first
    assert Installation.objects.get().instance_id == second  # what every other host of it reads


def test_the_instance_id_is_read_once_per_process(django_assert_num_queries):
    instance.instance_id()
    with django_assert_num_queries(0):
        assert instance.instance_id() == instance.instance_id()


def test_the_environment_overrides_the_stored_id(settings):
    instance.instance_id()
    settings.VMPORTAL_INSTANCE_ID = "vmportal"  # an installation that upgraded and kept its marker
    assert instance.instance_id() == "vmportal"


def test_upgrading_an_installation_that_has_vms_keeps_the_old_shared_id():
    migration = importlib.import_module("apps.pools.migrations.0006_installation")
    vc = VCenter.objects.create(name="vc", host="vc.example.test", username="u", password="p")
    VM.objects.create(vcenter=vc, name="made-before-the-upgrade", state=VMState.READY)
    Installation.objects.all().delete()
    migration.store_instance_id(django_apps, None)
    assert Installation.objects.get().instance_id == instance.LEGACY_INSTANCE_ID == "vmportal"


def test_destroy_if_owned_leaves_templates_vms_elsewhere_and_other_markers_and_counts_gone_as_gone(lab):
    vc, folder = lab
    ours = f"{instance.instance_id()}:987654"
    moid = put_vm(vc, folder, "ours", ours)
    with connect(Endpoint.from_vcenter(vc)) as conn:
        template = ops.find_vm(conn, path="DC0/vm/Templates/debian-12")
        elsewhere = ops.create_folder(conn, "DC0/vm", "elsewhere")

        kept = ops.destroy_if_owned(conn, template.moid, expected_owner=None, folder_moid=template.folder_moid)
        assert not kept.destroyed and "is a template" in kept.skipped
        kept = ops.destroy_if_owned(conn, moid, expected_owner=ours, folder_moid=elsewhere.moid)
        assert not kept.destroyed and "no longer in the folder" in kept.skipped
        kept = ops.destroy_if_owned(conn, moid, expected_owner=None, folder_moid=folder.moid)
        assert not kept.destroyed and "is marked" in kept.skipped

        assert ops.destroy_if_owned(conn, moid, expected_owner=ours, folder_moid=folder.moid).destroyed
        again = ops.destroy_if_owned(conn, moid, expected_owner=ours, folder_moid=folder.moid)
        assert (again.destroyed, again.gone) == (False, True)
        assert ops.find_vm(conn, path="DC0/vm/Templates/debian-12") is not None
