"""A checkout of one pool's VMs outside a transaction (as the API and pages make it): the
user's lock and the all-or-nothing take go out together, one transaction that PostgreSQL
commits at the pipeline's Sync, and whatever more than the per-user limit applies sends it
to the full path. Real transactions here (no test transaction around them), so the
transaction is the checkout's own."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from django.contrib.auth.models import Group, User
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from psycopg.pq import TransactionStatus

from apps.audit.models import AuditEvent
from apps.core.models import StateChange
from apps.firstboot.models import KeyDelivery, PoolFirstBoot
from apps.leases import services
from apps.leases.models import GroupLeaseLimit, Lease
from apps.pools.models import VM, VMState
from tests import factories
from tests.live import other_session, users_row_held

pytestmark = pytest.mark.django_db(transaction=True)


def _idle() -> bool:
    """Django's connection in autocommit with no transaction open on the server."""
    return connection.get_autocommit() and connection.connection.info.transaction_status == TransactionStatus.IDLE


def test_one_vm_is_leased_by_the_lock_and_the_take_sent_together_in_one_transaction(
        engineer, redis_conn, settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 5
    pool = factories.pool_with_ready_vms(2)
    with CaptureQueriesContext(connection) as ctx:
        [lease] = services.checkout(user=engineer, pools=[pool], note="ci")
    statements = [q["sql"] for q in ctx.captured_queries]
    assert [s.split()[0].upper() for s in statements] == ["SELECT", "WITH"], statements
    assert _idle()
    row = Lease.objects.select_related("vm").get(pk=lease.pk)
    assert (row.user_id, row.pool_id, row.note, row.vm.state, row.ended_at) == \
        (engineer.pk, pool.pk, "ci", VMState.LEASED, None)
    assert AuditEvent.objects.filter(action="lease.checkout", target_id=str(lease.pk)).exists()
    assert StateChange.objects.filter(object_id=str(row.vm_id), new=VMState.LEASED).exists()
    assert VM.objects.filter(pool=pool, state=VMState.READY).count() == 1


def test_the_users_lock_is_held_until_the_lease_is_committed(engineer, redis_conn):
    """Neither BEGIN nor COMMIT is sent, yet the lock and the take are one transaction: while
    the take waits (here at its commit, for the pool row another session holds), the user's
    row stays locked, so a second checkout by the same person would wait and then count the
    first one's lease."""
    pool = factories.pool_with_ready_vms(1)
    with other_session() as holder, other_session(autocommit=True) as probe:
        holder.execute("SELECT 1 FROM pools_pool WHERE id = %s FOR UPDATE", [pool.pk])  # the lease's key check waits
        with ThreadPoolExecutor(1) as thread:
            leased = thread.submit(lambda: [services.checkout(user=engineer, pools=[pool]), connection.close()][0])
            for _ in range(100):  # until the checkout waits for the pool row
                if probe.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                 "AND datname = current_database()").fetchone()[0]:
                    break
                time.sleep(0.05)
            try:
                with pytest.raises(psycopg.errors.LockNotAvailable):
                    probe.execute("SELECT 1 FROM auth_user WHERE id = %s FOR NO KEY UPDATE NOWAIT", [engineer.pk])
            finally:
                holder.rollback()  # the checkout goes on, whatever the probe found
            [lease] = leased.result(timeout=10)
    assert Lease.objects.get().pk == lease.pk


