"""Property-based run against the native API's OpenAPI schema: whatever schemathesis sends
(valid or not), the answer is never a 5xx and always JSON."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core import NOT_SET

from apps.api.native import api as native_api
from apps.pools.models import VMState
from tests import factories
from tests.api.conftest import auth_client
from vmportal import urls  # noqa: F401 - its import adds first boot's route (apps.firstboot.api)

pytestmark = pytest.mark.django_db

EXAMPLES_PER_OPERATION = 10


def _top_up(pool) -> None:
    """Ready VMs for any checkout a case may make (it asks for at most one of this pool)."""
    while pool.vms.filter(state=VMState.READY, on_demand=False).count() < 2:
        factories.vm(pool, state=VMState.READY)


def test_native_api_never_answers_5xx(engineer_token, debian):
    schema = schemathesis.openapi.from_dict(native_api.get_openapi_schema(path_prefix="/api/v1"))
    client = auth_client(engineer_token)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    seen: list[tuple[str, str, int]] = []

    for operation in operations:

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(), valid_pool=st.booleans())
        def check(case, valid_pool):
            path = case.formatted_path
            kwargs = {"QUERY_STRING": urlencode(case.query or {}, doseq=True)}
            body = None if case.body is NOT_SET else case.body
            if isinstance(body, dict) and valid_pool and "pools" in body:
                body = {**body, "pools": ["debian-12"]}
            data = json.dumps(body) if body is not None and not isinstance(body, bytes | str) else body
            _top_up(debian)
            response = client.generic(case.method, path, data=data or "", content_type="application/json", **kwargs)
            seen.append((case.method, path, response.status_code))
            # No 5xx at all: the pool is topped up before each case, so a 503 would be a real fault.
            assert response.status_code < 500, (case.method, path, body, response.content[:500])
            assert response["Content-Type"].startswith("application/json")

        check()

    assert any(status == 201 for _, _, status in seen)  # some generated checkouts succeeded
