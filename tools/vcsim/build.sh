#!/usr/bin/env bash
# Builds vmportal's vSphere simulator (tools/vcsim/bin/vcsim) with Debian's Go toolchain and
# govmomi sources, installing those packages first when they are missing.
# Idempotent and non-interactive: rebuilds only when a .go file is newer than the binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
govmomi=/usr/share/gocode/src/github.com/vmware/govmomi
binary="$here/bin/vcsim"
did=""

if ! command -v go >/dev/null 2>&1 || [ ! -d "$govmomi" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n" # -n: fail instead of asking for a password
    $sudo apt-get update -qq
    # Lock::Timeout waits for another apt run instead of failing on its lock.
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
        golang-go golang-github-vmware-govmomi-dev >/dev/null
    did="installed golang-go and golang-github-vmware-govmomi-dev, "
fi

stale=1
if [ -x "$binary" ] && [ -z "$(find "$here" -maxdepth 1 -name '*.go' -newer "$binary" -print -quit)" ]; then
    stale=0
fi

if [ "$stale" -eq 1 ]; then
    started=$SECONDS
    mkdir -p "$here/bin"
    # Build beside the binary and rename over it: a running simulator keeps its old file.
    tmp="$(mktemp "$here/bin/.vcsim.XXXXXX")"
    trap 'rm -f "$tmp"' EXIT
    (cd "$here" && GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS="" GOCACHE="$here/.gocache" \
        go build -o "$tmp" .)
    chmod 755 "$tmp"
    mv -f "$tmp" "$binary"
    trap - EXIT
    echo "vcsim: ${did}built tools/vcsim/bin/vcsim in $((SECONDS - started))s"
else
    echo "vcsim: ${did}tools/vcsim/bin/vcsim is up to date"
fi
