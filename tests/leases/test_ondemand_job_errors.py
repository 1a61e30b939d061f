"""An on-demand job that raised ends its request as failed, with a reason, even when its
failure hook could not record that: the pool manager's cycle finds the request queued
with no job left to start it."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.db import OperationalError

from apps.jobs import runner
from apps.jobs.models import Job
from apps.leases import ondemand
from apps.leases import provisioning as ondemand_provisioning
from apps.leases.models import OnDemandRequest
from tests import factories

pytestmark = pytest.mark.django_db


def test_a_request_whose_job_raised_before_starting_and_whose_hook_failed_too_is_failed_by_the_next_cycle(
        monkeypatch):
    user = User.objects.create_user("dora")
    req = ondemand.request_vms(user=user, pools=[factories.pool()])
    job = Job.objects.get(kind="leases.ondemand")

    def broken_start(request_pk: int):
        raise RuntimeError("provisioning backend exploded")

    def database_gone(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(ondemand_provisioning.ondemand, "start", broken_start)
    # The failure hook rolls back as a whole when its clean-up hits the database error.
    monkeypatch.setattr(ondemand_provisioning, "fail_orphaned_clones", database_gone)
    assert runner.run(job.pk) == "failed"
    monkeypatch.undo()
    req.refresh_from_db()
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert req.status == OnDemandRequest.Status.QUEUED  # what the hook left behind

    assert ondemand.recover_stale() == 1  # the pool manager's cycle step
    req.refresh_from_db()
    assert req.status == OnDemandRequest.Status.FAILED
    assert "RuntimeError: provisioning backend exploded" in req.status_reason
    assert req.status_reason.endswith("retry the request.")
    assert ondemand.recover_stale() == 0


def test_a_queued_request_whose_job_waits_is_left_alone():
    user = User.objects.create_user("eve")
    req = ondemand.request_vms(user=user, pools=[factories.pool()])
    assert ondemand.recover_stale() == 0
    req.refresh_from_db()
    assert req.status == OnDemandRequest.Status.QUEUED
