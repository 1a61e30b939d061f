"""LDAP sign-in against a real OpenLDAP server (slapd started by the `slapd` fixture)."""

from __future__ import annotations

import base64

import ldap
import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse

from apps.accounts.messages import DISABLED, UNREACHABLE
from apps.api.models import ApiToken
from apps.core.permissions import is_admin
from apps.leases.models import GroupLeaseLimit
from tests.auth import servers
from tests.auth.conftest import search_then_bind

pytestmark = [pytest.mark.directory, pytest.mark.django_db]


def _sign_in(client, username: str, password: str):
    return client.post(reverse("login"), {"username": username, "password": password})


def _basic(username: str, password: str) -> dict:
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def test_search_then_bind_over_starttls_creates_the_user_and_maps_the_admin_group(client, slapd, use_ldap):
    use_ldap(**search_then_bind(slapd))
    response = _sign_in(client, "ada", "ada-pw")
    assert response.status_code == 302, response.content
    user = User.objects.get(username="ada")
    assert (user.email, user.first_name, user.last_name) == ("ada@example.com", "Ada", "Lovelace")
    assert not user.has_usable_password()  # the directory keeps the password, not vmportal
    assert set(user.groups.values_list("name", flat=True)) == {"vmportal-admins"}
    assert is_admin(user)
    assert client.get(reverse("adminui:pools")).status_code == 200


def test_people_in_a_second_search_base_sign_in_and_are_not_admins(client, slapd, use_ldap):
    use_ldap(**search_then_bind(slapd))
    assert _sign_in(client, "carl", "carl-pw").status_code == 302
    carl = User.objects.get(username="carl")
    assert set(carl.groups.values_list("name", flat=True)) == {"team-a"}
    assert not is_admin(carl)


def test_wrong_password_and_unknown_user_are_refused_without_creating_anyone(client, slapd, use_ldap):
    use_ldap(**search_then_bind(slapd))
    for username, password in (("erin", "not-it"), ("nobody", "whatever")):
        response = _sign_in(client, username, password)
        assert response.status_code == 200
        assert b"did not match" in response.content
    assert not User.objects.filter(username__in=["erin", "nobody"]).exists()


def test_direct_bind_over_ldaps_puts_the_user_in_the_group_that_carries_the_lease_limit(client, slapd, use_ldap):
    team = Group.objects.create(name="team-a")
    GroupLeaseLimit.objects.create(group=team, max_active_leases=2)
    use_ldap(
        VMPORTAL_LDAP_SERVER_URI=slapd.ldaps_uri,
        VMPORTAL_LDAP_CA_FILE=str(slapd.ca_file),
        VMPORTAL_LDAP_USER_DN_TEMPLATE=f"uid=%(user)s,ou=people,{servers.SUFFIX}",
        VMPORTAL_LDAP_GROUP_SEARCH_BASE=f"ou=groups,{servers.SUFFIX}",
    )
    assert _sign_in(client, "erin", "erin-pw").status_code == 302
    erin = User.objects.get(username="erin")
    assert list(erin.groups.all()) == [team]
    assert erin.groups.get().lease_limit.max_active_leases == 2


def test_a_server_certificate_from_another_ca_is_refused(client, slapd, use_ldap, tmp_path):
    other_ca, _, _ = servers.make_ca(tmp_path, "other-ca")
    use_ldap(**search_then_bind(slapd, VMPORTAL_LDAP_CA_FILE=str(other_ca)))
    response = _sign_in(client, "erin", "erin-pw")
    assert response.status_code == 200
    assert UNREACHABLE in response.content.decode()
    assert not User.objects.filter(username="erin").exists()


