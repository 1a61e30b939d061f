"""Checkout, extend and return: the rules for leases, used alike by pages, API and jobs."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import cache, lru_cache
from typing import Any

import psycopg
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone
from psycopg.pq import TransactionStatus

from apps.audit import services as audit
from apps.audit.context import current_actor
from apps.audit.models import AuditEvent
from apps.core.errors import Conflict, NotFound, Unavailable, VmPortalError
from apps.core.permissions import is_admin
from apps.core.rows import load as load_row
from apps.core.rows import width
from apps.core.states import history_params, history_sql, record_history
from apps.firstboot.models import PoolFirstBoot
from apps.leases.models import GroupLeaseLimit, Lease, OnDemandRequest
from apps.leases.signals import leases_inserted
from apps.pools import autosize, balance, nudge
from apps.pools.manager import ReconcileReport, discard_vm
from apps.pools.models import VM, Pool, VMState


class PoolEmpty(Unavailable):
    def __init__(self, pool: Pool, wanted: int, available: int):
        self.pool = pool
        # Demand that would be lost with the rolled-back checkout: automatic sizing counts it.
        autosize.record_empty(pool.pk, wanted - available)
        super().__init__(
            f"Pool {pool.name} has {available} ready VM{'s' if available != 1 else ''}; "
            f"{wanted} requested. Try again shortly or request one on demand."
        )


class LeaseLimitReached(Conflict):
    pass


class NotAllowed(VmPortalError):
    http_status = 403


def _history_in_statement() -> bool:
    # PostgreSQL writes the VMs' StateChange rows in the statement that moves them (INSERT
    # inside WITH); SQLite (the demo) cannot, and checkout writes them right after.
    return connection.vendor == "postgresql"


# The pick's LIMIT in _checkout_sql's take statements, written in by checkout_statement.
WANTED = "LIMIT :wanted"


@lru_cache(maxsize=64)
def checkout_statement(name: str, wanted: int) -> str:
    """_checkout_sql()[name] picking ``wanted`` VMs, the count written in as a literal.

    A parameter there would cost a plan per checkout: PostgreSQL's generic plan of a
    prepared statement knows no LIMIT and guesses 142 rows, which costs it above the
    custom plans, so it plans each execution afresh (half the server's CPU of a checkout,
    0.8 against 0.4 ms). With the literal, and the move finding its rows by primary key
    (= ANY of an array, planned the same for any count), the generic plan is the cheaper
    one and is kept once PostgreSQL has compared it (psycopg prepares a statement on its
    fifth run, PostgreSQL plans five more before it compares). One prepared statement per
    count asked for.
    """
    return _checkout_sql()[name].replace(WANTED, f"LIMIT {int(wanted)}")


@cache
def _checkout_sql() -> dict[str, str]:
    """The checkout's hot statements, as SQL: each costs a fraction of its ORM form in Python."""
    user_model = get_user_model()
    memberships = user_model.groups.through._meta.db_table
    group_table = Group._meta.db_table
    features = connection.features
    # SQLite (the demo) has no row locks; its IMMEDIATE transactions serialize writers.
    lock_user = " FOR NO KEY UPDATE OF u" if features.has_select_for_no_key_update else ""
    # NO KEY: a VM row is a parent (leases, addresses, jobs refer to it) and only its state changes.
    lock_vms = " FOR NO KEY UPDATE SKIP LOCKED" if features.has_select_for_no_key_update else ""
    vm_columns = ", ".join(f.column for f in VM._meta.concrete_fields)

    # PostgreSQL finds the picked rows by primary key however many were asked for (see
    # checkout_statement); SQLite has no arrays.
    picked = ("= ANY (ARRAY(SELECT id FROM picked))" if connection.vendor == "postgresql"
              else "IN (SELECT id FROM picked)")

    def move(only_if: str = "") -> str:
        return f"""UPDATE {VM._meta.db_table} SET state = %s, state_changed_at = %s
                WHERE id {picked} AND state = %s{only_if} RETURNING {vm_columns}"""  # noqa: S608

    move_and_log = f""", moved AS ({move()}), logged AS ({history_sql(connection, object_id="id")} FROM moved)
            SELECT {vm_columns} FROM moved"""  # noqa: S608
    take_and_lease = _take_and_lease_sql(lock_vms, move, vm_columns)
    # Only table and column names from the models are formatted in; values are parameters.
    return {
        "groups": f"""SELECT g.name, gl.id FROM {user_model._meta.db_table} u
            LEFT JOIN {memberships} ug ON ug.user_id = u.id
            LEFT JOIN {group_table} g ON g.id = ug.group_id
            LEFT JOIN {GroupLeaseLimit._meta.db_table} gl ON gl.group_id = g.id
            WHERE u.id = %s{lock_user}""",  # noqa: S608
        # Active leases, and how many on-demand requests are still coming (their VMs are
        # counted, from "pending", only when there are any).
        "active": f"""SELECT (SELECT count(*) FROM {Lease._meta.db_table} WHERE user_id = %s AND ended_at IS NULL),
            (SELECT count(*) FROM {OnDemandRequest._meta.db_table} WHERE user_id = %s AND status IN (%s, %s))""",  # noqa: S608
        "pending": f"SELECT wanted FROM {OnDemandRequest._meta.db_table} WHERE user_id = %s AND status IN (%s, %s)",  # noqa: S608
        # Lock and move in one statement: a conditional UPDATE (state still ready), as
        # transition() does, of the oldest ready VMs nobody else has locked. MATERIALIZED
        # runs the LIMIT once: as a plain IN (subquery) the planner may re-run it for each
        # row it scans, and each run skips the rows the previous ones took.
        "take": f"""WITH picked AS MATERIALIZED (
                SELECT id FROM {VM._meta.db_table} WHERE pool_id = %s AND state = %s AND NOT on_demand
                ORDER BY ready_at, id {WANTED}{lock_vms})
            {move_and_log if _history_in_statement() else move()}""",  # noqa: S608
        # PostgreSQL: the same, and the leases and their audit events, in one round trip.
        "take_and_lease": take_and_lease(""),
        # The same, all or nothing, and only when nothing but the per-user limit applies:
        # taking nothing sends the checkout to the full path (see checkout). Run after the
        # user's lock, so its counts see what the lock's previous holder committed.
        "take_in_one_go": take_and_lease(f"""
                AND (%s = 0 OR (SELECT count(*) FROM (SELECT FROM {Lease._meta.db_table}
                                WHERE user_id = %s AND ended_at IS NULL LIMIT %s) mine) + %s <= %s)
                AND NOT EXISTS (SELECT 1 FROM {OnDemandRequest._meta.db_table}
                                WHERE user_id = %s AND status IN (%s, %s))
                AND NOT EXISTS (SELECT 1 FROM {memberships} ug
                                JOIN {GroupLeaseLimit._meta.db_table} gl ON gl.group_id = ug.group_id
                                WHERE ug.user_id = %s)
                AND NOT EXISTS (SELECT 1 FROM {PoolFirstBoot._meta.db_table}
                                WHERE pool_id = %s AND guest_username <> '')""",  # noqa: S608
                                         all_or_nothing=" AND (SELECT count(*) FROM picked) = %s"),
    }


