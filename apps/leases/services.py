"""Checkout, extend and return: the rules for leases, used alike by pages, API and jobs."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from functools import cache

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone

from apps.audit import services as audit
from apps.core.errors import Conflict, NotFound, Unavailable, VmPortalError
from apps.leases.models import GroupLeaseLimit, Lease
from apps.pools import nudge
from apps.pools.models import VM, Pool, VMState
from apps.pools.services import end_lease


class PoolEmpty(Unavailable):
    def __init__(self, pool: Pool, wanted: int, available: int):
        self.pool = pool
        super().__init__(
            f"Pool {pool.name} has {available} ready VM{'s' if available != 1 else ''}; "
            f"{wanted} requested. Try again shortly or request one on demand."
        )


class LeaseLimitReached(Conflict):
    pass


class NotAllowed(VmPortalError):
    http_status = 403


def is_admin(user: AbstractBaseUser) -> bool:
    return user.is_superuser or user.groups.filter(name=settings.VMPORTAL_ADMIN_GROUP).exists()


@cache
def _checkout_sql() -> dict[str, str]:
    """The checkout's hot statements, as SQL: each costs a fraction of its ORM form in Python."""
    user_model = Lease._meta.get_field("user").related_model
    memberships = user_model._meta.get_field("groups").remote_field.through._meta.db_table
    group_table = user_model._meta.get_field("groups").related_model._meta.db_table
    features = connection.features
    # SQLite (the demo) has no row locks; its IMMEDIATE transactions serialize writers.
    lock_user = " FOR NO KEY UPDATE OF u" if features.has_select_for_no_key_update else ""
    lock_vms = " FOR UPDATE SKIP LOCKED" if features.has_select_for_update_skip_locked else ""
    vm_columns = ", ".join(f.column for f in VM._meta.concrete_fields)
    # Only table and column names from the models are formatted in; values are parameters.
    return {
        "groups": f"""SELECT g.name, gl.id FROM {user_model._meta.db_table} u
            LEFT JOIN {memberships} ug ON ug.user_id = u.id
            LEFT JOIN {group_table} g ON g.id = ug.group_id
            LEFT JOIN {GroupLeaseLimit._meta.db_table} gl ON gl.group_id = g.id
            WHERE u.id = %s{lock_user}""",  # noqa: S608
        "active": f"SELECT count(*) FROM {Lease._meta.db_table} WHERE user_id = %s AND ended_at IS NULL",  # noqa: S608
        # Lock and move in one statement: a conditional UPDATE (state still ready), as
        # transition() does, of the oldest ready VMs nobody else has locked. MATERIALIZED
        # runs the LIMIT once: as a plain IN (subquery) the planner may re-run it for each
        # row it scans, and each run skips the rows the previous ones took.
        "take": f"""WITH picked AS MATERIALIZED (
                SELECT id FROM {VM._meta.db_table} WHERE pool_id = %s AND state = %s AND NOT on_demand
                ORDER BY ready_at, id LIMIT %s{lock_vms})
            UPDATE {VM._meta.db_table} SET state = %s, state_changed_at = %s
            WHERE id IN (SELECT id FROM picked) AND state = %s
            RETURNING {vm_columns}""",  # noqa: S608
    }


def _check_limits(user: AbstractBaseUser, adding: int) -> None:
    """Refuse a checkout that would take the user, or any of their groups, over its limit.

    Runs inside checkout's transaction, on every checkout, so the common case (no group
    limits) costs two plain SQL statements: the user's groups (which also answer
    "admin?"), read while locking the user's row, and a count. The lock makes concurrent
    checkouts by one person queue up instead of both slipping under the per-user cap
    (FOR NO KEY UPDATE: the leases' foreign keys only take KEY SHARE on that row).
    Group limit rows are likewise locked (in id order, so two members cannot deadlock)
    before counting.
    """
    if user.is_superuser:
        return
    with connection.cursor() as cursor:
        cursor.execute(_checkout_sql()["groups"], [user.pk])
        groups = cursor.fetchall()
        if any(name == settings.VMPORTAL_ADMIN_GROUP for name, _ in groups):
            return
        user_limit = settings.VMPORTAL_MAX_LEASES_PER_USER
        if user_limit:
            # Counted after the user's row is locked (by the query above), in a statement
            # of its own so that it sees a concurrent checkout by the same user that
            # committed while this one waited.
            cursor.execute(_checkout_sql()["active"], [user.pk])
            [[active]] = cursor.fetchall()
        else:
            active = 0
    if user_limit and active + adding > user_limit:
        raise LeaseLimitReached(
            f"You have {active} active lease{'s' if active != 1 else ''}; the limit is {user_limit}. "
            "Return a VM before checking out another."
        )
    limit_ids = sorted({limit_id for _, limit_id in groups if limit_id is not None})
    if not limit_ids:
        return
    group_limits = (
        GroupLeaseLimit.objects.filter(pk__in=limit_ids).select_related("group").order_by("pk")
        .select_for_update(of=("self",))
    )
    for limit in group_limits:
        active = Lease.objects.active().filter(user__groups=limit.group_id).count()
        if active + adding > limit.max_active_leases:
            raise LeaseLimitReached(
                f"Your group {limit.group.name} has {active} active lease{'s' if active != 1 else ''}; "
                f"its limit is {limit.max_active_leases}. "
                "Ask a colleague in the group to return a VM, or an admin to raise the limit."
            )


