"""A checkout's database work: the VM move, its history, the lease and its audit event are
one statement on PostgreSQL, and an API checkout by token costs a fixed handful of queries
(test_checkout_in_one_go: the same outside a transaction)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apps.api import tokens
from apps.audit.models import AuditEvent
from apps.core.models import StateChange
from apps.firstboot.models import KeyDelivery, PoolFirstBoot
from apps.jobs.models import Job
from apps.leases import services
from apps.leases.models import Lease
from apps.pools.models import VM, VMState
from tests import factories

pytestmark = pytest.mark.django_db


def _statements(ctx: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in ctx.captured_queries if not q["sql"].upper().startswith(("SAVEPOINT", "RELEASE"))]


def test_a_checkout_moves_the_vm_and_writes_history_lease_and_audit_in_one_statement(engineer, redis_conn):
    pool = factories.pool(size=2)
    factories.vm(pool, state=VMState.READY)
    with CaptureQueriesContext(connection) as ctx:
        [lease] = services.checkout(user=engineer, pools=[pool])
    writes = [sql for sql in _statements(ctx) if "INSERT INTO" in sql.upper() or sql.upper().startswith("UPDATE")]
    assert len(writes) == 1, writes
    assert all(t in writes[0] for t in ("pools_vm", "leases_lease", "audit_auditevent", StateChange._meta.db_table))
    # The user lock and the statement itself (sent together), which also counts the user's
    # leases and answers first boot's question about the pool.
    assert len(_statements(ctx)) == 2, _statements(ctx)
    assert Lease.objects.get(pk=lease.pk).vm.state == VMState.LEASED


def test_the_checkouts_lease_and_audit_event_read_as_the_orm_wrote_them(engineer, redis_conn):
    pool = factories.pool(size=2)
    vm = factories.vm(pool, state=VMState.READY)
    [lease] = services.checkout(user=engineer, pools=[pool], note="ci", tags={"build": "7"})
    row = Lease.objects.select_related("vm", "user").get(pk=lease.pk)
    assert (row.vm_id, row.pool_id, row.user_id, row.note, row.tags, row.end_reason, row.ended_at) == \
        (vm.pk, pool.pk, engineer.pk, "ci", {"build": "7"}, "", None)
    assert (row.started_at, row.expires_at) == (lease.started_at, lease.expires_at)
    event = AuditEvent.objects.get(action="lease.checkout")
    assert (event.target_type, event.target_id, event.target_repr, event.pool_id) == \
        ("leases.lease", str(lease.pk), str(row), pool.pk)
    assert event.after == {"vm": vm.name, "expires_at": lease.expires_at.isoformat()}
    assert event.before is None and event.message == ""


def test_an_api_checkout_by_token_costs_three_queries(engineer, redis_conn):
    pool = factories.pool(name="deb", size=2)
    factories.vm(pool, state=VMState.READY)
    _, raw = tokens.create_token(user=engineer, name="ci")
    client = Client(headers={"X-AUTH-TOKEN": raw})
    client.get("/api/v3/status")  # the token's last_used_at, written once a minute, is written now
    with CaptureQueriesContext(connection) as ctx:
        answer = client.post("/api/v3/vm/deb")
    assert answer.status_code == 200, answer.content
    # Token, user and the pool by name in one statement (also the connection's health check),
    # then the user lock and the checkout with its counts and first boot's look at the pool
    # (2) in one round trip. (Outside this test's transaction, a BEGIN and a COMMIT join them.)
    assert len(_statements(ctx)) == 3, _statements(ctx)


def test_a_revoked_token_stops_working_on_its_next_request(engineer, redis_conn):
    pool = factories.pool(name="deb", size=2)
    factories.vm(pool, state=VMState.READY)
    factories.vm(pool, state=VMState.READY)
    token, raw = tokens.create_token(user=engineer, name="ci")
    client = Client(headers={"X-AUTH-TOKEN": raw})
    assert client.post("/api/v3/vm/deb").status_code == 200
    tokens.revoke_token(user=engineer, token=token)
    assert client.post("/api/v3/vm/deb").status_code == 401


@pytest.mark.parametrize("guest_username", ["ops", ""])
def test_the_checkout_statement_tells_first_boot_whether_the_pool_takes_the_lessees_keys(
        engineer, redis_conn, guest_username):
    pool = factories.pool(size=2)
    factories.vm(pool, state=VMState.READY)
    PoolFirstBoot.objects.create(pool=pool, guest_username=guest_username)
    with CaptureQueriesContext(connection) as ctx:
        [lease] = services.checkout(user=engineer, pools=[pool])
    assert not [sql for sql in _statements(ctx) if PoolFirstBoot._meta.db_table in sql and "EXISTS" not in sql]
    queued = Job.objects.filter(kind="firstboot.add_keys", args={"lease_id": lease.pk})
    assert KeyDelivery.objects.filter(lease=lease).exists() == queued.exists() == bool(guest_username)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's")
def test_the_checkout_statement_is_planned_once_per_connection_not_per_checkout(engineer, redis_conn, settings):
    """Its generic plan is the one PostgreSQL keeps once it has compared it with five custom
    plans: with the count as a parameter it planned every checkout afresh (half its CPU per
    checkout)."""
    if not connection.settings_dict.get("OPTIONS", {}).get("server_side_binding"):
        pytest.skip("DATABASE_PREPARED_STATEMENTS is off")
    settings.VMPORTAL_MAX_LEASES_PER_USER = 20
    pool = factories.pool(size=2000)
    # A pool's worth of ready VMs, and statistics that know them: on a table of a few rows
    # any plan is cheap and the generic one wins whatever the statement.
    VM.objects.bulk_create(VM(pool=pool, name=f"big-{n}", vcenter_id=pool.template.vcenter_id,
                              template=pool.template, state=VMState.READY) for n in range(2000))
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {VM._meta.db_table}")
    for _ in range(16):  # psycopg prepares it on the fifth; PostgreSQL then plans five times to compare
        services.checkout(user=engineer, pools=[pool])
    with connection.cursor() as cursor:
        cursor.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                       "WHERE statement LIKE %s", ["%INSERT INTO leases_lease%"])
        [(generic, custom)] = cursor.fetchall()
    assert custom <= 5 and generic >= 5, (generic, custom)
