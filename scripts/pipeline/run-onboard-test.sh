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
# ROOT is the meson build directory: ROOT/qemu-10.0-src and
# ROOT/qemu-10.0-build are QEMU 10.0's prepared tree and build,
# ROOT/qemu-10.2-build 10.2's.
# It fetches the stock QEMUs and hands over to run-functional.sh.
set -uo pipefail

root=$(cd "${1:?usage: run-onboard-test.sh ROOT}" && pwd)

top=$(cd "$(dirname "$0")/../.." && pwd)
here=$top/scripts/pipeline

if [ "$(id -u)" != 0 ]; then
    echo "1..0 # SKIP needs root: network namespaces, TAPs, a bridge"
    exit 0
fi
src=$root/qemu-10.0-src
build=$root/qemu-10.0-build

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

# qemu-img: this build's if it has tools, else a stock package's
for img in "$build/qemu-img" "$root"/stock/stock-{10.0,7.2}/root/usr/bin/qemu-img; do
    if [ -x "$img" ]; then
        export QEMU_TEST_QEMU_IMG=$img
        break
    fi
done

# the rest as for every functional test
exec "$here/run-functional.sh" "$src" "$build" \
    test_x86_64_tap_transfer_onboard.py