def _take_and_lease_sql(lock_vms: str, move: Callable[[str], str], vm_columns: str) -> Callable[..., str]:
    """take_and_lease's statement, with ``only_if`` added to the pick's conditions and
    ``all_or_nothing`` to the move's (PostgreSQL only)."""
    lease_fields = ("vm", "pool", "user", "started_at", "expires_at", "end_reason", "note", "tags")
    audit_fields = ("at", "actor", "actor_name", "action", "target_type", "target_id", "target_repr", "pool",
                    "before", "after", "message", "request_id")

    def take_and_lease(only_if: str, all_or_nothing: str = "") -> str:
        return f"""WITH picked AS MATERIALIZED (
                SELECT id FROM {VM._meta.db_table} WHERE pool_id = %s AND state = %s AND NOT on_demand{only_if}
                ORDER BY ready_at, id {WANTED}{lock_vms})
            , moved AS ({move(all_or_nothing)}), logged AS ({history_sql(connection, object_id="id")} FROM moved),
            leased AS (INSERT INTO {Lease._meta.db_table} ({_columns(Lease, lease_fields)})
                SELECT id, pool_id, %s, %s, %s, '', %s, %s::jsonb FROM moved RETURNING id, vm_id),
            audited AS (INSERT INTO {AuditEvent._meta.db_table} ({_columns(AuditEvent, audit_fields)})
                SELECT %s, %s, %s, %s, %s, l.id::text, left(m.name || %s, 255), m.pool_id, NULL,
                       jsonb_build_object('vm', m.name, 'expires_at', %s::text), '', %s
                FROM leased l JOIN moved m ON m.id = l.vm_id)
            SELECT {", ".join(f"m.{c}" for c in vm_columns.split(", "))}, l.id AS taken_lease_id,
                EXISTS (SELECT 1 FROM {PoolFirstBoot._meta.db_table} fb
                        WHERE fb.pool_id = m.pool_id AND fb.guest_username <> '') AS guest_keys
            FROM moved m JOIN leased l ON l.vm_id = m.id"""  # noqa: S608

    return take_and_lease


