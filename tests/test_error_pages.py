"""Error pages (issue 17): pages get vmportal's own 400, 403, 404, 500 and CSRF pages, API
paths keep their JSON errors, and /favicon.ico answers everyone. DEBUG is off, as in
production, so Django's handlers (not its debug pages) answer."""

from __future__ import annotations

import pytest
from django.template import loader
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.fixture
def production(settings):
    settings.DEBUG = False
    return settings


@pytest.fixture
def failing_site(production):
    production.ROOT_URLCONF = "tests.error_urls"
    return production


def _signed_in(user, **kwargs) -> Client:
    client = Client(raise_request_exception=False, **kwargs)
    client.force_login(user)
    return client


def test_unknown_url_signed_in_is_a_branded_404_with_the_navigation(production, engineer):
    response = _signed_in(engineer).get("/no-such-page/")
    assert response.status_code == 404
    page = response.content.decode()
    assert "Page not found" in page
    assert "There is nothing at <code>/no-such-page/</code>" in page
    assert 'href="/leases/"' in page  # the navigation, and My VMs as a way back
    assert "bob-engineer" in page
    assert 'rel="icon"' in page


def test_unknown_url_anonymous_is_a_404_without_the_navigation(production, client):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    page = response.content.decode()
    assert "Page not found" in page
    assert 'href="/accounts/login/"' in page  # a way in
    assert "My VMs" not in page
    # The sign-in rule is unchanged: a page that exists still sends anonymous users to sign in.
    assert client.get("/leases/").status_code == 302


def test_a_404_raised_by_a_view_shows_its_reason(production, admin_user):
    response = _signed_in(admin_user).get("/manage/pools/999999/")
    assert response.status_code == 404
    page = response.content.decode()
    assert "Page not found" in page
    assert "No Pool matches the given query." in page


def test_unknown_api_paths_still_answer_json(production, engineer):
    for client in (Client(), _signed_in(engineer)):
        response = client.get("/api/v3/no-such-route")
        assert response.status_code == 404
        assert response.json() == {"ok": False, "error": "No such API endpoint."}


def test_a_bug_in_a_page_is_the_branded_500_page(failing_site, engineer):
    response = _signed_in(engineer).get("/boom/")
    assert response.status_code == 500
    page = response.content.decode()
    assert "Something went wrong" in page
    assert "a bug, on purpose" not in page  # no internals
    assert "Back to pools" in page


def test_a_bug_under_the_api_is_a_json_500(failing_site, engineer):
    response = _signed_in(engineer).get("/api/v3/boom")
    assert response.status_code == 500
    assert response.json() == {"ok": False, "error": "Internal error; it has been logged."}


def test_the_500_page_renders_with_no_context_and_no_database(django_assert_num_queries):
    with django_assert_num_queries(0):
        page = loader.get_template("500.html").render()
    assert "Something went wrong" in page
    assert "{%" not in page and "{{" not in page


def test_permission_denied_is_the_branded_403_with_its_reason(failing_site, engineer):
    response = _signed_in(engineer).get("/forbidden/")
    assert response.status_code == 403
    page = response.content.decode()
    assert "Not allowed" in page
    assert "Only the pool&#x27;s owner may do that." in page
    assert 'href="/leases/"' in page


def test_a_malformed_request_is_the_branded_400(failing_site, engineer):
    response = _signed_in(engineer).get("/suspicious/")
    assert response.status_code == 400
    page = response.content.decode()
    assert "Bad request" in page
    assert "on purpose" not in page


def test_a_host_we_do_not_serve_is_the_branded_400(production, client):
    response = client.get("/", HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert "Bad request" in response.content.decode()


def test_a_refused_csrf_check_says_to_reload_the_page(production, engineer):
    client = _signed_in(engineer, enforce_csrf_checks=True)
    response = client.post("/api/tokens/new", {"name": "ci", "days": "30"}, HTTP_REFERER="/api/tokens/")
    assert response.status_code == 403
    page = response.content.decode()
    assert "This form has expired" in page
    assert "Reload the page and try again." in page
    assert '<a href="/api/tokens/">Reload the page</a>' in page
    assert 'href="/leases/"' in page  # still vmportal's page, navigation and all
    from apps.api.models import ApiToken

    assert not ApiToken.objects.filter(user=engineer).exists()


def test_a_referer_from_another_site_is_not_offered_as_the_page_to_reload(production, engineer):
    client = _signed_in(engineer, enforce_csrf_checks=True)
    response = client.post("/api/tokens/new", {"name": "ci"}, HTTP_REFERER="https://evil.example/x")
    assert response.status_code == 403
    assert "evil.example" not in response.content.decode()


@pytest.mark.parametrize("who", ["anonymous", "engineer"])
def test_favicon_ico_points_everyone_at_the_svg(who, production, engineer):
    client = Client() if who == "anonymous" else _signed_in(engineer)
    response = client.get("/favicon.ico")
    assert response.status_code == 302
    assert response["Location"] == "/static/vmportal/favicon.svg"
    icon = client.get(response["Location"])
    assert icon.status_code == 200
    assert icon["Content-Type"].startswith("image/svg+xml")
    assert b"<svg" in b"".join(icon.streaming_content)


def test_every_page_links_the_favicon(production, engineer):
    page = _signed_in(engineer).get("/").content.decode()
    assert '<link rel="icon" href="/static/vmportal/favicon.svg" type="image/svg+xml">' in page
