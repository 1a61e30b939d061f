"""vmportal settings: every value comes from the environment (see README, "Configuration")."""

from importlib.util import find_spec
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from vmportal.config import env_bool, env_int, env_list, env_secret, env_str, generated_secret

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("VMPORTAL_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
_secret_key = env_secret("SECRET_KEY")
_database_url = env_str("DATABASE_URL")
if not _secret_key and _database_url.split("://", 1)[0] in {"postgres", "postgresql"}:
    # A key generated into this host's var/ would differ from every other host's: sessions
    # signed by one web host would be refused by the next, and vCenter passwords saved
    # through one host unreadable on the others. Only the SQLite default (one host) may.
    raise ImproperlyConfigured(
        "SECRET_KEY is not set: with a PostgreSQL DATABASE_URL every host must share one key. Set SECRET_KEY "
        "(or SECRET_KEY_FILE) to the same value on every web, worker and pool manager host, and "
        "VMPORTAL_ENCRYPTION_KEY too if SECRET_KEY is ever rotated."
    )
SECRET_KEY = _secret_key or generated_secret(VAR_DIR / "secret_key")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Key for secrets stored in the database (vCenter passwords). Defaults to one derived
# from SECRET_KEY; set it separately so that rotating SECRET_KEY keeps them readable.
FIELD_ENCRYPTION_KEY = env_secret("VMPORTAL_ENCRYPTION_KEY") or SECRET_KEY

INSTALLED_APPS = [
    # Not "django.contrib.admin": its autodiscovery would import every admin module (and with
    # them forms, django-rq's statistics, prometheus_client) into workers and the pool manager,
    # which never serve a page. vmportal/urls.py discovers them for the web (bench/memory.py).
    "django.contrib.admin.apps.SimpleAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "apps.core",
    "apps.audit",
    "apps.jobs",
    "apps.inventory",
    "apps.pools",
    "apps.leases",
    "apps.api",
    "apps.firstboot",
    "apps.demo",
    # After apps.jobs, whose rqworker command (start-up checks without the URL conf) wraps this one's.
    "django_rq",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # A call under /api/v1-3/ with a token is served here, past session, CSRF and auth work
    # it never uses (see the module); everything else takes the full list below.
    "vmportal.lean_api.TokenApiMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "apps.audit.middleware.AuditContextMiddleware",
    # A Redis error or a lost database connection that reaches a view is a clear 503 (page
    # or JSON), never a 500.
    "vmportal.unavailable.UnavailableMiddleware",
]

ROOT_URLCONF = "vmportal.urls"
WSGI_APPLICATION = "vmportal.wsgi.application"
ASGI_APPLICATION = "vmportal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.leases.context_processors.expiring_leases",
            ],
        },
    },
]

