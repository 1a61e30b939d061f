"""A database that gives up on a request (a lock or statement timeout, a dropped connection)
answers a clear 503, JSON for the API and a page for a person, never a 500; nothing is
leased and the next request works. Real PostgreSQL: another session holds the user's row
while this one may wait 100 ms for it."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from apps.api import tokens
from apps.api.http import DATABASE_MESSAGE
from apps.leases.models import Lease
from apps.pools.models import VMState
from tests import factories
from tests.live import users_row_held

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_api_checkout_the_database_gives_up_on_answers_503_and_the_next_one_works(engineer, redis_conn):
    pool = factories.pool(name="deb", size=2)
    factories.vm(pool, state=VMState.READY)
    _, raw = tokens.create_token(user=engineer, name="ci")
    client = Client(headers={"X-AUTH-TOKEN": raw})
    with users_row_held(engineer.pk):
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
    with users_row_held(engineer.pk):
        answer = client.post(reverse("checkout", args=["deb"]))
    assert answer.status_code == 503
    assert "The database did not answer or dropped the connection" in answer.content.decode()
    assert not Lease.objects.exists()