def test_the_per_user_limit_refuses_and_nothing_moves(engineer, redis_conn, settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 1
    pool = factories.pool_with_ready_vms(3)
    services.checkout(user=engineer, pools=[pool])
    with pytest.raises(services.LeaseLimitReached, match="You have 1 active lease; the limit is 1"):
        services.checkout(user=engineer, pools=[pool])
    assert (Lease.objects.count(), VM.objects.filter(state=VMState.READY).count()) == (1, 2)
    assert _idle()


def test_the_limit_counts_no_further_than_itself_and_still_refuses_what_would_pass_it(
        engineer, redis_conn, settings):
    """The one-go statement counts a user's leases only up to the limit (a user with a high
    one does not make every checkout count hundreds of rows); what it counts still decides."""
    settings.VMPORTAL_MAX_LEASES_PER_USER = 3
    pool = factories.pool_with_ready_vms(6)
    services.checkout(user=engineer, pools=[pool] * 2)
    with pytest.raises(services.LeaseLimitReached, match="You have 2 active leases; the limit is 3"):
        services.checkout(user=engineer, pools=[pool] * 2)
    services.checkout(user=engineer, pools=[pool])
    with pytest.raises(services.LeaseLimitReached, match="You have 3 active leases; the limit is 3"):
        services.checkout(user=engineer, pools=[pool])
    assert (Lease.objects.count(), VM.objects.filter(state=VMState.READY).count()) == (3, 3)


def test_several_vms_from_a_short_pool_take_none(engineer, redis_conn):
    pool = factories.pool_with_ready_vms(2)
    with pytest.raises(services.PoolEmpty, match="has 2 ready VMs; 3 requested"):
        services.checkout(user=engineer, pools=[pool] * 3)
    assert not Lease.objects.exists()
    assert VM.objects.filter(state=VMState.READY).count() == 2
    assert _idle()


def test_several_vms_from_one_pool_are_leased_together(engineer, redis_conn):
    pool = factories.pool_with_ready_vms(3)
    leases = services.checkout(user=engineer, pools=[pool] * 2)
    assert len({lease.vm_id for lease in leases}) == 2
    assert Lease.objects.filter(user=engineer).count() == 2


def test_a_superuser_is_not_held_to_the_per_user_limit(redis_conn, settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 1
    root = User.objects.create_superuser("root-admin", password="pw")
    pool = factories.pool_with_ready_vms(2)
    services.checkout(user=root, pools=[pool])
    services.checkout(user=root, pools=[pool])
    assert Lease.objects.filter(user=root).count() == 2


def test_an_admin_past_the_per_user_limit_is_served_by_the_full_path(admin_user, redis_conn, settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 1
    pool = factories.pool_with_ready_vms(2)
    services.checkout(user=admin_user, pools=[pool])
    with CaptureQueriesContext(connection) as ctx:
        services.checkout(user=admin_user, pools=[pool])
    assert Lease.objects.filter(user=admin_user).count() == 2
    # The try took nothing (its transaction ended at its Sync); the full path took the VM.
    assert [q["sql"].split()[0].upper() for q in ctx.captured_queries].count("WITH") == 2
    assert sum(q["sql"].upper() == "COMMIT" for q in ctx.captured_queries) == 1
    assert _idle()


def test_a_group_limit_is_kept_by_the_full_path(engineer, other_engineer, redis_conn, settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 10
    team = Group.objects.create(name="team")
    team.user_set.add(engineer, other_engineer)
    GroupLeaseLimit.objects.create(group=team, max_active_leases=1)
    pool = factories.pool_with_ready_vms(3)
    services.checkout(user=engineer, pools=[pool])
    with pytest.raises(services.LeaseLimitReached, match="Your group team has 1 active lease"):
        services.checkout(user=other_engineer, pools=[pool])
    assert Lease.objects.count() == 1


def test_a_pool_that_puts_lessees_keys_into_guests_records_the_delivery_with_the_lease(engineer, redis_conn):
    pool = factories.pool_with_ready_vms(1)
    PoolFirstBoot.objects.create(pool=pool, guest_username="ops")
    [lease] = services.checkout(user=engineer, pools=[pool])
    assert KeyDelivery.objects.filter(lease=lease).exists()


def test_a_failed_statement_rolls_the_checkout_back_and_the_connection_goes_on(engineer, redis_conn):
    pool = factories.pool_with_ready_vms(2)
    with users_row_held(engineer.pk):
        with pytest.raises(OperationalError, match="lock timeout"):
            services.checkout(user=engineer, pools=[pool])
        assert _idle()
    assert not Lease.objects.exists()
    [lease] = services.checkout(user=engineer, pools=[pool])
    assert Lease.objects.get().pk == lease.pk


def test_concurrent_checkouts_by_one_user_stop_at_the_limit(redis_conn, settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 3
    user = User.objects.create_user("erin-engineer")
    pool = factories.pool_with_ready_vms(8)
    start = threading.Barrier(8)

    def one(_: int) -> str:
        try:
            start.wait(10)
            services.checkout(user=user, pools=[pool])
            return "leased"
        except services.LeaseLimitReached:
            return "limit"
        finally:
            connection.close()

    with ThreadPoolExecutor(8) as threads:
        outcomes = sorted(threads.map(one, range(8), timeout=30))
    assert outcomes == ["leased"] * 3 + ["limit"] * 5
    assert Lease.objects.filter(user=user).count() == 3
