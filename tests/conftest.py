from __future__ import annotations

import django_rq
import pytest
from django.contrib.auth.models import Group, User

from tests import vcsim as vcsim_launcher


@pytest.fixture(autouse=True)
def _fresh_instance_id():
    """Transactional tests flush the table that stores the installation's id; a process-wide
    cache of it would outlive the flush, while worker processes read the new one."""
    from apps.pools import instance  # noqa: PLC0415 - Django is set up only once tests run

    instance.forget()


@pytest.fixture(scope="session")
def vcsim():
    """One simulator for the whole run (default inventory: 2 clusters, 2 templates)."""
    sim = vcsim_launcher.start()
    yield sim
    sim.stop()


@pytest.fixture
def vcsim_factory():
    """Private simulators with extra flags (fault injection, scale), stopped after the test."""
    started: list[vcsim_launcher.Vcsim] = []

    def start(*flags: str) -> vcsim_launcher.Vcsim:
        sim = vcsim_launcher.start(*flags)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def redis_conn():
    """The test Redis database, emptied before the test."""
    conn = django_rq.get_connection("default")
    conn.flushdb()
    yield conn
    conn.flushdb()


@pytest.fixture
def admin_user(db, settings):
    user = User.objects.create_user("alice-admin", password="pw-admin", is_staff=True)
    group, _ = Group.objects.get_or_create(name=settings.VMPORTAL_ADMIN_GROUP)
    user.groups.add(group)
    return user


@pytest.fixture
def engineer(db):
    return User.objects.create_user("bob-engineer", password="pw-engineer")


@pytest.fixture
def other_engineer(db):
    return User.objects.create_user("carol-engineer", password="pw-engineer")


@pytest.fixture
def ready_pool(db):
    """A pool whose template has a ready copy in its cluster (so it may be reconfigured)."""
    from apps.pools.models import TemplateCopy, TemplateStatus  # noqa: PLC0415 - Django is set up only once tests run
    from tests import factories  # noqa: PLC0415 - its model imports need Django set up

    pool = factories.pool(size=2)
    TemplateCopy.objects.create(template=pool.template, cluster=pool.cluster, moid="vm-1",
                                status=TemplateStatus.READY, progress=100)
    return pool
