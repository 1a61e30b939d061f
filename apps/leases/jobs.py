"""Lease jobs: each a few lines over apps.leases.provisioning (on-demand requests, VM tasks)."""

from __future__ import annotations

from apps.jobs import runner
from apps.leases import provisioning


@runner.handler("leases.ondemand", queue="default",  # a person waits: not behind pool fills
                on_lost=provisioning.request_ended, on_failure=provisioning.request_ended)
def provision(job: runner.JobContext, *, request_pk: int) -> None:
    provisioning.provision_request(job, request_pk)


@runner.handler("leases.vm_task", queue="default", on_lost=provisioning.vm_task_ended,
                on_failure=provisioning.vm_task_ended)
def vm_task(job: runner.JobContext, *, task_id: int) -> None:
    provisioning.run_vm_task(job, task_id)
