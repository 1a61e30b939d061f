"""/api/docs/ (issue 17): interactive Swagger UI over the native API, from our own static
files (no CDN), beside the vmpooler routes and how to get a token; the schema it reads is for
signed-in people and token holders only."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from django.test import Client

from apps.api.tokens import create_token

pytestmark = pytest.mark.django_db


class _Assets(HTMLParser):
    """Every script src and link href of a page."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.urls.append(a["src"])
        if tag == "link" and a.get("href"):
            self.urls.append(a["href"])


def _signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_docs_page_loads_swagger_ui_from_our_own_static_files(engineer):
    client = _signed_in(engineer)
    response = client.get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    parser = _Assets()
    parser.feed(page)
    assert "/static/ninja/swagger-ui-bundle.js" in parser.urls
    assert "/static/ninja/swagger-ui.css" in parser.urls
    assert "/static/vmportal/api-docs.js" in parser.urls
    for url in parser.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{url} comes from another host"
        asset = client.get(url)
        assert asset.status_code == 200, url
        if url.endswith(".js"):  # nor does a script we serve load anything from a CDN by name
            body = b"".join(asset.streaming_content)
            assert b"cdn.jsdelivr.net" not in body and b"unpkg.com" not in body, url
    assert 'data-schema-url="/api/v1/openapi.json"' in page
    # What the page said before stays: how to authenticate, every operation, the vmpooler routes.
    assert 'href="/api/tokens/"' in page
    assert "<code>/api/v1/pools</code>" in page
    assert "POST /api/v3/token" in page
    assert "vmpooler v3 compatibility" in page


def test_the_docs_page_needs_a_sign_in(client):
    response = client.get("/api/docs/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("public_reads", [True, False])
def test_the_schema_is_for_signed_in_people_and_token_holders_only(public_reads, settings, engineer):
    # vmpooler's public reads never covered the native API's schema: whatever the setting,
    # an anonymous caller gets 401 JSON and a signed-in person or a token holder the schema.
    settings.VMPORTAL_API_PUBLIC_READS = public_reads
    anonymous = Client().get("/api/v1/openapi.json")
    assert anonymous.status_code == 401
    assert anonymous.json()["ok"] is False
    signed_in = _signed_in(engineer).get("/api/v1/openapi.json")
    assert signed_in.status_code == 200
    schema = signed_in.json()
    assert "/api/v1/pools" in schema["paths"]
    assert set(schema["components"]["securitySchemes"]) == {"XAuthToken", "Bearer"}
    _, raw = create_token(user=engineer, name="docs")
    by_token = Client().get("/api/v1/openapi.json", HTTP_X_AUTH_TOKEN=raw)
    assert by_token.status_code == 200
    assert by_token.json() == schema


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys {sorted(k for k in keys if keys.count(k) > 1)}"
    return dict(pairs)


def test_the_schema_has_no_duplicate_keys(engineer):
    # Swagger UI refuses a whole schema with one ("duplicated mapping key"): an operation's
    # openapi_extra that names a status as "200" beside ninja's own 200 made two.
    body = _signed_in(engineer).get("/api/v1/openapi.json").content
    json.loads(body, object_pairs_hook=_no_duplicate_keys)
