"""The chaos harness's quick run (tools/chaos/run.py --quick) as part of `make test`.

It starts its own Redis, simulator, web server, pool manager and workers against a
database of its own, kills workers mid-job, stops the simulator and Redis, has PostgreSQL
drop every session, loads the API with 32 clients, and after each fault reads every
invariant. `make chaos` runs the full version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.chaos, pytest.mark.vcsim]


def test_after_worker_kills_outages_and_load_every_invariant_is_zero_and_the_system_recovers(tmp_path):
    out = tmp_path / "chaos.json"
    # A database of its own next to this run's test database, so parallel runs do not meet.
    database = f"{os.environ.get('VMPORTAL_TEST_DB', 'test_vmportal')}_chaos"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "chaos" / "run.py"), "--quick", "--database", database,
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    print(proc.stdout[-20000:])  # the tables, shown by -ra/-s or on failure
    assert out.exists(), f"the harness did not finish:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    results = json.loads(out.read_text())["results"]
    assert [r["name"] for r in results] == ["set-up", "kills", "vcenter", "redis", "database", "load"]
    violations = {r["name"]: {k: v for k, v in r["counts"].items() if v} for r in results}
    assert all(not v for v in violations.values()), f"invariants broken: {violations}\n{proc.stdout[-6000:]}"
    unrecovered = [r["name"] for r in results if r["recovery"] is None]
    assert not unrecovered, f"did not recover: {unrecovered}\n{proc.stdout[-6000:]}"
    assert proc.returncode == 0, proc.stdout[-4000:]
