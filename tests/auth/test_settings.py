"""Directory sign-in settings: off by default, and a bad value stops start-up naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from tests.auth import servers
from vmportal import auth_settings

ROOT = servers.ROOT


@pytest.fixture
def clean_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith(("VMPORTAL_LDAP_", "VMPORTAL_OIDC_"))]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_both_are_off_by_default_so_only_local_accounts_sign_in(clean_env):
    assert auth_settings.ldap_settings() == {} and auth_settings.oidc_settings() == {}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VMPORTAL_LDAP_", "VMPORTAL_OIDC_"))}
    out = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; "
                               "print(settings.AUTHENTICATION_BACKENDS)"],
        cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE": "vmportal.settings"}, capture_output=True, text=True,
        check=True)
    # axes' backend only refuses locked-out sign-ins (vmportal/settings.py); it signs nobody in.
    assert out.stdout.strip() == "['axes.backends.AxesStandaloneBackend', 'django.contrib.auth.backends.ModelBackend']"


@pytest.mark.parametrize(("env", "named"), [
    ({"VMPORTAL_LDAP_SERVER_URI": "http://dc1", "VMPORTAL_LDAP_USER_DN_TEMPLATE": "uid=%(user)s"},
     "VMPORTAL_LDAP_SERVER_URI"),
    ({"VMPORTAL_LDAP_SERVER_URI": "ldap://dc1"}, "VMPORTAL_LDAP_USER_SEARCH_BASE"),
    ({"VMPORTAL_LDAP_SERVER_URI": "ldaps://dc1", "VMPORTAL_LDAP_START_TLS": "yes",
      "VMPORTAL_LDAP_USER_DN_TEMPLATE": "uid=%(user)s"}, "VMPORTAL_LDAP_START_TLS"),
    ({"VMPORTAL_LDAP_SERVER_URI": "ldap://dc1", "VMPORTAL_LDAP_START_TLS": "maybe"}, "VMPORTAL_LDAP_START_TLS"),
    ({"VMPORTAL_LDAP_SERVER_URI": "ldaps://dc1", "VMPORTAL_LDAP_CA_FILE": "/nonexistent/ca.pem",
      "VMPORTAL_LDAP_USER_DN_TEMPLATE": "uid=%(user)s"}, "VMPORTAL_LDAP_CA_FILE"),
    ({"VMPORTAL_LDAP_SERVER_URI": "ldap://dc1", "VMPORTAL_LDAP_USER_SEARCH_BASE": "dc=x",
      "VMPORTAL_LDAP_GROUP_TYPE": "madeUp"}, "VMPORTAL_LDAP_GROUP_TYPE"),
    ({"VMPORTAL_LDAP_SERVER_URI": "ldap://dc1", "VMPORTAL_LDAP_USER_SEARCH_BASE": "dc=x",
      "VMPORTAL_LDAP_DENY_GROUP": "cn=gone,dc=x"}, "VMPORTAL_LDAP_DENY_GROUP"),
    ({"VMPORTAL_LDAP_SERVER_URI": "ldap://dc1", "VMPORTAL_LDAP_USER_SEARCH_BASE": "dc=x",
      "VMPORTAL_LDAP_BIND_PASSWORD_FILE": "/nonexistent/pw"}, "VMPORTAL_LDAP_BIND_PASSWORD_FILE"),
    ({"VMPORTAL_OIDC_CLIENT_ID": "vmportal"}, "VMPORTAL_OIDC_ISSUER"),
    ({"VMPORTAL_OIDC_CLIENT_ID": "vmportal", "VMPORTAL_OIDC_ISSUER": "login.example.com"}, "VMPORTAL_OIDC_ISSUER"),
    ({"VMPORTAL_OIDC_CLIENT_ID": "vmportal", "VMPORTAL_OIDC_ISSUER": "https://login.example.com"},
     "VMPORTAL_OIDC_CLIENT_SECRET"),
    ({"VMPORTAL_OIDC_CLIENT_ID": "vmportal", "VMPORTAL_OIDC_ISSUER": "https://login.example.com",
      "VMPORTAL_OIDC_CLIENT_SECRET": "s", "VMPORTAL_OIDC_SIGN_ALGO": "HS256"}, "VMPORTAL_OIDC_SIGN_ALGO"),
])
def test_a_bad_value_stops_start_up_naming_the_variable(clean_env, env, named):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ImproperlyConfigured, match=named):
        auth_settings.ldap_settings()
        auth_settings.oidc_settings()


def test_secrets_may_come_from_files(clean_env, tmp_path):
    (tmp_path / "bind").write_text("from-a-file\n")
    (tmp_path / "client").write_text("client-secret\n")
    clean_env.setenv("VMPORTAL_LDAP_SERVER_URI", "ldaps://dc1.corp.example.com ldaps://dc2.corp.example.com")
    clean_env.setenv("VMPORTAL_LDAP_USER_SEARCH_BASE", "ou=Staff,dc=corp,dc=example,dc=com;ou=Ext,dc=corp")
    clean_env.setenv("VMPORTAL_LDAP_BIND_PASSWORD_FILE", str(tmp_path / "bind"))
    clean_env.setenv("VMPORTAL_OIDC_CLIENT_ID", "vmportal")
    clean_env.setenv("VMPORTAL_OIDC_ISSUER", "https://login.example.com/realms/corp/")
    clean_env.setenv("VMPORTAL_OIDC_CLIENT_SECRET_FILE", str(tmp_path / "client"))
    ldap_values, oidc_values = auth_settings.ldap_settings(), auth_settings.oidc_settings()
    assert ldap_values["AUTH_LDAP_BIND_PASSWORD"] == "from-a-file"
    assert len(ldap_values["AUTH_LDAP_USER_SEARCH"].searches) == 2
    assert oidc_values["OIDC_RP_CLIENT_SECRET"] == "client-secret"
    assert oidc_values["VMPORTAL_OIDC_ISSUER"] == "https://login.example.com/realms/corp"
    assert oidc_values["OIDC_USE_PKCE"] is True
