"""Authentication backends for the company directory: LDAP (django-auth-ldap) and OIDC.

Django's authenticate() tries them after the local ModelBackend, for the sign-in page and
for HTTP Basic on the API alike. Why a directory sign-in failed is noted on the request
(directory_unreachable, account_disabled) so the page and the API can say so.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest
from django_auth_ldap.backend import LDAPBackend, ldap_error
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from apps.accounts import oidc
from apps.accounts.groups import mirror_groups

log = logging.getLogger(__name__)


def note_directory_error(sender, context, user, request, exception, **kwargs) -> None:
    """django-auth-ldap's ldap_error signal: remember that the directory itself failed."""
    import ldap

    if request is not None and isinstance(exception, (ldap.SERVER_DOWN, ldap.TIMEOUT, ldap.CONNECT_ERROR)):
        request.directory_unreachable = True


# Connected here rather than in AppConfig.ready: only the LDAP backend below sends it, and
# importing django-auth-ldap (with python-ldap and pyasn1) at start would cost every process,
# workers too, ~8 MB for a sign-in only web workers do (bench/memory.py).
ldap_error.connect(note_directory_error, dispatch_uid="vmportal-directory-error")


def _note_disabled(request: HttpRequest | None) -> None:
    if request is not None:
        request.account_disabled = True


class DirectoryLDAPBackend(LDAPBackend):
    def get_user(self, user_id):
        # Like ModelBackend: deactivating someone ends the sessions they already have.
        user = super().get_user(user_id)
        return user if user is not None and user.is_active else None

    def authenticate(self, request, username=None, password=None, **kwargs):
        user = super().authenticate(request, username=username, password=password, **kwargs)
        # django-auth-ldap signs in users a vmportal admin deactivated; they stay out.
        if user is not None and not user.is_active:
            _note_disabled(request)
            return None
        return user


class DirectoryOIDCBackend(OIDCAuthenticationBackend):
    """Users are found by the username claim (not by e-mail, which people change)."""

    get_settings = staticmethod(oidc.setting)

    def __init__(self, *args, **kwargs):
        # Endpoints are looked up only for an actual OIDC callback: this backend also sees
        # every password sign-in, which must not wait for (or fail with) the provider.
        self.UserModel = get_user_model()

    def authenticate(self, request, **kwargs):
        if request is None or not request.GET.get("code") or not request.GET.get("state"):
            return None
        self.OIDC_OP_TOKEN_ENDPOINT = self.get_settings("OIDC_OP_TOKEN_ENDPOINT")
        self.OIDC_OP_USER_ENDPOINT = self.get_settings("OIDC_OP_USER_ENDPOINT")
        self.OIDC_OP_JWKS_ENDPOINT = self.get_settings("OIDC_OP_JWKS_ENDPOINT", None)
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.OIDC_RP_CLIENT_SECRET
        self.OIDC_RP_SIGN_ALGO = settings.OIDC_RP_SIGN_ALGO
        self.OIDC_RP_IDP_SIGN_KEY = None
        user = super().authenticate(request, **kwargs)
        if user is not None and not user.is_active:
            _note_disabled(request)
            return None
        return user

    def get_user(self, user_id):
        user = super().get_user(user_id)
        return user if user is not None and user.is_active else None

    def _username(self, claims: dict) -> str:
        value = claims.get(settings.VMPORTAL_OIDC_USERNAME_CLAIM)
        return value.strip()[:150] if isinstance(value, str) else ""

    def describe_user_by_claims(self, claims):
        return f"username {self._username(claims)!r}"

    def verify_claims(self, claims):
        if not self._username(claims):
            log.warning("OIDC sign-in refused: the provider sent no %r claim", settings.VMPORTAL_OIDC_USERNAME_CLAIM)
            return False
        return True

    def filter_users_by_claims(self, claims):
        return self.UserModel.objects.filter(username__iexact=self._username(claims))

    def create_user(self, claims):
        user = self.UserModel.objects.create_user(self._username(claims))  # no password: unusable
        return self.update_user(user, claims)

    def update_user(self, user: AbstractBaseUser, claims: dict) -> AbstractBaseUser:
        changed = []
        for field, claim in (("email", "email"), ("first_name", "given_name"), ("last_name", "family_name")):
            value = claims.get(claim)
            if isinstance(value, str) and getattr(user, field) != value[:150]:
                setattr(user, field, value[:150])
                changed.append(field)
        if changed or user._state.adding:
            user.save()
        groups = claims.get(settings.VMPORTAL_OIDC_GROUPS_CLAIM)
        if isinstance(groups, str):
            groups = [groups]
        if isinstance(groups, list):
            mirror_groups(user, groups)
        return user