# --- database ---------------------------------------------------------------------
# DATABASE_URL unset: an embedded SQLite file, so `make demo` needs no server. WAL lets
# readers run beside the writer, and IMMEDIATE transactions take the write lock at BEGIN,
# so a web process and workers sharing the file queue up instead of failing with
# "database is locked" half-way through a transaction.
if _database_url:
    if _database_url.split("://", 1)[0] not in {"postgres", "postgresql", "sqlite"}:
        raise ImproperlyConfigured(
            "DATABASE_URL must be postgres://user:password@host:port/name or sqlite:////path."
        )
    try:
        DATABASES = {"default": environ.Env.db_url_config(_database_url)}
    except Exception as exc:  # django-environ raises several types for a bad URL
        raise ImproperlyConfigured(f"DATABASE_URL is not a usable database URL: {exc}") from None
    DATABASES["default"].setdefault("CONN_MAX_AGE", env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env_bool(
        "DATABASE_PREPARED_STATEMENTS", True
    ):
        # Parameters bound by the server and statements prepared after five runs: each
        # connection plans the hot statements (session user, checkout) once instead of on
        # every request, which cut PostgreSQL's CPU per checkout from 2.3 to 1.4 ms. Turn
        # off behind a pooler that loses prepared statements (PgBouncer < 1.21, transaction mode).
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault("server_side_binding", True)
        DATABASES["default"]["OPTIONS"].setdefault("prepare_threshold", 5)
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "vmportal.sqlite3",
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- redis and RQ ---------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(f"REDIS_URL={REDIS_URL!r} must start with redis://, rediss:// or unix://.")
RQ_JOB_TIMEOUT = env_int("RQ_JOB_TIMEOUT", 1800, minimum=10)
RQ_QUEUES = {
    name: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": RQ_JOB_TIMEOUT, "SOCKET_TIMEOUT": 5}
    for name in ("deploy", "clone", "purge", "default")
}

# --- auth -----------------------------------------------------------------------------
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# Users in this group (or superusers) may reconfigure pools and templates.
VMPORTAL_ADMIN_GROUP = env_str("VMPORTAL_ADMIN_GROUP", "vmportal-admins")

# Sessions are read from Redis (REDIS_URL) and written through to the database
# (vmportal/sessions.py): a signed-in request costs a Redis GET instead of a query, and a
# Redis flush or outage signs nobody out.
SESSION_ENGINE = "vmportal.sessions"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", SESSION_COOKIE_SECURE)
# A refused form gets a page that says to reload it (JSON on API paths), not Django's own.
CSRF_FAILURE_VIEW = "vmportal.views.csrf_failure"
# HTTPS in production (README "Running in production"): all off by default, so the demo and
# tests work over plain HTTP. Behind a TLS-terminating proxy, SECURE_PROXY_SSL_HEADER names
# the header it sets ("X-Forwarded-Proto", value https); trust it only when the proxy always
# sets or strips that header, or a client could claim HTTPS. /healthz stays reachable over
# HTTP for load balancers that probe the backend directly.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz\Z"]
_proxy_ssl_header = env_str("SECURE_PROXY_SSL_HEADER").strip()
if _proxy_ssl_header and not (_proxy_ssl_header.isascii() and _proxy_ssl_header.replace("-", "").isalnum()):
    raise ImproperlyConfigured(
        f"SECURE_PROXY_SSL_HEADER={_proxy_ssl_header!r}: give a header name, e.g. X-Forwarded-Proto.")
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _proxy_ssl_header.upper().replace("-", "_"), "https") if _proxy_ssl_header else None
)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
X_FRAME_OPTIONS = "DENY"

