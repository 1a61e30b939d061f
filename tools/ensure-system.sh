#!/usr/bin/env bash
# Installs (Debian) and starts what vmportal needs from the machine, only when missing.
# Never prompts. Usage: tools/ensure-system.sh [postgres] [redis] [chromium] [ldap-dev] [slapd] [oidc-provider] [nginx]
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
apt_updated=""

apt_install() {
    if [ -z "$apt_updated" ]; then
        $SUDO apt-get update -qq
        apt_updated=1
    fi
    echo "ensure-system: installing $*"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

PG_PORT="${PGPORT:-5432}"
pg_up() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; }
# Can the tests' default DATABASE_URL (postgres@127.0.0.1, no password) connect? It can where
# the server trusts localhost, or with a password in ~/.pgpass, which libpq (psycopg) reads.
pg_login_ok() { psql -w -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; }
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -n -u postgres "$@"; fi
}
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

ensure_postgres() {
    command -v pg_isready >/dev/null || apt_install postgresql postgresql-client
    if ! pg_up; then
        echo "ensure-system: starting PostgreSQL"
        version=$(ls /etc/postgresql | sort -V | tail -n1)
        $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start
        for _ in $(seq 1 30); do pg_up && break; sleep 1; done
    fi
    pg_up || { echo "ensure-system: PostgreSQL does not answer on 127.0.0.1:$PG_PORT" >&2; exit 1; }
    # A configured DATABASE_URL carries its own credentials; the tests use it as it is.
    [ -z "${DATABASE_URL:-}" ] || return 0
    pg_login_ok && return 0
    # Debian's own pg_hba.conf asks TCP logins for a password (scram-sha-256) and lets only
    # the postgres OS user in over the socket (peer). A postgres role without a password gets
    # a generated one, kept in ~/.pgpass for libpq; one that has a password we do not know is
    # left alone, with what to do.
    local has_password
    has_password=$(as_postgres psql -p "$PG_PORT" -d postgres -Atqc \
        "select rolpassword is not null from pg_authid where rolname = 'postgres'") || {
        echo "ensure-system: cannot log in to PostgreSQL as postgres over TCP, nor as the postgres" \
             "OS user over its socket: set DATABASE_URL=postgres://user:password@127.0.0.1:$PG_PORT/vmportal" >&2
        exit 1
    }
    if [ "$has_password" = "t" ]; then
        echo "ensure-system: PostgreSQL asks for the postgres role's password, which is set but not in" \
             "~/.pgpass: add '127.0.0.1:$PG_PORT:*:postgres:<password>' to ~/.pgpass (mode 0600) or" \
             "set DATABASE_URL=postgres://postgres:<password>@127.0.0.1:$PG_PORT/vmportal" >&2
        exit 1
    fi
    local password
    password=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
    echo "ensure-system: giving the postgres role a password for TCP logins (kept in ~/.pgpass)"
    (umask 077 && touch "$HOME/.pgpass")
    chmod 600 "$HOME/.pgpass"
    printf '127.0.0.1:%s:*:postgres:%s\nlocalhost:%s:*:postgres:%s\n' \
        "$PG_PORT" "$password" "$PG_PORT" "$password" >>"$HOME/.pgpass"
    # Hex only, so it needs no quoting; ALTER ROLE is not logged by default (log_statement=none).
    as_postgres psql -p "$PG_PORT" -d postgres -Atqc "alter role postgres password '$password'" >/dev/null
    pg_login_ok || { echo "ensure-system: postgres still cannot log in over TCP with ~/.pgpass" >&2; exit 1; }
}

ensure_redis() {
    command -v redis-server >/dev/null || apt_install redis-server
    if ! redis_up; then
        echo "ensure-system: starting Redis"
        $SUDO mkdir -p /var/lib/redis /var/log/redis
        $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
            --appendonly no --dir /var/lib/redis --logfile /var/log/redis/vmportal.log
        for _ in $(seq 1 20); do redis_up && break; sleep 0.5; done
    fi
    redis_up || { echo "ensure-system: Redis does not answer on 127.0.0.1:6379" >&2; exit 1; }
}

ensure_chromium() {
    [ -x /usr/bin/chromium ] || apt_install chromium chromium-driver
}

# Headers python-ldap (django-auth-ldap) compiles against: needed before the venv is made.
ensure_ldap_dev() {
    [ -f /usr/include/ldap.h ] && [ -f /usr/include/sasl/sasl.h ] || apt_install libldap-dev libsasl2-dev
}

# OpenLDAP's server for tests/auth, which start their own throw-away slapd on a free port;
# the package's own database and service are not set up.
ensure_slapd() {
    if [ ! -x /usr/sbin/slapd ] || ! command -v ldapsearch >/dev/null; then
        echo "slapd slapd/no_configuration boolean true" | $SUDO debconf-set-selections
        apt_install slapd ldap-utils
    fi
}

# The OpenID Connect provider tests/auth run (node's oidc-provider, pinned by the lockfile).
ensure_oidc_provider() {
    command -v npm >/dev/null || apt_install nodejs npm
    local dir
    dir="$(dirname "$0")/oidc-provider"
    if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
        echo "ensure-system: installing the test OIDC provider (npm ci)"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
}

# The reverse proxy in front of two web hosts in tests/test_rolling_restart.py (its own
# nginx process and config; the package's service is not started or configured).
ensure_nginx() {
    [ -x /usr/sbin/nginx ] || apt_install nginx
}

for want in "$@"; do
    case "$want" in
        postgres) ensure_postgres ;;
        redis) ensure_redis ;;
        chromium) ensure_chromium ;;
        ldap-dev) ensure_ldap_dev ;;
        slapd) ensure_slapd ;;
        oidc-provider) ensure_oidc_provider ;;
        nginx) ensure_nginx ;;
        *) echo "ensure-system: unknown component $want" >&2; exit 2 ;;
    esac
done
