"""The demo's database (SQLite, DATABASE_URL unset) through the core loop, run as a script by
tests/sqlite/test_demo_database.py: the suite itself runs on PostgreSQL, where checkout is one
statement; SQLite takes the other branch of the same service, which only this exercises.

Prints one line per step and exits non-zero at the first that does not answer as it should.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vmportal.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402

from apps.api import tokens  # noqa: E402
from apps.leases.models import Lease  # noqa: E402
from apps.pools.models import VMState  # noqa: E402
from tests import factories  # noqa: E402


def step(name: str, ok: bool, detail: object = "") -> None:
    print(f"{'ok ' if ok else 'BAD'} {name} {detail}".rstrip(), flush=True)
    if not ok:
        sys.exit(1)


def main() -> None:
    step("database is SQLite", connection.vendor == "sqlite", connection.vendor)
    call_command("migrate", verbosity=0, interactive=False)
    pool = factories.pool(name="debian-12", size=3)
    for _ in range(3):
        factories.vm(pool, state=VMState.READY)
    User.objects.create_user("eve", password="pw-eve")

    browser = Client()
    response = browser.post("/accounts/login/", {"username": "eve", "password": "pw-eve"})
    step("sign in", response.status_code == 302 and "_auth_user_id" in browser.session, response.status_code)
    response = browser.post("/pools/debian-12/checkout")
    lease = Lease.objects.filter(user__username="eve").first()
    where = response.get("Location", "")
    step("browser checkout", response.status_code == 302 and lease is not None
         and where.rstrip("/").endswith(f"/{lease.pk}"), (response.status_code, where))
    page = browser.get(response["Location"])
    step("lease page", page.status_code == 200 and lease.vm.name in page.content.decode(), page.status_code)

    _, raw = tokens.create_token(user=User.objects.get(username="eve"), name="sqlite")
    api = Client(headers={"X-AUTH-TOKEN": raw})
    response = api.post("/api/v3/vm/debian-12")
    body = response.json()
    step("API checkout", response.status_code == 200 and body.get("ok") is True, (response.status_code, body))
    hostname = body["debian-12"]["hostname"]
    response = api.delete(f"/api/v3/vm/{hostname.split('.')[0]}")
    step("API return", response.status_code == 200 and response.json().get("ok") is True, response.status_code)
    response = browser.post(f"/leases/{lease.pk}/return")
    step("browser return", response.status_code == 302, response.status_code)
    active = Lease.objects.filter(user__username="eve", ended_at__isnull=True).count()
    step("no lease left", active == 0, active)


if __name__ == "__main__":
    main()
