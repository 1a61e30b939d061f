"""Real directory servers for the sign-in tests: a throw-away OpenLDAP slapd and node's
oidc-provider (tools/oidc-provider), each on free loopback ports, in a temporary folder."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")
OIDC_DIR = ROOT / "tools" / "oidc-provider"
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")
SUFFIX = "dc=example,dc=com"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root-secret"  # noqa: S105 - throw-away test directory
SERVICE_DN = f"cn=vmportal-svc,ou=services,{SUFFIX}"
SERVICE_PW = "svc-secret"  # noqa: S105
SLAPD_MISSING = f"{SLAPD} is missing (make test installs Debian's slapd)"
NODE_MISSING = f"{OIDC_DIR}/node_modules is missing (make test runs npm ci there)"

# People in two search bases (staff and contractors), groups in one, a service account.
PEOPLE = {
    # uid: (ou, password, givenName, sn, mail)
    "ada": ("people", "ada-pw", "Ada", "Lovelace", "ada@example.com"),
    "erin": ("people", "erin-pw", "Erin", "Engineer", "erin@example.com"),
    "dave": ("people", "dave-pw", "Dave", "Departed", "dave@example.com"),
    "carl": ("contractors", "carl-pw", "Carl", "Contractor", "carl@example.com"),
}
GROUPS = {
    "vmportal-admins": ["ada"],
    "team-a": ["erin", "carl"],
    "vmportal-disabled": ["dave"],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def user_dn(uid: str) -> str:
    return f"uid={uid},ou={PEOPLE[uid][0]},{SUFFIX}"


def group_dn(name: str) -> str:
    return f"cn={name},ou=groups,{SUFFIX}"


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Node loading the provider's modules took over 20 s once when the machine was busy (a
# fresh-clone CI beside other test runs); a server that is up answers at once anyway.
def _wait_for_port(port: int, process: subprocess.Popen, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    _stop(process)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:.0f}s: {log.read_text()[-2000:]}")


# --- TLS --------------------------------------------------------------------------------

def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(folder: Path, name: str) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = folder / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_server_cert(folder: Path, ca_key, ca_cert: x509.Certificate) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# --- OpenLDAP ---------------------------------------------------------------------------

def _config_ldif(folder: Path, ca: Path, cert: Path, key: Path) -> str:
    schemas = "".join(f"include: file:///etc/ldap/schema/{name}.ldif\n\n" for name in SCHEMAS)
    return f"""dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {folder}/slapd.pid
olcTLSCACertificateFile: {ca}
olcTLSCertificateFile: {cert}
olcTLSCertificateKeyFile: {key}

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schemas}dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {SUFFIX}
olcRootDN: {ROOT_DN}
olcRootPW: {ROOT_PW}
olcDbDirectory: {folder}/data
olcDbMaxSize: 16777216
olcAccess: {{0}}to attrs=userPassword by anonymous auth by self write by * none
olcAccess: {{1}}to * by users read by * none
"""


def _data_ldif() -> str:
    parts = [f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n"]
    for ou in ("people", "contractors", "groups", "services"):
        parts.append(f"dn: ou={ou},{SUFFIX}\nobjectClass: organizationalUnit\nou: {ou}\n")
    parts.append(f"dn: {SERVICE_DN}\nobjectClass: person\ncn: vmportal-svc\nsn: service\nuserPassword: {SERVICE_PW}\n")
    for uid, (_, password, given, sn, mail) in PEOPLE.items():
        parts.append(f"dn: {user_dn(uid)}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {given} {sn}\n"
                     f"givenName: {given}\nsn: {sn}\nmail: {mail}\nuserPassword: {password}\n")
    for name, members in GROUPS.items():
        lines = "".join(f"member: {user_dn(uid)}\n" for uid in members)
        parts.append(f"dn: {group_dn(name)}\nobjectClass: groupOfNames\ncn: {name}\n{lines}")
    return "\n".join(parts)


@dataclass
class Slapd:
    folder: Path
    ldap_port: int
    ldaps_port: int
    ca_file: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def ldap_uri(self) -> str:
        return f"ldap://127.0.0.1:{self.ldap_port}"

    @property
    def ldaps_uri(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def start(self) -> None:
        log = self.folder / "slapd.log"
        # -d 0: stay in the foreground (a child we can stop), logging nothing extra.
        self.process = subprocess.Popen(
            [str(SLAPD), "-d", "0", "-F", str(self.folder / "slapd.d"),
             "-h", f"{self.ldap_uri}/ {self.ldaps_uri}/"],
            stdout=log.open("ab"), stderr=subprocess.STDOUT)
        _wait_for_port(self.ldap_port, self.process, "slapd", log)
        _wait_for_port(self.ldaps_port, self.process, "slapd", log)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None

    def modify(self, dn: str, changes: list[tuple[int, str, list[str] | None]]) -> None:
        """Change an entry as the directory's administrator (the way HR would)."""
        import ldap

        conn = ldap.initialize(self.ldap_uri)
        try:
            conn.simple_bind_s(ROOT_DN, ROOT_PW)
            conn.modify_s(dn, [(op, attr, [v.encode() for v in values] if values else None)
                               for op, attr, values in changes])
        finally:
            conn.unbind_s()


def start_slapd(folder: Path) -> Slapd:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir()
    (folder / "slapd.d").mkdir()
    ca, ca_key, ca_cert = make_ca(folder, "test-ca")
    cert, key = make_server_cert(folder, ca_key, ca_cert)
    (folder / "config.ldif").write_text(_config_ldif(folder, ca, cert, key))
    (folder / "data.ldif").write_text(_data_ldif())
    for args in (["-n", "0", "-l", str(folder / "config.ldif")], ["-b", SUFFIX, "-l", str(folder / "data.ldif")]):
        subprocess.run([str(SLAPADD), "-q", "-F", str(folder / "slapd.d"), *args], check=True,
                       capture_output=True, timeout=60)
    server = Slapd(folder, free_port(), free_port(), ca)
    server.start()
    return server


# --- OpenID Connect ---------------------------------------------------------------------

CLIENT_ID = "vmportal"
CLIENT_SECRET = "oidc-client-secret"  # noqa: S105


@dataclass
class OidcProvider:
    issuer: str
    process: subprocess.Popen = field(repr=False)

    def stop(self) -> None:
        _stop(self.process)


def start_oidc_provider(folder: Path, *, vmportal_url: str, accounts: dict) -> OidcProvider:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is missing (make test installs it with the test OIDC provider)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    config = {
        "issuer": issuer,
        "port": port,
        "clients": [{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [f"{vmportal_url}/oidc/callback/"],
            "post_logout_redirect_uris": [f"{vmportal_url}/accounts/login/"],
        }],
        "accounts": accounts,
    }
    (folder / "oidc.json").write_text(json.dumps(config))
    log = folder / "oidc.log"
    def start() -> subprocess.Popen:
        return subprocess.Popen([node, str(OIDC_DIR / "server.js"), str(folder / "oidc.json")],
                                cwd=OIDC_DIR, stdout=log.open("ab"), stderr=subprocess.STDOUT)

    process = start()
    try:
        _wait_for_port(port, process, "oidc-provider", log, timeout=30)
    except RuntimeError:
        # In a fresh-clone CI run one start of three stopped after node's first warning and
        # never listened in 60 s, while the starts before and after it were up at once: so
        # once more, and a second failure is reported as it is.
        _stop(process)
        process = start()
        _wait_for_port(port, process, "oidc-provider", log)
    return OidcProvider(issuer, process)
