"""`manage.py check --deploy` with the documented production settings (deploy/vmportal.env.example)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "vmportal.env.example"


def _documented_env(tmp_path: Path) -> dict[str, str]:
    env = {}
    for line in EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    # Only what names this machine's files and servers changes; every security setting is the file's.
    key = tmp_path / "secret_key"
    key.write_text(secrets.token_urlsafe(50))
    env.update(SECRET_KEY_FILE=str(key), VMPORTAL_ENCRYPTION_KEY_FILE=str(key), VMPORTAL_VAR_DIR=str(tmp_path),
               VMPORTAL_UPLOAD_DIR=str(tmp_path / "uploads"),
               DATABASE_URL=os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/vmportal"))
    return env


def _check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SECURE_", "SESSION_", "CSRF_", "SECRET_KEY", "DEBUG", "VMPORTAL_", "AXES_"))}
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                          cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=120)


def test_check_deploy_with_the_documented_production_settings_prints_no_warning(tmp_path):
    out = _check_deploy(_documented_env(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "System check identified no issues" in out.stdout
    assert "WARNINGS:" not in out.stdout + out.stderr


def test_check_deploy_warns_when_https_settings_are_left_out(tmp_path):
    env = {k: v for k, v in _documented_env(tmp_path).items()
           if k not in {"SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS"}}
    out = _check_deploy(env)
    assert out.returncode != 0
    assert "security.W004" in out.stderr + out.stdout and "security.W008" in out.stderr + out.stdout
