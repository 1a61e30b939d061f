"""A template job whose worker was killed must not leave its template in flight forever."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.jobs.models import Job
from apps.jobs.runner import reap_lost
from apps.pools.manager import reconcile_all
from apps.pools.models import TemplateBuild, TemplateCopy, TemplateStatus
from tests import factories

pytestmark = pytest.mark.django_db


def running_job(kind: str, silent_for: timedelta, **args) -> Job:
    beat = timezone.now() - silent_for
    return Job.objects.create(kind=kind, queue="deploy", status=Job.Status.RUNNING, args=args,
                              started_at=beat - timedelta(hours=1), heartbeat_at=beat)


def test_a_deploy_whose_worker_died_fails_with_a_reason_once_its_heartbeat_is_stale(settings):
    settings.VMPORTAL_JOB_STALE_AFTER = 45
    template = factories.template(status=TemplateStatus.DEPLOYING, source="ovf")
    copy = TemplateCopy.objects.create(template=template, cluster=factories.cluster(template.vcenter),
                                       status=TemplateStatus.DEPLOYING, progress=40)
    young = running_job("templates.deploy_ovf", timedelta(seconds=10), template_id=template.pk, copy_id=copy.pk)
    assert reap_lost() == 0  # an hour-long deploy that still beats is alive
    Job.objects.filter(pk=young.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=50))
    assert reconcile_all() == []  # the pool manager's cycle runs the recovery
    young.refresh_from_db()
    template.refresh_from_db()
    copy.refresh_from_db()
    assert young.status == Job.Status.FAILED and "stopped before it finished" in young.error
    assert (template.status, copy.status) == (TemplateStatus.FAILED, TemplateStatus.FAILED)
    assert f"templates.deploy_ovf #{young.pk}" in template.status_reason
    assert AuditEvent.objects.filter(action="template.failed", target_id=str(template.pk)).exists()


def test_a_capture_whose_worker_died_fails_the_build_and_its_template():
    source = factories.template()
    derived = factories.template(source.vcenter, status=TemplateStatus.PREPARING, parent=source, source="derived")
    build = TemplateBuild.objects.create(
        kind=TemplateBuild.Kind.DERIVE, vcenter=source.vcenter, template=derived, template_name=derived.name,
        source_template=source, cluster=factories.cluster(source.vcenter), vm_name=derived.name, moid="vm-3",
        status=TemplateBuild.Status.CAPTURING,
    )
    running_job("templates.capture_build", timedelta(minutes=10), build_id=build.pk)
    assert reap_lost() == 1
    build.refresh_from_db()
    derived.refresh_from_db()
    assert build.status == TemplateBuild.Status.FAILED and derived.status == TemplateStatus.FAILED
    # A failed capture keeps its build VM: the admin may capture again or discard it.
    assert build.moid == "vm-3"


def test_a_finished_template_is_left_alone():
    template = factories.template(status=TemplateStatus.READY)
    running_job("templates.copy_to_cluster", timedelta(hours=1), template_id=template.pk)
    assert reap_lost() == 1
    template.refresh_from_db()
    assert template.status == TemplateStatus.READY
