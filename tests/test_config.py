"""Settings come from the environment and fail loudly on bad values."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from vmportal import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_settings(tmp_path, **env) -> subprocess.CompletedProcess:
    """Import vmportal.settings in a fresh interpreter with exactly this environment."""
    base = {"PATH": os.environ["PATH"], "VMPORTAL_VAR_DIR": str(tmp_path)}
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='vmportal.settings'; "
        "from django.conf import settings; "
        "print(settings.DATABASES['default']['ENGINE']); print(settings.DEBUG)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**base, **env}, capture_output=True, text=True
    )


def test_bad_boolean_names_the_variable(monkeypatch):
    monkeypatch.setenv("DEBUG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="DEBUG='maybe' is not a boolean"):
        config.env_bool("DEBUG")


def test_bad_integer_and_minimum(monkeypatch):
    monkeypatch.setenv("X_INT", "ten")
    with pytest.raises(ImproperlyConfigured, match="not a whole number"):
        config.env_int("X_INT", 1)
    monkeypatch.setenv("X_INT", "0")
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        config.env_int("X_INT", 1, minimum=1)


def test_secret_from_file(monkeypatch, tmp_path):
    secret = tmp_path / "s"
    secret.write_text("from-a-file\n")
    monkeypatch.delenv("MY_SECRET", raising=False)
    monkeypatch.setenv("MY_SECRET_FILE", str(secret))
    assert config.env_secret("MY_SECRET") == "from-a-file"
    monkeypatch.setenv("MY_SECRET", "direct")
    with pytest.raises(ImproperlyConfigured, match="not both"):
        config.env_secret("MY_SECRET")


def test_missing_secret_file_is_reported(monkeypatch, tmp_path):
    monkeypatch.delenv("MY_SECRET", raising=False)
    monkeypatch.setenv("MY_SECRET_FILE", str(tmp_path / "absent"))
    with pytest.raises(ImproperlyConfigured, match="cannot read it"):
        config.env_secret("MY_SECRET")


def test_generated_secret_is_stable(tmp_path):
    first = config.generated_secret(tmp_path / "k")
    assert len(first) > 40
    assert config.generated_secret(tmp_path / "k") == first


def test_settings_refuse_a_bad_database_url(tmp_path):
    result = load_settings(tmp_path, DATABASE_URL="mysqlx://nope")
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr


def test_settings_refuse_a_bad_redis_url(tmp_path):
    result = load_settings(tmp_path, REDIS_URL="localhost:6379")
    assert result.returncode != 0
    assert "REDIS_URL='localhost:6379' must start with redis://" in result.stderr


def test_sqlite_default_uses_wal_and_immediate_transactions(tmp_path):
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='vmportal.settings'; django.setup(); "
        "from django.db import connection; c = connection.cursor(); "
        "c.execute('PRAGMA journal_mode'); print(c.fetchone()[0]); "
        "print(connection.settings_dict['OPTIONS']['transaction_mode'])"
    )
    env = {"PATH": os.environ["PATH"], "VMPORTAL_VAR_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["wal", "IMMEDIATE"]
    assert (tmp_path / "vmportal.sqlite3").exists()
    assert (tmp_path / "secret_key").exists()


def test_postgres_url_is_used(tmp_path):
    result = load_settings(tmp_path, DATABASE_URL="postgres://u@127.0.0.1:5432/x", DEBUG="yes", SECRET_KEY="k" * 50)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["django.db.backends.postgresql", "True"]


def test_a_missing_database_says_what_to_fix_without_a_traceback_or_the_password(tmp_path):
    env = {"PATH": os.environ["PATH"], "VMPORTAL_VAR_DIR": str(tmp_path), "SECRET_KEY": "k" * 50,
           "DATABASE_URL": "postgres://postgres:pw-in-url@127.0.0.1:5432/vmportal_no_such_db"}
    result = subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert 'database "vmportal_no_such_db" does not exist' in result.stderr
    assert "createdb -h 127.0.0.1 -U postgres vmportal_no_such_db" in result.stderr
    assert "Traceback" not in result.stderr and "pw-in-url" not in result.stderr + result.stdout
