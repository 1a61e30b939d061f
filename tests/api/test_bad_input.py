"""Bad input to both APIs: a 4xx with ok: false and a reason, and nothing changed (issue 15)."""

from __future__ import annotations

import logging

import pytest

from apps.api.models import ApiToken
from apps.leases.models import Lease, OnDemandRequest, VMTask
from apps.pools.models import Pool
from tests.api.conftest import auth_client

pytestmark = pytest.mark.django_db


def _state() -> tuple:
    """What a refused request must leave as it was."""
    return (list(Lease.objects.values_list("pk", "expires_at", "tags", "ended_at")),
            list(Pool.objects.values_list("pk", "size")), OnDemandRequest.objects.count(), VMTask.objects.count())


def _refused(response, status: int = 400) -> dict:
    assert response.status_code == status, response.content[:500]
    body = response.json()
    assert body["ok"] is False and body["error"]
    return body


# --- vmpooler API -------------------------------------------------------------------------

VMPOOLER_BAD = [
    # (method, path, body, words in the error)
    ("post", "/api/v3/vm", {"debian-12": "٣"}, "not a whole number"),
    ("post", "/api/v3/vm", {"debian-12": "1_0"}, "not a whole number"),
    ("post", "/api/v3/vm", {"debian-12": " 2"}, "not a whole number"),
    ("post", "/api/v3/vm", {"debian-12": "2.0"}, "not a whole number"),
    ("post", "/api/v3/vm", {"debian-12": "100000000000000000000"}, "far too large"),
    ("post", "/api/v3/vm", {"debian-12": 21}, "between 1 and 20"),
    ("post", "/api/v3/ondemandvm", {"debian-12": "1", "request_id": "abc\n"}, "request"),
    ("post", "/api/v3/ondemandvm", {"debian-12": "١"}, "not a whole number"),
    ("post", "/api/v3/config/poolsize", {"debian-12": "٥"}, "not a whole number"),
]


@pytest.mark.parametrize(("method", "path", "body", "words"), VMPOOLER_BAD)
def test_vmpooler_refuses_bad_input_and_changes_nothing(admin_token, debian, method, path, body, words):
    before = _state()
    response = getattr(auth_client(admin_token), method)(path, body, content_type="application/json")
    assert words in _refused(response)["error"]
    assert _state() == before


def test_vmpooler_refuses_a_unicode_disk_size_and_queues_nothing(api, debian):
    host = api.post("/api/v3/vm/debian-12").json()["debian-12"]["hostname"]
    before = _state()
    _refused(api.post(f"/api/v3/vm/{host}/disk/٣"))
    _refused(api.post(f"/api/v3/vm/{host}/disk/３gb"))  # a fullwidth digit
    assert _state() == before


def test_vmpooler_refuses_a_tag_name_with_a_trailing_newline(api, debian):
    host = api.post("/api/v3/vm/debian-12").json()["debian-12"]["hostname"]
    before = _state()
    for tags in ({"k\n": "v"}, {"k": "v\n"}):
        _refused(api.put(f"/api/v3/vm/{host}", {"tags": tags}, content_type="application/json"))
    assert _state() == before


def test_vmpooler_refuses_a_lifetime_too_large_for_any_clock(api, debian):
    host = api.post("/api/v3/vm/debian-12").json()["debian-12"]["hostname"]
    before = _state()
    _refused(api.put(f"/api/v3/vm/{host}", {"lifetime": "1000000000000"}, content_type="application/json"))
    assert _state() == before


def test_vmpooler_refuses_nan_in_a_json_body(api, debian):
    before = _state()
    _refused(api.post("/api/v3/vm", '{"debian-12": NaN}', content_type="application/json"))
    assert _state() == before


def test_vmpooler_checkout_limit_is_the_one_setting(api, debian, settings):
    settings.VMPORTAL_MAX_VMS_PER_CHECKOUT = 2
    before = _state()
    assert "at most 2 VMs" in _refused(api.post("/api/v3/vm/debian-12+debian-12+debian-12"))["error"]
    assert "between 1 and 2" in _refused(api.post("/api/v3/vm", {"debian-12": "3"},
                                                  content_type="application/json"))["error"]
    assert _state() == before


# --- native API ---------------------------------------------------------------------------

CHECKOUT = '{"pools": ["debian-12"]}'


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "text/html",
                                          "multipart/form-data; boundary=x"])
def test_native_api_refuses_a_body_that_is_not_labelled_json(api, debian, content_type):
    before = _state()
    body = _refused(api.post("/api/v1/leases", CHECKOUT, content_type=content_type), 415)
    assert "application/json" in body["error"]
    assert _state() == before
    assert api.post("/api/v1/leases", CHECKOUT, content_type="application/json").status_code == 201


@pytest.mark.parametrize("hours", ["1e-300", "0.001", "NaN", "Infinity", "-Infinity", "1e300", "0", "-1",
                                   "8761"])
def test_native_api_refuses_a_lifetime_it_cannot_honour(api, debian, hours):
    before = _state()
    body = f'{{"pools": ["debian-12"], "lifetime_hours": {hours}}}'
    _refused(api.post("/api/v1/leases", body, content_type="application/json"))
    _refused(api.post("/api/v1/ondemand", body, content_type="application/json"))
    assert _state() == before


def test_native_api_refuses_a_tiny_extension(api, debian):
    lease = api.post("/api/v1/leases", CHECKOUT, content_type="application/json").json()[0]
    before = _state()
    for hours in ("1e-300", "NaN", "Infinity"):
        _refused(api.post(f"/api/v1/leases/{lease['id']}/extend", f'{{"hours": {hours}}}',
                          content_type="application/json"))
    assert _state() == before


def test_native_api_refuses_a_request_id_with_a_trailing_newline(api, debian):
    before = _state()
    body = _refused(api.post("/api/v1/ondemand", {"pools": ["debian-12"], "request_id": "abc\n"},
                             content_type="application/json"))
    assert "request" in body["error"].lower()
    assert _state() == before


def test_native_api_checkout_limit_is_the_one_setting(api, debian, settings):
    settings.VMPORTAL_MAX_VMS_PER_CHECKOUT = 2
    before = _state()
    body = _refused(api.post("/api/v1/leases", {"pools": ["debian-12"] * 3}, content_type="application/json"))
    assert "at most 2" in body["error"]
    assert _state() == before


def test_native_api_schema_states_the_checkout_limit(api, settings):
    schema = api.get("/api/v1/openapi.json").json()
    pools = schema["components"]["schemas"]["CheckoutIn"]["properties"]["pools"]
    assert pools["maxItems"] == settings.VMPORTAL_MAX_VMS_PER_CHECKOUT


# --- tokens never reach the log --------------------------------------------------------------


def test_a_refused_token_lookup_logs_the_path_without_the_token(client, engineer_token, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = engineer_token[:-4] + "zzzz"
    assert client.get(f"/api/v3/token/{wrong}").status_code == 404
    assert client.delete(f"/api/v3/token/{engineer_token}").status_code == 401
    assert client.get(f"/api/v2/token/{engineer_token}/").status_code in (301, 404)
    assert "/token/[redacted]" in caplog.text
    for raw in (engineer_token, wrong, engineer_token[8:]):
        assert raw not in caplog.text
        assert all(raw not in r.getMessage() for r in caplog.records)
    assert ApiToken.objects.filter(revoked=False).count() == 1