def _columns(model: type[Model], names: tuple[str, ...]) -> str:
    column = {f.name: f.column for f in model._meta.concrete_fields}
    return ", ".join(column[n] for n in names)


PENDING = (OnDemandRequest.Status.QUEUED, OnDemandRequest.Status.PROVISIONING)


def _vms_in(wanted_rows: Iterable[str | dict[str, int]]) -> int:
    # A raw cursor returns JSON as text; the ORM (and some drivers) as a dict.
    return sum(sum((json.loads(w) if isinstance(w, str) else w).values()) for w in wanted_rows)


def _held(active: int, pending: int) -> str:
    held = f"{active} active lease{'s' if active != 1 else ''}"
    if pending:
        held += f" and {pending} VM{'s' if pending != 1 else ''} coming on demand"
    return held


@contextmanager
def _pipelined() -> Iterator[bool]:
    """psycopg's pipeline mode on PostgreSQL (statements sent together, each still run in
    order and in its own snapshot); a plain block elsewhere. Yields whether it is on."""
    if connection.vendor != "postgresql":
        yield False
        return
    connection.ensure_connection()
    # Errors of pipelined statements surface here, raw: wrap them as Django's, as a cursor would.
    with connection.wrap_database_errors, connection.connection.pipeline():
        yield True


def check_lease_limits(user: User, adding: int) -> None:
    """Refuse ``adding`` more VMs that would take the user, or any of their groups, over a limit.

    The one limit check, for browser and API checkouts, on-demand requests and their
    delivery; call it inside the transaction that creates the leases or the request. What
    counts: active leases plus the VMs of pending (queued or provisioning) on-demand
    requests, which are leased on delivery in the transaction that ends the request, so
    no VM counts twice or not at all.

    The user's row is locked first (FOR NO KEY UPDATE: leases and requests refer to it and
    their foreign keys only take KEY SHARE), and everything is counted after, in
    statements of their own, so concurrent checkouts and requests by one person queue up
    and each sees what the previous one committed. Group limit rows are locked likewise,
    in id order, so two members cannot deadlock. The common case (no group limits, nothing
    pending) costs two plain SQL statements, sent in one round trip on PostgreSQL.
    """
    if user.is_superuser:
        return
    sql = _checkout_sql()
    user_limit = settings.VMPORTAL_MAX_LEASES_PER_USER
    active = pending = 0
    with _pipelined() as pipelined, connection.cursor() as cursor, connection.cursor() as counter:
        cursor.execute(sql["groups"], [user.pk])
        if user_limit and pipelined:
            # Sent with the lock in one round trip: the server runs it after the lock
            # statement has its lock, in a snapshot of its own, so it counts what the
            # previous holder committed, as if sent after (an admin's count goes unused).
            counter.execute(sql["active"], [user.pk, user.pk, *PENDING])
        groups = cursor.fetchall()
        if any(name == settings.VMPORTAL_ADMIN_GROUP for name, _ in groups):
            return
        if user_limit:
            if not pipelined:
                counter.execute(sql["active"], [user.pk, user.pk, *PENDING])
            [[active, requests]] = counter.fetchall()
            if requests:
                counter.execute(sql["pending"], [user.pk, *PENDING])
                pending = _vms_in(w for [w] in counter.fetchall())
    if user_limit and active + pending + adding > user_limit:
        raise LeaseLimitReached(
            f"You have {_held(active, pending)}; the limit is {user_limit}. "
            "Return a VM (or cancel an on-demand request) before asking for another."
        )
    limit_ids = sorted({limit_id for _, limit_id in groups if limit_id is not None})
    if not limit_ids:
        return
    group_limits = (
        GroupLeaseLimit.objects.filter(pk__in=limit_ids).select_related("group").order_by("pk")
        .select_for_update(of=("self",), no_key=True)
    )
    for limit in group_limits:
        active = Lease.objects.active().filter(user__groups=limit.group_id).count()
        pending = _vms_in(OnDemandRequest.objects.filter(user__groups=limit.group_id, status__in=PENDING)
                          .values_list("wanted", flat=True))
        if active + pending + adding > limit.max_active_leases:
            raise LeaseLimitReached(
                f"Your group {limit.group.name} has {_held(active, pending)}; "
                f"its limit is {limit.max_active_leases}. "
                "Ask a colleague in the group to return a VM, or an admin to raise the limit."
            )


