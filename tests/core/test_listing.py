"""Sorting and search on the pool VM table and My VMs: server-side, by query parameters that
the header links and the page's polling keep."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from apps.leases import services
from apps.pools.models import VMState
from tests import factories

pytestmark = pytest.mark.django_db


def _names(html: str, prefix: str) -> list[str]:
    return re.findall(rf"<td>(?:<a [^>]*><strong>)?({prefix}-\d+)", html)


@pytest.fixture
def pool_with_vms(engineer, other_engineer):
    pool = factories.pool(name="deb")
    for n, ip in enumerate(["10.20.0.9", "10.20.0.10", "10.20.0.2", "10.20.0.30"]):
        factories.vm(pool, state=VMState.READY, ip_address=ip, name=f"deb-{n}")
    services.checkout(user=engineer, pools=[pool, pool])
    services.checkout(user=other_engineer, pools=[pool])
    return pool


def test_pool_vm_table_sorts_by_a_column_both_ways_and_keeps_the_search_in_its_links(
        client, admin_user, pool_with_vms):
    client.force_login(admin_user)
    url = reverse("adminui:pool-detail", args=[pool_with_vms.pk])
    by_ip = client.get(url, {"sort": "ip"}).content.decode()
    assert _names(by_ip, "deb") == ["deb-1", "deb-2", "deb-3", "deb-0"]  # as text (the column is text)
    assert _names(client.get(url, {"sort": "-name"}).content.decode(), "deb") == ["deb-3", "deb-2", "deb-1", "deb-0"]
    assert 'aria-sort="ascending"' in by_ip

    searched = client.get(url, {"sort": "-name", "q": "carol"}).content.decode()
    assert _names(searched, "deb") == ["deb-2"]  # the VM leased to carol-engineer
    assert 'href="?sort=ip&amp;q=carol"' in searched and 'value="carol"' in searched
    # The page polls the URL it was loaded with, so a refresh keeps the order and the filter.
    assert f'hx-get="{url}?sort=-name&amp;q=carol"' in searched


def test_pool_vm_table_ignores_an_unknown_sort_and_says_when_nothing_matches(client, admin_user, pool_with_vms):
    client.force_login(admin_user)
    url = reverse("adminui:pool-detail", args=[pool_with_vms.pk])
    assert client.get(url, {"sort": "password"}).status_code == 200
    assert "No ready or leased VM matches “zzz”." in client.get(url, {"q": "zzz"}).content.decode()


def test_my_vms_sorts_and_searches_only_my_leases(client, engineer, pool_with_vms):
    client.force_login(engineer)
    url = reverse("my-leases")
    mine = _names(client.get(url, {"sort": "vm"}).content.decode(), "deb")
    assert len(mine) == 2 and mine == sorted(mine)
    assert _names(client.get(url, {"sort": "-vm"}).content.decode(), "deb") == mine[::-1]
    assert _names(client.get(url, {"q": mine[1]}).content.decode(), "deb") == [mine[1]]
    assert _names(client.get(url, {"q": "deb-2"}).content.decode(), "deb") == []  # carol's VM stays hidden
