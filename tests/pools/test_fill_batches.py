"""A fill moves each clone batch with one transition_many(): the same rules as transition()
(the map, the state the caller saw, one history row per move naming who made it), in one
statement per batch, without waiting on rows another transaction holds."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction
from django.utils import timezone

from apps.core.context import Actor, acting_as
from apps.core.models import StateChange
from apps.core.states import IllegalTransition, StaleState, transition_many
from apps.pools.models import VM, VM_TRANSITIONS, VMState
from tests import factories


def history(vm: VM) -> list[tuple[str, str, str]]:
    rows = StateChange.objects.filter(model="pools.vm", object_id=vm.pk).order_by("id")
    return [(r.old, r.new, r.reason) for r in rows]


@pytest.mark.django_db
def test_a_batch_moves_with_each_rows_own_columns_and_one_history_row_each(engineer):
    pool = factories.pool()
    host = factories.host(pool.cluster)
    vms = [factories.vm(pool, state=VMState.CLONING) for _ in range(3)]
    before = timezone.now()
    moves = [(vm, {"moid": f"vm-{i}", "instance_uuid": f"uuid-{i}", "host_id": host.pk if i else None})
             for i, vm in enumerate(vms)]
    with acting_as(Actor(user_id=engineer.pk, name=engineer.get_username(), request_id="req-9")):
        assert transition_many(moves, VMState.BOOTING, allowed=VM_TRANSITIONS) == []
    for i, vm in enumerate(vms):
        assert (vm.state, vm.moid) == (VMState.BOOTING, f"vm-{i}")  # updated in place
        vm.refresh_from_db()
        assert (vm.state, vm.moid, vm.instance_uuid, vm.host_id) == (
            VMState.BOOTING, f"vm-{i}", f"uuid-{i}", host.pk if i else None)
        assert vm.state_changed_at >= before
        assert history(vm) == [(VMState.CLONING, VMState.BOOTING, "")]
    rows = StateChange.objects.filter(model="pools.vm")
    assert {(r.actor_id, r.actor_name, r.request_id, r.job_id) for r in rows} == {
        (engineer.pk, engineer.get_username(), "req-9", None)}


@pytest.mark.django_db
def test_rows_moved_meanwhile_or_not_allowed_are_refused_and_the_rest_move():
    pool = factories.pool()
    ok, drained, done = (factories.vm(pool, state=VMState.BOOTING) for _ in range(3))
    VM.objects.filter(pk=drained.pk).update(state=VMState.DESTROYING)  # a reconcile drained it
    done.state = VMState.READY  # as its caller saw it: ready → ready is not a move
    refused = transition_many([(vm, {"ip_address": "10.0.0.9", "state_reason": "up"}) for vm in (ok, drained, done)],
                              VMState.READY, allowed=VM_TRANSITIONS)
    assert {(type(e), e.obj.pk) for e in refused} == {(StaleState, drained.pk), (IllegalTransition, done.pk)}
    stale = next(e for e in refused if isinstance(e, StaleState))
    assert stale.current == VMState.DESTROYING
    for vm in (ok, drained):
        vm.refresh_from_db()
    assert (ok.state, ok.ip_address) == (VMState.READY, "10.0.0.9")
    assert history(ok) == [(VMState.BOOTING, VMState.READY, "up")]
    assert (drained.state, drained.ip_address, history(drained)) == (VMState.DESTROYING, "", [])


@pytest.mark.django_db(transaction=True)
def test_a_row_another_transaction_holds_is_moved_after_it_lets_go_without_holding_the_others():
    pool = factories.pool()
    free, held = (factories.vm(pool, state=VMState.BOOTING) for _ in range(2))
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                VM.objects.select_for_update().get(pk=held.pk)
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(10)
    result: list = []
    mover = threading.Thread(target=lambda: (result.append(transition_many(
        [(free, {}), (held, {})], VMState.READY, allowed=VM_TRANSITIONS)), connection.close()))
    mover.start()
    # The free row moves (and is committed) while the held one is still waited for.
    deadline = time.monotonic() + 10
    while VM.objects.get(pk=free.pk).state != VMState.READY:
        assert time.monotonic() < deadline, "the free row did not move while the other was held"
        time.sleep(0.02)
    assert VM.objects.get(pk=held.pk).state == VMState.BOOTING
    release.set()
    holder.join(10)
    mover.join(10)
    assert result == [[]]
    assert VM.objects.get(pk=held.pk).state == VMState.READY
    assert history(held) == [(VMState.BOOTING, VMState.READY, "")]
