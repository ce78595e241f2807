#!/bin/bash
# make install, checked: install every series built here into a scratch
# DESTDIR, then start each installed QEMU (-M pc: it must find its
# firmware) on a tap-transfer netdev in a network namespace of its own
# and see that it loaded its own net-tap-transfer.so, not the other
# version's.  TAP
# output for meson.
#
#   install-check.sh BUILD_ROOT
set -uo pipefail

root=$(cd "${1:?usage: install-check.sh BUILD_ROOT}" && pwd)
pipeline=$(cd "$(dirname "$0")/../../scripts/pipeline" && pwd)
prefix=/opt/tap-transfer

if [ "$(id -u)" != 0 ]; then
    echo "1..0 # SKIP needs root for a network namespace and a TAP device"
    exit 0
fi

destdir=$(mktemp -d /tmp/tap-transfer-install.XXXXXX)
work=$(mktemp -d /tmp/tap-transfer-install-run.XXXXXX)
# Killed by meson's timeout (TERM) or ^C too: the daemonized QEMUs, which
# are in sessions of their own, go with the scratch directories
cleanup() {
    local pidfile pid
    for pidfile in "$work"/*.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile" 2>/dev/null) || continue
        [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
    done
    rm -rf "$destdir" "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

if ! "$pipeline/install.sh" "$root" "$prefix" "$destdir" > "$work/install.log" 2>&1; then
    echo "1..1"
    echo "not ok 1 - install.sh failed"
    sed 's/^/# /' "$work/install.log"
    exit 1
fi
sed 's/^/# /' "$work/install.log"

versions=()
for d in "$destdir$prefix"/qemu-*; do
    [ -x "$d/bin/qemu-system-x86_64" ] && versions+=("${d##*/qemu-}")
done
echo "1..${#versions[@]}"

n=0
rc=0
for v in "${versions[@]}"; do
    n=$((n + 1))
    dest=$destdir$prefix/qemu-$v
    pidfile=$work/qemu-$v.pid
    # In a private network namespace: its TAP goes with it.  Not
    # daemonized: an ASan build can deadlock in the forked child.
    unshare --net "$dest/bin/qemu-system-x86_64" -M pc -m 64 \
        -nodefaults -display none -S -pidfile "$pidfile" \
        -netdev tap-transfer,id=n0,ifname=ttinst0,script=no,downscript=no \
        -device virtio-net-pci,netdev=n0 > "$work/qemu-$v.log" 2>&1 &
    pid=$!
    # Its netdev exists, and its module is mapped, once it is paused (-S)
    modules=
    for _ in $(seq 600); do
        modules=$(grep -o '/[^ ]*net-tap-transfer\.so' "/proc/$pid/maps" \
                  2>/dev/null | sort -u)
        if [ -n "$modules" ] || ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    if ! kill "$pid" 2>/dev/null; then
        echo "not ok $n - installed QEMU $v does not start"
        sed 's/^/# /' "$work/qemu-$v.log"
        rc=1
        continue
    fi
    wait "$pid" 2>/dev/null
    if [ "$modules" = "$(ls "$dest"/lib/*/qemu/net-tap-transfer.so)" ]; then
        echo "ok $n - installed QEMU $v runs with its own $modules"
    else
        echo "not ok $n - installed QEMU $v loaded '${modules:-no module}'"
        rc=1
    fi
done
exit $rc
