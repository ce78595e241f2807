#!/bin/bash
# Run one of the prepared tree's functional tests (tests/functional/, on
# QEMU's qemu_test framework) against the QEMU built here, with the
# environment QEMU's own tests/functional/meson.build gives them.
#
#   run-functional.sh QEMU_TREE QEMU_BUILD TEST_FILE
#
# QEMU_TREE is a prepared tree (build/qemu-10.0-src, build/qemu-10.2-src),
# QEMU_BUILD its build; TEST_FILE a file name in the tree's
# tests/functional/.  The test prints TAP.  TAP_TRANSFER_GUEST, the real guest's directory, is set
# from scripts/lab/guest/build-guest.sh (which builds it if needed) unless
# it is set already; when that is not possible (not root, build failed)
# it stays unset and the tests that need the guest skip, saying so.
# TAP_TRANSFER_UPGRADE is this repo's tools/tap-transfer-upgrade unless
# set; TAP_TRANSFER_QEMU_NEW, the other QEMU of an upgrade test, comes
# from meson.
set -uo pipefail

usage="usage: run-functional.sh QEMU_TREE QEMU_BUILD TEST_FILE"
qemu_build=${2:?$usage}
test=${3:?$usage}
top=$(cd "$(dirname "$0")/../.." && pwd)

# The upgrade and onboarding tests' VMs daemonize, as production ones do
case "${SANITIZE:-0}:$test" in
1:test_x86_64_tap_transfer_upgrade*.py | 1:test_x86_64_tap_transfer_onboard.py)
    echo "1..0 # SKIP a QEMU built with ASan that daemonizes can deadlock in its forked child (an allocator lock held by another thread at fork); the qtests cover the module under ASan"
    exit 0
    ;;
esac

# A series whose source the archive no longer serves: skip, saying why
if [ -f "$qemu_build.unavailable" ]; then
    echo "1..0 # SKIP $(cat "$qemu_build.unavailable")"
    exit 0
fi
src=$(cd "${1:?$usage}" && pwd)
qemu_build=$(cd "$qemu_build" && pwd)

export QEMU_TEST_QEMU_BINARY=$qemu_build/qemu-system-x86_64
export QEMU_TEST_QEMU_IMG=${QEMU_TEST_QEMU_IMG:-$qemu_build/qemu-img}
export QEMU_BUILD_ROOT=$qemu_build
export PYTHONPATH=$src/python:$src/tests/functional

# the operator's command, for the upgrade tests, on the tree's qemu.qmp
export TAP_TRANSFER_UPGRADE=${TAP_TRANSFER_UPGRADE:-$top/tools/tap-transfer-upgrade}
export TAP_TRANSFER_QEMU_PYTHON=${TAP_TRANSFER_QEMU_PYTHON:-$src/python}

if [ -z "${TAP_TRANSFER_GUEST:-}" ] && [ "$(id -u)" = 0 ]; then
    if guest=$("$top/scripts/lab/guest/build-guest.sh" 2>"$qemu_build/guest-build.log"); then
        export TAP_TRANSFER_GUEST=$guest
    else
        echo "# building the guest failed; see $qemu_build/guest-build.log"
    fi
fi

# QEMU's venv sees the system's packages: pycotap (python3-pycotap)
python=$qemu_build/pyvenv/bin/python3
[ -x "$python" ] || python=/usr/bin/python3
cd "$qemu_build"
# a timeout's TERM must not leave the VMs behind, daemonized or not
exec "$top/scripts/pipeline/run-reaped.sh" "$python" \
    "$src/tests/functional/$test"
