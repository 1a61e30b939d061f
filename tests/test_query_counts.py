"""The heaviest pages and API lists issue a fixed number of SQL queries, however many rows
they show: one more pool, request or VM never means one more query (bench/pages.py times
them at 10k VMs and 1M audit events)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.api import tokens
from apps.leases.models import Lease, OnDemandRequest
from apps.pools.models import VMState
from tests import factories

pytestmark = pytest.mark.django_db


def queries(client: Client, path: str, **headers) -> int:
    client.get(path, **headers)  # warm: session, content types, cached lookups
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(path, **headers)
    assert response.status_code == 200, (path, response.status_code)
    return len(ctx.captured_queries)


def leased_vms(user, n: int) -> None:
    """n pools, each with a ready VM and a VM leased to user."""
    for _ in range(n):
        pool = factories.pool(size=2)
        factories.vm(pool, state=VMState.READY)
        vm = factories.vm(pool, state=VMState.LEASED)
        Lease.objects.create(vm=vm, pool=pool, user=user, expires_at=timezone.now() + timedelta(hours=2))


def ready_requests(user, n: int) -> None:
    """n on-demand requests, ready, each with its leased VM."""
    for _ in range(n):
        pool = factories.pool(size=0)
        vm = factories.vm(pool, state=VMState.LEASED, on_demand=True)
        Lease.objects.create(vm=vm, pool=pool, user=user, expires_at=timezone.now() + timedelta(hours=2))
        req = OnDemandRequest.objects.create(request_id=f"req-{vm.pk}", user=user, wanted={pool.name: 1},
                                             status=OnDemandRequest.Status.READY)
        req.vms.add(vm)


@pytest.mark.parametrize("path", ["/manage/", "/manage/health/", "/admin/pools/vm/", "/admin/leases/lease/"])
def test_admin_pages_issue_as_many_queries_for_30_pools_as_for_3(path, admin_user):
    admin_user.is_superuser = True  # Django admin's model pages need model permissions
    admin_user.save()
    client = Client()
    client.force_login(admin_user)
    leased_vms(admin_user, 3)
    few = queries(client, path)
    leased_vms(admin_user, 27)
    assert queries(client, path) == few


def test_ondemand_list_issues_as_many_queries_for_12_requests_as_for_2(redis_conn, engineer):
    client = Client(headers={"X-AUTH-TOKEN": tokens.create_token(user=engineer, name="t")[1]})
    ready_requests(engineer, 2)
    few = queries(client, "/api/v1/ondemand")
    ready_requests(engineer, 10)
    body = client.get("/api/v1/ondemand").json()
    assert len(body) == 12 and all(len(r["lease_ids"]) == 1 and r["vms"][0]["pool"] for r in body)
    assert queries(client, "/api/v1/ondemand") == few
