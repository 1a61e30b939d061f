"""The host load page: unknown stats said so, badges, the last hour of load."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.inventory import selectors
from apps.inventory.models import HostLoadSample, InventoryVM
from tests import factories

pytestmark = pytest.mark.django_db


def test_host_page_says_unknown_for_missing_stats_and_shows_badges(client, admin_user, ready_pool):
    factories.host(ready_pool.cluster, name="esx-unknown", cpu_usage_mhz=None, memory_usage_mb=None)
    busy = factories.host(ready_pool.cluster, name="esx-busy", cpu_usage_mhz=9_500, memory_usage_mb=16_384,
                     in_maintenance=True, config_issues=2, connection_state="disconnected")
    InventoryVM.objects.create(vcenter=busy.vcenter, datacenter=busy.datacenter, moid="vm-77", name="x", host=busy)
    client.force_login(admin_user)
    response = client.get(reverse("adminui:hosts"))
    body = response.content.decode()
    assert body.count(">unknown<") == 2  # the unknown host's CPU and memory, never "0%"
    assert "95%" in body and "25%" in body
    assert "maintenance" in body and "2 config issues" in body and "disconnected" in body
    rows = {r.host.name: r for group in response.context["clusters"] for r in group.hosts}
    assert rows["esx-busy"].vm_count == 1 and rows["esx-unknown"].vm_count == 0


def test_host_sparkline_uses_the_last_hour_only(client, admin_user, ready_pool):
    host = factories.host(ready_pool.cluster, cpu_usage_mhz=5_000, memory_usage_mb=1024)
    now = timezone.now()
    for minutes, cpu in [(90, 10_000), (40, 0), (20, 5_000), (1, 10_000)]:
        HostLoadSample.objects.create(host=host, at=now - timedelta(minutes=minutes), cpu_usage_mhz=cpu,
                                      memory_usage_mb=None)
    [group] = selectors.host_load()
    [row] = group.hosts
    assert row.cpu_points == "0.0,24.0 60.0,12.0 120.0,0.0"
    assert row.mem_points == ""
    client.force_login(admin_user)
    poll = client.get(reverse("adminui:hosts"), HTTP_HX_REQUEST="true")
    assert b"<svg" in poll.content and b"<html" not in poll.content


def test_sparkline_points_skip_unknown_samples():
    assert selectors.sparkline_points([0, None, 100], width=10, height=10) == "0.0,10.0 10.0,0.0"
    assert selectors.sparkline_points([]) == ""
