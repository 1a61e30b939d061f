"""On-demand requests: real PostgreSQL, Redis, rqworker processes and vcsim; and their pages."""

from __future__ import annotations

import signal
import time
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.core.errors import Conflict
from apps.jobs.models import Job
from apps.leases import ondemand, services
from apps.leases.models import Lease, OnDemandRequest
from apps.pools import manager as pool_manager
from apps.pools.models import VM, Pool, VMState
from tests import factories
from tests.live import GUEST, make_pool, settle, site, vms_in_folder, work_off, worker

Status = OnDemandRequest.Status


@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_request_clones_boots_and_leases_outside_the_pool(vcsim_factory, redis_conn, engineer, client):
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, size=0)
    req = ondemand.request_vms(user=engineer, pools=[pool, pool], note="ci run 7")
    assert req.status == Status.QUEUED and req.wanted == {pool.name: 2}
    work_off()
    req.refresh_from_db()
    assert req.status == Status.READY, (req.status_reason, [j.log for j in Job.objects.all()])
    leases = list(Lease.objects.filter(vm__in=req.vms.all()))
    assert len(leases) == 2 and all(lease.user == engineer and lease.note == "ci run 7" for lease in leases)
    vms = list(req.vms.all())
    assert all(vm.on_demand and vm.state == VMState.LEASED and vm.ip_address.startswith("10.30.") for vm in vms)
    assert sorted(v.name for v in vms_in_folder(vc)) == sorted(vm.name for vm in vms)
    # The pool's size is 0: its manager neither counts nor drains the on-demand VMs.
    report = pool_manager.reconcile_pool(pool.pk)
    assert not report.destroy and not report.fill_started
    assert AuditEvent.objects.filter(action="lease.checkout", after__request_id=req.request_id).count() == 2

    client.force_login(engineer)
    page = client.get(reverse("ondemand-detail", args=[req.request_id]))
    assert page.status_code == 200 and b"Ready" in page.content
    poll = client.get(reverse("ondemand-status", args=[req.request_id]), HTTP_HX_REQUEST="true")
    assert poll.status_code == 200 and poll["HX-Redirect"] == reverse("my-leases")

    # Returning them destroys them like any leased VM.
    for lease in leases:
        services.return_lease(user=engineer, lease_id=lease.pk)
    settle(pool)
    assert vms_in_folder(vc) == []


@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_ready_pool_vms_are_not_taken_by_a_request_and_request_vms_not_by_checkout(vcsim_factory, redis_conn,
                                                                                  engineer, other_engineer):
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, size=1)
    settle(pool)
    [pool_vm] = pool.vms.filter(state=VMState.READY)
    req = ondemand.request_vms(user=engineer, pools=[pool])
    work_off()
    req.refresh_from_db()
    assert req.status == Status.READY
    [lease] = Lease.objects.filter(vm__in=req.vms.all())
    assert lease.vm_id != pool_vm.pk and lease.user == engineer
    # The pool's own ready VM is still there for anyone.
    [other] = services.checkout(user=other_engineer, pools=[pool])
    assert other.vm_id == pool_vm.pk


@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_a_request_whose_clones_keep_failing_fails_with_the_reason_and_leaves_nothing(vcsim_factory, redis_conn,
                                                                                     engineer, client):
    sim = vcsim_factory(*GUEST, "-fail-rate", "1", "-fail-methods", "CloneVM_Task")
    vc, folder = site(sim)
    pool = make_pool(vc, folder, size=0, max_tries=2)
    req = ondemand.request_vms(user=engineer, pools=[pool])
    work_off(pools=[pool])
    req.refresh_from_db()
    assert req.status == Status.FAILED
    assert pool.name in req.status_reason and req.status_reason.strip()
    assert not Lease.objects.exists()
    settle(pool)
    assert not req.vms.exclude(state=VMState.DESTROYED).exists()
    assert vms_in_folder(vc) == []

    client.force_login(engineer)
    page = client.get(reverse("ondemand-detail", args=[req.request_id]))
    assert b"Failed:" in page.content and b"Retry" in page.content
    # The fragment stops htmx polling once nothing will change by itself.
    assert client.get(reverse("ondemand-status", args=[req.request_id]), HTTP_HX_REQUEST="true").status_code == 286
    # The pool backed off for good after those failures: a retry says so until an admin resets it.
    response = client.post(reverse("ondemand-retry", args=[req.request_id]), follow=True)
    assert b"An admin has to fix it first" in response.content
    Pool.objects.filter(pk=pool.pk).update(health=Pool.Health.OK, consecutive_failures=0)
    response = client.post(reverse("ondemand-retry", args=[req.request_id]))
    again = OnDemandRequest.objects.exclude(pk=req.pk).get()
    assert response.status_code == 302 and response["Location"] == reverse("ondemand-detail", args=[again.request_id])
    assert again.wanted == req.wanted and again.status == Status.QUEUED


@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_a_permanent_fault_fails_the_request_at_once(vcsim_factory, redis_conn, engineer):
    sim = vcsim_factory(*GUEST, "-fail-rate", "1", "-fail-methods", "CloneVM_Task", "-fail-fault", "NoDiskSpace")
    vc, folder = site(sim)
    pool = make_pool(vc, folder, size=0, max_tries=5)
    req = ondemand.request_vms(user=engineer, pools=[pool])
    work_off()
    req.refresh_from_db()
    assert req.status == Status.FAILED and "disk space" in req.status_reason.lower()
    assert req.vms.count() == 1  # no retries against a full datastore


