#!/bin/bash
# The upgrade an operator does, from installed copies: make install into
# a scratch DESTDIR, then the installed tap-transfer-upgrade (which must
# run without this checkout's QEMU tree) moves a real Linux guest,
# shaped like a production VM (disk, console log, QMP socket, pidfile,
# -daemonize), from the installed QEMU 10.0 to the installed 10.2 under
# a 500 pings/s flood, and back: zero lost pings, the same TAP (ifindex,
# kcmp), no new one, every acked disk record on the disk (make demo's
# report, checked).  TAP output for meson.
#
#   upgrade-check.sh BUILD_ROOT
set -uo pipefail

root=$(cd "${1:?usage: upgrade-check.sh BUILD_ROOT}" && pwd)
pipeline=$(cd "$(dirname "$0")/../../scripts/pipeline" && pwd)
prefix=/opt/tap-transfer

skip() {
    echo "1..0 # SKIP $*"
    exit 0
}

if [ "${SANITIZE:-0}" = 1 ]; then
    skip "a QEMU built with ASan that daemonizes can deadlock in its forked child (an allocator lock held by another thread at fork); the qtests cover the module under ASan"
fi

[ "$(id -u)" = 0 ] || skip "needs root for a network namespace and TAP devices"
[ -f "$root/qemu-10.2-build.unavailable" ] && \
    skip "$(cat "$root/qemu-10.2-build.unavailable")"
[ -x "$root/qemu-10.2-build/qemu-system-x86_64" ] || skip "QEMU 10.2 is not built"
[ -x "$root/qemu-10.0-build/qemu-system-x86_64" ] || skip "QEMU 10.0 is not built"
command -v qemu-img >/dev/null || skip "no qemu-img (Debian package qemu-utils)"
guest=$("$pipeline/../lab/guest/build-guest.sh" 2>/dev/null) || skip "the guest could not be built"

destdir=$(mktemp -d /tmp/tap-transfer-upgrade.XXXXXX)
# Killed by meson's timeout (TERM, to the whole process group) or ^C:
# the demo cleans up after itself, but the QEMUs it runs are daemonized
# (sessions of their own): whatever pidfile is left under the scratch
# directory names a QEMU to kill, and a lab namespace whose process is
# gone goes too
cleanup() {
    local f pid ns
    while read -r f; do
        pid=$(cat "$f" 2>/dev/null) && [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
    done < <(find "$destdir" -name '*.pid' 2>/dev/null)
    # tt-lab-PID-N (tap_transfer_host.netns_name())
    for ns in $(ip netns list 2>/dev/null | awk '/^tt-lab-[0-9]+-[0-9]+/ { print $1 }'); do
        pid=${ns#tt-lab-}
        [ -d "/proc/${pid%%-*}" ] || ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$destdir"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

if ! out=$("$pipeline/install.sh" "$root" "$prefix" "$destdir" 2>&1); then
    echo "1..1"
    echo "not ok 1 - install.sh failed"
    echo "$out" | sed 's/^/# /'
    exit 1
fi
echo "1..1"
echo "$out" | sed 's/^/# /'
old=$destdir$prefix/qemu-10.0/bin/qemu-system-x86_64
new=$destdir$prefix/qemu-10.2/bin/qemu-system-x86_64
tool=$destdir$prefix/bin/tap-transfer-upgrade
# the lab (and so the command's scratch files) under the scratch dir
mkdir -p "$destdir/tmp"
if report=$(TMPDIR=$destdir/tmp "$pipeline/../lab/demo.py" --qemu "$old" \
            --upgrade-to "$new" --rollback --tool "$tool" \
            --python-dir "$root/qemu-10.0-src/python" --guest "$guest" 2>&1); then
    echo "$report" | sed 's/^/# /'
    echo "ok 1 - installed tap-transfer-upgrade: QEMU 10.0 -> 10.2 -> 10.0 under a ping flood: same TAP, zero loss, disk records kept"
else
    echo "$report" | sed 's/^/# /'
    echo "not ok 1 - upgrade and rollback between the installed QEMUs with the installed command"
    exit 1
fi
