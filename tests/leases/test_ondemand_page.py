"""The on-demand request page tells one story: its steps agree with its VM rows, a failure
marks the step it failed at, and "being made for you" shows only while that is true."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.leases import ondemand
from apps.leases.models import OnDemandRequest
from apps.pools.models import VMState
from tests import factories

pytestmark = pytest.mark.django_db
Status = OnDemandRequest.Status


def _request(engineer, *states: str, status: str = Status.PROVISIONING, moid: str = "vm-9"):
    pool = factories.pool(name="deb")
    req = ondemand.request_vms(user=engineer, pools=[pool] * len(states))
    for state in states:
        req.vms.add(factories.vm(pool, state=state, on_demand=True, moid=moid, state_reason="clone failed: disk full"))
    OnDemandRequest.objects.filter(pk=req.pk).update(status=status, status_reason="clone failed: disk full")
    req.refresh_from_db()
    return req


def _steps(client, req) -> str:
    html = client.get(reverse("ondemand-status", args=[req.request_id])).content.decode()
    return html[html.index('<ol class="steps"'):html.index("</ol>")], html


def test_a_request_whose_vm_is_ready_but_not_yet_leased_says_ready_not_booting(client, engineer):
    req = _request(engineer, VMState.READY)
    assert ondemand.describe(req)["step"] == "ready"
    client.force_login(engineer)
    steps, html = _steps(client, req)
    assert '<li class="now" aria-current="step">Ready</li>' in steps
    assert '<li class="done">Booting</li>' in steps
    assert "handing it to you" in html and "waiting for the guest" not in html


def test_a_pending_request_says_it_is_being_made(client, engineer):
    req = _request(engineer, VMState.BOOTING)
    client.force_login(engineer)
    steps, html = _steps(client, req)
    assert '<li class="now" aria-current="step">Booting</li>' in steps
    assert "being made for you" in html


@pytest.mark.parametrize(("moid", "failed_step"), [("vm-9", "Booting"), ("", "Cloning")])
def test_a_failed_request_marks_the_step_it_failed_at_and_drops_the_banner(client, engineer, moid, failed_step):
    req = _request(engineer, VMState.FAILED, status=Status.FAILED, moid=moid)
    client.force_login(engineer)
    steps, html = _steps(client, req)
    assert f'<li class="failed">{failed_step}: failed</li>' in steps
    assert 'class="now"' not in steps
    assert "being made for you" not in html
    assert "clone failed: disk full" in html


def test_asking_on_demand_leaves_no_flash_message_to_outlive_the_request(client, engineer):
    factories.pool(name="deb")
    client.force_login(engineer)
    response = client.post(reverse("ondemand-create", args=["deb"]), follow=True)
    html = response.content.decode()
    assert html.count("being made for you") == 1 and 'id="ondemand-banner"' in html


def test_a_failed_request_can_be_dismissed_from_my_vms_but_a_pending_one_cannot(client, engineer):
    failed = _request(engineer, VMState.FAILED, status=Status.FAILED)
    OnDemandRequest.objects.filter(pk=failed.pk).update(finished_at=failed.created_at)
    pending = ondemand.request_vms(user=engineer, pools=[factories.pool(name="deb2")])
    client.force_login(engineer)
    html = client.get(reverse("my-leases")).content.decode()
    assert failed.request_id[:10] in html and html.count(">Dismiss</button>") == 1
    client.post(reverse("ondemand-dismiss", args=[failed.request_id]))
    client.post(reverse("ondemand-dismiss", args=[pending.request_id]))
    html = client.get(reverse("my-leases")).content.decode()
    assert failed.request_id[:10] not in html and pending.request_id[:10] in html
    assert OnDemandRequest.objects.filter(pk=failed.pk).exists()
