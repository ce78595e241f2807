#!/bin/bash
# Get QEMU's source, prepare the tree and build what the tests need.
# Run by the meson project (meson compile), never stale: ninja inside
# decides what really needs rebuilding.
#
#   qemu.sh BUILD_ROOT [QEMU_SRC]
set -euo pipefail

root=${1:?usage: qemu.sh BUILD_ROOT [QEMU_SRC]}
here=$(cd "$(dirname "$0")" && pwd)

src=$("$here/fetch-qemu.sh" "${2:-}")
"$here/prepare-tree.sh" "$src" "$root/qemu-src"
"$here/build-qemu.sh" "$root/qemu-src" "$root/qemu-build" \
    qemu-system-x86_64 net-tap-transfer.so accel-qtest-x86_64.so \
    tests/qtest/virtio-net-migration-test tests/qtest/qos-test \
    tests/qtest/modules-test tests/qtest/migration-test
touch "$root/qemu.stamp"
