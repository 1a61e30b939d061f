"""/api/docs/ in a real browser (issue 17): Swagger UI renders the native API from our own
static files (the browser asks no other host for anything), and "Try it out" with a token
given to Authorize calls the API for real. axe-core finds no serious or critical violation."""

from __future__ import annotations

import pytest

from tests import factories
from tests.e2e.browser import ARTIFACTS, CHROMIUM, MISSING, chromium, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING)]

WAIT_MS = 30_000


@pytest.fixture
def token(transactional_db, engineer):
    from apps.api.tokens import create_token

    factories.pool(name="debian-12", size=1)
    return create_token(user=engineer, name="docs")[1]


def test_swagger_ui_tries_a_call_with_a_token_and_loads_nothing_from_other_hosts(live_server, token):
    from axe_playwright_python.sync_playwright import Axe

    asked: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(WAIT_MS)
        page.on("request", lambda r: asked.append(r.url))
        page.goto(f"{live_server.url}/api/docs/")
        sign_in(page, "bob-engineer", "pw-engineer")
        page.wait_for_url(f"{live_server.url}/api/docs/")
        listing = page.locator('.opblock-get .opblock-summary-path[data-path="/api/v1/pools"]')
        listing.wait_for()

        page.get_by_role("button", name="Authorize").first.click()
        scheme = page.locator(".dialog-ux .auth-container", has_text="XAuthToken")
        scheme.locator("input").fill(token)
        scheme.get_by_role("button", name="Apply credentials").click()
        scheme.get_by_role("button", name="Close").click()

        listing.click()
        operation = page.locator(".opblock.is-open")
        operation.get_by_role("button", name="Try it out").click()
        operation.get_by_role("button", name="Execute").click()
        status = operation.locator(".live-responses-table tr.response .response-col_status").first
        status.wait_for()
        assert status.inner_text().strip() == "200"
        assert "debian-12" in operation.locator(".live-responses-table .microlight").first.inner_text()
        page.screenshot(path=str(ARTIFACTS / "api-docs-try-it.png"), full_page=False)

        violations = [v for v in Axe().run(page).response["violations"] if v["impact"] in ("serious", "critical")]
        page.close()
    strangers = [u for u in asked if not u.startswith(live_server.url)]
    assert strangers == []
    assert f"{live_server.url}/api/v1/pools" in asked
    assert violations == [], "\n".join(
        f"{v['impact']} {v['id']}: {v['help']}: "
        + "; ".join(f"{n['target']} {n['html'][:120]} {[c['message'] for c in n['any']][:1]}" for n in v["nodes"])
        for v in violations)
