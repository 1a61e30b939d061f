"""Signing in with the company directory in a real browser: Debian's Chromium against the
live app, a real OpenID Connect provider (node's oidc-provider) and a real slapd."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import User

from apps.accounts.messages import DISABLED, UNREACHABLE
from apps.core.permissions import is_admin
from tests.auth import servers
from tests.auth.conftest import search_then_bind
from tests.e2e.browser import ARTIFACTS, CHROMIUM, MISSING, chromium, sign_in
from vmportal import auth_settings

pytestmark = [
    pytest.mark.browser,
    pytest.mark.directory,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING),
    pytest.mark.skipif(not (servers.OIDC_DIR / "node_modules").exists(), reason=servers.NODE_MISSING),
]

PROVIDER = "Example SSO"
ACCOUNTS = {
    "dana": {"password": "dana-pw", "claims": {"email": "dana@example.com", "given_name": "Dana",
                                               "family_name": "Admin", "groups": ["vmportal-admins", "team-a"]}},
    "eve": {"password": "eve-pw", "claims": {"email": "eve@example.com", "groups": ["team-a"]}},
    "frank": {"password": "frank-pw", "disabled": True, "claims": {"email": "frank@example.com"}},
}


@pytest.fixture
def provider(live_server, tmp_path, settings, monkeypatch):
    """The test provider, and vmportal configured for it from VMPORTAL_OIDC_* variables."""
    idp = servers.start_oidc_provider(tmp_path / "oidc", vmportal_url=live_server.url, accounts=ACCOUNTS)
    for name, value in {"VMPORTAL_OIDC_ISSUER": idp.issuer, "VMPORTAL_OIDC_CLIENT_ID": servers.CLIENT_ID,
                        "VMPORTAL_OIDC_CLIENT_SECRET": servers.CLIENT_SECRET,
                        "VMPORTAL_OIDC_PROVIDER_NAME": PROVIDER}.items():
        monkeypatch.setenv(name, value)
    for name, value in auth_settings.oidc_settings().items():
        setattr(settings, name, value)
    settings.AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend", auth_settings.OIDC_BACKEND]
    yield idp
    idp.stop()


def _provider_sign_in(page, login: str, secret: str) -> None:
    page.get_by_label("Login").fill(login)
    page.get_by_label("Secret").fill(secret)
    page.get_by_role("button", name="Continue").click()


def test_oidc_round_trip_maps_the_admin_group_and_signs_out_at_the_provider(live_server, provider):
    from playwright.sync_api import expect

    authorize: list[str] = []
    with chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(15_000)
        page.on("request", lambda r: authorize.append(r.url) if r.url.startswith(f"{provider.issuer}/auth") else None)
        page.goto(f"{live_server.url}/manage/")
        expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/manage/"))
        page.get_by_role("link", name=f"Sign in with {PROVIDER}").click()
        expect(page).to_have_url(re.compile(rf"^{re.escape(provider.issuer)}/interaction/"))
        _provider_sign_in(page, "dana", "dana-pw")

        # Back where she was going, signed in, and the admin pages are hers.
        expect(page).to_have_url(f"{live_server.url}/manage/")
        expect(page.locator(".signout .who")).to_have_text("dana")
        page.screenshot(path=str(ARTIFACTS / "oidc-signed-in-admin.png"), full_page=True)

        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(re.compile(rf"^{re.escape(provider.issuer)}/session/end"))
        page.get_by_role("button", name="Yes, sign me out").click()
        expect(page).to_have_url(re.compile(r"/accounts/login/"))

        # Signed out at the provider too: it asks for her credentials again.
        page.get_by_role("link", name=f"Sign in with {PROVIDER}").click()
        expect(page.get_by_label("Login")).to_be_visible()

    query = parse_qs(urlsplit(authorize[0]).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert set(query["scope"][0].split()) == {"openid", "email", "profile", "groups"}
    dana = User.objects.get(username="dana")
    assert (dana.email, dana.first_name, dana.last_name) == ("dana@example.com", "Dana", "Admin")
    assert set(dana.groups.values_list("name", flat=True)) == {"vmportal-admins", "team-a"}
    assert is_admin(dana)
    assert not dana.has_usable_password()


def test_disabled_accounts_are_refused_with_a_reason(live_server, provider):
    from playwright.sync_api import expect

    User.objects.create_user("eve", is_active=False)  # disabled by a vmportal admin
    with chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(15_000)
        page.goto(f"{live_server.url}/accounts/login/")
        page.get_by_role("link", name=f"Sign in with {PROVIDER}").click()
        _provider_sign_in(page, "eve", "eve-pw")
        expect(page).to_have_url(re.compile(r"/accounts/login/"))
        expect(page.locator(".msg.error")).to_have_text(DISABLED)
        page.screenshot(path=str(ARTIFACTS / "oidc-disabled-account.png"), full_page=True)

        # Disabled at the provider: it does not let him through at all (a fresh browser
        # context, as eve's session at the provider would sign this one in as her).
        page = browser.new_page()
        page.set_default_timeout(15_000)
        page.goto(f"{live_server.url}/accounts/login/")
        page.get_by_role("link", name=f"Sign in with {PROVIDER}").click()
        _provider_sign_in(page, "frank", "frank-pw")
        expect(page.get_by_role("alert")).to_have_text("This account is disabled.")
    assert not User.objects.get(username="eve").is_active
    assert not User.objects.filter(username="frank").exists()


def test_with_the_directory_and_the_provider_down_people_are_told_and_local_admins_sign_in(
        live_server, provider, slapd, use_ldap, settings):
    from playwright.sync_api import expect

    use_ldap(**search_then_bind(slapd))
    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, auth_settings.OIDC_BACKEND]
    User.objects.create_superuser("root-local", password="local-pw")
    slapd.stop()
    provider.stop()
    with chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(15_000)
        page.goto(f"{live_server.url}/accounts/login/")
        sign_in(page, "erin", "erin-pw")
        expect(page.locator(".msg.error")).to_have_text(UNREACHABLE)
        page.screenshot(path=str(ARTIFACTS / "directory-down.png"), full_page=True)

        page.get_by_role("link", name=f"Sign in with {PROVIDER}").click()
        expect(page).to_have_url(re.compile(r"/accounts/login/"))
        expect(page.locator(".msg.error")).to_contain_text(f"{PROVIDER} cannot be reached right now")

        sign_in(page, "root-local", "local-pw")
        expect(page.locator(".signout .who")).to_have_text("root-local")
    assert not User.objects.filter(username="erin").exists()