@transaction.atomic
def checkout(*, user: AbstractBaseUser, pools: list[Pool], lifetime: timedelta | None = None,
             note: str = "", tags: dict | None = None) -> list[Lease]:
    """Lease one ready VM from each entry of ``pools`` (a pool may repeat), all or nothing.

    SKIP LOCKED lets concurrent checkouts take different VMs without waiting on each
    other; the one-to-one lease constraint would refuse a double lease anyway.
    """
    if not pools:
        raise VmPortalError("Ask for at least one VM.")
    _check_limits(user, len(pools))
    now = timezone.now()
    leases: list[Lease] = []
    for pool_id, wanted in sorted(Counter(p.pk for p in pools).items()):
        pool = next(p for p in pools if p.pk == pool_id)
        if not pool.enabled:
            raise Unavailable(f"Pool {pool.name} is disabled.")
        # On-demand VMs are ready for their requester only, for the moment before their
        # request's job leases them. Taken VMs are already LEASED; a short pool rolls the
        # whole checkout back.
        vms = sorted(
            VM.objects.raw(_checkout_sql()["take"], [pool_id, VMState.READY, wanted, VMState.LEASED, now,
                                                   VMState.READY]),
            key=lambda vm: (vm.ready_at is None, vm.ready_at, vm.pk),  # the ORM's order, NULLs last
        )
        if len(vms) < wanted:
            raise PoolEmpty(pool, wanted, len(vms))
        duration = min(lifetime or pool.lease_lifetime, pool.lease_max_lifetime)
        for vm in vms:
            lease = Lease.objects.create(
                vm=vm, pool=pool, user=user, started_at=now, expires_at=now + duration,
                note=note, tags=tags or {},
            )
            audit.record("lease.checkout", target=lease, pool=pool_id,
                         after={"vm": vm.name, "expires_at": lease.expires_at.isoformat()})
            leases.append(lease)
        nudge.nudge(pool_id)
    return leases


def get_lease_for(user: AbstractBaseUser, lease_id: int) -> Lease:
    """A lease the user may act on: their own, or any for an admin."""
    lease = Lease.objects.select_related("vm", "pool", "user").filter(pk=lease_id).first()
    if lease is None or (lease.user_id != user.pk and not is_admin(user)):
        # Same answer for "absent" and "not yours": lease ids are not secrets, but
        # other people's leases are none of your business.
        raise NotFound("No such lease.")
    return lease


@transaction.atomic
def extend(*, user: AbstractBaseUser, lease_id: int, by: timedelta) -> Lease:
    lease = get_lease_for(user, lease_id)
    lease = Lease.objects.select_for_update(of=("self",)).select_related("pool").get(pk=lease.pk)
    if not lease.is_active:
        raise Conflict("This lease has ended.")
    if by <= timedelta(0):
        raise VmPortalError("Extend by a positive amount of time.")
    limit = lease.started_at + (lease.pool.lease_max_lifetime if lease.pool else by)
    new_expiry = min(lease.expires_at + by, limit)
    if new_expiry <= lease.expires_at:
        raise Conflict("This lease is already at its pool's maximum lifetime.")
    before = lease.expires_at
    lease.expires_at = new_expiry
    lease.save(update_fields=["expires_at"])
    audit.record("lease.extend", target=lease, pool=lease.pool_id,
                 before={"expires_at": before.isoformat()}, after={"expires_at": new_expiry.isoformat()})
    return lease


@transaction.atomic
def return_lease(*, user: AbstractBaseUser, lease_id: int) -> Lease:
    lease = get_lease_for(user, lease_id)
    lease = Lease.objects.select_for_update().select_related("vm").get(pk=lease.pk)
    if not lease.is_active:
        raise Conflict("This lease has already ended.")
    end_lease(lease, reason=Lease.EndReason.RETURNED)
    if lease.pool_id:
        nudge.nudge(lease.pool_id)
    lease.refresh_from_db()
    return lease
