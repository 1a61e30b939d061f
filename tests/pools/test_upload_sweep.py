"""Uploads no deploy will read are swept by the pool manager; a file a live job needs never is."""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from apps.jobs.models import Job
from apps.pools.manager import reconcile_all
from apps.pools.models import Template, TemplateStatus
from apps.pools.templates import sweep_uploads
from tests.live import site
from tests.pools.test_template_jobs import deploy_fields, run_worker
from tests.vsphere.test_templates import ova_bytes

DAY = 24 * 3600


def stored(directory: Path, name: str = "tiny.ova", *, age: float = 0) -> Path:
    path = directory / f"{uuid.uuid4().hex}-{name}"
    path.write_bytes(b"x" * 2048)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def deploy_job(path: Path, status: str) -> Job:
    return Job.objects.create(kind="templates.deploy_ovf", queue="deploy", status=status,
                              args={"template_id": 1, "copy_id": 1, "url": "", "upload_path": str(path)})


@pytest.mark.django_db
def test_the_pool_manager_sweeps_old_uploads_no_live_deploy_needs(settings, tmp_path, caplog):
    settings.VMPORTAL_UPLOAD_DIR = tmp_path
    settings.VMPORTAL_UPLOAD_MAX_AGE = DAY
    orphan = stored(tmp_path, age=2 * DAY)           # its request died before the job was committed
    failed = stored(tmp_path, age=2 * DAY)           # its worker died; recover_stale failed the job
    queued = stored(tmp_path, age=2 * DAY)           # waiting behind a long deploy queue
    running = stored(tmp_path, "big.ova", age=3 * DAY)
    fresh = stored(tmp_path, age=DAY - 600)
    foreign = tmp_path / "readme.ova"                # not named like our uploads: not ours to delete
    foreign.write_text("hands off")
    os.utime(foreign, (time.time() - 9 * DAY,) * 2)
    deploy_job(failed, Job.Status.FAILED)
    deploy_job(queued, Job.Status.QUEUED)
    # Another host may mount the shared directory elsewhere: jobs are matched by file name.
    deploy_job(Path("/mnt/elsewhere") / running.name, Job.Status.RUNNING)

    with caplog.at_level(logging.WARNING, logger="apps.pools.templates"):
        reconcile_all()  # the pool manager's cycle

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([queued.name, running.name, fresh.name, foreign.name])
    assert not orphan.exists() and not failed.exists()
    swept = [r.getMessage() for r in caplog.records if "Deleted stale upload" in r.getMessage()]
    assert len(swept) == 2 and all("no queued or running deploy needs it" in m for m in swept)
    assert any(orphan.name in m and "2.0 KiB" in m and "48.0 hours old" in m for m in swept)


@pytest.mark.django_db
def test_a_missing_upload_directory_is_nothing_to_sweep(settings, tmp_path):
    settings.VMPORTAL_UPLOAD_DIR = tmp_path / "never-created"
    assert sweep_uploads() == []


@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_an_old_upload_whose_deploy_is_still_queued_survives_the_sweep_and_deploys(
        client, admin_user, vcsim_factory, redis_conn, settings, tmp_path):
    uploads = tmp_path / "uploads"
    settings.VMPORTAL_UPLOAD_DIR = uploads
    settings.VMPORTAL_UPLOAD_MAX_AGE = 60
    vc, _ = site(vcsim_factory())
    client.force_login(admin_user)
    upload = SimpleUploadedFile("tiny.ova", ova_bytes(), content_type="application/x-tar")
    assert client.post(reverse("adminui:template-deploy"), {**deploy_fields(vc), "file": upload}).status_code == 302
    [path] = list(uploads.iterdir())
    os.utime(path, (time.time() - 3600,) * 2)  # an hour in the queue, far past the limit
    orphan = stored(uploads, age=3600)

    assert sweep_uploads() == [orphan]
    assert path.exists()
    run_worker()  # a real rqworker finds its file and deploys it
    template = Template.objects.get(name="tiny")
    assert template.status == TemplateStatus.READY, template.status_reason
    assert list(uploads.iterdir()) == []  # the job removed its own file
