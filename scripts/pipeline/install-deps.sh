#!/bin/bash
# Install what building and testing tap-transfer needs on Debian 12, as root.
# The archive's address is taken from the machine's own Debian sources entry.
set -euo pipefail

stamp=/var/lib/tap-transfer/deps-v6
[ -f "$stamp" ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "install-deps: must run as root (apt-get install)" >&2
    exit 1
fi

src=/etc/apt/sources.list.d/debian.sources
extra=/etc/apt/sources.list.d/tap-transfer.sources
# QEMU 10.0's source comes from trixie, 10.2's from unstable
if ! grep -qs '^Suites: trixie unstable$' "$extra"; then
    uri=$(awk '/^URIs:/ { print $2; exit }' "$src" 2>/dev/null || true)
    if [ -z "$uri" ]; then
        uri=$(awk '$1 == "deb" && $0 ~ /debian/ { print $2; exit }' \
              /etc/apt/sources.list 2>/dev/null || true)
    fi
    if [ -z "$uri" ]; then
        echo "install-deps: no Debian archive found in $src or /etc/apt/sources.list" >&2
        exit 1
    fi
    cat > "$extra" <<EOT
Types: deb-src
URIs: $uri
Suites: trixie unstable
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOT
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -q -y --no-install-recommends \
    build-essential ninja-build python3-venv pkgconf dpkg-dev ccache \
    libglib2.0-dev zlib1g-dev libfdt-dev libcap-ng-dev libcap-ng-utils \
    seabios ipxe-qemu iproute2 bridge-utils iputils-ping busybox-static \
    cpio kmod fakeroot rsync qemu-system-data gnuplot-nox util-linux
# make deb and its tests: lintian; a fresh Debian root; the fleet role
# (Debian's ansible-core) and its linter
apt-get install -q -y --no-install-recommends \
    lintian debootstrap ansible-core ansible-lint
# pycotap: the TAP output of QEMU's functional test framework;
# qemu-utils: qemu-img, for the upgrade test's qcow2 disk (QEMU's own
# build here makes no tools)
apt-get install -q -y --no-install-recommends -t bookworm-backports \
    meson python3-pycotap qemu-utils
mkdir -p "$(dirname "$stamp")"
touch "$stamp"