def test_changes_in_the_directory_reach_vmportal_at_the_next_sign_in(client, slapd, use_ldap):
    use_ldap(**search_then_bind(slapd))
    assert _sign_in(client, "erin", "erin-pw").status_code == 302
    slapd.modify(servers.user_dn("erin"), [(ldap.MOD_REPLACE, "mail", ["erin.new@example.com"])])
    slapd.modify(servers.group_dn("team-a"), [(ldap.MOD_DELETE, "member", [servers.user_dn("erin")])])
    slapd.modify(servers.group_dn("vmportal-admins"), [(ldap.MOD_ADD, "member", [servers.user_dn("erin")])])
    client.post(reverse("logout"))
    assert _sign_in(client, "erin", "erin-pw").status_code == 302
    erin = User.objects.get(username="erin")
    assert erin.email == "erin.new@example.com"
    assert set(erin.groups.values_list("name", flat=True)) == {"vmportal-admins"}
    assert is_admin(erin)


def test_only_the_listed_directory_groups_are_mirrored(client, slapd, use_ldap, settings):
    local = Group.objects.create(name="local-helpers")
    settings.VMPORTAL_DIRECTORY_GROUPS = ["vmportal-admins"]
    use_ldap(**search_then_bind(slapd))
    settings.AUTH_LDAP_MIRROR_GROUPS = ["vmportal-admins"]
    User.objects.create_user("erin").groups.add(local)
    assert _sign_in(client, "erin", "erin-pw").status_code == 302
    # team-a is not vmportal's business here; the local group is kept.
    assert set(User.objects.get(username="erin").groups.values_list("name", flat=True)) == {"local-helpers"}


def test_members_of_the_deny_group_and_accounts_disabled_in_vmportal_are_refused(client, slapd, use_ldap):
    use_ldap(**search_then_bind(slapd, VMPORTAL_LDAP_DENY_GROUP=servers.group_dn("vmportal-disabled")))
    response = _sign_in(client, "dave", "dave-pw")
    assert response.status_code == 200 and b"did not match" in response.content
    assert _sign_in(client, "erin", "erin-pw").status_code == 302
    User.objects.filter(username="erin").update(is_active=False)
    assert client.get(reverse("home")).status_code == 302  # her open session ends too
    response = _sign_in(client, "erin", "erin-pw")
    assert response.status_code == 200
    assert DISABLED in response.content.decode()
    assert client.post("/api/v3/token", **_basic("erin", "erin-pw")).status_code == 401


def test_api_token_route_accepts_directory_credentials_over_http_basic(client, slapd, use_ldap):
    use_ldap(**search_then_bind(slapd))
    response = client.post("/api/v3/token", **_basic("carl", "carl-pw"))
    assert response.status_code == 200, response.content
    token = response.json()["token"]
    assert ApiToken.objects.get(prefix=token[:8]).user.username == "carl"
    assert client.post("/api/v3/token", **_basic("carl", "wrong")).status_code == 401


def test_directory_down_says_so_and_local_superusers_still_sign_in(client, slapd, use_ldap):
    use_ldap(**search_then_bind(slapd))
    User.objects.create_superuser("root-local", password="local-pw")
    slapd.stop()
    response = _sign_in(client, "erin", "erin-pw")
    assert response.status_code == 200
    assert UNREACHABLE in response.content.decode()
    api = client.post("/api/v3/token", **_basic("erin", "erin-pw"))
    assert api.status_code == 503
    assert "directory cannot be reached" in api.json()["error"]
    assert _sign_in(client, "root-local", "local-pw").status_code == 302
    assert client.get(reverse("home")).status_code == 200


def test_failures_caused_by_a_directory_outage_lock_nobody_out(client, slapd, use_ldap, settings):
    from axes.models import AccessAttempt

    use_ldap(**search_then_bind(slapd))
    assert _sign_in(client, "erin", "erin-pw").status_code == 302  # mirrored: no local password
    client.post(reverse("logout"))
    User.objects.create_user("local-lee", password="local-pw")
    slapd.stop()
    for _ in range(settings.AXES_FAILURE_LIMIT + 2):
        assert UNREACHABLE in _sign_in(client, "erin", "erin-pw").content.decode()
        _sign_in(client, "local-lee", "wrong")
    assert not AccessAttempt.objects.filter(username="erin").exists()
    # A local password is vmportal's to judge, outage or not: those failures still lock.
    response = _sign_in(client, "local-lee", "local-pw")
    assert response.status_code == 429, response.status_code