@pytest.mark.django_db(transaction=True)
def test_cancel_before_the_worker_starts_means_nothing_is_cloned(redis_conn, engineer):
    pool = factories.pool(name="deb")
    req = ondemand.request_vms(user=engineer, pools=[pool])
    ondemand.cancel(user=engineer, request_id=req.request_id)
    work_off()
    req.refresh_from_db()
    assert req.status == Status.CANCELLED and not req.vms.exists() and not VM.objects.exists()
    assert Job.objects.get(kind="leases.ondemand").log.strip().endswith("withdrawn before it started")
    with pytest.raises(Conflict):
        ondemand.cancel(user=engineer, request_id=req.request_id)


@pytest.mark.django_db
def test_pending_requests_count_against_the_lease_limit(engineer, settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 3
    pool = factories.pool(name="deb")
    ondemand.request_vms(user=engineer, pools=[pool, pool])
    with pytest.raises(services.LeaseLimitReached):
        ondemand.request_vms(user=engineer, pools=[pool, pool])
    ondemand.request_vms(user=engineer, pools=[pool])


@pytest.mark.django_db
def test_request_validation(engineer, settings):
    settings.VMPORTAL_ONDEMAND_MAX_PER_REQUEST = 2
    pool = factories.pool(name="deb")
    with pytest.raises(ondemand.OverLimit):
        ondemand.request_vms(user=engineer, pools=[pool] * 3)
    ondemand.request_vms(user=engineer, pools=[pool], request_id="ci-42")
    with pytest.raises(Conflict):
        ondemand.request_vms(user=engineer, pools=[pool], request_id="ci-42")
    with pytest.raises(Exception, match="request_id"):
        ondemand.request_vms(user=engineer, pools=[pool], request_id="../etc")
    Pool.objects.filter(pk=pool.pk).update(enabled=False)
    pool.refresh_from_db()
    with pytest.raises(Exception, match="disabled"):
        ondemand.request_vms(user=engineer, pools=[pool])


@pytest.mark.django_db
@pytest.mark.parametrize("who, status", [("owner", 200), ("admin", 200), ("other", 404), ("anonymous", 302)])
def test_request_page_visibility(client, engineer, other_engineer, admin_user, who, status):
    req = ondemand.request_vms(user=engineer, pools=[factories.pool(name="deb")])
    user = {"owner": engineer, "admin": admin_user, "other": other_engineer, "anonymous": None}[who]
    if user:
        client.force_login(user)
    for name in ("ondemand-detail", "ondemand-status"):
        assert client.get(reverse(name, args=[req.request_id])).status_code == status
    response = client.post(reverse("ondemand-cancel", args=[req.request_id]))
    req.refresh_from_db()
    assert (req.status == Status.CANCELLED) == (who in ("owner", "admin"))
    if who == "other":
        assert response.status_code == 404


@pytest.mark.django_db
def test_request_page_shows_steps_and_progress(client, engineer):
    pool = factories.pool(name="deb")
    req = ondemand.request_vms(user=engineer, pools=[pool, pool])
    vm1 = factories.vm(pool, state=VMState.CLONING, on_demand=True)
    vm2 = factories.vm(pool, state=VMState.BOOTING, on_demand=True)
    req.vms.add(vm1, vm2)
    OnDemandRequest.objects.filter(pk=req.pk).update(status=Status.PROVISIONING, progress={str(vm1.pk): 40})
    req.refresh_from_db()
    facts = ondemand.describe(req)
    assert facts["step"] == "cloning"
    assert facts["percent"] == round(100 * ((0.05 + 0.45 * 0.4) + 0.6) / 2)
    client.force_login(engineer)
    html = client.get(reverse("ondemand-status", args=[req.request_id])).content.decode()
    assert "clone task 40%" in html and vm2.name in html and f"{facts['percent']}%" in html


@pytest.mark.django_db
def test_my_vms_lists_pending_requests(client, engineer):
    req = ondemand.request_vms(user=engineer, pools=[factories.pool(name="deb")])
    client.force_login(engineer)
    html = client.get(reverse("my-leases")).content.decode()
    assert reverse("ondemand-detail", args=[req.request_id]) in html and "1 × deb" in html


@pytest.mark.django_db
def test_multi_checkout_can_fall_back_to_on_demand(client, engineer):
    pool = factories.pool(name="deb")
    factories.vm(pool, state=VMState.READY)
    client.force_login(engineer)
    response = client.post(reverse("checkout-many"), {"pool": "deb", "count": "3", "ondemand": "1"})
    req = OnDemandRequest.objects.get()
    assert response["Location"] == reverse("ondemand-detail", args=[req.request_id])
    assert req.wanted == {"deb": 3} and not Lease.objects.exists()


@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_request_leaves_no_vm_behind(vcsim_factory, redis_conn, engineer):
    vc, folder = site(vcsim_factory("-guest-ip", "10.30.0.0/16", "-guest-ip-delay", "60s"))
    pool = make_pool(vc, folder, size=0)
    req = ondemand.request_vms(user=engineer, pools=[pool])
    doomed = worker(burst=False)
    deadline = time.monotonic() + 30
    while not req.vms.filter(state=VMState.BOOTING).exists():
        assert time.monotonic() < deadline, "the worker never got the clone booting"
        time.sleep(0.1)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    assert len(vms_in_folder(vc)) == 1

    # Later: the job's heartbeat is stale; the next reconcile fails the request and cleans up.
    Job.objects.filter(kind="leases.ondemand").update(heartbeat_at=timezone.now() - timedelta(hours=1))
    OnDemandRequest.objects.filter(pk=req.pk).update(created_at=timezone.now() - timedelta(hours=1))
    pool_manager.reconcile_all()
    req.refresh_from_db()
    assert req.status == Status.FAILED and "worker" in req.status_reason
    settle(pool)
    assert not req.vms.exclude(state=VMState.DESTROYED).exists()
    assert vms_in_folder(vc) == []
