#!/bin/bash
# Make the QEMU tree that gets built: pristine QEMU source, this repo's
# new files overlaid at their QEMU paths, and the patch series for that
# QEMU version (patches/qemu-X.Y/, chosen by the tree's VERSION) applied.
#
#   prepare-tree.sh QEMU_SRC DEST
#
# The tree is made afresh in a scratch directory each time and then
# synchronised into DEST by content, so unchanged files keep their
# timestamps and ninja rebuilds only what really changed.
set -euo pipefail

src=${1:?usage: prepare-tree.sh QEMU_SRC DEST}
dest=${2:?usage: prepare-tree.sh QEMU_SRC DEST}
top=$(cd "$(dirname "$0")/../.." && pwd)
overlay_dirs="net migration qapi hw include docs tests/qtest tests/functional"

if [ ! -f "$src/VERSION" ] || [ ! -f "$src/net/tap.c" ]; then
    echo "prepare-tree: $src is not a QEMU source tree" >&2
    exit 1
fi
version=$(cat "$src/VERSION")
case "$version" in
10.0.* | 10.2.*)
    series=$top/patches/qemu-${version%.*}
    ;;
*)
    echo "prepare-tree: QEMU $version in $src is not supported;" \
         "tap-transfer supports QEMU 10.0.x and 10.2.x" >&2
    exit 1
    ;;
esac

mkdir -p "$(dirname "$dest")"
scratch=$(mktemp -d "${dest%/}.new.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

rsync -a --exclude=/.pc --exclude=/.git --exclude=/build "$src/" "$scratch/"

for p in "$series"/*.patch; do
    if ! out=$(patch -d "$scratch" -p1 -F0 -N --no-backup-if-mismatch \
               -s -i "$p" 2>&1); then
        echo "prepare-tree: patch $(basename "$p") does not apply to" \
             "QEMU $version in $src:" >&2
        echo "$out" >&2
        exit 1
    fi
done

for d in $overlay_dirs; do
    if [ -d "$top/$d" ]; then
        rsync -a "$top/$d/" "$scratch/$d/"
    fi
done

mkdir -p "$dest"
rsync -rlc --delete --exclude=/.tap-transfer-stamp "$scratch/" "$dest/"
echo "$version" > "$dest/.tap-transfer-stamp"
