"""Passwords, hashes, SSH keys and seed documents: pure functions, no services."""

from __future__ import annotations

import base64
import gzip
import io
import json

import pycdlib
import pytest
import yaml

from apps.firstboot import seed
from apps.firstboot.models import DEFAULT_USER_DATA
from apps.firstboot.secrets import InvalidKey, new_password, parse_key_lines, parse_public_key, sha512_crypt
from tests.firstboot.keys import ED25519, RSA, RSA_1024


def identity(**kw) -> seed.Identity:
    defaults = {"vm_name": "deb_pool-1a2b3c4d", "hostname": "deb-pool-1a2b3c4d", "pool": "deb_pool",
                "instance_id": "deb_pool-1a2b3c4d-7", "domain": "lab.example", "ip": "10.40.0.10", "prefix": 24,
                "gateway": "10.40.0.1", "dns": ("10.40.0.2",), "password_hash": sha512_crypt("pw", "salt"),
                "ssh_authorized_keys": (ED25519,)}
    return seed.Identity(**{**defaults, **kw})


def test_sha512_crypt_matches_the_reference_vectors():
    # From Drepper's specification of the $6$ scheme.
    assert sha512_crypt("Hello world!", "saltstring") == (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1")
    assert sha512_crypt("Hello world!", "saltstringsaltstring", rounds=10000) == (
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/"
        "y3RnOaw5v.")


def test_passwords_are_random_and_mix_character_classes():
    pws = {new_password() for _ in range(50)}
    assert len(pws) == 50
    assert all(len(p) == 20 and any(c.isupper() for c in p) and any(c.isdigit() for c in p) for p in pws)


def test_valid_public_keys_parse_with_their_fingerprint():
    key = parse_public_key(f"  {ED25519}  ")
    assert key.kind == "ssh-ed25519" and key.comment == "bob@laptop"
    assert key.fingerprint.startswith("SHA256:") and len(key.fingerprint) == 50
    assert parse_public_key(RSA).kind == "ssh-rsa"
    assert [k.kind for k in parse_key_lines(f"# team\n{ED25519}\n\n{RSA}\n")] == ["ssh-ed25519", "ssh-rsa"]


@pytest.mark.parametrize("text, why", [
    ("", "Paste a public key"),
    ("-----BEGIN OPENSSH PRIVATE KEY----- abc", "private key"),
    ("ssh-dss AAAAB3NzaC1kc3M= x", "not a supported key type"),
    (f'from="10.0.0.1" {ED25519}', "options"),
    ("ssh-ed25519 not-base64!", "not valid base64"),
    ("ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x07ssh-rsa").decode(), "not ssh-ed25519"),
    (RSA_1024, "1024 bits"),
    (ED25519.replace("bob@laptop", 'bob"; rm -rf'), "quotes"),
])
def test_bad_public_keys_are_refused_with_a_reason(text, why):
    with pytest.raises(InvalidKey, match=why):
        parse_public_key(text)


def test_hostnames_are_valid_whatever_the_vm_name():
    assert seed.hostname_for("Deb_Pool-1a2b3c4d") == "deb-pool-1a2b3c4d"
    assert seed.hostname_for("windows_pool-1a2b3c4d", windows=True) == "s-pool-1a2b3c4d"  # NetBIOS: 15
    assert len(seed.hostname_for("x" * 90)) == 63


def test_default_user_data_renders_valid_cloud_config_with_hash_and_keys():
    text = seed.user_data(DEFAULT_USER_DATA, identity())
    doc = yaml.safe_load(text)
    user = doc["users"][1]
    assert text.startswith("#cloud-config")
    assert doc["hostname"] == "deb-pool-1a2b3c4d" and doc["fqdn"] == "deb-pool-1a2b3c4d.lab.example"
    assert user["hashed_passwd"].startswith("$6$") and user["ssh_authorized_keys"] == [ED25519]


def test_template_errors_name_the_problem():
    with pytest.raises(seed.FirstBootError, match="user-data template has an error"):
        seed.user_data("#cloud-config\n{% for x in %}", identity())
    with pytest.raises(seed.FirstBootError, match="not valid YAML"):
        seed.user_data("#cloud-config\nusers: [unclosed\n", identity())
    with pytest.raises(seed.FirstBootError, match="YAML mapping"):
        seed.meta_data("- a list", identity(), with_network=False)


def test_meta_data_keeps_vmportals_keys_over_the_template():
    meta = seed.meta_data("local-hostname: other\nrack: r1\n", identity(), with_network=True)
    assert meta["local-hostname"] == "deb-pool-1a2b3c4d" and meta["rack"] == "r1"
    nic = meta["network"]["ethernets"]["nic0"]
    assert nic["addresses"] == ["10.40.0.10/24"] and nic["routes"] == [{"to": "default", "via": "10.40.0.1"}]
    assert seed.network_config(identity(ip=None))["ethernets"]["nic0"]["dhcp4"] is True


def test_guestinfo_is_gzip_base64():
    keys = seed.guestinfo("#cloud-config\n", {"instance-id": "i"})
    assert keys["guestinfo.userdata.encoding"] == "gzip+base64"
    assert json.loads(gzip.decompress(base64.b64decode(keys["guestinfo.metadata"]))) == {"instance-id": "i"}


def test_seed_iso_is_a_cidata_volume_with_the_three_files_under_their_real_names():
    data = seed.seed_iso("#cloud-config\n", {"instance-id": "i"}, {"version": 2})
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        for name, expected in (("user-data", b"#cloud-config\n"), ("meta-data", b'{"instance-id": "i"}'),
                               ("network-config", b'{"version": 2}')):
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            assert out.getvalue() == expected
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
            assert out.getvalue() == expected
    finally:
        iso.close()


def test_linux_script_sets_the_hash_not_the_password():
    ident = identity()
    script = seed.linux_script(ident)
    assert "chpasswd -e" in script and ident.password_hash in script
    assert ED25519 in script and script.startswith("#!/bin/sh")
