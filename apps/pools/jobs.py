"""Pool jobs: each a few lines over apps.pools.provisioning (fill, destroy, purge) or the
templates work (prepare a template copy)."""

from __future__ import annotations

from apps.jobs import runner
from apps.pools import balance, provisioning, templates


@runner.handler("pools.fill", queue="clone", on_lost=provisioning.release_fill_slots,
                on_failure=provisioning.release_fill_slots)
def fill(job: runner.JobContext, *, pool_id: int) -> None:
    provisioning.fill_pool(pool_id, job)


@runner.handler("pools.destroy", queue="purge", on_lost=provisioning.destroy_again)
def destroy(job: runner.JobContext, *, vm_id: int) -> None:
    provisioning.destroy_vm(vm_id, job)


@runner.handler("pools.prepare_template", queue="deploy")
def prepare_template(job: runner.JobContext, *, copy_id: int) -> None:
    copy = templates.prepare_copy(copy_id)
    job.log(f"{copy} ready (snapshot {copy.snapshot_moid or 'none'})")


@runner.handler("pools.purge", queue="purge")
def purge(job: runner.JobContext, *, folder_id: int) -> None:
    provisioning.purge_folder(folder_id, job)


@runner.handler(balance.MIGRATE_JOB, queue="default", on_lost=balance.abandon_move,
                on_failure=balance.abandon_move)
def migrate(job: runner.JobContext, *, vm_id: int) -> None:
    balance.migrate_vm(vm_id, job)
