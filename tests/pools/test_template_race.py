"""A deploy job and the reaper racing for one template: whoever moves it first wins, the
other gets StaleState, and the template ends in one consistent state. Real worker process,
PostgreSQL, Redis and vcsim (slowed down so the reaper strikes mid-deploy)."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.core.models import StateChange
from apps.inventory.models import Cluster, Datastore, Folder
from apps.jobs import runner
from apps.jobs.models import Job
from apps.pools.models import TemplateStatus
from apps.pools.templates import DeployTarget, start_ovf_deploy
from apps.vsphere import operations as ops
from apps.vsphere.session import Endpoint, connect
from tests.live import site, worker
from tests.vsphere.test_templates import ova_bytes

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]


def test_a_deploy_that_finishes_after_the_reaper_failed_it_stops_and_leaves_nothing(
        vcsim_factory, redis_conn, settings, tmp_path):
    settings.VMPORTAL_UPLOAD_DIR = tmp_path
    vc, _ = site(vcsim_factory("-method-delay", "ImportVApp:2000,HttpNfcLeaseComplete:500"))
    upload = Path(tmp_path) / f"{'a' * 32}-tiny.ova"
    upload.write_bytes(ova_bytes())
    template = start_ovf_deploy(name="tiny", upload_path=str(upload), target=DeployTarget(
        cluster=Cluster.objects.get(vcenter=vc, name="DC0_C0"),
        folder=Folder.objects.get(vcenter=vc, path="DC0/vm/Templates"),
        datastore=Datastore.objects.get(vcenter=vc, name="LocalDS_0")))
    deploying = worker()
    try:
        deadline = time.monotonic() + 60
        while not Job.objects.filter(kind="templates.deploy_ovf", status=Job.Status.RUNNING).exists():
            assert time.monotonic() < deadline and deploying.poll() is None, "the deploy never started"
            time.sleep(0.05)
        # The reaper believes the worker dead (as after a long pause or a network split)
        # while ImportVApp is still running; it skips a job whose heartbeat it sees move.
        while not runner.reap_lost(now=timezone.now() + timedelta(hours=1)):
            assert time.monotonic() < deadline, "the reaper never took the job"
            time.sleep(0.05)
        template.refresh_from_db()
        assert template.status == TemplateStatus.FAILED
        assert deploying.wait(timeout=120) == 0
    finally:
        if deploying.poll() is None:
            deploying.kill()

    template.refresh_from_db()
    copy = template.copies.get()
    job = Job.objects.get(kind="templates.deploy_ovf")
    # The reaper's verdict stands everywhere: no "ready" overwrote it.
    assert (template.status, copy.status, job.status) == (TemplateStatus.FAILED,) * 2 + (Job.Status.FAILED,)
    assert "stopped before it finished" in template.status_reason
    assert list(AuditEvent.objects.filter(target_id=str(template.pk), target_type="pools.template")
                .values_list("action", flat=True).order_by("id")) == ["template.deploy", "template.failed"]
    assert list(StateChange.objects.filter(model="pools.template", object_id=template.pk)
                .values_list("old", "new")) == [(TemplateStatus.DEPLOYING, TemplateStatus.FAILED)]
    # The job lost (StaleState), said so, and removed the template it had made in vSphere.
    assert "is no longer" in job.log and "Stopping" in job.log
    with connect(Endpoint.from_vcenter(vc)) as conn:
        assert ops.find_vm(conn, path="DC0/vm/Templates/tiny") is None
