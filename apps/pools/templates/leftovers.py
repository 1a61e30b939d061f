"""What a template job whose worker died had made in vSphere: found by the name and folder
it announced, and removed when nothing of ours claims it.

A job that makes a VM (a template copy, an OVF deploy, a derive's build VM, a VM capture)
first writes its intent to its Job row (``announce``): the name and folder, once it has
checked the name is free there. If its worker dies, the reaper's hook (``job_lost``, DB
only) enqueues ``templates.remove_leftover`` with that intent; the job destroys the VM of
that name in that folder unless, right before, something shows it is not a leftover:

* a row records its moid (a template copy, a build, a pool VM): it is in use;
* template work of that name is in flight again (a retry will use or remake it);
* it carries another installation's marker;
* for a copy, it is a finished template already: copies of one template to one cluster
  share that name and folder by design (``copy_template_to_cluster`` adopts an existing
  one), so it may be a ready copy; copying again adopts it rather than cloning anew.
"""

from __future__ import annotations

import json
import re

from apps.inventory.models import VCenter
from apps.jobs import runner
from apps.jobs.models import Job
from apps.pools.instance import instance_id
from apps.pools.models import VM, Template, TemplateBuild, TemplateCopy, TemplateStatus, VMState, copy_vm_name
from apps.vsphere import operations as ops
from apps.vsphere.session import Endpoint, connect
from apps.vsphere.types import VMInfo

KIND = "templates.remove_leftover"
_INTENT = re.compile(r"^\S+ making in vSphere: (\{.*\})$", re.MULTILINE)
_IN_FLIGHT = (TemplateStatus.PENDING, TemplateStatus.DEPLOYING, TemplateStatus.PREPARING)


def announce(job: runner.JobContext, *, vcenter_id: int, name: str, folder_moid: str, copy: bool = False) -> None:
    """Record, before the vSphere call that creates it, what this job is about to make."""
    job.log("making in vSphere: " + json.dumps(
        {"vcenter_id": vcenter_id, "name": name, "folder_moid": folder_moid, "copy": copy}))


def remove_later(job: Job) -> Job | None:
    """The reaper's part (in its transaction, no vSphere): enqueue the removal of what the
    dead ``job`` announced it was making; None when it announced nothing."""
    intents = _INTENT.findall(job.log or "")
    if not intents:
        return None
    intent = json.loads(intents[-1])
    return runner.enqueue(KIND, target=job, lost_job_id=job.pk, vcenter_id=intent["vcenter_id"],
                          name=intent["name"], folder_moid=intent["folder_moid"], copy=intent.get("copy", False))


def _why_keep(vcenter_id: int, vm: VMInfo, *, copy: bool) -> str:
    """Why ``vm`` is not a leftover to destroy, or "" if it is one (read right before)."""
    recorded = (TemplateCopy.objects.filter(template__vcenter=vcenter_id, moid=vm.moid).exists()
                or TemplateBuild.objects.filter(vcenter=vcenter_id, moid=vm.moid)
                .exclude(status=TemplateBuild.Status.DISCARDED).exists()
                or VM.objects.filter(vcenter=vcenter_id, moid=vm.moid).exclude(state=VMState.DESTROYED).exists())
    if recorded:
        return "a row records it"
    in_flight = (Template.objects.filter(vcenter=vcenter_id, name=vm.name, status__in=_IN_FLIGHT).exists()
                 or TemplateBuild.objects.filter(vcenter=vcenter_id, vm_name=vm.name, status__in=(
                     TemplateBuild.Status.CLONING, TemplateBuild.Status.CAPTURING)).exists()
                 or any(copy_vm_name(*names) == vm.name for names in TemplateCopy.objects.filter(
                     template__vcenter=vcenter_id, status__in=_IN_FLIGHT).values_list(
                     "template__name", "cluster__name", "datastore__name")))
    if in_flight:
        return f"template work named {vm.name} is in flight again"
    if vm.owner and not vm.owner.startswith(f"{instance_id()}:"):
        return f"it carries another installation's marker {vm.owner!r}"
    if copy and vm.is_template:
        return "it is a finished template (copying again adopts it)"
    return ""


@runner.handler(KIND, queue="deploy")
def remove_leftover_job(job: runner.JobContext, *, lost_job_id: int, vcenter_id: int, name: str, folder_moid: str,
                        copy: bool = False) -> None:
    vcenter = VCenter.objects.get(pk=vcenter_id)
    with connect(Endpoint.from_vcenter(vcenter)) as conn:
        found = [vm for vm in ops.list_folder_vms(conn, folder_moid) if vm.name == name]
        if not found:
            job.log(f"no {name} in folder {folder_moid}: job #{lost_job_id} made nothing there, or it is gone")
            return
        for vm in found:
            if why := _why_keep(vcenter_id, vm, copy=copy):
                job.log(f"{name} ({vm.moid}) left alone: {why}")
                continue
            # The marker it had when read must still be there (None: it had none).
            destroyed = ops.destroy_vm(conn, vm.moid, expected_owner=vm.owner, allow_template=True)
            job.log(f"{'destroyed' if destroyed else 'already gone:'} {name} ({vm.moid}), left by job "
                    f"#{lost_job_id} whose worker died")
