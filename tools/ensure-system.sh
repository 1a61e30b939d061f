#!/usr/bin/env bash
# Installs (Debian) and starts what vmportal needs from the machine, only when missing.
# Never prompts. Usage: tools/ensure-system.sh [postgres] [redis] [chromium]
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

for want in "$@"; do
    case "$want" in
        postgres) ensure_postgres ;;
        redis) ensure_redis ;;
        chromium) ensure_chromium ;;
        *) echo "ensure-system: unknown component $want" >&2; exit 2 ;;
    esac
done
