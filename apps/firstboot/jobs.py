"""Thin jobs: the lessee's SSH keys into a leased guest."""

from __future__ import annotations

from apps.firstboot import services
from apps.jobs import runner


@runner.handler("firstboot.add_keys", queue="default")
def add_keys(job: runner.JobContext, *, lease_id: int) -> None:
    services.deliver_keys(lease_id, say=job.log)
