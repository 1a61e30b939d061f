"""Host load page (issue 17): cluster totals, charts with axes and values on hover, 1h/24h,
and datastore capacity."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.inventory.models import Datastore, HostLoadSample
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def cluster_hosts(ready_pool):
    cluster = ready_pool.cluster
    busy = factories.host(cluster, name="esx-busy", cpu_usage_mhz=9_000, memory_usage_mb=32_768)
    factories.host(cluster, name="esx-idle", cpu_usage_mhz=1_000, memory_usage_mb=0)
    factories.host(cluster, name="esx-unknown", cpu_usage_mhz=None, memory_usage_mb=None)
    now = timezone.now()
    HostLoadSample.objects.create(host=busy, at=now - timedelta(minutes=5), cpu_usage_mhz=4_000, memory_usage_mb=0)
    HostLoadSample.objects.create(host=busy, at=now - timedelta(hours=5), cpu_usage_mhz=8_000, memory_usage_mb=0)
    return cluster


def test_cluster_totals_sum_known_hosts_only(client, admin_user, cluster_hosts):
    client.force_login(admin_user)
    response = client.get(reverse("adminui:hosts"))
    [group] = response.context["clusters"]
    assert group.cpu_percent == 50.0  # (9000 + 1000) / 20000; the unknown host counts in neither sum
    assert group.memory_percent == 25.0
    body = response.content.decode()
    assert f'id="cluster-total-{cluster_hosts.pk}"' in body and "<strong>50%</strong>" in body


def test_host_chart_has_axes_and_values_on_hover_for_the_last_hour_or_day(client, admin_user, cluster_hosts):
    client.force_login(admin_user)
    hour = client.get(reverse("adminui:hosts")).content.decode()
    assert ">100%</text>" in hour and ">now</text>" in hour and ">-1h</text>" in hour
    assert ": CPU 40%, memory 0% (peak)</title>" in hour and "CPU 80%" not in hour
    day = client.get(reverse("adminui:hosts"), {"range": "24h"}).content.decode()
    assert "CPU 80%" in day and ">-24h</text>" in day and 'aria-current="true">24h</a>' in day
    poll = client.get(reverse("adminui:hosts"), {"range": "24h"}, HTTP_HX_REQUEST="true").content.decode()
    assert "CPU 80%" in poll and "<html" not in poll
    assert client.get(reverse("adminui:hosts"), {"range": "1y"}).status_code == 200


def test_datastores_show_how_full_they_are(client, admin_user, cluster_hosts):
    dc = cluster_hosts.datacenter
    Datastore.objects.create(vcenter=dc.vcenter, datacenter=dc, moid="ds-1", name="ssd-01",
                             capacity_bytes=1000 * 2**30, free_bytes=100 * 2**30)
    Datastore.objects.create(vcenter=dc.vcenter, datacenter=dc, moid="ds-2", name="nfs-02", capacity_bytes=None)
    client.force_login(admin_user)
    body = client.get(reverse("adminui:hosts")).content.decode()
    section = body[body.index('id="datastores"'):]
    assert "ssd-01" in section and "90%" in section and "1000.0\xa0GB" in section
    assert "nfs-02" in section and "unknown" in section
