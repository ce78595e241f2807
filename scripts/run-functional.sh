#!/bin/bash
# Run one of the prepared tree's functional tests (tests/functional/, on
# QEMU's qemu_test framework) against the QEMU built here, with the
# environment QEMU's own tests/functional/meson.build gives them.
#
#   run-functional.sh BUILD TEST_FILE
#
# BUILD is this project's build directory (qemu-src/ and qemu-build/ in
# it); TEST_FILE a file name in qemu-src/tests/functional/.  The test
# prints TAP.  TAP_TRANSFER_GUEST, the real guest's directory, is set
# from scripts/guest/build-guest.sh (which builds it if needed) unless
# it is set already; when that is not possible (not root, build failed)
# it stays unset and the tests that need the guest skip, saying so.
set -uo pipefail

build=$(cd "${1:?usage: run-functional.sh BUILD TEST_FILE}" && pwd)
test=${2:?usage: run-functional.sh BUILD TEST_FILE}
top=$(cd "$(dirname "$0")/.." && pwd)
src=$build/qemu-src
qemu_build=$build/qemu-build

export QEMU_TEST_QEMU_BINARY=$qemu_build/qemu-system-x86_64
export QEMU_TEST_QEMU_IMG=$qemu_build/qemu-img
export QEMU_BUILD_ROOT=$qemu_build
export PYTHONPATH=$src/python:$src/tests/functional

if [ -z "${TAP_TRANSFER_GUEST:-}" ] && [ "$(id -u)" = 0 ]; then
    if guest=$("$top/scripts/guest/build-guest.sh" 2>"$qemu_build/guest-build.log"); then
        export TAP_TRANSFER_GUEST=$guest
    else
        echo "# building the guest failed; see $qemu_build/guest-build.log"
    fi
fi

# QEMU's venv sees the system's packages: pycotap (python3-pycotap)
python=$qemu_build/pyvenv/bin/python3
[ -x "$python" ] || python=/usr/bin/python3
cd "$qemu_build"
exec "$python" "$src/tests/functional/$test"
