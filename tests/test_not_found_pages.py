"""Made-up ids in third-party pages (django-rq's queue dashboard, the Django admin's generic
pages of its table-less model, the admin's "view on site" redirect) and single sign-on when it
is not set up answer a clear 404, never a 500. Redis and PostgreSQL are up and real."""

from __future__ import annotations

import pytest
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django_rq.models import Dashboard

from tests.test_redis_down import every_url, site, sweep  # noqa: F401 - site is a fixture

pytestmark = pytest.mark.django_db(transaction=True)  # each request commits, as in production

JOB = "no-such-job"
WORKER_KEYS = ("1", "rq:worker:no-such-worker")


def made_up_urls() -> dict[tuple[str, str], str]:
    """(method, URL) → what its 404 page says."""
    urls = {}
    for prefix in ("/django-rq/", "/admin/django_rq/dashboard/"):
        for action in ("delete/", "requeue/", "enqueue/"):  # stop/ redirects with "Failed to stop"
            urls[("post", f"{prefix}queues/0/{JOB}/{action}")] = "No such job"
        for action in ("delete/", "requeue/", "enqueue/"):
            urls[("get", f"{prefix}queues/0/{JOB}/{action}")] = "No such job"
        urls[("get", f"{prefix}queues/0/{JOB}/results/1/")] = ""  # django-rq's own 404
        for key in WORKER_KEYS:
            urls[("get", f"{prefix}workers/0/{key}/")] = "No such worker"
        urls[("get", f"{prefix}schedulers/0/")] = "No such RQ scheduler"
        urls[("get", f"{prefix}schedulers/1/")] = "No such RQ scheduler"
    for view in ("change", "delete", "history"):
        urls[("get", f"/admin/django_rq/dashboard/1/{view}/")] = "no objects"
        urls[("post", f"/admin/django_rq/dashboard/1/{view}/")] = "no objects"
    return urls


def test_made_up_ids_in_the_queue_dashboard_are_a_404_that_says_so(admin_user, redis_conn, settings):
    settings.DEBUG = False
    client = Client(raise_request_exception=False)
    client.force_login(admin_user)
    dashboard_type = ContentType.objects.get_for_model(Dashboard)
    urls = {**made_up_urls(), ("get", f"/admin/r/{dashboard_type.pk}/1/"): "have no page",
            ("get", "/admin/r/999999/1/"): "", ("get", "/admin/r/x/1/"): ""}
    answered = {(method, url): getattr(client, method)(url).status_code for method, url in urls}
    assert answered == dict.fromkeys(urls, 404)
    # The 404 carries its reason (the page shows it when DEBUG is on; the exception says it always).
    settings.DEBUG = True
    for (method, url), says in urls.items():
        assert says in getattr(client, method)(url).content.decode(), url


@pytest.mark.parametrize("who", ["anonymous", "engineer"])
def test_single_sign_on_that_is_not_set_up_is_a_404(who, engineer, settings):
    assert not getattr(settings, "OIDC_RP_CLIENT_ID", "")
    client = Client(raise_request_exception=False)
    if who == "engineer":
        client.force_login(engineer)
    for url in ("/oidc/authenticate/", "/oidc/callback/?code=x&state=y"):
        assert client.get(url).status_code == 404, url
    settings.DEBUG = True
    assert "not set up here" in client.get("/oidc/authenticate/").content.decode()


def test_no_page_answers_500_with_redis_up(site, admin_user, engineer, redis_conn):  # noqa: F811
    answered = sweep((admin_user, engineer), every_url(site["values"]))
    assert [(who, url, status) for (who, url), status in answered.items() if status >= 500] == []
