#!/bin/bash
# Print the path of the QEMU source tree to build on, fetching Debian's
# source package into a cache outside the checkout if needed.
#
#   fetch-qemu.sh [--version 10.0|10.2] [QEMU_SRC]
#
# --version picks the QEMU series (default 10.0):
#   10.0  Debian's qemu/trixie (upstream 10.0.x)
#   10.2  Debian's qemu 1:10.2.2+ds-1, from unstable
# With QEMU_SRC (argument or environment), that tree is used as it is.
#
# Exit status 77 (with one line on stderr saying why) means the archive
# does not serve the source package any more: tests on that version
# skip with that reason.
set -euo pipefail

series=10.0
while [ $# -gt 0 ]; do
    case "$1" in
    --version)
        series=${2:?fetch-qemu: --version needs 10.0 or 10.2}
        shift 2
        ;;
    --version=*)
        series=${1#--version=}
        shift
        ;;
    *)
        break
        ;;
    esac
done

case "$series" in
10.0)
    pkg=qemu/trixie
    suite=trixie
    ;;
10.2)
    pkg=qemu=1:10.2.2+ds-1
    suite=unstable
    ;;
*)
    echo "fetch-qemu: QEMU $series is not supported (10.0 or 10.2)" >&2
    exit 1
    ;;
esac

user_src=${1:-${QEMU_SRC:-}}
if [ -n "$user_src" ]; then
    if [ ! -f "$user_src/VERSION" ]; then
        echo "fetch-qemu: QEMU_SRC=$user_src is not a QEMU source tree" >&2
        exit 1
    fi
    cd "$user_src" && pwd
    exit 0
fi

cache=${TAP_TRANSFER_CACHE:-/var/cache/tap-transfer}/src
mkdir -p "$cache"
cd "$cache"
# One fetch at a time: several checkouts share the cache
exec 9>"$cache/.lock"
flock 9

tree=$(ls -d "qemu-$series".*/ 2>/dev/null | sort -V | tail -n 1 || true)
if [ -n "$tree" ] && [ -f "$tree/VERSION" ] && [ -f "$tree/.tap-transfer-unpacked" ]; then
    echo "$cache/${tree%/}"
    exit 0
fi

echo "fetch-qemu: fetching QEMU $series source (Debian package $pkg)" >&2
# The package files of each series in a directory of their own
pkgdir=debian-$series
rm -rf "qemu-$series".* "$pkgdir"
mkdir "$pkgdir"
if ! out=$(cd "$pkgdir" && apt-get source --download-only "$pkg" 2>&1); then
    if ! apt-get source --download-only --print-uris "$pkg" >/dev/null 2>&1; then
        echo "fetch-qemu: Debian's archive does not serve $pkg ($suite)" \
             "any more: $(echo "$out" | grep '^E:' | head -n 1)" >&2
        rm -rf "$pkgdir"
        exit 77
    fi
    echo "$out" >&2
    echo "fetch-qemu: downloading $pkg failed" >&2
    exit 1
fi
dsc=$(ls "$pkgdir"/qemu_*.dsc | head -n 1)
version=$(sed -n 's/^Version: \(.*\)/\1/p' "$dsc")
upstream=${version#*:}
upstream=${upstream%%+*}
case "$upstream" in
"$series".*) ;;
*)
    echo "fetch-qemu: Debian's $pkg is $upstream, not QEMU $series.x" \
         "(set QEMU_SRC to a $series tree)" >&2
    exit 1
    ;;
esac
dpkg-source --no-copy -x "$dsc" "qemu-$upstream" >&2
touch "qemu-$upstream/.tap-transfer-unpacked"
echo "$cache/qemu-$upstream"