# take_and_lease's columns after the VM's.
TAKEN_EXTRA = ("taken_lease_id", "guest_keys")


def _taken_vms(rows: list[tuple]) -> list[VM]:
    """The VMs take_and_lease returned, with its extra columns as attributes, in the ORM's
    order: loaded as Model.from_db does, since a raw() queryset's per-query setup (columns
    matched to fields, converters, init order) cost a third of the checkout's CPU in Python."""
    taken_at = width(VM)
    vms = []
    for row in rows:
        vm = load_row(VM, row)
        for name, value in zip(TAKEN_EXTRA, row[taken_at:], strict=True):
            setattr(vm, name, value)
        vms.append(vm)
    return _ordered(vms)


def _ordered(vms: Iterable[VM]) -> list[VM]:
    return sorted(vms, key=lambda vm: (vm.ready_at is None, vm.ready_at, vm.pk))  # the ORM's order, NULLs last


# The history a checkout writes for each VM it takes.
TAKEN: dict[str, Any] = dict(field="state", old=VMState.READY, new=VMState.LEASED)


def _lease_params(user: User, now: datetime, expires_at: datetime, note: str, tags: dict | None) -> list[Any]:
    """take_and_lease's parameters after the move's: the history rows, the leases, their audit events."""
    actor = current_actor()
    return [*history_params(model_label=VM._meta.label_lower, **TAKEN),
            user.pk, now, expires_at, note, json.dumps(tags or {}),
            now, actor.user_id, actor.name, "lease.checkout", Lease._meta.label_lower,
            f" → {user}", expires_at.isoformat(), actor.request_id]


def _leases_of(vms: list[VM], pool: Pool, user: User, now: datetime, expires_at: datetime, note: str,
               tags: dict | None) -> list[Lease]:
    """The Lease objects of the VMs take_and_lease returned (written by its SQL, so no
    post_save): receivers of leases_inserted (first boot's keys) hear of them here, with
    first boot's question (does the pool put lessees' keys into its guests?) answered by
    the statement rather than by a round trip of their own."""
    leases = []
    for vm in vms:
        lease = Lease(id=vm.taken_lease_id, vm=vm, pool=pool, user=user, started_at=now,  # type: ignore[attr-defined]
                      expires_at=expires_at, note=note, tags=tags or {})
        lease._state.adding, lease._state.db = False, connection.alias
        leases.append(lease)
    leases_inserted.send(sender=Lease, pool_id=pool.pk, leases=leases,
                         guest_keys=any(vm.guest_keys for vm in vms))  # type: ignore[attr-defined]
    return leases


def _in_one_go(pools: list[Pool]) -> bool:
    """Whether a checkout may try _checkout_in_one_go first: VMs of one enabled pool that
    does not move checked-out VMs between hosts (those moves are jobs queued in the
    checkout's transaction), on PostgreSQL."""
    pool = pools[0]
    return (_history_in_statement() and pool.enabled and not pool.balance_hosts
            and all(p.pk == pool.pk for p in pools))


