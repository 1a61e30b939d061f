"""A destroy job takes over queued destroys of its vCenter only up to the vCenter's task
limit, its own VM included: an admin's limit holds for destroy waves as for fills."""

from __future__ import annotations

import pytest

from apps.jobs import runner
from apps.jobs.models import Job
from apps.pools import provisioning
from apps.pools.models import VMState
from tests import factories


@pytest.mark.django_db
@pytest.mark.parametrize(("task_limit", "taken"), [(3, 2), (1, 0), (100, 7)])
def test_a_destroy_job_takes_no_more_than_the_task_limit(task_limit, taken):
    vc = factories.vcenter(task_limit=task_limit)
    pool = factories.pool(vcenter=vc)
    vms = [factories.vm(pool, state=VMState.DESTROYING) for _ in range(8)]
    for vm in vms:
        runner.enqueue("pools.destroy", target=vm, vm_id=vm.pk)
    first = type(vms[0]).objects.select_related("vcenter").get(pk=vms[0].pk)
    job = runner.JobContext(Job.objects.get(object_id=str(first.pk)))
    took = provisioning._take_over_destroys(first, job)
    assert len(took) == taken  # 7 others queued: the limit, less the job's own VM
    assert Job.objects.filter(status=Job.Status.RUNNING).count() == taken
