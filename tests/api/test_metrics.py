from __future__ import annotations

import pytest

from tests.api.conftest import auth_client

pytestmark = pytest.mark.django_db


def test_metrics_need_an_admin_token(client, api, admin_token, debian):
    assert client.get("/metrics").status_code == 401
    assert api.get("/metrics").status_code == 403
    response = auth_client(admin_token).get("/metrics")
    assert response.status_code == 200
    text = response.content.decode()
    assert 'vmportal_pool_vms{pool="debian-12",state="ready"} 3.0' in text
    assert 'vmportal_pool_size{pool="debian-12"} 2.0' in text
    assert "vmportal_queue_depth" in text and "vmportal_checkouts_total" in text


def test_metrics_allowlisted_ip_needs_no_token(client, settings, debian):
    settings.VMPORTAL_METRICS_ALLOW_IPS = ["127.0.0.0/8"]
    assert client.get("/metrics").status_code == 200