def _checkout_in_one_go(*, user: User, pool: Pool, wanted: int, lifetime: timedelta | None, note: str,
                        tags: dict | None) -> list[Lease]:
    """The user's lock and take_in_one_go, sent together. One round trip for the whole
    checkout, where the full path makes five (BEGIN, the lock and count, their pipeline's
    sync, the take, COMMIT).

    Outside a transaction, the two run in the one PostgreSQL makes of the statements sent
    before a pipeline's Sync: it commits at the Sync, or rolls both back if either fails,
    and each statement still takes its own snapshot, so the take counts after the lock. An
    explicit BEGIN and COMMIT would do the same and cost psycopg two more statements (a
    fifth of the checkout's CPU in the web process).

    Empty when it took nothing: the pool is short, or more than the per-user limit applies
    (group limits, on-demand requests pending, lessees' keys for the pool's guests, an
    admin past the per-user limit). The full path then decides, in a transaction of its own.
    """
    now = timezone.now()
    expires_at = now + min(lifetime or pool.lease_lifetime, pool.lease_max_lifetime)
    limit = 0 if user.is_superuser else settings.VMPORTAL_MAX_LEASES_PER_USER
    params: list[Any] = [
        pool.pk, VMState.READY, limit, user.pk, limit, wanted, limit, user.pk, *PENDING, user.pk, pool.pk,  # the pick
        VMState.LEASED, now, VMState.READY, wanted,  # the move, all or nothing
        *_lease_params(user, now, expires_at, note, tags),
    ]
    sql = _checkout_sql()
    connection.ensure_connection()
    own_transaction = connection.get_autocommit()
    try:
        with connection.cursor() as lock, connection.cursor() as take:
            with _pipelined():  # sent, and their results read, as it ends (its Sync): one round trip
                lock.execute(sql["groups"], [user.pk])
                take.execute(checkout_statement("take_in_one_go", wanted), params)
            vms = _taken_vms(take.fetchall())
    except BaseException:
        if own_transaction:
            _roll_back()
        raise
    if not vms:
        return []
    leases = _leases_of(vms, pool, user, now, expires_at, note, tags)
    nudge.nudge(pool.pk)
    return leases


def _roll_back() -> None:
    """End a transaction _checkout_in_one_go left open (the connection failed before its
    Sync ended it): Django, in autocommit, knows of none."""
    raw = connection.connection
    if raw is None or raw.closed or raw.info.transaction_status == TransactionStatus.IDLE:
        return
    try:
        raw.execute("ROLLBACK")
    except psycopg.Error:
        connection.close()  # unusable: the next query opens a new one


def checkout(*, user: User, pools: list[Pool], lifetime: timedelta | None = None,
             note: str = "", tags: dict | None = None) -> list[Lease]:
    """Lease one ready VM from each entry of ``pools`` (a pool may repeat), all or nothing.

    SKIP LOCKED lets concurrent checkouts take different VMs without waiting on each
    other; the one-to-one lease constraint would refuse a double lease anyway. VMs of one
    pool (CI's checkout) are asked for in one round trip first (_checkout_in_one_go); when
    that takes nothing, the full path decides: it refuses, saying why, or takes VMs that
    became ready meanwhile.
    """
    if not pools:
        raise VmPortalError("Ask for at least one VM.")
    if len(pools) > settings.VMPORTAL_MAX_VMS_PER_CHECKOUT:
        raise VmPortalError(f"Ask for at most {settings.VMPORTAL_MAX_VMS_PER_CHECKOUT} VMs in one checkout "
                            "(VMPORTAL_MAX_VMS_PER_CHECKOUT).")
    if _in_one_go(pools):
        leases = _checkout_in_one_go(user=user, pool=pools[0], wanted=len(pools), lifetime=lifetime,
                                     note=note, tags=tags)
        if leases:
            return leases
    return _checkout_in_transaction(user=user, pools=pools, lifetime=lifetime, note=note, tags=tags)


@transaction.atomic
def _checkout_in_transaction(*, user: User, pools: list[Pool], lifetime: timedelta | None, note: str,
                             tags: dict | None) -> list[Lease]:
    check_lease_limits(user, len(pools))
    now = timezone.now()
    leases: list[Lease] = []
    for pool_id, wanted in sorted(Counter(p.pk for p in pools).items()):
        pool = next(p for p in pools if p.pk == pool_id)
        if not pool.enabled:
            raise Unavailable(f"Pool {pool.name} is disabled.")
        # On-demand VMs are ready for their requester only, for the moment before their
        # request's job leases them. Taken VMs are already LEASED; a short pool rolls the
        # whole checkout back.
        params: list[Any] = [pool_id, VMState.READY, VMState.LEASED, now, VMState.READY]
        duration = min(lifetime or pool.lease_lifetime, pool.lease_max_lifetime)
        expires_at = now + duration
        if _history_in_statement():
            params += _lease_params(user, now, expires_at, note, tags)
            with connection.cursor() as cursor:
                cursor.execute(checkout_statement("take_and_lease", wanted), params)
                vms = _taken_vms(cursor.fetchall())
            if len(vms) < wanted:
                raise PoolEmpty(pool, wanted, len(vms))
            leases += _leases_of(vms, pool, user, now, expires_at, note, tags)
            if pool.balance_hosts:
                balance.request_moves(vms)
            nudge.nudge(pool_id)
            continue
        vms = _ordered(VM.objects.raw(checkout_statement("take", wanted), params))
        record_history(VM, [vm.pk for vm in vms], **TAKEN)
        if len(vms) < wanted:
            raise PoolEmpty(pool, wanted, len(vms))
        for vm in vms:
            lease = Lease.objects.create(
                vm=vm, pool=pool, user=user, started_at=now, expires_at=expires_at,
                note=note, tags=tags or {},
            )
            audit.record("lease.checkout", target=lease, pool=pool_id,
                         after={"vm": vm.name, "expires_at": lease.expires_at.isoformat()})
            leases.append(lease)
        if pool.balance_hosts:
            balance.request_moves(vms)
        nudge.nudge(pool_id)
    return leases


