"""What the vmpooler routes share: pool names and aliases to pools, hostnames to VMs and
leases, and vmpooler's number and lifetime rules."""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta
from functools import cache

from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.http import HttpRequest

from apps.api.http import ApiError, strict_int
from apps.core.permissions import is_admin
from apps.core.rows import load as load_row
from apps.core.rows import width
from apps.leases.models import Lease
from apps.pools.models import VM, Pool, VMState
from apps.pools.selectors import NoSuchPool

STATE_NAMES = {
    VMState.CLONING: "pending", VMState.BOOTING: "pending", VMState.READY: "ready", VMState.LEASED: "running",
    VMState.DESTROYING: "destroyed", VMState.DESTROYED: "destroyed", VMState.FAILED: "destroyed",
}


def _count(value: object, what: str) -> int:
    return strict_int(value, what)


def _fqdn(name: str, pool: Pool | None) -> str:
    domain = (pool.domain if pool else "") or settings.VMPORTAL_API_DOMAIN
    return f"{name}.{domain}" if domain else name


def _short(hostname: str) -> str:
    # vmpooler's hostname_shorten: clients send back the FQDN they were given.
    return hostname.split(".", 1)[0]


@cache
def _pool_tables(pool: str = "p", template: str = "t") -> tuple[str, str]:
    """The columns of a pool and its template, and the tables' join, under these aliases."""
    template_model = Pool._meta.get_field("template").related_model
    columns = ", ".join([*(f"{pool}.{f.column}" for f in Pool._meta.concrete_fields),
                         *(f"{template}.{f.column}" for f in template_model._meta.concrete_fields)])
    # Only table and column names from the models are formatted in; names are parameters.
    tables = (f"{Pool._meta.db_table} {pool} JOIN {template_model._meta.db_table} {template} "
              f"ON {template}.id = {pool}.template_id")
    return columns, tables


def _name_in(column: str, names: set[str]) -> tuple[str, list[str]]:
    names_list = sorted(names)
    return f"{column} IN ({', '.join(['%s'] * len(names_list))})", names_list


def pools_join(names: set[str]) -> tuple[str, str, list[str]]:
    """_pools_named's query as the columns, LEFT JOIN clause and parameters that the token
    lookup reads in its own statement (auth.token_user_joined): checkout's hot path."""
    columns, tables = _pool_tables("vp", "vt")
    condition, params = _name_in("vp.name", names)
    return columns, f"({tables}) ON {condition}", params


def _pools_named(names: set[str], rows: list[tuple] | None = None) -> list[Pool]:
    """The pools of these names with their templates, in one query written as SQL: the ORM's
    select_related form cost more in Python than the query did in PostgreSQL (checkout's hot
    path). ``rows``: that query's rows, when the caller already read them (pools_join)."""
    template_model = Pool._meta.get_field("template").related_model
    if rows is None:
        columns, tables = _pool_tables()
        condition, params = _name_in("p.name", names)
        with connection.cursor() as cursor:
            # Only table and column names from the models are formatted in; names are parameters.
            cursor.execute(f"SELECT {columns} FROM {tables} WHERE {condition}", params)  # noqa: S608
            rows = cursor.fetchall()
    pools = []
    for row in rows:
        pool = load_row(Pool, row)
        pool.template = load_row(template_model, row[width(Pool):])
        pools.append(pool)
    return pools


def _serving(names: set[str], rows: list[tuple] | None = None) -> dict[str, list[Pool]]:
    """The pools behind each name: the pool of that name, else the enabled pools that have it
    as an alias; 404 naming those that are neither."""
    serving: dict[str, list[Pool]] = {p.name: [p] for p in _pools_named(names, rows)} if names else {}
    aliases = names - set(serving)
    if aliases:  # a pool's own name wins over an alias (the model keeps them apart anyway)
        for pool in Pool.objects.select_related("template").filter(enabled=True).exclude(aliases=""):
            for alias in set(pool.alias_list) & aliases:
                serving.setdefault(alias, []).append(pool)
    if unknown := names - set(serving):
        raise NoSuchPool(unknown)
    return serving


def _pick(wanted: Counter, *, prefer_ready: bool, rows: list[tuple] | None = None) -> list[tuple[str, Pool]]:
    """One (requested name, pool) per VM wanted. An alias's pool is drawn by weight among
    those with a ready VM left (for checkouts), or among all of them. ``rows``: _pools_named's
    rows for these names, when already read (pools_join)."""
    serving = _serving(set(wanted), rows)
    ready: Counter = Counter()
    shared = [p.pk for pools in serving.values() if len(pools) > 1 for p in pools]
    if prefer_ready and shared:
        ready.update(dict(VM.objects.filter(pool_id__in=shared, state=VMState.READY, on_demand=False)
                          .values_list("pool_id").annotate(n=Count("pk"))))
    picked = []
    for name, count in wanted.items():
        pools = serving[name]
        for _ in range(count):
            candidates = [p for p in pools if ready[p.pk] > 0] or pools
            # Not a secret, only a spread of load: the weighted draw of vmpooler's aliases.
            pool = random.choices(candidates, weights=[p.alias_weight for p in candidates])[0]  # noqa: S311
            ready[pool.pk] -= 1
            picked.append((name, pool))
    return picked


def _api_lifetime() -> timedelta | None:
    hours = settings.VMPORTAL_API_DEFAULT_LIFETIME_HOURS
    return timedelta(hours=hours) if hours else None


def _wanted_in(body: dict) -> Counter:
    """vmpooler's {"pool": "count", …} body as a Counter (counts checked to be whole numbers)."""
    return Counter({str(k): _count(v, str(k)[:64]) for k, v in body.items()})


def _names_in(path: str) -> list[str]:
    """vmpooler's "poolA+poolB+poolA" path segment: one name per VM."""
    return [p for p in path.split("+") if p]


def _find_vm(hostname: str) -> VM:
    hostname = _short(hostname)
    vm = (
        VM.objects.select_related("pool", "template", "host")
        .filter(name=hostname).exclude(state=VMState.DESTROYED).order_by("-created_at").first()
    )
    if vm is None:
        raise ApiError(f"No such VM: {hostname[:80]}.", 404)
    return vm


def _owned_lease(request: HttpRequest, vm: VM) -> Lease:
    lease = Lease.objects.active().filter(vm=vm).first()
    if lease is None:
        raise ApiError(f"{vm.name} is not checked out.", 404)
    if lease.user_id != request.user.pk and not is_admin(request.user):
        raise ApiError(f"{vm.name} is checked out by someone else.", 403)
    return lease
