"""Thin jobs: the lessee's SSH keys into a leased guest."""

from __future__ import annotations

from contextlib import suppress

from apps.core.states import StaleState
from apps.firstboot import access
from apps.firstboot.models import KeyDelivery
from apps.jobs import runner
from apps.jobs.models import Job


def keys_not_added(job: Job, reason: str) -> None:
    """``firstboot.add_keys``'s hook when its worker died or it raised: say so on the lease."""
    delivery = KeyDelivery.objects.filter(lease_id=job.args["lease_id"], state=KeyDelivery.State.PENDING).first()
    if delivery is None:
        return
    with suppress(StaleState):  # its worker recorded an outcome after all: that one stands
        delivery.move_to(KeyDelivery.State.FAILED, detail=f"Stopped before your keys were added: {reason}")


@runner.handler("firstboot.add_keys", queue="default", on_lost=keys_not_added, on_failure=keys_not_added)
def add_keys(job: runner.JobContext, *, lease_id: int) -> None:
    access.deliver_keys(lease_id, say=job.log)
