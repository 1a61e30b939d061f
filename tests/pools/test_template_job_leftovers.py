"""A template job whose worker was killed (SIGKILL) mid-way leaves nothing in vSphere: the
reaper fails its rows and has the VM it was making removed, found by the name and folder
the job announced. What a row records is never touched. Real PostgreSQL, Redis, rqworker
processes and vcsim."""

from __future__ import annotations

import signal
import time

import pytest
from django.db import transaction

from apps.inventory.models import Cluster
from apps.jobs import runner
from apps.jobs.models import Job
from apps.pools import manager
from apps.pools.models import TemplateStatus
from apps.pools.templates import leftovers, start_copy_to_cluster
from apps.vsphere import operations as ops
from apps.vsphere.session import Endpoint, connect
from tests.live import GUEST, make_pool, site, worker
from tests.pools.test_job_liveness import STALE_AFTER, fast_liveness, wait_for  # noqa: F401 - a fixture

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]


def templates_folder(vc) -> list:
    with connect(Endpoint.from_vcenter(vc)) as conn:
        return ops.list_folder_vms(conn, "DC0/vm/Templates")


@pytest.mark.usefixtures("fast_liveness")
def test_a_template_copy_whose_worker_was_killed_mid_clone_leaves_no_vm_behind(vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST, "-method-delay", "CloneVM_Task:2500"))
    template = make_pool(vc, folder).template
    before = {v.name for v in templates_folder(vc)}
    target = Cluster.objects.filter(vcenter=vc).exclude(pk=template.copies.get().cluster_id).first()
    copy = start_copy_to_cluster(template=template, cluster=target)
    expected = f"{template.name}-{target.name}"

    doomed = worker(burst=False)
    wait_for(lambda: Job.objects.filter(kind="templates.copy_to_cluster", status=Job.Status.RUNNING).exists(),
             within=30, what="the copy job running")
    time.sleep(1.0)  # its CloneVM_Task is in flight
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    time.sleep(3)  # the simulator finishes the clone its caller no longer waits for
    assert expected in {v.name for v in templates_folder(vc)}

    time.sleep(STALE_AFTER + 1)
    manager.reconcile_all()  # the pool manager's cycle: the reaper fails the copy, enqueues the clean-up
    assert worker().wait(timeout=120) == 0
    copy.refresh_from_db()
    assert copy.status == TemplateStatus.FAILED and "stopped before it finished" in copy.status_reason
    cleanup = Job.objects.get(kind=leftovers.KIND)
    assert cleanup.status == Job.Status.SUCCEEDED, (cleanup.error, cleanup.log)
    assert f"destroyed {expected}" in cleanup.log
    assert {v.name for v in templates_folder(vc)} == before  # the half-made copy is gone, nothing else

    # Copying again works from a clean slate.
    copy = start_copy_to_cluster(template=template, cluster=target)
    assert worker().wait(timeout=120) == 0
    copy.refresh_from_db()
    assert copy.status == TemplateStatus.READY, copy.status_reason


def test_a_lost_job_naming_a_registered_template_never_destroys_it(vcsim_factory, redis_conn):
    vc, folder = site(vcsim_factory(*GUEST))
    template = make_pool(vc, folder).template
    ready = template.copies.get()
    lost = Job.objects.create(kind="templates.copy_to_cluster", status=Job.Status.FAILED, args={"copy_id": ready.pk})
    # Say a job announced the name of a template a row records (a ready copy) before it died.
    Job.objects.filter(pk=lost.pk).update(log=f"12:00:00 making in vSphere: {{\"vcenter_id\": {vc.pk}, "
                                               f"\"name\": \"{template.name}\", \"folder_moid\": "
                                               f"\"{templates_folder(vc)[0].folder_moid}\", \"copy\": false}}\n")
    lost.refresh_from_db()
    with transaction.atomic():
        leftovers.remove_later(lost)
    assert worker().wait(timeout=120) == 0
    cleanup = Job.objects.get(kind=leftovers.KIND)
    assert cleanup.status == Job.Status.SUCCEEDED, cleanup.error
    assert "left alone: a row records it" in cleanup.log
    assert ready.moid in {v.moid for v in templates_folder(vc)}
    assert runner.unfinished(leftovers.KIND, lost).count() == 0
