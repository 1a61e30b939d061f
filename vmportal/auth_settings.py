"""Directory sign-in settings (LDAP and OpenID Connect), read from the environment.

Both are off unless their variables are set, so a plain `make demo` signs in with local
accounts only. Like every other setting, a bad value stops start-up with a message that
names the variable. python-ldap is imported only when LDAP is switched on.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from vmportal.config import env_bool, env_int, env_list, env_secret, env_str

LDAP_BACKEND = "apps.accounts.backends.DirectoryLDAPBackend"
OIDC_BACKEND = "apps.accounts.backends.DirectoryOIDCBackend"

_GROUP_TYPES = {
    "groupOfNames": ("GroupOfNamesType", "(objectClass=groupOfNames)"),
    "nestedGroupOfNames": ("NestedGroupOfNamesType", "(objectClass=groupOfNames)"),
    "groupOfUniqueNames": ("GroupOfUniqueNamesType", "(objectClass=groupOfUniqueNames)"),
    "posixGroup": ("PosixGroupType", "(objectClass=posixGroup)"),
    "activeDirectory": ("ActiveDirectoryGroupType", "(objectClass=group)"),
    "nestedActiveDirectory": ("NestedActiveDirectoryGroupType", "(objectClass=group)"),
}


def _dn_list(name: str) -> list[str]:
    """DNs separated by ";" (a DN has commas of its own)."""
    return [item.strip() for item in os.environ.get(name, "").split(";") if item.strip()]


def _readable_file(name: str) -> str:
    path = env_str(name)
    if path and not Path(path).is_file():
        raise ImproperlyConfigured(f"{name}={path}: no such file.")
    return path


def _http_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ImproperlyConfigured(f"{name}={value!r} is not an http(s):// URL.")
    return value


def directory_groups() -> list[str]:
    """VMPORTAL_DIRECTORY_GROUPS: the directory groups vmportal mirrors (empty: all of them)."""
    return env_list("VMPORTAL_DIRECTORY_GROUPS", [])


def ldap_settings() -> dict:
    """AUTH_LDAP_* settings, or {} when VMPORTAL_LDAP_SERVER_URI is unset."""
    uri = env_str("VMPORTAL_LDAP_SERVER_URI").strip()
    if not uri:
        return {}
    uris = uri.replace(",", " ").split()
    for one in uris:
        if not one.startswith(("ldap://", "ldaps://")):
            raise ImproperlyConfigured(f"VMPORTAL_LDAP_SERVER_URI: {one!r} must start with ldap:// or ldaps://.")
    start_tls = env_bool("VMPORTAL_LDAP_START_TLS", False)
    if start_tls and any(one.startswith("ldaps://") for one in uris):
        raise ImproperlyConfigured("VMPORTAL_LDAP_START_TLS=true needs ldap:// URIs; ldaps:// is TLS already.")

    import ldap
    from django_auth_ldap import config as ldap_config

    ca_file = _readable_file("VMPORTAL_LDAP_CA_FILE")
    timeout = env_int("VMPORTAL_LDAP_TIMEOUT", 5, minimum=1)
    options: dict = {
        ldap.OPT_REFERRALS: 0,  # AD answers searches of a domain root with referrals we cannot follow
        ldap.OPT_NETWORK_TIMEOUT: timeout,
        ldap.OPT_TIMEOUT: timeout,
        ldap.OPT_X_TLS_REQUIRE_CERT: ldap.OPT_X_TLS_DEMAND,
    }
    if ca_file:
        options[ldap.OPT_X_TLS_CACERTFILE] = ca_file
    options[ldap.OPT_X_TLS_NEWCTX] = 0  # last: applies the TLS options above to this connection

    template = env_str("VMPORTAL_LDAP_USER_DN_TEMPLATE").strip()
    bases = _dn_list("VMPORTAL_LDAP_USER_SEARCH_BASE")
    if bool(template) == bool(bases):
        raise ImproperlyConfigured(
            "Set one of VMPORTAL_LDAP_USER_DN_TEMPLATE (direct bind, e.g. uid=%(user)s,ou=people,dc=example,dc=com) "
            "or VMPORTAL_LDAP_USER_SEARCH_BASE (search, then bind; several bases separated by ';')."
        )
    if template and "%(user)s" not in template:
        raise ImproperlyConfigured("VMPORTAL_LDAP_USER_DN_TEMPLATE must contain %(user)s.")
    user_filter = env_str("VMPORTAL_LDAP_USER_FILTER", "(uid=%(user)s)")
    if bases and "%(user)s" not in user_filter:
        raise ImproperlyConfigured("VMPORTAL_LDAP_USER_FILTER must contain %(user)s.")

    group_type_name = env_str("VMPORTAL_LDAP_GROUP_TYPE", "groupOfNames")
    if group_type_name not in _GROUP_TYPES:
        raise ImproperlyConfigured(
            f"VMPORTAL_LDAP_GROUP_TYPE={group_type_name!r}; use one of {', '.join(_GROUP_TYPES)}."
        )
    group_class, default_group_filter = _GROUP_TYPES[group_type_name]
    group_filter = env_str("VMPORTAL_LDAP_GROUP_FILTER", default_group_filter)
    group_bases = _dn_list("VMPORTAL_LDAP_GROUP_SEARCH_BASE")

    attr_map = {}
    for pair in env_list("VMPORTAL_LDAP_USER_ATTR_MAP", ["first_name=givenName", "last_name=sn", "email=mail"]):
        field, sep, attribute = pair.partition("=")
        if not sep or field.strip() not in {"first_name", "last_name", "email"} or not attribute.strip():
            raise ImproperlyConfigured(
                f"VMPORTAL_LDAP_USER_ATTR_MAP: {pair!r}; use field=attribute with first_name, last_name or email."
            )
        attr_map[field.strip()] = attribute.strip()

    def search_union(dns: list[str], query: str):
        searches = [ldap_config.LDAPSearch(dn, ldap.SCOPE_SUBTREE, query) for dn in dns]
        return searches[0] if len(searches) == 1 else ldap_config.LDAPSearchUnion(*searches)

    mirrored = directory_groups()
    values = {
        "AUTH_LDAP_SERVER_URI": " ".join(uris),
        "AUTH_LDAP_START_TLS": start_tls,
        "AUTH_LDAP_CONNECTION_OPTIONS": options,
        "AUTH_LDAP_BIND_DN": env_str("VMPORTAL_LDAP_BIND_DN"),
        # Without a service account the directory is read as the person signing in.
        "AUTH_LDAP_BIND_AS_AUTHENTICATING_USER": not env_str("VMPORTAL_LDAP_BIND_DN"),
        "AUTH_LDAP_BIND_PASSWORD": env_secret("VMPORTAL_LDAP_BIND_PASSWORD") or "",
        "AUTH_LDAP_USER_ATTR_MAP": attr_map,
        "AUTH_LDAP_ALWAYS_UPDATE_USER": True,
        # Directory groups become vmportal groups of the same name (cn): membership of
        # VMPORTAL_ADMIN_GROUP is the admin role, GroupLeaseLimit rows cap a team.
        "AUTH_LDAP_MIRROR_GROUPS": mirrored or True,
        "AUTH_LDAP_CACHE_TIMEOUT": 0,
    }
    if template:
        values["AUTH_LDAP_USER_DN_TEMPLATE"] = template
    else:
        values["AUTH_LDAP_USER_SEARCH"] = search_union(bases, user_filter)
    if group_bases:
        values["AUTH_LDAP_GROUP_SEARCH"] = search_union(group_bases, group_filter)
        values["AUTH_LDAP_GROUP_TYPE"] = getattr(ldap_config, group_class)()
    else:
        values["AUTH_LDAP_MIRROR_GROUPS"] = None
    for setting, name in (("AUTH_LDAP_REQUIRE_GROUP", "VMPORTAL_LDAP_REQUIRE_GROUP"),
                          ("AUTH_LDAP_DENY_GROUP", "VMPORTAL_LDAP_DENY_GROUP")):
        dn = env_str(name).strip()
        if dn:
            if not group_bases:
                raise ImproperlyConfigured(f"{name} needs VMPORTAL_LDAP_GROUP_SEARCH_BASE.")
            values[setting] = dn
    return values


def oidc_settings() -> dict:
    """OIDC_* settings (mozilla-django-oidc), or {} when VMPORTAL_OIDC_CLIENT_ID is unset."""
    client_id = env_str("VMPORTAL_OIDC_CLIENT_ID").strip()
    if not client_id:
        return {}
    issuer = env_str("VMPORTAL_OIDC_ISSUER").strip().rstrip("/")
    if not issuer:
        raise ImproperlyConfigured("VMPORTAL_OIDC_CLIENT_ID is set, so VMPORTAL_OIDC_ISSUER must be too.")
    _http_url("VMPORTAL_OIDC_ISSUER", issuer)
    secret = env_secret("VMPORTAL_OIDC_CLIENT_SECRET")
    if not secret:
        raise ImproperlyConfigured("Set VMPORTAL_OIDC_CLIENT_SECRET (or VMPORTAL_OIDC_CLIENT_SECRET_FILE).")
    scopes = env_str("VMPORTAL_OIDC_SCOPES", "openid email profile groups").split()
    if "openid" not in scopes:
        raise ImproperlyConfigured("VMPORTAL_OIDC_SCOPES must include openid.")
    algo = env_str("VMPORTAL_OIDC_SIGN_ALGO", "RS256")
    if algo not in {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}:
        raise ImproperlyConfigured(f"VMPORTAL_OIDC_SIGN_ALGO={algo!r}; use RS256 (most providers) or ES256.")
    ca_file = _readable_file("VMPORTAL_OIDC_CA_FILE")
    values = {
        "VMPORTAL_OIDC_ISSUER": issuer,
        "VMPORTAL_OIDC_PROVIDER_NAME": env_str("VMPORTAL_OIDC_PROVIDER_NAME", "single sign-on"),
        "VMPORTAL_OIDC_USERNAME_CLAIM": env_str("VMPORTAL_OIDC_USERNAME_CLAIM", "preferred_username"),
        "VMPORTAL_OIDC_GROUPS_CLAIM": env_str("VMPORTAL_OIDC_GROUPS_CLAIM", "groups"),
        "VMPORTAL_OIDC_LOGOUT_AT_PROVIDER": env_bool("VMPORTAL_OIDC_LOGOUT_AT_PROVIDER", True),
        "OIDC_RP_CLIENT_ID": client_id,
        "OIDC_RP_CLIENT_SECRET": secret,
        "OIDC_RP_SCOPES": " ".join(scopes),
        "OIDC_RP_SIGN_ALGO": algo,
        "OIDC_USE_PKCE": True,
        "OIDC_STORE_ID_TOKEN": True,  # the id_token_hint for logging out at the provider
        "OIDC_VERIFY_SSL": ca_file or True,
        "OIDC_TIMEOUT": env_int("VMPORTAL_OIDC_TIMEOUT", 10, minimum=1),
        "OIDC_CALLBACK_CLASS": "apps.accounts.views.OIDCCallbackView",
        "OIDC_AUTHENTICATE_CLASS": "apps.accounts.views.OIDCAuthenticateView",
    }
    # Endpoints are discovered from the issuer on first use (apps.accounts.oidc); any set
    # here win, for a provider without a discovery document.
    for setting, name in (("OIDC_OP_AUTHORIZATION_ENDPOINT", "VMPORTAL_OIDC_AUTHORIZATION_ENDPOINT"),
                          ("OIDC_OP_TOKEN_ENDPOINT", "VMPORTAL_OIDC_TOKEN_ENDPOINT"),
                          ("OIDC_OP_USER_ENDPOINT", "VMPORTAL_OIDC_USERINFO_ENDPOINT"),
                          ("OIDC_OP_JWKS_ENDPOINT", "VMPORTAL_OIDC_JWKS_ENDPOINT"),
                          ("VMPORTAL_OIDC_END_SESSION_ENDPOINT", "VMPORTAL_OIDC_END_SESSION_ENDPOINT")):
        value = env_str(name).strip()
        if value:
            values[setting] = _http_url(name, value)
    return values
