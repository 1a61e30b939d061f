"""Sign-in throttling (django-axes): a username+address pair locks after AXES_FAILURE_LIMIT failures."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.api.conftest import basic_client


def _login(username: str, password: str, ip: str = "10.1.2.3"):
    client = Client(REMOTE_ADDR=ip)
    return client, client.post(reverse("login"), {"username": username, "password": password})


def _signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@pytest.mark.django_db
def test_forty_wrong_passwords_lock_the_login_page_for_that_user_only(engineer, other_engineer):
    for _ in range(40):
        _login("bob-engineer", "wrong")
    client, response = _login("bob-engineer", "pw-engineer")
    assert response.status_code == 429
    assert not _signed_in(client)
    assert "Too many failed sign-ins" in response.content.decode()
    assert response["Retry-After"] == "900"

    other, response = _login("carol-engineer", "pw-engineer")
    assert response.status_code == 302 and _signed_in(other)
    # The pair is locked, not the account: bob from another address still signs in.
    elsewhere, response = _login("bob-engineer", "pw-engineer", ip="10.9.9.9")
    assert response.status_code == 302 and _signed_in(elsewhere)


@pytest.mark.django_db
def test_a_success_before_the_limit_clears_the_count(engineer, settings):
    for _ in range(2):
        for _ in range(settings.AXES_FAILURE_LIMIT - 1):
            assert _login("bob-engineer", "wrong")[1].status_code == 200
        client, response = _login("bob-engineer", "pw-engineer")
        assert response.status_code == 302 and _signed_in(client)


@pytest.mark.django_db
def test_basic_auth_token_route_answers_429_json_while_locked(engineer, other_engineer):
    for _ in range(40):
        assert basic_client("bob-engineer", "wrong").post("/api/v3/token").status_code in (401, 429)
    response = basic_client("bob-engineer", "pw-engineer").post("/api/v3/token")
    assert response.status_code == 429
    body = response.json()
    assert body["ok"] is False and "Too many failed sign-ins" in body["error"]
    assert int(response["Retry-After"]) > 0
    assert basic_client("carol-engineer", "pw-engineer").post("/api/v3/token").status_code == 200
