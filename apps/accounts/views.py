"""Sign-in and sign-out pages that know about the company directory."""

from __future__ import annotations

import logging
from urllib.parse import urlencode

import requests
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.forms import AuthenticationForm
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, resolve_url
from django.utils.decorators import method_decorator
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from apps.accounts import oidc
from apps.accounts.messages import DISABLED, UNREACHABLE

log = logging.getLogger(__name__)


class SignInForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "Your username and password did not match. Please try again.",
        "directory_unreachable": UNREACHABLE,
        "inactive": DISABLED,
    }

    def get_invalid_login_error(self):
        for flag, code in (("directory_unreachable", "directory_unreachable"), ("account_disabled", "inactive")):
            if getattr(self.request, flag, False):
                return forms.ValidationError(self.error_messages[code], code=code)
        return super().get_invalid_login_error()


class LoginView(auth_views.LoginView):
    form_class = SignInForm

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["oidc_enabled"] = oidc.enabled()
        context["oidc_provider_name"] = oidc.provider_name()
        return context


class LogoutView(auth_views.LogoutView):
    """Signs out here and, for an OIDC sign-in, at the provider too (RP-initiated logout)."""

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        id_token = request.session.get("oidc_id_token")
        response = super().post(request, *args, **kwargs)
        if not id_token or not oidc.enabled() or not settings.VMPORTAL_OIDC_LOGOUT_AT_PROVIDER:
            return response
        try:
            endpoint = oidc.setting("VMPORTAL_OIDC_END_SESSION_ENDPOINT", "")
        except oidc.ProviderUnavailable as exc:
            log.warning("signed out here but not at the provider: %s", exc)
            return response
        if not endpoint:
            return response
        params = {
            "id_token_hint": id_token,
            "client_id": settings.OIDC_RP_CLIENT_ID,
            "post_logout_redirect_uri": request.build_absolute_uri(resolve_url(settings.LOGOUT_REDIRECT_URL)),
        }
        return HttpResponseRedirect(f"{endpoint}?{urlencode(params)}")


def _require_oidc() -> None:
    if not oidc.enabled():
        raise Http404("Signing in with single sign-on (OIDC) is not set up here; sign in with your account "
                      "on the sign-in page.")


@method_decorator(login_not_required, name="dispatch")
class OIDCAuthenticateView(OIDCAuthenticationRequestView):
    """Sends the browser to the provider (with PKCE); endpoints are discovered here, not at start-up."""

    get_settings = staticmethod(oidc.setting)

    def __init__(self, **kwargs):
        super(OIDCAuthenticationRequestView, self).__init__(**kwargs)

    def get(self, request: HttpRequest) -> HttpResponse:
        _require_oidc()
        try:
            self.OIDC_OP_AUTH_ENDPOINT = self.get_settings("OIDC_OP_AUTHORIZATION_ENDPOINT")
        except oidc.ProviderUnavailable as exc:
            messages.error(request, str(exc))
            return redirect("login")
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        return super().get(request)


@method_decorator(login_not_required, name="dispatch")
class OIDCCallbackView(OIDCAuthenticationCallbackView):
    """The provider's answer; a refusal comes back to the sign-in page with the reason."""

    get_settings = staticmethod(oidc.setting)

    @property
    def failure_url(self) -> str:
        return resolve_url("login")

    def get(self, request: HttpRequest) -> HttpResponse:
        _require_oidc()
        name = oidc.provider_name()
        try:
            return super().get(request)
        except oidc.ProviderUnavailable as exc:
            messages.error(request, str(exc))
        except requests.RequestException as exc:
            log.warning("OIDC sign-in failed talking to the provider: %s", exc)
            messages.error(request, f"Signing in with {name} failed: the provider did not answer as expected. "
                                    "Try again; if it keeps failing, tell an admin (the server log has the reason).")
        return redirect("login")

    def login_failure(self) -> HttpResponse:
        request = self.request
        if getattr(request, "account_disabled", False):
            messages.error(request, DISABLED)
        elif request.GET.get("error"):
            detail = request.GET.get("error_description") or request.GET["error"]
            messages.error(request, f"{oidc.provider_name()} did not sign you in: {detail[:200]}")
        else:
            messages.error(request, f"Signing in with {oidc.provider_name()} did not work. Please try again.")
        return super().login_failure()