# --- i18n, static ----------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# django-ninja's static files: Swagger UI for /api/docs/, served here rather than from a CDN.
# Found without importing ninja (and pydantic), which an installed app would be in every process.
STATICFILES_DIRS = [BASE_DIR / "static", Path(find_spec("ninja").origin).parent / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns about a missing one
# Serve files from the finders too, so the demo needs no collectstatic step.
WHITENOISE_USE_FINDERS = True

# --- pools and leases ------------------------------------------------------------------
# A running job whose heartbeat is older than this many seconds lost its worker: the pool
# manager fails it and retries or compensates its work (workers beat three times as often).
VMPORTAL_JOB_STALE_AFTER = env_int("VMPORTAL_JOB_STALE_AFTER", 45, minimum=3)
# rqworker processes lower their CPU priority by this much (nice(2), 0-19) when they start:
# on a host they share with the web processes, web requests get the cores first and jobs
# (pyVmomi's SOAP, OVF parsing) the rest. 0 leaves it alone.
VMPORTAL_WORKER_NICE = env_int("VMPORTAL_WORKER_NICE", 10, minimum=0)
if VMPORTAL_WORKER_NICE > 19:
    raise ImproperlyConfigured(f"VMPORTAL_WORKER_NICE={VMPORTAL_WORKER_NICE} must be between 0 and 19.")
# Most clone tasks in flight across all vCenters (each vCenter also has its own limit).
VMPORTAL_CLONE_LIMIT = env_int("VMPORTAL_CLONE_LIMIT", 20, minimum=1)
# One rule for where VMs run (apps.vsphere.placement), at clone time and at checkout: a host
# above OVERLOAD percent of its CPU or memory gets no new clones, and a pool that balances
# hosts moves a VM checked out on such a host to one at least GAP points under OVERLOAD.
# Hosts within GAP points of the least-loaded one share a burst of clones.
VMPORTAL_HOST_OVERLOAD_PCT = env_int("VMPORTAL_HOST_OVERLOAD_PCT", 90, minimum=1)
VMPORTAL_HOST_BALANCE_GAP_PCT = env_int("VMPORTAL_HOST_BALANCE_GAP_PCT", 25, minimum=0)
if VMPORTAL_HOST_OVERLOAD_PCT > 100 or VMPORTAL_HOST_BALANCE_GAP_PCT >= VMPORTAL_HOST_OVERLOAD_PCT:
    raise ImproperlyConfigured(
        f"VMPORTAL_HOST_OVERLOAD_PCT={VMPORTAL_HOST_OVERLOAD_PCT} must be at most 100 and above "
        f"VMPORTAL_HOST_BALANCE_GAP_PCT={VMPORTAL_HOST_BALANCE_GAP_PCT}."
    )
# Most vMotions of checked-out VMs (pools that balance hosts) in flight per vCenter.
VMPORTAL_MIGRATIONS_PER_VCENTER = env_int("VMPORTAL_MIGRATIONS_PER_VCENTER", 2, minimum=1)
# Active leases one engineer may hold at once (0: no limit; admins are exempt).
VMPORTAL_MAX_LEASES_PER_USER = env_int("VMPORTAL_MAX_LEASES_PER_USER", 10, minimum=0)
# VMs one on-demand request may ask for (vmpooler's max_ondemand_instances_per_request).
VMPORTAL_ONDEMAND_MAX_PER_REQUEST = env_int("VMPORTAL_ONDEMAND_MAX_PER_REQUEST", 10, minimum=1)
# Written into every clone's extraConfig; identifies VMs this installation made. Unset:
# the id generated once and stored in the database (apps.pools.instance).
VMPORTAL_INSTANCE_ID = env_str("VMPORTAL_INSTANCE_ID", "")

# --- vSphere --------------------------------------------------------------------------
VSPHERE_CALL_TIMEOUT = env_int("VSPHERE_CALL_TIMEOUT", 60, minimum=1)
# OVF/OVA files admins upload are streamed here (never held in memory) until a deploy
# worker has sent them to vCenter; with workers on other hosts, make it shared storage.
VMPORTAL_UPLOAD_DIR = Path(env_str("VMPORTAL_UPLOAD_DIR", str(VAR_DIR / "uploads")))
# Largest OVF/OVA accepted, uploaded or downloaded from a URL (default 20 GiB).
VMPORTAL_OVF_MAX_BYTES = env_int("VMPORTAL_OVF_MAX_BYTES", 20 * 1024**3, minimum=1024)
import ipaddress  # noqa: E402 - kept beside the settings it validates
import re  # noqa: E402

# Uploads no queued or running deploy needs (their request or worker died) are deleted
# by the pool manager once this many seconds old.
VMPORTAL_UPLOAD_MAX_AGE = env_int("VMPORTAL_UPLOAD_MAX_AGE", 24 * 3600, minimum=60)
# A deploy worker fetches whatever URL an admin gives, so it must never be pointed at a
# cloud metadata service (link-local addresses) or, when an allowlist is set, anywhere
# else than the listed OVA servers. Allow: host names, domains (".lab.example": it and
# every name under it), IPs or CIDRs; empty: any host whose addresses are not denied.
# Deny: IPs/CIDRs refused whatever the allowlist says (set it empty to refuse none).
VMPORTAL_OVF_URL_ALLOW = [e.lower() for e in env_list("VMPORTAL_OVF_URL_ALLOW", [])]
VMPORTAL_OVF_URL_DENY = env_list(
    "VMPORTAL_OVF_URL_DENY", ["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32"])
for _entry in VMPORTAL_OVF_URL_DENY:
    try:
        ipaddress.ip_network(_entry, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"VMPORTAL_OVF_URL_DENY: {_entry!r} is not an address or CIDR.") from None
for _entry in VMPORTAL_OVF_URL_ALLOW:
    try:
        ipaddress.ip_network(_entry, strict=False)
    except ValueError:
        if not re.fullmatch(r"(\*\.|\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?", _entry):
            raise ImproperlyConfigured(
                f"VMPORTAL_OVF_URL_ALLOW: {_entry!r} is not a host name, domain (.example.com), IP or CIDR."
            ) from None

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"LOG_LEVEL={LOG_LEVEL!r}; use DEBUG, INFO, WARNING or ERROR.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    # API tokens in request paths (vmpooler's /token/<token>) never reach a log line; a
    # checkout's 503 for an empty pool is a WARNING, not an ERROR like a server fault.
    "filters": {"redact_tokens": {"()": "vmportal.logfilters.RedactTokenPaths"},
                "pool_empty_is_no_error": {"()": "vmportal.logfilters.PoolEmptyIsNoError"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact_tokens"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # pyVmomi logs SOAP bodies at DEBUG, which would include login passwords.
        "pyVmomi": {"level": "WARNING"},
        "django.request": {"filters": ["redact_tokens", "pool_empty_is_no_error"]},
        "django.server": {"filters": ["redact_tokens"]},
    },
}

# --- API (apps.api) ----------------------------------------------------------------------
# Body size limit for /api/ requests (vmpooler uses 10 KB).
VMPORTAL_API_MAX_BODY_BYTES = env_int("VMPORTAL_API_MAX_BODY_BYTES", 10240, minimum=256)
# The most VMs one checkout may take, and the largest pool size: one setting each, read by
# the pages, both APIs and the services alike. The old API-only names still work.
VMPORTAL_MAX_VMS_PER_CHECKOUT = env_int(
    "VMPORTAL_MAX_VMS_PER_CHECKOUT", env_int("VMPORTAL_API_MAX_VMS_PER_REQUEST", 20, minimum=1), minimum=1)
VMPORTAL_MAX_POOL_SIZE = env_int("VMPORTAL_MAX_POOL_SIZE", env_int("VMPORTAL_API_MAX_POOL_SIZE", 500, minimum=1),
                                 minimum=1)
# Pools that size themselves (apps/pools/autosize.py): checkouts within WINDOW seconds are
# remembered; the size covers the busiest clone-and-boot time of them (and of the same hour
# yesterday) plus HEADROOM percent; it grows at once and shrinks no sooner than SHRINK_AFTER
# seconds after its last automatic change, halfway each time. FILL_SECONDS is the clone-and-boot
# time assumed until a pool has made a VM.
VMPORTAL_AUTOSIZE_WINDOW = env_int("VMPORTAL_AUTOSIZE_WINDOW", 3600, minimum=1)
VMPORTAL_AUTOSIZE_SHRINK_AFTER = env_int("VMPORTAL_AUTOSIZE_SHRINK_AFTER", 900, minimum=0)
VMPORTAL_AUTOSIZE_HEADROOM = env_int("VMPORTAL_AUTOSIZE_HEADROOM", 50, minimum=0)
VMPORTAL_AUTOSIZE_FILL_SECONDS = env_int("VMPORTAL_AUTOSIZE_FILL_SECONDS", 120, minimum=1)
# Longest lease lifetime any pool may offer, in hours (pool forms, both APIs).
VMPORTAL_MAX_LEASE_HOURS = env_int("VMPORTAL_MAX_LEASE_HOURS", 24 * 365, minimum=1)
VMPORTAL_API_MAX_TAGS = env_int("VMPORTAL_API_MAX_TAGS", 32, minimum=1)
# Requests per minute per client IP and per token (0: unlimited); 429 + Retry-After beyond.
VMPORTAL_API_RATE_LIMIT_PER_IP = env_int("VMPORTAL_API_RATE_LIMIT_PER_IP", 300, minimum=0)
VMPORTAL_API_RATE_LIMIT_PER_TOKEN = env_int("VMPORTAL_API_RATE_LIMIT_PER_TOKEN", 600, minimum=0)
# New tokens expire after this many days unless the creator picks otherwise (0: never).
VMPORTAL_API_TOKEN_LIFETIME_DAYS = env_int("VMPORTAL_API_TOKEN_LIFETIME_DAYS", 90, minimum=0)
# Lease lifetime for vmpooler-API checkouts (0: the pool's own default).
VMPORTAL_API_DEFAULT_LIFETIME_HOURS = env_int("VMPORTAL_API_DEFAULT_LIFETIME_HOURS", 0, minimum=0)
# The DNS domain vmpooler clients append to hostnames ("domain" in responses); may be empty.
VMPORTAL_API_DOMAIN = env_str("VMPORTAL_API_DOMAIN", "")
# The vmpooler reads vmpooler answers without a token (GET vm, vm/<host>, status, summary,
# poolstat, totalrunning, ondemandvm/<id>, the dashboard's); false makes them need one.
VMPORTAL_API_PUBLIC_READS = env_bool("VMPORTAL_API_PUBLIC_READS", True)
import ipaddress  # noqa: E402 - kept inside this block, which is the API's

# Client networks (CIDRs, comma-separated) that may read /metrics without a token.
VMPORTAL_METRICS_ALLOW_IPS = env_list("VMPORTAL_METRICS_ALLOW_IPS", [])
for _net in VMPORTAL_METRICS_ALLOW_IPS:
    try:
        ipaddress.ip_network(_net, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"VMPORTAL_METRICS_ALLOW_IPS: {_net!r} is not an address or CIDR.") from None
# Reverse proxies (IPs/CIDRs, comma-separated) whose X-Forwarded-For names the client: the
# rate limit and the /metrics allowlist then see the client's address, not the proxy's.
VMPORTAL_TRUSTED_PROXIES = env_list("VMPORTAL_TRUSTED_PROXIES", [])
for _net in VMPORTAL_TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_net, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"VMPORTAL_TRUSTED_PROXIES: {_net!r} is not an address or CIDR.") from None
# Rate limits and body limits run before any view, so they go after the other middleware.
MIDDLEWARE.append("apps.api.guard.ApiGuardMiddleware")

