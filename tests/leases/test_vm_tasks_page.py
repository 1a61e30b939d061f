"""Snapshots, revert and disks from the lease page: who may, what it records, and (with a real
worker and the simulator) that the page shows the snapshot done."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.jobs.models import Job
from apps.leases import services
from apps.leases.models import VMTask
from apps.pools.models import VMState
from tests import factories


@pytest.fixture
def lease(engineer):
    pool = factories.pool(name="deb")
    factories.vm(pool, state=VMState.READY, ip_address="10.20.0.7", moid="vm-42")
    [lease] = services.checkout(user=engineer, pools=[pool])
    return lease


def _as(client, who, users):
    if users[who]:
        client.force_login(users[who])


@pytest.mark.django_db
@pytest.mark.parametrize("who, made", [("owner", True), ("admin", True), ("other", False), ("anonymous", False)])
def test_snapshot_from_the_lease_page_queues_a_task_for_owner_and_admin_only(
        client, lease, engineer, other_engineer, admin_user, who, made):
    _as(client, who, {"owner": engineer, "admin": admin_user, "other": other_engineer, "anonymous": None})
    response = client.post(reverse("lease-snapshot", args=[lease.pk]))
    assert VMTask.objects.filter(lease=lease, kind=VMTask.Kind.SNAPSHOT).exists() == made
    assert Job.objects.filter(kind="leases.vm_task").exists() == made
    if who == "other":
        assert response.status_code == 404
    elif who == "anonymous":
        assert response.status_code == 302 and "/login" in response["Location"]
    else:
        assert response.status_code == 302 and response["Location"] == reverse("lease-detail", args=[lease.pk])


@pytest.mark.django_db
def test_lease_page_lists_tasks_with_status_and_polls_only_while_one_is_queued(client, lease, engineer):
    client.force_login(engineer)
    page = client.get(reverse("lease-detail", args=[lease.pk])).content.decode()
    assert "Snapshots, disks and power" in page and "No snapshots or added disks yet" in page
    assert f'hx-get="{reverse("lease-vm-tasks", args=[lease.pk])}"' not in page

    client.post(reverse("lease-disk", args=[lease.pk]), {"size_gb": "8"})
    page = client.get(reverse("lease-detail", args=[lease.pk])).content.decode()
    assert "Add disk +8 GB" in page and "Queued" in page
    assert f'hx-get="{reverse("lease-vm-tasks", args=[lease.pk])}"' in page
    poll = client.get(reverse("lease-vm-tasks", args=[lease.pk]), HTTP_HX_REQUEST="true")
    assert poll.status_code == 200

    VMTask.objects.update(status=VMTask.Status.DONE)
    poll = client.get(reverse("lease-vm-tasks", args=[lease.pk]), HTTP_HX_REQUEST="true")
    assert poll.status_code == 286 and "Done" in poll.content.decode()  # htmx swaps it in and stops asking


@pytest.mark.django_db
@pytest.mark.parametrize("size", ["0", "4096", "abc", "9" * 5000, ""])
def test_a_disk_size_out_of_range_is_explained_and_nothing_is_queued(client, lease, engineer, size):
    client.force_login(engineer)
    response = client.post(reverse("lease-disk", args=[lease.pk]), {"size_gb": size}, follow=True)
    assert b"A disk must be between 1 and 2048 GB." in response.content
    assert not VMTask.objects.exists()


@pytest.mark.django_db
def test_revert_asks_first_and_refuses_an_unknown_snapshot(client, lease, engineer, other_engineer):
    VMTask.objects.create(lease=lease, kind=VMTask.Kind.SNAPSHOT, snapshot="a" * 32, status=VMTask.Status.DONE)
    client.force_login(engineer)
    page = client.get(reverse("lease-detail", args=[lease.pk])).content.decode()
    assert f'data-confirm="Revert {lease.vm.name} to snapshot' in page
    assert client.post(reverse("lease-revert", args=[lease.pk]), {"snapshot": "b" * 32}).status_code == 404
    client.post(reverse("lease-revert", args=[lease.pk]), {"snapshot": "a" * 32})
    assert VMTask.objects.filter(kind=VMTask.Kind.REVERT, snapshot="a" * 32).count() == 1
    client.force_login(other_engineer)
    assert client.post(reverse("lease-revert", args=[lease.pk]), {"snapshot": "a" * 32}).status_code == 404
    assert client.get(reverse("lease-vm-tasks", args=[lease.pk])).status_code == 404
    assert VMTask.objects.filter(kind=VMTask.Kind.REVERT).count() == 1


@pytest.mark.django_db
def test_vm_task_forms_need_csrf(lease, engineer):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(engineer)
    assert strict.post(reverse("lease-snapshot", args=[lease.pk])).status_code == 403
    assert not VMTask.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("who, made", [("owner", True), ("admin", True), ("other", False), ("anonymous", False)])
def test_power_off_from_the_lease_page_is_a_task_for_owner_and_admin_only(
        client, lease, engineer, other_engineer, admin_user, who, made):
    from apps.audit.models import AuditEvent

    _as(client, who, {"owner": engineer, "admin": admin_user, "other": other_engineer, "anonymous": None})
    response = client.post(reverse("lease-power", args=[lease.pk]), {"kind": "power_off"})
    assert VMTask.objects.filter(lease=lease, kind=VMTask.Kind.POWER_OFF).exists() == made
    assert AuditEvent.objects.filter(action="vm.power_off").exists() == made
    assert response.status_code == {"owner": 302, "admin": 302, "other": 404, "anonymous": 302}[who]


@pytest.mark.django_db
def test_power_off_and_reset_ask_first_and_an_unknown_power_action_is_refused(client, lease, engineer):
    client.force_login(engineer)
    page = client.get(reverse("lease-detail", args=[lease.pk])).content.decode()
    assert f'data-confirm="Power off {lease.vm.name}?' in page and f'data-confirm="Reset {lease.vm.name}?' in page
    response = client.post(reverse("lease-power", args=[lease.pk]), {"kind": "destroy"}, follow=True)
    assert b"Choose power off, power on or reset." in response.content
    assert not VMTask.objects.exists()


@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_a_snapshot_taken_from_the_lease_page_is_made_in_vsphere_and_shown_done(client, vcsim_factory, redis_conn,
                                                                                engineer):
    from apps.pools.models import VM
    from apps.vsphere import operations as ops
    from apps.vsphere.session import Endpoint, connect
    from tests.live import GUEST, make_pool, settle, site, worker

    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, name="deb", size=1)
    settle(pool)
    [lease] = services.checkout(user=engineer, pools=[pool])
    client.force_login(engineer)
    client.post(reverse("lease-snapshot", args=[lease.pk]))
    assert client.get(reverse("lease-vm-tasks", args=[lease.pk]), HTTP_HX_REQUEST="true").status_code == 200

    assert worker().wait(timeout=120) == 0
    poll = client.get(reverse("lease-vm-tasks", args=[lease.pk]), HTTP_HX_REQUEST="true")
    task = VMTask.objects.get()
    assert task.status == VMTask.Status.DONE, task.error
    assert poll.status_code == 286 and "Done" in poll.content.decode() and "Revert" in poll.content.decode()
    with connect(Endpoint.from_vcenter(vc)) as conn:
        assert [s.name for s in ops.list_snapshots(conn, VM.objects.get(pk=lease.vm_id).moid)] == [task.snapshot]



@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_power_off_on_and_reset_from_the_lease_page_reach_vsphere(client, vcsim_factory, redis_conn, engineer):
    from apps.pools.models import VM
    from apps.vsphere import operations as ops
    from apps.vsphere.session import Endpoint, connect
    from tests.live import GUEST, make_pool, settle, site, worker

    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, name="deb", size=1)
    settle(pool)
    [lease] = services.checkout(user=engineer, pools=[pool])
    moid = VM.objects.get(pk=lease.vm_id).moid
    client.force_login(engineer)
    for kind, state in [("power_off", "poweredOff"), ("reset", "poweredOn"), ("reset", "poweredOn"),
                        ("power_off", "poweredOff"), ("power_on", "poweredOn")]:
        client.post(reverse("lease-power", args=[lease.pk]), {"kind": kind})
        assert worker().wait(timeout=120) == 0
        task = VMTask.objects.latest("pk")
        assert (task.kind, task.status) == (kind, VMTask.Status.DONE), task.error
        with connect(Endpoint.from_vcenter(vc)) as conn:
            assert ops.get_vm(conn, moid).power_state == state
