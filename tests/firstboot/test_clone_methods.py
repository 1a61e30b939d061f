"""First boot end to end: real rqworker processes, PostgreSQL, Redis and vcsim.

The simulator plays the guest: customisation sets the reported host name and fixed IP;
for cloud-init it reads the meta-data (guestinfo, or the seed ISO in the CD-ROM drive)
and reports local-hostname and the network config's address (tools/vcsim/firstboot.go).
"""

from __future__ import annotations

import base64
import gzip
import json
from datetime import timedelta

import pytest

from apps.audit.models import AuditEvent
from apps.firstboot import access
from apps.firstboot.models import (
    AddressRange,
    Delivery,
    IPAllocation,
    KeyDelivery,
    Method,
    PoolFirstBoot,
    SeedISO,
    VMSecret,
)
from apps.firstboot.seed import hostname_for
from apps.jobs.models import Job
from apps.leases import services as leases
from apps.pools.models import Pool, VMState
from apps.vsphere import guest as guest_ops
from apps.vsphere import operations as ops
from apps.vsphere.session import Endpoint, connect
from tests.firstboot.keys import ED25519, RSA
from tests.live import GUEST, make_pool, settle, site, vms_in_folder, work_off

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]


def address_range(**kw) -> AddressRange:
    defaults = {"name": "lab", "network": "10.40.0.0/24", "first": "10.40.0.10", "last": "10.40.0.19",
                "gateway": "10.40.0.1", "dns_servers": "10.40.0.2"}
    rng = AddressRange(**{**defaults, **kw})
    rng.full_clean()
    rng.save()
    return rng


def configure(pool: Pool, **kw) -> PoolFirstBoot:
    return PoolFirstBoot.objects.create(pool=pool, **kw)


def ready_vms(pool: Pool) -> list:
    return list(pool.vms.filter(state=VMState.READY).order_by("name"))


def jobs_report() -> list:
    return [(j.kind, j.status, j.error, j.log) for j in Job.objects.all()]


def test_customisation_gives_each_clone_its_hostname_and_a_fixed_ip_from_the_range(vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, name="cust_pool", size=3)
    rng = address_range()
    configure(pool, method=Method.CUSTOMIZATION, domain="lab.example", address_range=rng)
    settle(pool)
    vms = ready_vms(pool)
    assert len(vms) == 3, jobs_report()
    for vm in vms:
        allocation = IPAllocation.objects.get(vm=vm)
        assert vm.ip_address == allocation.address  # what the guest reported, not a DHCP address
        assert vm.hostname == hostname_for(vm.name) and "_" not in vm.hostname
        assert VMSecret.objects.filter(vm=vm).exists()
    assert sorted(vm.ip_address for vm in vms) == ["10.40.0.10", "10.40.0.11", "10.40.0.12"]

    # Destroying a VM gives its address back; the refill reuses it.
    Pool.objects.filter(pk=pool.pk).update(size=2)
    settle(pool)
    assert IPAllocation.objects.count() == 2
    assert not VMSecret.objects.exclude(vm__state=VMState.READY).exists()


def test_cloud_init_guestinfo_sets_hostname_and_ip_and_the_user_data_is_scrubbed(vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, name="ci-gi", size=2)
    configure(pool, method=Method.CLOUD_INIT, delivery=Delivery.GUESTINFO, address_range=address_range(),
              authorized_keys=ED25519, meta_data="owner: {{ pool }}\n")
    settle(pool)
    vms = ready_vms(pool)
    assert len(vms) == 2, jobs_report()
    with connect(Endpoint.from_vcenter(vc)) as conn:
        for vm in vms:
            assert vm.ip_address == IPAllocation.objects.get(vm=vm).address
            assert vm.hostname == vm.name
            extra = ops.extra_config(conn, vm.moid)
            meta = json.loads(gzip.decompress(base64.b64decode(extra["guestinfo.metadata"])))
            assert meta["local-hostname"] == vm.name and meta["owner"] == "ci-gi"
            assert meta["network"]["ethernets"]["nic0"]["addresses"] == [f"{vm.ip_address}/24"]
            # The user-data (with the password hash) is gone once the VM is ready.
            assert not extra.get("guestinfo.userdata")


