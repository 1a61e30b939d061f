"""Token-authenticated API calls take vmportal.lean_api's short way past the session,
CSRF and auth middleware; what that way must still do, and what keeps the full list."""

from __future__ import annotations

import psycopg
import pytest
from django.db import close_old_connections, connection
from django.test import Client

from apps.api import tokens
from apps.audit.models import AuditEvent
from tests.api.conftest import auth_client


def test_token_checkout_does_not_read_the_session_even_with_someone_elses_cookie(debian, engineer, other_engineer,
                                                                                 engineer_token):
    browser = Client(headers={"X-AUTH-TOKEN": engineer_token, "X-Request-ID": "req-lean-1"})
    browser.force_login(other_engineer)  # a session cookie of another person rides along

    response = browser.post("/api/v3/vm/debian-12")

    assert response.status_code == 200, response.content
    # The full list loaded the session for the audit actor and so answered Vary: Cookie.
    assert "Cookie" not in response.get("Vary", "")
    assert response["X-Request-ID"] == "req-lean-1"
    assert response["X-Frame-Options"] == "DENY"
    assert int(response["Content-Length"]) == len(response.content)
    event = AuditEvent.objects.get(action="lease.checkout")
    assert (event.actor_id, event.request_id) == (engineer.pk, "req-lean-1")


def test_a_revoked_token_fails_on_the_next_call(debian, engineer, engineer_token):
    api = auth_client(engineer_token)
    assert api.get("/api/v3/vm").status_code == 200
    tokens.revoke_token(user=engineer, token=tokens.find_token(engineer_token))
    response = api.post("/api/v3/vm/debian-12")
    assert response.status_code == 401
    assert response.json()["ok"] is False


def test_rate_limit_and_body_checks_apply_on_the_short_way(debian, engineer_token, settings):
    settings.VMPORTAL_API_RATE_LIMIT_PER_TOKEN = 2
    api = auth_client(engineer_token)
    assert [api.get("/api/v1/pools").status_code for _ in range(3)] == [200, 200, 429]
    settings.VMPORTAL_API_RATE_LIMIT_PER_TOKEN = 0
    settings.VMPORTAL_API_MAX_BODY_BYTES = 10
    response = api.post("/api/v3/vm", data='{"debian-12": "1", "x": "yyyyyyyy"}', content_type="application/json")
    assert response.status_code == 413


def test_a_session_only_api_write_is_refused_and_pages_keep_csrf(debian, engineer):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(engineer)
    # No token: the full list, where the API ignores the cookie (no cookie-authenticated writes).
    assert browser.post("/api/v3/vm/debian-12").status_code == 401
    # A token page under /api/ but not /api/v1-3/: CSRF still enforced.
    assert browser.post("/api/tokens/new", {"name": "x"}, headers={"X-AUTH-TOKEN": "anything"}).status_code == 403


def test_unknown_routes_and_bad_tokens_answer_json_on_the_short_way(db):
    api = auth_client("not-a-token")
    assert api.post("/api/v3/vm/debian-12").status_code == 401
    response = api.get("/api/v3/no-such-thing")
    assert response.status_code == 404 and response.json()["ok"] is False


@pytest.mark.django_db(transaction=True)
def test_a_token_call_reconnects_when_its_kept_connection_died_while_idle(debian, engineer_token):
    """The token lookup stands in for Django's per-request health check (CONN_HEALTH_CHECKS)."""
    api = auth_client(engineer_token)
    assert api.get("/api/v3/vm").status_code == 200
    connection.ensure_connection()
    params = {k: v for k, v in connection.get_connection_params().items()
              if k in ("dbname", "host", "port", "user", "password")}
    with psycopg.connect(**params, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [connection.connection.info.backend_pid])
    close_old_connections()  # what request_started does under gunicorn (the test client skips it)

    response = api.post("/api/v3/vm/debian-12")

    assert response.status_code == 200, response.content


def test_a_checkout_by_path_answers_401_before_it_names_unknown_pools_or_counts(db, settings):
    # The pools named are read with the token lookup; a bad token still learns nothing of them.
    api = auth_client("not-a-token")
    assert api.post("/api/v3/vm/no-such-pool").status_code == 401
    names = "+".join(["no-such-pool"] * (settings.VMPORTAL_MAX_VMS_PER_CHECKOUT + 1))
    assert api.post(f"/api/v3/vm/{names}").status_code == 401


def test_a_checkout_by_path_with_a_good_token_reads_pools_and_aliases_as_before(debian, engineer_token, settings):
    api = auth_client(engineer_token)
    response = api.post("/api/v3/vm/no-such-pool")
    assert response.status_code == 404 and "no-such-pool" in response.json()["error"]
    names = "+".join(["debian-12"] * (settings.VMPORTAL_MAX_VMS_PER_CHECKOUT + 1))
    assert api.post(f"/api/v3/vm/{names}").status_code == 400
    response = api.post("/api/v3/vm/debian-12")
    assert response.status_code == 200 and response.json()["debian-12"]["hostname"]
