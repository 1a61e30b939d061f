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

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

ensure_postgres() {
    command -v pg_isready >/dev/null || apt_install postgresql postgresql-client
    if ! pg_up; then
        echo "ensure-system: starting PostgreSQL"
        version=$(ls /etc/postgresql | sort -V | tail -n1)
        $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start
        for _ in $(seq 1 30); do pg_up && break; sleep 1; done
    fi
    pg_up || { echo "ensure-system: PostgreSQL does not answer on 127.0.0.1:5432" >&2; exit 1; }
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
