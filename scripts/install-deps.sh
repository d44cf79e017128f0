#!/bin/sh
# Installs the Debian packages taskhive needs to build and test.
#
# Idempotent: when every package is already installed it does nothing and
# touches no package list. As root it uses apt-get; otherwise sudo when that
# works without a prompt; otherwise it prints the exact command and exits 1.
set -eu

PKGS="build-essential pkg-config libsqlite3-dev sqlite3 libjansson-dev \
libcmocka-dev uthash-dev libsodium-dev libzstd-dev zlib1g-dev \
libcurl4-openssl-dev libevent-dev libinih-dev curl clang \
libclang-rt-14-dev libpq-dev postgresql"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

cmd="apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo"
else
    echo "taskhive: missing packages:$missing" >&2
    echo "taskhive: run as root: apt-get update && $cmd" >&2
    exit 1
fi
echo "taskhive: installing$missing" >&2
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive $cmd