def test_cloud_init_seed_iso_is_attached_then_ejected_and_deleted_when_ready(vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, name="ci-iso", size=2)
    configure(pool, method=Method.CLOUD_INIT, delivery=Delivery.SEED_ISO, address_range=address_range())
    settle(pool)
    vms = ready_vms(pool)
    assert len(vms) == 2, jobs_report()
    assert SeedISO.objects.count() == 0
    with connect(Endpoint.from_vcenter(vc)) as conn:
        for vm in vms:
            assert vm.ip_address == IPAllocation.objects.get(vm=vm).address  # read from the ISO by the guest
            assert vm.hostname == vm.name
            assert ops.cdrom_isos(conn, vm.moid) == []
        ds = pool.cluster.hosts.first().datastores.order_by("name").first()
        assert not ops.datastore_file_exists(conn, ds.moid, f"vmportal-seeds/{vms[0].name}-{vms[0].pk}.iso")


def test_no_seed_iso_is_left_behind_when_the_clone_fails(vcsim_factory, redis_conn):
    sim = vcsim_factory(*GUEST, "-fail-rate", "1", "-fail-methods", "CloneVM_Task", "-fail-fault", "NoDiskSpace")
    vc, folder = site(sim)
    pool = make_pool(vc, folder, name="ci-fail", size=2)
    configure(pool, method=Method.CLOUD_INIT, delivery=Delivery.SEED_ISO)
    settle(pool)
    pool.refresh_from_db()
    assert pool.health == Pool.Health.FAILING
    tried = list(pool.vms.all())
    assert tried and SeedISO.objects.count() == 0
    ds = pool.cluster.hosts.first().datastores.order_by("name").first()
    with connect(Endpoint.from_vcenter(vc)) as conn:
        for vm in tried:
            assert not ops.datastore_file_exists(conn, ds.moid, f"vmportal-seeds/{vm.name}-{vm.pk}.iso")
    assert vms_in_folder(vc) == []


def test_seed_iso_survives_until_destroy_when_the_guest_never_comes_up(vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory())  # no -guest-ip and no fixed address: never usable
    pool = make_pool(vc, folder, name="ci-stuck", size=1, boot_timeout=timedelta(seconds=2))
    configure(pool, method=Method.CLOUD_INIT, delivery=Delivery.SEED_ISO)
    settle(pool, rounds=2)
    vm = pool.vms.order_by("pk").first()
    vm.refresh_from_db()
    assert vm.state in (VMState.FAILED, VMState.DESTROYED)
    assert "no usable IP address" in vm.state_reason or vm.state == VMState.DESTROYED
    settle(pool, rounds=2)
    assert not SeedISO.objects.filter(vm=vm).exists()


def test_exhausted_range_marks_the_pool_with_a_reason_and_never_reuses_an_address(vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, name="tiny", size=3)
    configure(pool, method=Method.CUSTOMIZATION, address_range=address_range(last="10.40.0.11"))
    settle(pool, rounds=3)
    pool.refresh_from_db()
    assert pool.vms.filter(state=VMState.READY).count() == 2
    assert pool.health == Pool.Health.DEGRADED
    assert "Address range lab is exhausted" in pool.health_reason
    # Once per time the pool goes from healthy to exhausted (a ready clone clears the mark).
    assert 1 <= AuditEvent.objects.filter(action="pool.addresses_exhausted").count() <= 2
    assert sorted(IPAllocation.objects.values_list("address", flat=True)) == ["10.40.0.10", "10.40.0.11"]


def test_checkout_adds_the_lessees_keys_through_guest_operations(vcsim_factory, redis_conn, engineer):
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, name="keys", size=1)
    configure(pool, method=Method.CLOUD_INIT, delivery=Delivery.GUESTINFO, authorized_keys=ED25519,
              guest_username="vmportal")  # guest password: the clone's own first-boot password
    settle(pool)
    access.add_ssh_key(user=engineer, name="laptop", public_key=RSA)
    [lease] = leases.checkout(user=engineer, pools=[pool])
    work_off()
    delivery = KeyDelivery.objects.get(lease=lease)
    assert delivery.state == KeyDelivery.State.DONE, (delivery.detail, jobs_report())
    secret = VMSecret.objects.get(vm=lease.vm)
    with connect(Endpoint.from_vcenter(vc)) as conn:
        text = guest_ops.read_guest_file(conn, lease.vm.moid, "/home/vmportal/.ssh/authorized_keys",
                                         username="vmportal", password=secret.password)
    assert RSA.split()[1] in text.decode()
    # Nothing secret reached the audit log or the job log.
    for event in AuditEvent.objects.all():
        blob = json.dumps([event.before, event.after, event.message, event.target_repr])
        assert secret.password not in blob
    for job in Job.objects.all():
        assert secret.password not in (job.log + job.error)


