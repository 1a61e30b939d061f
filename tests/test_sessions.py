"""Sessions read from Redis, kept in the database (vmportal.sessions)."""

from __future__ import annotations

import pytest
from django.contrib.sessions.models import Session
from django.db import connection
from django.test.utils import CaptureQueriesContext
from redis import Redis

from vmportal import sessions
from vmportal.sessions import SessionStore


@pytest.fixture
def redis_down(monkeypatch):
    """Every Redis call fails fast, as with the server stopped."""
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    monkeypatch.setattr(sessions, "_client", lambda: dead)


def _saved(**data) -> SessionStore:
    store = SessionStore()
    store.update(data)
    store.save()
    return store


@pytest.mark.django_db
def test_a_saved_session_is_read_from_redis_without_a_query(redis_conn):
    key = _saved(user="alice").session_key
    with CaptureQueriesContext(connection) as queries:
        assert SessionStore(key)["user"] == "alice"
    assert len(queries) == 0


@pytest.mark.django_db
def test_a_session_missing_from_redis_is_read_from_the_database_and_copied_back(redis_conn):
    key = _saved(user="alice").session_key
    redis_conn.flushdb()
    assert SessionStore(key)["user"] == "alice"
    with CaptureQueriesContext(connection) as queries:
        assert SessionStore(key)["user"] == "alice"
    assert len(queries) == 0


@pytest.mark.django_db
def test_with_redis_down_sessions_are_read_from_the_database(redis_conn, redis_down):
    store = SessionStore()
    store["user"] = "alice"
    Session.objects.create(session_key="k" * 32, session_data=store.encode(store._session),
                           expire_date=store.get_expiry_date())
    assert SessionStore("k" * 32)["user"] == "alice"


@pytest.mark.django_db
def test_with_redis_down_new_sessions_are_saved_to_the_database(redis_conn, redis_down):
    key = _saved(user="alice").session_key
    assert Session.objects.filter(session_key=key).exists()


@pytest.mark.django_db
def test_logout_removes_both_copies(redis_conn):
    store = _saved(user="alice")
    key = store.session_key
    store.flush()
    assert not Session.objects.filter(session_key=key).exists()
    assert SessionStore(key).get("user") is None


@pytest.mark.django_db
def test_with_redis_down_a_logout_removes_the_row_and_the_copy_left_in_redis_is_never_honoured(redis_conn, monkeypatch):
    store = _saved(user="alice")
    key = store.session_key
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    monkeypatch.setattr(sessions, "_client", lambda: dead)
    store.delete()
    assert not Session.objects.filter(session_key=key).exists()
    monkeypatch.undo()  # Redis is back, with the copy it held
    assert redis_conn.exists(SessionStore.cache_key_prefix + key)
    sessions._generation_seen = ("", float("-inf"))  # as in any other process
    assert SessionStore(key).get("user") is None


@pytest.mark.django_db
def test_signed_in_pages_work_with_sessions_in_redis(client, engineer, redis_conn):
    client.force_login(engineer)
    assert client.get("/").status_code == 200
    client.logout()
    assert client.get("/").status_code == 302
