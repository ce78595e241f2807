#!/bin/bash
# The upgrade an operator does, from installed copies: a real Linux guest
# boots on the installed QEMU 10.0 (machine type pc-i440fx-10.0), is
# handed over to the installed QEMU 10.2 under a 500 pings/s flood, and
# back to 10.0: zero lost pings, the same TAP (ifindex, kcmp), no new
# one.  TAP output for meson.
#
#   upgrade-check.sh BUILD_ROOT
set -uo pipefail

root=$(cd "${1:?usage: upgrade-check.sh BUILD_ROOT}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
prefix=/opt/tap-transfer

skip() {
    echo "1..0 # SKIP $*"
    exit 0
}

[ "$(id -u)" = 0 ] || skip "needs root for a network namespace and TAP devices"
[ -f "$root/qemu-10.2-build.unavailable" ] && \
    skip "$(cat "$root/qemu-10.2-build.unavailable")"
[ -x "$root/qemu-10.2-build/qemu-system-x86_64" ] || skip "QEMU 10.2 is not built"
[ -x "$root/qemu-build/qemu-system-x86_64" ] || skip "QEMU 10.0 is not built"
guest=$("$here/../lab/guest/build-guest.sh" 2>/dev/null) || skip "the guest could not be built"

destdir=$(mktemp -d /tmp/tap-transfer-upgrade.XXXXXX)
trap 'rm -rf "$destdir"' EXIT
if ! out=$("$here/install.sh" "$root" "$prefix" "$destdir" 2>&1); then
    echo "1..1"
    echo "not ok 1 - install.sh failed"
    echo "$out" | sed 's/^/# /'
    exit 1
fi
echo "1..1"
echo "$out" | sed 's/^/# /'
old=$destdir$prefix/qemu-10.0/bin/qemu-system-x86_64
new=$destdir$prefix/qemu-10.2/bin/qemu-system-x86_64
if report=$("$here/../lab/demo.py" --qemu "$old" --upgrade-to "$new" --rollback \
            --python-dir "$root/qemu-src/python" --guest "$guest" 2>&1); then
    echo "$report" | sed 's/^/# /'
    echo "ok 1 - installed QEMU 10.0 -> 10.2 -> 10.0 under a ping flood: same TAP, zero loss"
else
    echo "$report" | sed 's/^/# /'
    echo "not ok 1 - upgrade and rollback between the installed QEMUs"
    exit 1
fi
