"""vmportal.wsgi, as a gunicorn worker loads it: every view imported and what was loaded
frozen out of the garbage collector's reach before the first request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.live import ROOT

CODE = """
import gc, sys
import vmportal.wsgi
print(gc.get_freeze_count(), 'apps.api.vmpooler.vms' in sys.modules)
"""


def test_the_web_process_freezes_django_and_every_view_before_serving(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DJANGO_SETTINGS_MODULE"}}
    env.update(DJANGO_SETTINGS_MODULE="vmportal.settings", DATABASE_URL=f"sqlite:///{tmp_path / 'web.sqlite3'}",
               LOG_LEVEL="WARNING")
    done = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    frozen, views_loaded = done.stdout.split()
    # Django, the apps and the URL conf's views are well over 50,000 objects; a full
    # collection under load walked them all, every request waiting.
    assert int(frozen) > 50_000
    assert views_loaded == "True"
