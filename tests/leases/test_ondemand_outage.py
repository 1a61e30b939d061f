"""Unreachable is not failure, for on-demand requests too: a vCenter outage spends none of a
request's tries; the request says it is waiting for vCenter, and completes once vCenter answers.

As tests/pools/test_outage.py does, the simulator is stopped and started again on the same
port with the same saved state, as a vCenter restart does."""

from __future__ import annotations

import socket
import time

import pytest
from django.urls import reverse

from apps.jobs.models import Job
from apps.leases import ondemand
from apps.leases.models import Lease, OnDemandRequest
from apps.pools.models import VMState
from tests import vcsim as vcsim_launcher
from tests.live import GUEST, make_pool, settle, site, vms_in_folder, worker

Status = OnDemandRequest.Status


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(req: OnDemandRequest, done, *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        req.refresh_from_db()
        if done(req) or not req.is_pending:
            return
        time.sleep(0.3)


@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_an_outage_spends_no_tries_of_a_request_which_waits_and_completes_when_vcenter_answers(
        tmp_path, redis_conn, engineer, client):
    port = free_port()
    state = str(tmp_path / "state")
    flags = (*GUEST, "-save", state, "-load", state)
    sim = vcsim_launcher.start(*flags, listen=f"127.0.0.1:{port}")
    job_worker = None
    try:
        vc, folder = site(sim)
        pool = make_pool(vc, folder, size=0, max_tries=2)
        sim.stop()  # vCenter goes away before the request's first clone

        req = ondemand.request_vms(user=engineer, pools=[pool])
        job_worker = worker()
        wait_for(req, lambda r: "unreachable" in r.status_reason)
        assert req.status == Status.PROVISIONING, (req.status_reason, [j.log for j in Job.objects.all()])
        assert req.status_reason.startswith(f"vCenter {vc.name} unreachable: ")
        assert req.status_reason.endswith("; retrying")

        # Well past the few seconds in which two immediate retries used to fail the request.
        time.sleep(12)
        req.refresh_from_db()
        assert req.status == Status.PROVISIONING, req.status_reason
        assert req.vms.count() == 1, "while vCenter is away the job asks it once in a while; no VM rows churn"
        client.force_login(engineer)
        page = client.get(reverse("ondemand-status", args=[req.request_id]), HTTP_HX_REQUEST="true")
        assert page.status_code == 200 and "unreachable" in page.content.decode() and "retrying" in \
            page.content.decode()

        sim = vcsim_launcher.start(*flags, listen=f"127.0.0.1:{port}")
        assert job_worker.wait(timeout=180) == 0
        req.refresh_from_db()
        assert (req.status, req.status_reason) == (Status.READY, ""), [j.log for j in Job.objects.all()]
        [lease] = Lease.objects.filter(vm__in=req.vms.all())
        assert lease.user == engineer and lease.vm.state == VMState.LEASED

        # The slot the outage failed goes the usual way; only the leased VM is left in vCenter.
        settle(pool)
        assert [v.name for v in vms_in_folder(vc)] == [lease.vm.name]
    finally:
        if job_worker is not None and job_worker.poll() is None:
            job_worker.kill()
            job_worker.wait()
        sim.stop()
