#!/bin/bash
# Get QEMU's source, prepare the tree and build what the tests need, for
# one QEMU series.  Run by the meson project (meson compile), never
# stale: ninja inside decides what really needs rebuilding.
#
#   qemu.sh BUILD_ROOT SERIES [QEMU_SRC]
#
# SERIES is prepared in BUILD_ROOT/qemu-SERIES-src and built in
# BUILD_ROOT/qemu-SERIES-build (scripts/pipeline/series.sh).
# QEMU_SRC replaces Debian's source for its own series only.  When the
# archive no longer serves a series' source, the reason is left in
# BUILD_DIR.unavailable and its tests skip with it.
set -euo pipefail

root=${1:?usage: qemu.sh BUILD_ROOT SERIES [QEMU_SRC]}
series=${2:?usage: qemu.sh BUILD_ROOT SERIES [QEMU_SRC]}
user_src=${3:-}
here=$(cd "$(dirname "$0")" && pwd)

. "$here/series.sh"
tree=$(series_src "$root" "$series")
build=$(series_build "$root" "$series")
stamp=$(series_stamp "$root" "$series")

# A tree of the other supported series is not this series' business
if [ -n "$user_src" ] && [ -f "$user_src/VERSION" ]; then
    case "$(cat "$user_src/VERSION")" in
    10.0.* | 10.2.*)
        user_v=$(cat "$user_src/VERSION")
        if [ "${user_v%.*}" != "$series" ]; then
            user_src=
        fi
        ;;
    esac
fi

rm -f "$build.unavailable"
err=$(mktemp)
trap 'rm -f "$err"' EXIT
fetch=("$here/fetch-qemu.sh" --version "$series")
if [ -n "$user_src" ]; then
    fetch+=("$user_src")
fi
rc=0
# Only the argument counts: QEMU_SRC in the environment is for make
src=$(QEMU_SRC= "${fetch[@]}" 2>"$err") || rc=$?
cat "$err" >&2
if [ "$rc" = 77 ]; then
    tail -n 1 "$err" > "$build.unavailable"
    touch "$stamp"
    exit 0
elif [ "$rc" != 0 ]; then
    exit "$rc"
fi

"$here/prepare-tree.sh" "$src" "$tree"
"$here/build-qemu.sh" "$tree" "$build" \
    qemu-system-x86_64 net-tap-transfer.so accel-qtest-x86_64.so \
    tests/qtest/virtio-net-migration-test tests/qtest/qos-test \
    tests/qtest/modules-test tests/qtest/migration-test tests/unit/test-vmstate
touch "$stamp"
