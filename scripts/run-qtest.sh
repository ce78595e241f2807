#!/bin/bash
# Run one of QEMU's qtest binaries against the QEMU built here.
#
#   run-qtest.sh QEMU_BUILD TEST [glib test arguments...]
set -euo pipefail

build=$(cd "${1:?usage: run-qtest.sh QEMU_BUILD TEST [args...]}" && pwd)
test=${2:?usage: run-qtest.sh QEMU_BUILD TEST [args...]}
shift 2

export QTEST_QEMU_BINARY=$build/qemu-system-x86_64
export QTEST_QEMU_IMG=$build/qemu-img
export QTEST_QEMU_STORAGE_DAEMON_BINARY=$build/storage-daemon/qemu-storage-daemon
export G_TEST_DBUS_DAEMON=$build/../qemu-src/tests/dbus-vmstate-daemon.sh
export PYTHON=$build/pyvenv/bin/python3
exec "$build/tests/qtest/$test" --tap -k "$@"