# --- directory sign-in (apps.accounts; README "Signing in with the company directory") ---
# LDAP when VMPORTAL_LDAP_SERVER_URI is set, OpenID Connect when VMPORTAL_OIDC_CLIENT_ID is:
# both off by default. Local accounts (ModelBackend) are tried first, so a local superuser
# signs in without a directory round trip, and still can when the directory is down.
from vmportal import auth_settings as _auth  # noqa: E402

INSTALLED_APPS.append("apps.accounts")
VMPORTAL_DIRECTORY_GROUPS = _auth.directory_groups()
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
for _name, _value in {**_auth.ldap_settings(), **_auth.oidc_settings()}.items():
    globals()[_name] = _value
if globals().get("AUTH_LDAP_SERVER_URI"):
    AUTHENTICATION_BACKENDS.append(_auth.LDAP_BACKEND)
if globals().get("OIDC_RP_CLIENT_ID"):
    AUTHENTICATION_BACKENDS.append(_auth.OIDC_BACKEND)
# --- end of directory sign-in ------------------------------------------------------------

# --- sign-in throttling (django-axes; README "Configuration") ------------------------------
# Every sign-in (login page, Django admin, the API's Basic-auth token route, LDAP) goes through
# django.contrib.auth.authenticate, where axes' backend, first in the list, refuses a
# username+address pair that failed AXES_FAILURE_LIMIT times until AXES_COOLOFF_MINUTES have
# passed; a success clears its count. Attempts are kept in the database, so a Redis outage
# neither unlocks nor locks anybody. The address is the rate limit's (VMPORTAL_TRUSTED_PROXIES).
from datetime import timedelta  # noqa: E402

INSTALLED_APPS.append("axes")
AUTHENTICATION_BACKENDS.insert(0, "axes.backends.AxesStandaloneBackend")
# Last, as axes asks: it turns the answer of a refused sign-in into the lockout response.
MIDDLEWARE.append("axes.middleware.AxesMiddleware")
AXES_ENABLED = env_bool("AXES_ENABLED", True)
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 10, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "vmportal.lockout.axes_client_ip"
# Failures stay in axes' AccessAttempt table (Django admin) until they expire; a row for every
# successful sign-in too would grow without bound.
AXES_DISABLE_ACCESS_LOG = True
AXES_LOCKOUT_CALLABLE = "vmportal.lockout.lockout_response"
AXES_WHITELIST_CALLABLE = "vmportal.lockout.outage_failure"  # a directory outage locks nobody out
AXES_HTTP_RESPONSE_CODE = 429
