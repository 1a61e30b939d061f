"""The reconfigure preview in a real browser follows every value typed, invalid ones too:
it never keeps showing what an earlier value would have done (issue 15)."""

from __future__ import annotations

import re

import pytest
from django.utils import timezone

from apps.pools.models import TemplateCopy, TemplateStatus, VMState
from tests import factories
from tests.e2e.browser import ARTIFACTS, CHROMIUM, MISSING, chromium, sign_in

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING),
]


def test_preview_shows_the_error_for_an_invalid_size_and_plain_words_when_nothing_changes(live_server, admin_user):
    pool = factories.pool(name="debian-ci", size=2)
    TemplateCopy.objects.create(template=pool.template, cluster=pool.cluster, moid="vm-1",
                                status=TemplateStatus.READY, progress=100)
    for _ in range(2):
        factories.vm(pool, state=VMState.READY, ready_at=timezone.now())

    from playwright.sync_api import expect

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(15_000)
        page.goto(f"{live_server.url}/manage/pools/{pool.pk}/")
        sign_in(page, "alice-admin", "pw-admin")
        expect(page).to_have_url(re.compile(rf"/manage/pools/{pool.pk}/$"))
        preview = page.locator("#reconfigure-preview")

        page.locator("#id_size").fill("4")
        expect(preview).to_contain_text("Will clone 2, 0 leased VMs untouched.")
        for bad, words in (("-1", "greater than or equal to 0"), ("999999", "less than or equal to 500"),
                           ("", "This field is required")):
            page.locator("#id_size").fill(bad)
            expect(preview).to_contain_text(words)
            expect(preview).not_to_contain_text("Will clone")
        page.screenshot(path=str(ARTIFACTS / "reconfigure-preview-invalid.png"), full_page=True)

        page.locator("#id_size").fill("2")
        expect(preview).to_contain_text("No VM will be cloned or destroyed; 0 leased VMs untouched.")
        expect(preview).not_to_contain_text("Will no VMs")
