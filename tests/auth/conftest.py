from __future__ import annotations

import pytest

from tests.auth import servers
from vmportal import auth_settings


@pytest.fixture
def slapd(tmp_path):
    """A throw-away OpenLDAP server loaded with tests/auth/servers.py's people and groups."""
    if not servers.SLAPD.exists():
        pytest.skip(servers.SLAPD_MISSING)
    server = servers.start_slapd(tmp_path / "slapd")
    yield server
    server.stop()


@pytest.fixture
def use_ldap(settings, monkeypatch):
    """Switch LDAP sign-in on from VMPORTAL_LDAP_* variables, through the real settings code."""

    def configure(**env: str) -> dict:
        for name in [n for n in __import__("os").environ if n.startswith("VMPORTAL_LDAP_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        values = auth_settings.ldap_settings()
        for name, value in values.items():
            setattr(settings, name, value)
        # As vmportal/settings.py orders them: axes' lockout check first, as in production.
        settings.AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend",
                                            "django.contrib.auth.backends.ModelBackend", auth_settings.LDAP_BACKEND]
        return values

    return configure


def search_then_bind(server: servers.Slapd, **extra: str) -> dict:
    """Settings of a site like Active Directory: a service account finds the user in two OUs."""
    return {
        "VMPORTAL_LDAP_SERVER_URI": server.ldap_uri,
        "VMPORTAL_LDAP_START_TLS": "true",
        "VMPORTAL_LDAP_CA_FILE": str(server.ca_file),
        "VMPORTAL_LDAP_BIND_DN": servers.SERVICE_DN,
        "VMPORTAL_LDAP_BIND_PASSWORD": servers.SERVICE_PW,
        "VMPORTAL_LDAP_USER_SEARCH_BASE": f"ou=people,{servers.SUFFIX}; ou=contractors,{servers.SUFFIX}",
        "VMPORTAL_LDAP_GROUP_SEARCH_BASE": f"ou=groups,{servers.SUFFIX}",
        **extra,
    }
