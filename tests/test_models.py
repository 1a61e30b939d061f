from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.utils import DatabaseError

from apps.audit import services as audit
from apps.audit.context import Actor, acting_as
from apps.audit.models import AuditEvent
from apps.core.states import IllegalTransition, StaleState
from apps.inventory.models import VCenter
from apps.leases.models import Lease
from apps.pools.models import VM, VMState
from tests import factories

pytestmark = pytest.mark.django_db


def test_vm_walks_its_lifecycle():
    vm = factories.vm(factories.pool())
    for state in (VMState.BOOTING, VMState.READY, VMState.LEASED, VMState.DESTROYING, VMState.DESTROYED):
        vm.move_to(state)
    vm.refresh_from_db()
    assert vm.state == VMState.DESTROYED


def test_illegal_transition_is_refused_and_nothing_changes():
    vm = factories.vm(factories.pool())
    with pytest.raises(IllegalTransition, match="cloning → leased is not allowed"):
        vm.move_to(VMState.LEASED)
    vm.refresh_from_db()
    assert vm.state == VMState.CLONING


def test_second_mover_of_the_same_vm_gets_stale_state():
    vm = factories.vm(factories.pool(), state=VMState.READY)
    racer = VM.objects.get(pk=vm.pk)
    vm.move_to(VMState.LEASED)
    with pytest.raises(StaleState, match="no longer ready"):
        racer.move_to(VMState.DESTROYING)
    assert VM.objects.get(pk=vm.pk).state == VMState.LEASED


def test_failure_reason_is_stored_with_the_transition():
    vm = factories.vm(factories.pool())
    vm.move_to(VMState.FAILED, state_reason="NoDiskSpace on LocalDS_0")
    vm.refresh_from_db()
    assert (vm.state, vm.state_reason) == (VMState.FAILED, "NoDiskSpace on LocalDS_0")


def test_live_vm_names_are_unique_per_vcenter_but_destroyed_ones_may_repeat():
    pool = factories.pool()
    factories.vm(pool, name="same", state=VMState.DESTROYED)
    factories.vm(pool, name="same")
    with pytest.raises(IntegrityError), transaction.atomic():
        factories.vm(pool, name="same")


def test_a_vm_can_never_be_leased_twice(engineer, other_engineer):
    pool = factories.pool()
    vm = factories.vm(pool, state=VMState.LEASED)
    Lease.objects.create(vm=vm, pool=pool, user=engineer, expires_at="2030-01-01T00:00Z")
    with pytest.raises(IntegrityError), transaction.atomic():
        Lease.objects.create(vm=vm, pool=pool, user=other_engineer, expires_at="2030-01-01T00:00Z")


def test_audit_events_cannot_be_updated_or_deleted_even_with_raw_sql():
    event = audit.record("pool.resize", before={"size": 1}, after={"size": 2})
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(action="forged")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [event.pk])
    assert AuditEvent.objects.get(pk=event.pk).action == "pool.resize"


def test_audit_records_the_actor_and_request_and_scrubs_secrets(engineer):
    with acting_as(Actor(user_id=engineer.pk, name=engineer.username, request_id="req-1")):
        after = {"host": "vc", "password": "hunter2", "nested": {"api_token": "t"}}
        event = audit.record("vcenter.update", after=after)
    assert (event.actor_id, event.actor_name, event.request_id) == (engineer.pk, engineer.username, "req-1")
    assert event.after == {"host": "vc", "password": "********", "nested": {"api_token": "********"}}


def test_jobs_audit_as_system():
    assert audit.record("pool.reconcile").actor_name == "system"


def test_vcenter_password_is_encrypted_at_rest_and_masked_in_repr():
    vc = factories.vcenter(password="s3cret-pw")
    with connection.cursor() as cursor:
        cursor.execute("SELECT password FROM inventory_vcenter WHERE id = %s", [vc.pk])
        stored = cursor.fetchone()[0]
    assert "s3cret-pw" not in stored
    loaded = VCenter.objects.get(pk=vc.pk)
    assert loaded.password == "s3cret-pw"
    assert "s3cret-pw" not in repr(loaded.password)
