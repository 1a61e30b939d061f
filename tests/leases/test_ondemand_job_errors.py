"""An on-demand job that raised ends its request as failed, with a reason, even when its
failure hook could not record that: the pool manager's cycle finds the request queued
with no job left to start it, or, when the hook met a database outage, the reaper runs
it again."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import OperationalError
from django.utils import timezone

from apps.jobs import runner
from apps.jobs.models import Job
from apps.leases import ondemand
from apps.leases import provisioning as ondemand_provisioning
from apps.leases.models import OnDemandRequest
from tests import factories

pytestmark = pytest.mark.django_db


def a_request_whose_job_raises_before_starting(monkeypatch, hook_error: Exception) -> tuple[OnDemandRequest, Job]:
    """The job raises before it takes the request; then its failure hook's clean-up raises
    ``hook_error`` too, and rolls back as a whole."""
    user = User.objects.create_user("dora")
    req = ondemand.request_vms(user=user, pools=[factories.pool()])
    job = Job.objects.get(kind="leases.ondemand")

    def broken_start(request_pk: int):
        raise RuntimeError("provisioning backend exploded")

    def hook_fails(*args, **kwargs):
        raise hook_error

    monkeypatch.setattr(ondemand_provisioning.ondemand, "start", broken_start)
    monkeypatch.setattr(ondemand_provisioning, "fail_orphaned_clones", hook_fails)
    assert runner.run(job.pk) == "failed"
    monkeypatch.undo()
    req.refresh_from_db()
    job.refresh_from_db()
    assert req.status == OnDemandRequest.Status.QUEUED  # what the hook left behind
    return req, job


def test_a_request_whose_jobs_hook_raised_is_failed_by_the_next_cycle(monkeypatch):
    req, job = a_request_whose_job_raises_before_starting(monkeypatch, KeyError("pool_id"))
    assert job.status == Job.Status.FAILED  # recorded without its compensation

    assert ondemand.recover_stale() == 1  # the pool manager's cycle step
    req.refresh_from_db()
    assert req.status == OnDemandRequest.Status.FAILED
    assert "RuntimeError: provisioning backend exploded" in req.status_reason
    assert req.status_reason.endswith("retry the request.")
    assert ondemand.recover_stale() == 0


def test_a_request_whose_jobs_hook_met_a_database_outage_is_failed_by_the_reaper(monkeypatch, settings):
    """Recording the job failed without its compensation would lose that for good: the job
    stays running, its heartbeat stopped, and the reaper runs the compensation again."""
    settings.VMPORTAL_JOB_STALE_AFTER = 45
    req, job = a_request_whose_job_raises_before_starting(
        monkeypatch, OperationalError("server closed the connection unexpectedly"))
    assert job.status == Job.Status.RUNNING
    assert ondemand.recover_stale() == 0  # its job is not over yet

    assert runner.reap_lost(now=timezone.now() + timedelta(seconds=60)) == 1
    req.refresh_from_db()
    assert req.status == OnDemandRequest.Status.FAILED
    assert req.status_reason.startswith("Stopped before the VMs were ready: The worker running leases.ondemand")
    assert ondemand.recover_stale() == 0


def test_a_queued_request_whose_job_waits_is_left_alone():
    user = User.objects.create_user("eve")
    req = ondemand.request_vms(user=user, pools=[factories.pool()])
    assert ondemand.recover_stale() == 0
    req.refresh_from_db()
    assert req.status == OnDemandRequest.Status.QUEUED
