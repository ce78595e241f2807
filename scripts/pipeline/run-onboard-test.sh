#!/bin/bash
# Run tests/functional/test_x86_64_tap_transfer_onboard.py: VMs on
# Debian's stock QEMU (7.2 and 10.0.x, unpacked by fetch-stock-qemu.sh
# into ROOT/stock) onboarded onto this project's builds by
# tools/tap-transfer-upgrade --onboard.  The test prints TAP; whatever is
# missing (a stock package the archive no longer serves, the 10.2 build,
# the guest) makes its tests skip with the reason.
#
#   run-onboard-test.sh ROOT
#
# ROOT is the meson build directory: ROOT/qemu-src and ROOT/qemu-build
# are QEMU 10.0's prepared tree and build, ROOT/qemu-10.2-build 10.2's.
set -uo pipefail

root=$(cd "${1:?usage: run-onboard-test.sh ROOT}" && pwd)

# The onboarded VMs daemonize, as production ones do
if [ "${SANITIZE:-0}" = 1 ]; then
    echo "1..0 # SKIP a QEMU built with ASan that daemonizes can deadlock in its forked child (an allocator lock held by another thread at fork); the qtests cover the module under ASan"
    exit 0
fi
top=$(cd "$(dirname "$0")/../.." && pwd)
here=$top/scripts/pipeline

if [ -f "$root/qemu-build.unavailable" ]; then
    echo "1..0 # SKIP $(cat "$root/qemu-build.unavailable")"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "1..0 # SKIP needs root: network namespaces, TAPs, a bridge"
    exit 0
fi
src=$root/qemu-src
build=$root/qemu-build

for series in 7.2 10.0; do
    var=${series/./_}
    log=$root/stock/fetch-$series.log
    mkdir -p "$root/stock"
    bin=$("$here/fetch-stock-qemu.sh" "$root/stock" "$series" 2>"$log")
    rc=$?
    if [ $rc = 0 ]; then
        export "TAP_TRANSFER_STOCK_$var=$bin"
        export "TAP_TRANSFER_STOCK_L_$var=$(cat "$root/stock/stock-$series/firmware-args")"
    elif [ $rc = 77 ]; then
        export "TAP_TRANSFER_STOCK_$var=unavailable: $bin"
    else
        export "TAP_TRANSFER_STOCK_$var=unavailable: fetch-stock-qemu.sh failed ($rc), see $log"
    fi
done

if [ -f "$root/qemu-10.2-build.unavailable" ]; then
    export "TAP_TRANSFER_QEMU_10_2=unavailable: $(cat "$root/qemu-10.2-build.unavailable")"
else
    export TAP_TRANSFER_QEMU_10_2=$root/qemu-10.2-build/qemu-system-x86_64
fi

if [ -z "${TAP_TRANSFER_GUEST:-}" ]; then
    if guest=$("$top/scripts/lab/guest/build-guest.sh" \
               2>"$root/stock/guest-build.log"); then
        export TAP_TRANSFER_GUEST=$guest
    else
        echo "# building the guest failed; see $root/stock/guest-build.log"
    fi
fi

export TAP_TRANSFER_UPGRADE=$top/tools/tap-transfer-upgrade
export TAP_TRANSFER_QEMU_PYTHON=$src/python
export QEMU_TEST_QEMU_BINARY=$build/qemu-system-x86_64
# qemu-img: this build's if it has tools, else a stock package's
export QEMU_TEST_QEMU_IMG=$build/qemu-img
for s in 10.0 7.2; do
    [ -x "$QEMU_TEST_QEMU_IMG" ] && break
    QEMU_TEST_QEMU_IMG=$root/stock/stock-$s/root/usr/bin/qemu-img
done
export QEMU_BUILD_ROOT=$build
export PYTHONPATH=$src/python:$src/tests/functional

python=$build/pyvenv/bin/python3
[ -x "$python" ] || python=/usr/bin/python3
cd "$build"
# a timeout's TERM must not leave the daemonized VMs behind
exec "$here/run-reaped.sh" "$python" \
    "$top/tests/functional/test_x86_64_tap_transfer_onboard.py"
