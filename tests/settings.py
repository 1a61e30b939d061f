"""Test settings: the real settings module, with test defaults for the services.

Tests run against a real PostgreSQL and a real Redis. The defaults below point at the
local servers that `make test` starts; set DATABASE_URL / REDIS_URL to use others.
Redis database 15 keeps test queues apart from a demo running on the same server.
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/vmportal")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
# PostgreSQL needs an explicit key (every host must share it); the processes tests start
# inherit this one, so they read what the test process wrote.
os.environ.setdefault("SECRET_KEY", "vmportal-tests-only-not-a-secret")  # noqa: S105 - a throwaway test key

from vmportal.settings import *  # noqa: E402,F403

# Fast hashing: tests create many users; the real hasher is exercised by login tests anyway.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Several test runs may share one PostgreSQL server (developers, CI); each names its own.
DATABASES["default"]["TEST"] = {"NAME": os.environ.get("VMPORTAL_TEST_DB", "test_vmportal")}  # noqa: F405

# Transactional tests reset the database with TRUNCATE, which the audit table otherwise
# refuses (apps/audit/migrations/0003_refuse_truncate.py).
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":  # noqa: F405
    DATABASES["default"].setdefault("OPTIONS", {})["options"] = "-c vmportal.allow_audit_truncate=on"  # noqa: F405