def test_wrong_guest_credentials_fail_the_key_delivery_with_a_reason(vcsim_factory, redis_conn, engineer):
    vc, folder = site(vcsim_factory(*GUEST, "-guest-login", "vmportal:right"))
    pool = make_pool(vc, folder, name="badcreds", size=1)
    configure(pool, method=Method.CLOUD_INIT, guest_username="vmportal", guest_password="wrong")
    settle(pool)
    access.add_ssh_key(user=engineer, name="laptop", public_key=ED25519)
    [lease] = leases.checkout(user=engineer, pools=[pool])
    work_off()
    delivery = KeyDelivery.objects.get(lease=lease)
    assert delivery.state == KeyDelivery.State.FAILED
    assert "InvalidGuestLogin" in delivery.detail and "wrong" not in delivery.detail


def test_no_secret_reaches_the_logs_or_the_audit_log(vcsim_factory, redis_conn, engineer, caplog):
    """The fill job and the key delivery run in this process, with every logger at DEBUG."""
    from apps.jobs import runner  # noqa: PLC0415
    from apps.pools import manager as pool_manager  # noqa: PLC0415

    caplog.set_level("DEBUG")
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, name="quiet", size=2)
    configure(pool, method=Method.CLOUD_INIT, delivery=Delivery.SEED_ISO, address_range=address_range(),
              guest_username="ops", guest_password="Guest-Pw-0815")
    pool_manager.reconcile_pool(pool.pk)
    for job in Job.objects.filter(kind="pools.fill"):
        runner.run(job.pk)
    assert pool.vms.filter(state=VMState.READY).count() == 2, jobs_report()
    access.add_ssh_key(user=engineer, name="laptop", public_key=ED25519)
    [lease] = leases.checkout(user=engineer, pools=[pool])
    runner.run(Job.objects.get(kind="firstboot.add_keys").pk)
    assert KeyDelivery.objects.get(lease=lease).state == KeyDelivery.State.DONE
    secrets = ["Guest-Pw-0815"]
    for secret in VMSecret.objects.all():
        secrets.append(secret.password)
        secrets.append(secret.password[:12])
    logged = "\n".join(r.getMessage() for r in caplog.records)
    audited = json.dumps([[e.before, e.after, e.message, e.target_repr] for e in AuditEvent.objects.all()])
    jobs = "\n".join(j.log + j.error for j in Job.objects.all())
    assert len(secrets) == 5 and logged and audited
    for secret in secrets:
        assert secret not in logged and secret not in audited and secret not in jobs
    assert "$6$" not in logged + audited + jobs  # nor a password hash


def test_the_purge_sweeps_seed_isos_that_a_crashed_worker_left(vcsim_factory, redis_conn):
    from apps.jobs import runner  # noqa: PLC0415

    vc, folder = site(vcsim_factory(*GUEST))
    ds = folder.datacenter.datastores.order_by("name").first()
    with connect(Endpoint.from_vcenter(vc)) as conn:
        ops.upload_datastore_file(conn, ds.moid, "vmportal-seeds/orphan.iso", b"x" * 2048)
    orphan = SeedISO.objects.create(vm=None, vcenter=vc, datastore_moid=ds.moid, path="vmportal-seeds/orphan.iso",
                                    datastore_path=f"[{ds.name}] vmportal-seeds/orphan.iso")
    fresh = SeedISO.objects.create(vm=None, vcenter=vc, datastore_moid=ds.moid, path="vmportal-seeds/new.iso")
    SeedISO.objects.filter(pk=orphan.pk).update(created_at=orphan.created_at - timedelta(hours=2))
    job = runner.enqueue("pools.purge", target=folder, folder_id=folder.pk)
    runner.run(job.pk)
    assert list(SeedISO.objects.all()) == [fresh]  # young rows may belong to a clone in flight
    with connect(Endpoint.from_vcenter(vc)) as conn:
        assert not ops.datastore_file_exists(conn, ds.moid, "vmportal-seeds/orphan.iso")
