#!/bin/bash
# Run one of QEMU's qtest binaries against the QEMU built here.
#
#   run-qtest.sh QEMU_BUILD TEST [glib test arguments...]
#
# With SANITIZE=1 (an ASan/UBSan build), memory errors and undefined
# behaviour fail the test as they happen; leak reports are collected and
# any that involves the tap-transfer module fails the run.  (QEMU's own
# leaks at exit are not this project's to judge.)
set -uo pipefail

build=${1:?usage: run-qtest.sh QEMU_BUILD TEST [args...]}
test=${2:?usage: run-qtest.sh QEMU_BUILD TEST [args...]}
shift 2

# A QEMU series whose source the archive no longer serves: skip, saying so
for b in "$build" ${QTEST_QEMU_BINARY_SRC:+"$(dirname "$QTEST_QEMU_BINARY_SRC")"} \
         ${QTEST_QEMU_BINARY_DST:+"$(dirname "$QTEST_QEMU_BINARY_DST")"}; do
    if [ -f "$b.unavailable" ]; then
        echo "1..0 # SKIP $(cat "$b.unavailable")"
        exit 77
    fi
done
build=$(cd "$build" && pwd)

export QTEST_QEMU_BINARY=$build/qemu-system-x86_64
export QTEST_QEMU_IMG=$build/qemu-img
export QTEST_QEMU_STORAGE_DAEMON_BINARY=$build/storage-daemon/qemu-storage-daemon
export PYTHON=$build/pyvenv/bin/python3

if [ "${SANITIZE:-0}" != 1 ]; then
    exec "$build/tests/qtest/$test" --tap -k "$@"
fi

logdir=$build/sanitizer-logs/$test
rm -rf "$logdir"
mkdir -p "$logdir"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export LSAN_OPTIONS=exitcode=0:log_path=$logdir/leak
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

"$build/tests/qtest/$test" --tap -k "$@"
rc=$?

reports=$(grep -l "net/tap-transfer/" "$logdir"/leak.* 2>/dev/null)
if [ -n "$reports" ]; then
    echo "not ok - leak reports involving net/tap-transfer/:"
    for r in $reports; do
        sed 's/^/# /' "$r"
    done
    exit 1
fi
echo "# sanitizer leak reports: $(ls "$logdir" | wc -l) files, none from net/tap-transfer/"
exit $rc
