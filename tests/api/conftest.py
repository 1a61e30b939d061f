from __future__ import annotations

import base64

import pytest
from django.test import Client

from apps.api import tokens
from apps.pools.models import VMState
from tests import factories


@pytest.fixture(autouse=True)
def _clean_redis(redis_conn):
    """Rate-limit counters live in Redis; every test starts with none."""
    return redis_conn


def token_for(user) -> str:
    _, raw = tokens.create_token(user=user, name="test")
    return raw


@pytest.fixture
def engineer_token(engineer):
    return token_for(engineer)


@pytest.fixture
def other_token(other_engineer):
    return token_for(other_engineer)


@pytest.fixture
def admin_token(admin_user):
    return token_for(admin_user)


def auth_client(raw: str) -> Client:
    return Client(headers={"X-AUTH-TOKEN": raw})


def basic_client(username: str, password: str) -> Client:
    creds = base64.b64encode(f"{username}:{password}".encode()).decode()
    return Client(headers={"Authorization": f"Basic {creds}"})


@pytest.fixture
def api(engineer_token):
    return auth_client(engineer_token)


def ready_pool(name: str, ready: int = 2, **kw):
    pool = factories.pool(name=name, **kw)
    for _ in range(ready):
        factories.vm(pool, state=VMState.READY)
    return pool


@pytest.fixture
def debian(db):
    return ready_pool("debian-12", ready=3)


@pytest.fixture
def centos(db):
    return ready_pool("centos-9", ready=1)
