#!/bin/bash
# Print the path of the QEMU 10.0.x source tree to build on, fetching
# Debian's source package into a cache outside the checkout if needed.
#
#   fetch-qemu.sh [QEMU_SRC]
#
# With QEMU_SRC (argument or environment), that tree is used as it is.
set -euo pipefail

user_src=${1:-${QEMU_SRC:-}}
if [ -n "$user_src" ]; then
    if [ ! -f "$user_src/VERSION" ]; then
        echo "fetch-qemu: QEMU_SRC=$user_src is not a QEMU source tree" >&2
        exit 1
    fi
    cd "$user_src" && pwd
    exit 0
fi

cache=${TAP_TRANSFER_CACHE:-/var/cache/tap-transfer}/src
mkdir -p "$cache"
cd "$cache"

tree=$(ls -d qemu-10.0.*/ 2>/dev/null | sort -V | tail -n 1 || true)
if [ -n "$tree" ] && [ -f "$tree/VERSION" ] && [ -f "$tree/.tap-transfer-unpacked" ]; then
    echo "$cache/${tree%/}"
    exit 0
fi

echo "fetch-qemu: fetching QEMU source (Debian package qemu/trixie)" >&2
rm -rf qemu-10.0.* qemu_*
apt-get source --download-only qemu/trixie >&2
dsc=$(ls qemu_*.dsc | head -n 1)
version=$(sed -n 's/^Version: \(.*\)/\1/p' "$dsc")
upstream=${version#*:}
upstream=${upstream%%+*}
case "$upstream" in
10.0.*) ;;
*)
    echo "fetch-qemu: Debian's qemu/trixie is $upstream; tap-transfer needs" \
         "QEMU 10.0.x (set QEMU_SRC to a 10.0 tree)" >&2
    exit 1
    ;;
esac
dpkg-source -x "$dsc" "qemu-$upstream" >&2
touch "qemu-$upstream/.tap-transfer-unpacked"
echo "$cache/qemu-$upstream"
