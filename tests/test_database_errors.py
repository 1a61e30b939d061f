"""A database that gives up on a request (a lock or statement timeout, a dropped connection)
answers a clear 503, JSON for the API and a page for a person, never a 500; nothing is
leased and the next request works. Real PostgreSQL: another session holds the user's row
while this one may wait 100 ms for it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from apps.api import tokens
from apps.api.http import DATABASE_MESSAGE
from apps.leases.models import Lease
from apps.pools.models import VMState
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def _users_row_held(user_id: int) -> Iterator[None]:
    """Another session locks the user's row; this one waits at most 100 ms for a lock."""
    db = connection.settings_dict
    with psycopg.connect(host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"]) as other:
        other.execute("SELECT 1 FROM auth_user WHERE id = %s FOR UPDATE", [user_id])
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '100ms'")
        try:
            yield
        finally:
            connection.close()  # the setting goes with the session
            other.rollback()


def test_an_api_checkout_the_database_gives_up_on_answers_503_and_the_next_one_works(engineer, redis_conn):
    pool = factories.pool(name="deb", size=2)
    factories.vm(pool, state=VMState.READY)
    _, raw = tokens.create_token(user=engineer, name="ci")
    client = Client(headers={"X-AUTH-TOKEN": raw})
    with _users_row_held(engineer.pk):
        answer = client.post("/api/v3/vm/deb")
    assert answer.status_code == 503, answer.content
    assert answer.json() == {"ok": False, "error": DATABASE_MESSAGE}
    assert answer["Retry-After"] == "30"
    assert not Lease.objects.exists()
    assert client.post("/api/v3/vm/deb").status_code == 200
    assert Lease.objects.filter(user=engineer).count() == 1


def test_a_page_checkout_the_database_gives_up_on_answers_a_503_page(client, engineer, redis_conn):
    pool = factories.pool(name="deb", size=2)
    factories.vm(pool, state=VMState.READY)
    client.force_login(engineer)
    with _users_row_held(engineer.pk):
        answer = client.post(reverse("checkout", args=["deb"]))
    assert answer.status_code == 503
    assert "The database did not answer or dropped the connection" in answer.content.decode()
    assert not Lease.objects.exists()
