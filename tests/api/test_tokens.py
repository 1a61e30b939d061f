from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.api import tokens
from apps.api.models import ApiToken
from apps.audit.models import AuditEvent
from tests.api.conftest import auth_client, basic_client

pytestmark = pytest.mark.django_db


def test_token_is_stored_only_as_its_sha256(engineer):
    token, raw = tokens.create_token(user=engineer, name="ci")
    assert raw not in token.token_hash
    assert token.token_hash == tokens.hash_token(raw)
    assert len(token.token_hash) == 64
    assert not ApiToken.objects.filter(token_hash=raw).exists()
    assert token.expires_at is not None  # default lifetime applies


def test_expired_and_revoked_tokens_do_not_authenticate(engineer):
    expired, raw_expired = tokens.create_token(user=engineer, name="old", lifetime=timedelta(days=1))
    ApiToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    revoked, raw_revoked = tokens.create_token(user=engineer, name="gone")
    tokens.revoke_token(user=engineer, token=revoked)
    assert tokens.authenticate(raw_expired) is None
    assert tokens.authenticate(raw_revoked) is None
    assert auth_client(raw_expired).post("/api/v3/vm/debian-12").status_code == 401


def test_token_use_records_last_used(engineer):
    token, raw = tokens.create_token(user=engineer, name="ci")
    assert auth_client(raw).get("/api/v3/vm").status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_post_token_with_basic_auth_returns_a_working_token(engineer):
    response = basic_client("bob-engineer", "pw-engineer").post("/api/v3/token")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True and isinstance(body["token"], str)
    assert auth_client(body["token"]).get("/api/v3/vm").status_code == 200
    assert AuditEvent.objects.filter(action="api.token.create").exists()


def test_post_token_with_bad_password_is_401_json(engineer):
    response = basic_client("bob-engineer", "wrong").post("/api/v3/token")
    assert response.status_code == 401
    assert response.json()["ok"] is False
    assert response["WWW-Authenticate"].startswith("Basic")


def test_get_token_lists_own_tokens_without_their_secret(engineer, other_engineer):
    _, mine = tokens.create_token(user=engineer, name="mine")
    _, theirs = tokens.create_token(user=other_engineer, name="theirs")
    response = basic_client("bob-engineer", "pw-engineer").get("/api/v3/token")
    assert response.status_code == 200
    body = response.json()
    assert [v["name"] for v in body.values()] == ["mine"]
    assert mine not in response.content.decode() and theirs not in response.content.decode()
    assert set(next(iter(body.values()))) >= {"created", "last"}


def test_get_token_status_shows_user_and_running_vms(engineer, debian):
    _, raw = tokens.create_token(user=engineer, name="ci")
    auth_client(raw).post("/api/v3/vm/debian-12")
    body = auth_client(raw).get(f"/api/v3/token/{raw}").json()
    assert body[raw]["user"] == "bob-engineer"
    assert len(body[raw]["vms"]["running"]) == 1


def test_get_unknown_token_is_404(engineer):
    response = auth_client("nope").get("/api/v3/token/not-a-token")
    assert response.status_code == 404 and response.json()["ok"] is False


def test_delete_token_needs_basic_auth_of_its_owner(engineer, other_engineer):
    _, raw = tokens.create_token(user=engineer, name="ci")
    assert basic_client("bob-engineer", "bad").delete(f"/api/v3/token/{raw}").status_code == 401
    assert basic_client("carol-engineer", "pw-engineer").delete(f"/api/v3/token/{raw}").status_code == 404
    assert tokens.authenticate(raw) is not None
    response = basic_client("bob-engineer", "pw-engineer").delete(f"/api/v3/token/{raw}")
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert tokens.authenticate(raw) is None


def test_admin_may_revoke_anyones_token(engineer, admin_user):
    _, raw = tokens.create_token(user=engineer, name="ci")
    assert basic_client("alice-admin", "pw-admin").delete(f"/api/v3/token/{raw}").status_code == 200
    assert tokens.authenticate(raw) is None


# --- the token page -------------------------------------------------------------------


def test_token_page_shows_a_new_token_once(client, engineer):
    client.force_login(engineer)
    response = client.post("/api/tokens/new", {"name": "jenkins", "days": "30"}, follow=True)
    assert response.status_code == 200
    raw = response.context["new_token"]
    assert raw and raw in response.content.decode()
    token = ApiToken.objects.get(user=engineer)
    assert token.name == "jenkins" and token.token_hash == tokens.hash_token(raw)
    assert timedelta(days=29) < token.expires_at - timezone.now() <= timedelta(days=30)
    again = client.get("/api/tokens/")
    assert raw not in again.content.decode()
    assert "jenkins" in again.content.decode()


def test_token_page_revokes_only_own_tokens(client, engineer, other_engineer):
    theirs, _ = tokens.create_token(user=other_engineer, name="theirs")
    mine, _ = tokens.create_token(user=engineer, name="mine")
    client.force_login(engineer)
    assert client.post(f"/api/tokens/{theirs.pk}/revoke").status_code == 404
    assert client.post(f"/api/tokens/{mine.pk}/revoke").status_code == 302
    theirs.refresh_from_db()
    mine.refresh_from_db()
    assert not theirs.revoked and mine.revoked


def test_token_page_needs_login(client, db):
    response = client.get("/api/tokens/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_token_page_create_needs_csrf(engineer):
    from django.test import Client

    c = Client(enforce_csrf_checks=True)
    c.force_login(engineer)
    assert c.post("/api/tokens/new", {"name": "x"}).status_code == 403
    assert not ApiToken.objects.exists()
