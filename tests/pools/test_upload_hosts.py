"""An OVA upload a deploy worker cannot see (kept on the web host's own disk) fails the
deploy with a message naming VMPORTAL_UPLOAD_DIR; one in the worker's mount of the shared
directory is found by its name, wherever the web host mounted it. Real worker, vcsim."""

from __future__ import annotations

from pathlib import Path

import pytest

from apps.inventory.models import Cluster, Datastore, Folder
from apps.pools.models import TemplateStatus
from apps.pools.templates import DeployTarget, start_ovf_deploy
from tests.live import site, worker
from tests.vsphere.test_templates import ova_bytes

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]


def deploy(vc, name: str, upload: Path):
    return start_ovf_deploy(name=name, upload_path=str(upload), target=DeployTarget(
        cluster=Cluster.objects.get(vcenter=vc, name="DC0_C0"),
        folder=Folder.objects.get(vcenter=vc, path="DC0/vm/Templates"),
        datastore=Datastore.objects.get(vcenter=vc, name="LocalDS_0")))


def test_a_deploy_whose_upload_is_not_on_the_worker_host_fails_naming_the_setting(vcsim_factory, redis_conn,
                                                                                    tmp_path):
    vc, _ = site(vcsim_factory())
    web_disk = tmp_path / "web-host-local"
    web_disk.mkdir()
    upload = web_disk / f"{'b' * 32}-tiny.ova"  # never written where the worker looks
    template = deploy(vc, "tiny-missing", upload)
    assert worker().wait(timeout=120) == 0
    template.refresh_from_db()
    assert template.status == TemplateStatus.FAILED
    assert "VMPORTAL_UPLOAD_DIR" in template.status_reason and "shared storage" in template.status_reason


def test_a_deploy_finds_its_upload_by_name_in_the_workers_mount_of_the_shared_directory(vcsim_factory, redis_conn,
                                                                                          settings, tmp_path):
    vc, _ = site(vcsim_factory())
    # The web host's mount point of the shared directory does not exist on the worker host;
    # the worker's (its VMPORTAL_UPLOAD_DIR, the default var/uploads here) holds the file.
    ours = Path(settings.VMPORTAL_UPLOAD_DIR)
    ours.mkdir(parents=True, exist_ok=True)
    name = f"{'c' * 32}-tiny.ova"
    (ours / name).write_bytes(ova_bytes())
    template = deploy(vc, "tiny-shared", tmp_path / "mnt-on-web-host" / name)
    assert worker().wait(timeout=120) == 0
    template.refresh_from_db()
    assert template.status == TemplateStatus.READY, template.status_reason
    assert not (ours / name).exists()  # the job deleted it when done
