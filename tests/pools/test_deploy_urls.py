"""Deploy URLs: the address policy (no metadata service, optional allowlist) at the form and
again in the job, and the size limit over a whole package (an .ovf's disks included)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import socket
import threading
import time
from pathlib import Path

import pytest
from django.urls import reverse

from apps.jobs.models import Job
from apps.pools.downloads import PackageDownload, PackageTooLarge, UrlPolicy, UrlRefused, check_url
from apps.pools.models import Template, TemplateStatus
from tests.live import site
from tests.pools.test_template_jobs import deploy_fields, run_worker, vm_in_vsphere
from tests.vsphere.test_templates import DISK, OVF, ova_bytes

METADATA = "http://169.254.169.254/latest/meta-data/x.ova"


@contextlib.contextmanager
def ova_server(directory: Path, *, redirects: dict[str, str] | None = None, no_length: bool = False):
    """Serve ``directory`` on 127.0.0.1; ``redirects`` maps paths to 302 targets;
    ``no_length`` sends bodies without Content-Length (read until the connection closes)."""
    redirects = redirects or {}

    class Handler(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path in redirects:
                self.send_response(302)
                self.send_header("Location", redirects[self.path])
                self.end_headers()
                return
            if no_length:
                body = (directory / self.path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def refusal(url: str, policy: UrlPolicy | None = None) -> str:
    with pytest.raises(UrlRefused) as caught:
        check_url(url, policy)
    return str(caught.value)


# ---------------------------------------------------------------- the policy


@pytest.mark.parametrize("url", [
    METADATA,
    "http://2852039166/x.ova",                      # 169.254.169.254 written as one number
    "http://[fe80::1]/x.ova",
    "http://[::ffff:169.254.169.254]/x.ova",        # IPv4-mapped IPv6
    "http://[fd00:ec2::254]/x.ova",                 # AWS's IPv6 metadata address
    "http://100.100.100.200/x.ova",                 # Alibaba Cloud's metadata address
])
def test_metadata_and_link_local_addresses_are_refused_by_default(url, settings):
    assert "VMPORTAL_OVF_URL_DENY" in refusal(url, UrlPolicy.from_settings())


def test_internal_servers_and_the_workers_own_host_are_allowed_by_default():
    for url in ("http://10.1.2.3/x.ova", "http://192.168.0.9:8080/x.ovf", "http://127.0.0.1/x.ova",
                "http://localhost/x.ova", "https://[::1]/x.ova"):
        check_url(url, UrlPolicy.from_settings())


def test_an_allowlist_admits_only_its_hosts_domains_and_networks(settings):
    settings.VMPORTAL_OVF_URL_ALLOW = ["localhost", ".lab.example", "10.0.0.0/8"]
    policy = UrlPolicy.from_settings()
    check_url("http://10.20.30.40/x.ova", policy)
    check_url("http://localhost/x.ova", policy)  # by name, whatever it resolves to (unless denied)
    assert "not in VMPORTAL_OVF_URL_ALLOW" in refusal("http://127.0.0.1/x.ova", policy)
    assert "not in VMPORTAL_OVF_URL_ALLOW" in refusal("http://192.168.1.1/x.ova", policy)
    assert policy.name_allowed("ova.lab.example") and policy.name_allowed("lab.example")
    assert not policy.name_allowed("evil-lab.example") and not policy.name_allowed("lab.example.evil.org")


def test_the_deny_list_wins_over_the_allowlist(settings):
    settings.VMPORTAL_OVF_URL_ALLOW = ["169.254.0.0/16", "localhost"]
    settings.VMPORTAL_OVF_URL_DENY = ["169.254.0.0/16", "127.0.0.0/8", "::1/128"]
    policy = UrlPolicy.from_settings()
    assert "is in 169.254.0.0/16" in refusal(METADATA, policy)
    assert "localhost (127.0.0.1) is in 127.0.0.0/8" in refusal("http://localhost/x.ova", policy)
    settings.VMPORTAL_OVF_URL_DENY = []  # the operator may lift the default
    check_url(METADATA, UrlPolicy.from_settings())


def test_unresolvable_hosts_and_bad_ports_are_refused_with_a_reason():
    assert "Cannot resolve no-such-host.invalid" in refusal("http://no-such-host.invalid/x.ova")
    assert "invalid port" in refusal("http://10.0.0.1:99999/x.ova")
    assert "Cannot resolve" in refusal("http://" + "a" * 70 + ".example/x.ova")  # IDNA label too long


# ---------------------------------------------------------------- the form


@pytest.mark.django_db(transaction=True)
@pytest.mark.vcsim
def test_the_deploy_form_refuses_the_metadata_service_and_outsiders_with_a_message(client, admin_user, vcsim,
                                                                                     settings, redis_conn):
    vc, _ = site(vcsim)
    client.force_login(admin_user)
    cases = [
        (METADATA, "is in 169.254.0.0/16, a range deploy URLs may not reach"),
        ("http://[fe80::1]/disk.ovf", "is in fe80::/10"),
        ("http://no-such-host.invalid/x.ova", "Cannot resolve no-such-host.invalid"),
        ("http://10.0.0.1:99999/x.ova", "invalid port"),
    ]
    for url, message in cases:
        response = client.post(reverse("adminui:template-deploy"), deploy_fields(vc, url=url))
        assert response.status_code == 400, url
        assert message in response.content.decode(), (url, message)
    settings.VMPORTAL_OVF_URL_ALLOW = [".lab.example"]
    response = client.post(reverse("adminui:template-deploy"), deploy_fields(vc, url="http://127.0.0.1/x.ova"))
    assert response.status_code == 400
    assert "127.0.0.1 is not in VMPORTAL_OVF_URL_ALLOW" in response.content.decode()
    assert not Template.objects.exists() and not Job.objects.exists()


# ---------------------------------------------------------------- the job's opener


def test_a_redirect_to_the_metadata_service_is_refused_before_connecting(tmp_path):
    (tmp_path / "tiny.ova").write_bytes(ova_bytes())
    with ova_server(tmp_path, redirects={"/tiny.ova": METADATA}) as base:
        started = time.monotonic()
        with pytest.raises(UrlRefused, match="169.254.169.254 is in 169.254.0.0/16"):
            PackageDownload().open(f"{base}tiny.ova", timeout=5)
    assert time.monotonic() - started < 2  # refused, not a connect attempt that times out


def test_a_name_that_resolves_elsewhere_by_the_time_of_the_job_is_refused(tmp_path, monkeypatch):
    """DNS rebinding: the name passes the check, then answers with the metadata address."""
    (tmp_path / "tiny.ova").write_bytes(ova_bytes())
    real = socket.getaddrinfo
    answers = []

    def rebinding(host, port, *args, **kwargs):
        if host != "ova.lab.example":
            return real(host, port, *args, **kwargs)
        answers.append(host)
        ip = "127.0.0.1" if len(answers) == 1 else "169.254.169.254"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with ova_server(tmp_path) as base:
        url = base.replace("127.0.0.1", "ova.lab.example") + "tiny.ova"
        with pytest.raises(UrlRefused, match=r"ova.lab.example \(169.254.169.254\) is in 169.254.0.0/16"):
            PackageDownload().open(url, timeout=5)
    assert len(answers) == 2  # once for the check, once for the connection that was refused


def test_the_size_limit_covers_every_file_of_a_package(tmp_path):
    (tmp_path / "tiny.ovf").write_text(OVF)
    (tmp_path / "disk1.vmdk").write_bytes(DISK)
    with ova_server(tmp_path) as base:
        download = PackageDownload(limit=len(OVF) + 1024)
        with download.open(f"{base}tiny.ovf") as resp:
            assert resp.read() == OVF.encode()
        # Announced: refused before a byte of the disk is read.
        with pytest.raises(PackageTooLarge, match=r"disk1.vmdk is 48.0 KiB; with the .* read before it, the "
                                                  r"package is over the .* limit \(VMPORTAL_OVF_MAX_BYTES\)"):
            download.open(f"{base}disk1.vmdk")
    with ova_server(tmp_path, no_length=True) as base:
        download = PackageDownload(limit=10 * 1024)
        resp = download.open(f"{base}disk1.vmdk")
        assert resp.read(8 * 1024) == DISK[: 8 * 1024]
        with pytest.raises(PackageTooLarge, match="disk1.vmdk: the package is larger than the 10.0 KiB limit"):
            resp.read()
        assert download.read <= 10 * 1024 + 8 * 1024  # at most one chunk past the limit, never delivered


# ---------------------------------------------------------------- end to end, real worker



@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_an_ovf_whose_disk_is_over_the_limit_fails_the_deploy_and_leaves_no_vm(client, admin_user, vcsim_factory,
                                                                               redis_conn, monkeypatch, tmp_path):
    vc, _ = site(vcsim_factory())
    (tmp_path / "tiny.ovf").write_text(OVF)
    (tmp_path / "disk1.vmdk").write_bytes(DISK)
    client.force_login(admin_user)
    with ova_server(tmp_path) as base:
        assert client.post(reverse("adminui:template-deploy"),
                           deploy_fields(vc, url=f"{base}tiny.ovf")).status_code == 302
        monkeypatch.setenv("VMPORTAL_OVF_MAX_BYTES", str(20 * 1024))  # the worker's settings
        run_worker()
    template = Template.objects.get(name="tiny")
    assert template.status == TemplateStatus.FAILED
    assert "disk1.vmdk is 48.0 KiB" in template.status_reason
    assert "over the 20.0 KiB limit (VMPORTAL_OVF_MAX_BYTES)" in template.status_reason
    assert vm_in_vsphere(vc, "DC0/vm/Templates/tiny") is None


@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_the_job_checks_again_and_refuses_a_disk_redirected_to_the_metadata_service(
        client, admin_user, vcsim_factory, redis_conn, tmp_path):
    vc, _ = site(vcsim_factory())
    (tmp_path / "tiny.ovf").write_text(OVF)
    client.force_login(admin_user)
    with ova_server(tmp_path, redirects={"/disk1.vmdk": "http://169.254.169.254/latest/disk1.vmdk"}) as base:
        assert client.post(reverse("adminui:template-deploy"),
                           deploy_fields(vc, url=f"{base}tiny.ovf")).status_code == 302
        run_worker()
    template = Template.objects.get(name="tiny")
    assert template.status == TemplateStatus.FAILED
    assert "169.254.169.254 is in 169.254.0.0/16" in template.status_reason
    assert vm_in_vsphere(vc, "DC0/vm/Templates/tiny") is None


@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_the_job_applies_the_workers_policy_to_the_address_it_connects_to(client, admin_user, vcsim_factory,
                                                                            redis_conn, monkeypatch, tmp_path):
    vc, _ = site(vcsim_factory())
    (tmp_path / "tiny.ova").write_bytes(ova_bytes())
    client.force_login(admin_user)
    with ova_server(tmp_path) as base:
        url = base.replace("127.0.0.1", "localhost") + "tiny.ova"
        assert client.post(reverse("adminui:template-deploy"), deploy_fields(vc, url=url)).status_code == 302
        # By the time the job runs, the name leads somewhere the worker may not go.
        monkeypatch.setenv("VMPORTAL_OVF_URL_DENY", "169.254.0.0/16,127.0.0.0/8,::1/128")
        run_worker()
    template = Template.objects.get(name="tiny")
    assert template.status == TemplateStatus.FAILED
    assert "localhost (127.0.0.1) is in 127.0.0.0/8" in template.status_reason or \
        "localhost (::1) is in ::1/128" in template.status_reason
    job = Job.objects.get(kind="templates.deploy_ovf")
    assert job.status == Job.Status.FAILED


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("VMPORTAL_OVF_URL_ALLOW", "http://ova.lab", "'http://ova.lab' is not a host name, domain (.example.com), IP"),
    ("VMPORTAL_OVF_URL_DENY", "metadata.internal", "'metadata.internal' is not an address or CIDR"),
])
def test_a_bad_url_policy_stops_the_process_naming_the_variable(tmp_path, variable, value, message):
    from tests.test_config import load_settings

    result = load_settings(tmp_path, **{variable: value})
    assert result.returncode != 0 and f"{variable}: {message}" in result.stderr
