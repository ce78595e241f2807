#!/bin/bash
# make check-fleet: the Ansible role and playbooks (ansible/) on four
# hosts of this machine, each with its own network namespace, bridge
# and VMs, installing the packages of make deb (made now if the build
# has none) and rolling QEMU 10.0 -> 10.2 -> 10.0 across them
# (tests/fleet/fleet_check.py says what is checked).  TAP output.
#
#   fleet-check.sh BUILD_ROOT
set -uo pipefail

root=$(cd "${1:?usage: fleet-check.sh BUILD_ROOT}" && pwd)
pipeline=$(cd "$(dirname "$0")/../../scripts/pipeline" && pwd)
# shellcheck source=series.sh
. "$pipeline/series.sh"

skip() {
    echo "1..0 # SKIP $*"
    exit 0
}

[ "$(id -u)" = 0 ] || skip "needs root (packages, network namespaces, TAP devices)"
if [ "${SANITIZE:-0}" = 1 ]; then
    skip "the packages are made from the ordinary build, not the sanitizer one"
fi
command -v ansible-playbook >/dev/null || skip "no ansible-playbook (Debian's ansible-core: make deps)"
command -v qemu-img >/dev/null || skip "no qemu-img (Debian package qemu-utils)"
series=$(series_built "$root")
echo "$series" | grep -qx 10.0 && echo "$series" | grep -qx 10.2 ||
    skip "both QEMU series must be built ($(echo $series))"
guest=$("$pipeline/../lab/guest/build-guest.sh" 2>/dev/null) || skip "the guest could not be built"
if ! ls "$root"/deb/tap-transfer-tools_*.deb >/dev/null 2>&1; then
    if ! out=$(LINTIAN=0 "$pipeline/make-deb.sh" "$root" 2>&1); then
        echo "1..1"
        echo "not ok 1 - make deb"
        echo "$out" | sed 's/^/# /'
        exit 1
    fi
fi

# Killed for good (meson's timeout ends with KILL): the namespaces of
# this run, and every process in them (the VMs), go
cleanup() {
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '/^tt-fleet-/ { print $1 }'); do
        pid=${ns#tt-fleet-}
        pid=${pid%%-*}
        [ -d "/proc/$pid" ] && continue
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
        ip netns del "$ns" 2>/dev/null
    done
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

/usr/bin/python3 "$pipeline/../../tests/fleet/fleet_check.py" --debs "$root/deb" \
    --guest "$guest" --python-dir "$(series_src "$root" 10.0)/python" &
child=$!
wait "$child"
rc=$?
exit $rc
