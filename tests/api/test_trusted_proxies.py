"""Behind a reverse proxy the rate limit counts each client, not the proxy; a client that
writes its own X-Forwarded-For does not escape it (VMPORTAL_TRUSTED_PROXIES)."""

from __future__ import annotations

from tests.test_config import load_settings

PROXY = "10.9.0.5"


def get(client, forwarded_for: str | None = None, peer: str = PROXY):
    extra = {"HTTP_X_FORWARDED_FOR": forwarded_for} if forwarded_for is not None else {}
    return client.get("/api/v3/vm", REMOTE_ADDR=peer, **extra).status_code


def test_clients_behind_a_trusted_proxy_each_get_their_own_rate_limit(client, settings, debian, redis_conn):
    settings.VMPORTAL_API_RATE_LIMIT_PER_IP = 2
    settings.VMPORTAL_TRUSTED_PROXIES = ["10.9.0.0/24"]
    assert [get(client, "203.0.113.7") for _ in range(3)] == [200, 200, 429]
    # Another client through the same proxy is not limited by the first one's requests,
    assert get(client, "203.0.113.8") == 200
    # and the proxy's own hop, or a second trusted proxy in the chain, is skipped.
    assert get(client, f"203.0.113.8, {PROXY}") == 200
    assert get(client, "spoofed, 203.0.113.7") == 429  # a client's own prefix is not believed


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(client, settings, debian, redis_conn):
    settings.VMPORTAL_API_RATE_LIMIT_PER_IP = 2
    settings.VMPORTAL_TRUSTED_PROXIES = ["10.9.0.0/24"]
    results = [get(client, f"198.51.100.{i}", peer="192.0.2.66") for i in range(3)]
    assert results == [200, 200, 429]  # a new made-up address per request does not reset the count


def test_a_bad_trusted_proxy_entry_is_refused_naming_the_setting(tmp_path):
    result = load_settings(tmp_path, VMPORTAL_TRUSTED_PROXIES="10.0.0.1,proxy.example")
    assert result.returncode != 0
    assert "VMPORTAL_TRUSTED_PROXIES: 'proxy.example' is not an address or CIDR." in result.stderr