def get_lease_for(user: User, lease_id: int) -> Lease:
    """A lease the user may act on: their own, or any for an admin."""
    lease = Lease.objects.select_related("vm__host", "vm__moving_to", "pool", "user").filter(pk=lease_id).first()
    if lease is None or (lease.user_id != user.pk and not is_admin(user)):
        # Same answer for "absent" and "not yours": lease ids are not secrets, but
        # other people's leases are none of your business.
        raise NotFound("No such lease.")
    return lease


@transaction.atomic
def extend(*, user: User, lease_id: int, by: timedelta) -> Lease:
    lease = get_lease_for(user, lease_id)
    lease = Lease.objects.select_for_update(of=("self",), no_key=True).select_related("pool").get(pk=lease.pk)
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
def set_lifetime(*, user: User, lease_id: int, lifetime: timedelta) -> Lease:
    """End the lease ``lifetime`` after it started, sooner or later than now set, up to its
    pool's maximum lifetime and never in the past (vmpooler's absolute lifetime)."""
    lease = get_lease_for(user, lease_id)
    lease = Lease.objects.select_for_update(of=("self",), no_key=True).select_related("pool").get(pk=lease.pk)
    if not lease.is_active:
        raise Conflict("This lease has ended.")
    cap = lease.pool.lease_max_lifetime if lease.pool else lease.expires_at - lease.started_at
    if lifetime > cap:
        raise VmPortalError(f"A lifetime of at most {cap.total_seconds() / 3600:g} hours is allowed here.")
    new_expiry = lease.started_at + lifetime
    if new_expiry <= timezone.now():
        raise VmPortalError("The lease has run longer than that already; give a longer lifetime, or return it.")
    before = lease.expires_at
    lease.expires_at = new_expiry
    lease.save(update_fields=["expires_at"])
    audit.record("lease.extend" if new_expiry > before else "lease.shorten", target=lease, pool=lease.pool_id,
                 before={"expires_at": before.isoformat()}, after={"expires_at": new_expiry.isoformat()})
    return lease


@transaction.atomic
def return_lease(*, user: User, lease_id: int) -> Lease:
    lease = get_lease_for(user, lease_id)
    # The lease row only (not its VM by the join): end_lease then moves the VM, in the
    # order reconcile ends expired leases (lease, then VM), and neither locks the pool.
    lease = Lease.objects.select_for_update(of=("self",), no_key=True).select_related("vm").get(pk=lease.pk)
    if not lease.is_active:
        raise Conflict("This lease has already ended.")
    end_lease(lease, reason=Lease.EndReason.RETURNED)
    if lease.pool_id:
        nudge.nudge(lease.pool_id)
    lease.refresh_from_db()
    return lease


def end_lease(lease: Lease, *, reason: str) -> None:
    """End a lease and destroy its VM. Call inside a transaction."""
    changed = Lease.objects.filter(pk=lease.pk, ended_at__isnull=True).update(
        ended_at=timezone.now(), end_reason=reason
    )
    if not changed:
        return
    audit.record(f"lease.{reason}", target=lease, pool=lease.pool_id)
    discard_vm(lease.vm, f"Lease {reason}.")


def expire_leases(pool: Pool, report: ReconcileReport) -> None:
    """End the pool's leases past their expiry: the pool manager's first step in each reconcile
    (registered by LeasesConfig.ready), inside its transaction with the pool row locked."""
    now = timezone.now()
    for lease in Lease.objects.active().filter(pool=pool, expires_at__lte=now).select_related("vm").order_by("vm_id"):
        end_lease(lease, reason=Lease.EndReason.EXPIRED)
        report.expired_leases.append(lease.pk)
