"""`make demo` runs on SQLite unless DATABASE_URL says otherwise; the suite runs on PostgreSQL.
Checkout takes another branch on SQLite (no one-statement CTE), which broke unseen once: every
demo checkout answered 500. This walks the core loop on a fresh SQLite file, in a child process
with the production settings module (tests.settings pins PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_checkout_and_return_on_the_demo_database(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path}/demo.sqlite3", SECRET_KEY="sqlite-journey-not-a-secret",
               ALLOWED_HOSTS="testserver", REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"))
    result = subprocess.run([sys.executable, "-m", "tests.sqlite.journey"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.count("ok ") == 8, result.stdout
