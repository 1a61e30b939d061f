"""A host that would disagree with the others refuses to start, naming the setting to fix:
a PostgreSQL database with no SECRET_KEY (each host would generate its own), and a stored
vCenter password this host's key cannot decrypt (web, worker, pool manager and watcher)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.db import connection

from apps.inventory.models import VCenter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def run(argv: list[str], tmp_path, **env: str) -> subprocess.CompletedProcess:
    """A process with exactly this environment (plus PATH and its own var dir)."""
    base = {"PATH": os.environ["PATH"], "VMPORTAL_VAR_DIR": str(tmp_path), "LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env={**base, **env}, capture_output=True, text=True,
                          timeout=120)


def test_postgres_without_secret_key_refuses_to_start_naming_the_setting(tmp_path):
    code = "import os; os.environ['DJANGO_SETTINGS_MODULE']='vmportal.settings'; from django.conf import settings; " \
           "settings.SECRET_KEY"
    result = run(["-c", code], tmp_path, DATABASE_URL="postgres://u@127.0.0.1:5432/x")
    assert result.returncode != 0
    assert "SECRET_KEY is not set: with a PostgreSQL DATABASE_URL every host must share one key" in result.stderr
    assert not (tmp_path / "secret_key").exists()  # nothing host-local was generated


def test_two_hosts_with_the_same_secret_key_and_postgres_start_and_sqlite_still_generates_one(tmp_path):
    code = "import os; os.environ['DJANGO_SETTINGS_MODULE']='vmportal.settings'; from django.conf import settings; " \
           "print(settings.SECRET_KEY == settings.FIELD_ENCRYPTION_KEY)"
    shared = run(["-c", code], tmp_path / "a", DATABASE_URL="postgres://u@127.0.0.1:5432/x", SECRET_KEY="k" * 50)
    assert shared.returncode == 0, shared.stderr
    assert shared.stdout.split() == ["True"]
    demo = run(["-c", code], tmp_path / "b")  # SQLite: one host, a generated key is fine (make demo)
    assert demo.returncode == 0, demo.stderr
    assert (tmp_path / "b" / "secret_key").exists()


@pytest.mark.django_db(transaction=True)
def test_a_host_whose_key_cannot_read_the_stored_vcenter_password_refuses_to_start(tmp_path, settings):
    VCenter.objects.create(name="vc-east", host="vc.example.test", username="u", password="stored-secret")
    common = {"DATABASE_URL": database_url(), "SECRET_KEY": settings.SECRET_KEY, "REDIS_URL": settings.REDIS_URL,
              "DJANGO_SETTINGS_MODULE": "tests.settings"}
    wrong = {**common, "VMPORTAL_ENCRYPTION_KEY": "another-hosts-key"}
    web = "import vmportal.wsgi"
    commands = {
        "web": ["-c", web],
        "worker": ["manage.py", "rqworker", "clone", "--burst"],
        "pool manager": ["manage.py", "poolmanager", "--once"],
        "watcher": ["manage.py", "watch_inventory", "--vcenter", "no-such-vcenter"],
    }
    for role, argv in commands.items():
        result = run(argv, tmp_path, **wrong)
        assert result.returncode != 0, f"{role} started with a key that cannot read the stored password"
        said = result.stderr[-2000:]
        assert "VMPORTAL_ENCRYPTION_KEY" in said and "'vc-east'" in said, (role, said)
    # The same processes with the shared key start (the web app imports, the worker drains and exits).
    assert run(["-c", web], tmp_path, **common).returncode == 0
    good = run(["manage.py", "rqworker", "clone", "--burst"], tmp_path, **common)
    assert good.returncode == 0, good.stderr[-2000:]
