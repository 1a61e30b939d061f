"""One test decides whether a request is a program's (JSON answers) or a person's (pages)."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.api.http import is_api_path


@pytest.mark.parametrize(("path", "api"), [
    ("/api/v1/vm/debian-12", True),
    ("/api/v2/leases", True),
    ("/api/v1/status", True),
    ("/metrics", True),
    ("/dashboard/stats/vmpooler/pool", True),
    ("/api/docs/", False),
    ("/api/tokens/", False),
    ("/api/tokens/3/revoke/", False),
    ("/", False),
    ("/leases/3/", False),
    ("/apis/", False),
    ("/metrics-old", False),
])
def test_is_api_path(path, api):
    assert is_api_path(path) is api


@pytest.mark.django_db
def test_unknown_api_url_answers_json_and_unknown_page_answers_html(engineer):
    client = Client()
    client.force_login(engineer)
    api = client.get("/api/v1/no-such-thing/really")
    assert api.status_code == 404
    assert api["Content-Type"] == "application/json"
    page = client.get("/api/tokens/no-such-page/")
    assert page.status_code == 404
    assert page["Content-Type"].startswith("text/html")
