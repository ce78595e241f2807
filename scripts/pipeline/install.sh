#!/bin/bash
# Install each QEMU series built here under its own prefix, side by side,
# the way an operator's host holds two QEMUs:
#
#   PREFIX/qemu-10.0/bin/qemu-system-x86_64
#   PREFIX/qemu-10.0/lib/x86_64-linux-gnu/qemu/net-tap-transfer.so ...
#   PREFIX/qemu-10.0/share/qemu/   firmware, copied from Debian's packages
#   PREFIX/qemu-10.2/...
#   PREFIX/bin/tap-transfer-upgrade     the operator's command, and
#   PREFIX/lib/tap-transfer/python/     the QEMU Python (qemu.qmp) it uses
#   PREFIX/lib/tap-transfer/tap_transfer/   its --onboard part
#
#   install.sh BUILD_ROOT PREFIX [DESTDIR]
#
# QEMU is relocatable: an installed binary looks for its modules and data
# relative to itself, so each finds its own net-tap-transfer.so (a
# module from another build would be refused anyway).  Only what the
# tests build is installed, not QEMU's whole "ninja install".
set -euo pipefail

root=$(cd "${1:?usage: install.sh BUILD_ROOT PREFIX [DESTDIR]}" && pwd)
prefix=${2:?usage: install.sh BUILD_ROOT PREFIX [DESTDIR]}
destdir=${3:-}
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/scripts/pipeline/series.sh"

case "$prefix" in
/*) ;;
*) echo "install: PREFIX must be an absolute path, not $prefix" >&2; exit 1 ;;
esac

# Firmware the installed binaries boot with, from Debian's packages
firmware_dirs="/usr/share/seabios /usr/lib/ipxe/qemu /usr/share/qemu"

config() {
    sed -n "s/^#define $2 \"\\(.*\\)\"$/\\1/p" "$1/config-host.h"
}

install_series() {
    local build=$1 series=$2
    local dest=$destdir$prefix/qemu-$series
    local cprefix bindir moddir datadir

    if [ -f "$build.unavailable" ]; then
        echo "install: QEMU $series skipped: $(cat "$build.unavailable")" >&2
        return
    fi
    if [ ! -x "$build/qemu-system-x86_64" ]; then
        echo "install: QEMU $series is not built in $build" >&2
        exit 1
    fi
    cprefix=$(config "$build" CONFIG_PREFIX)
    bindir=$(config "$build" CONFIG_BINDIR)
    moddir=$(config "$build" CONFIG_QEMU_MODDIR)
    datadir=$(config "$build" CONFIG_QEMU_DATADIR)

    rm -rf "$dest"
    install -d "$dest${bindir#"$cprefix"}" "$dest${moddir#"$cprefix"}" \
        "$dest${datadir#"$cprefix"}"
    install -m 755 "$build/qemu-system-x86_64" "$dest${bindir#"$cprefix"}/"
    install -m 755 "$build"/*.so "$dest${moddir#"$cprefix"}/"
    for fw in $firmware_dirs; do
        if [ -d "$fw" ]; then
            find -L "$fw" -maxdepth 1 -type f \( -name '*.bin' -o -name '*.rom' \) \
                -exec install -m 644 {} "$dest${datadir#"$cprefix"}/" \;
        fi
    done
    echo "install: QEMU $(cat "$build/../$(basename "$build" -build)-src/VERSION" \
          2>/dev/null || echo "$series") -> $dest"
}

# The operator's command, with the part of QEMU's Python tree it imports
# (qemu.qmp), so that the installed copy runs without a checkout
install_tool() {
    local python=$(series_src "$root" "$(series_built "$root" | head -n 1)")/python
    local lib=$destdir$prefix/lib/tap-transfer/python
    if [ ! -d "$python/qemu/qmp" ]; then
        echo "install: no QEMU Python tree in $python" >&2
        exit 1
    fi
    install -d "$destdir$prefix/bin" "$lib/qemu/qmp"
    install -m 755 "$top/tools/tap-transfer-upgrade" "$destdir$prefix/bin/"
    install -m 644 "$python"/qemu/qmp/*.py "$lib/qemu/qmp/"
    install -d "$destdir$prefix/lib/tap-transfer/tap_transfer"
    install -m 644 "$top"/tools/tap_transfer/*.py \
        "$destdir$prefix/lib/tap-transfer/tap_transfer/"
    echo "install: tap-transfer-upgrade -> $destdir$prefix/bin"
}

# The series this build directory built (its stamp), as QEMU_VERSIONS chose
installed=0
for series in 10.0 10.2; do
    build=$(series_build "$root" "$series")
    stamp=$(series_stamp "$root" "$series")
    if [ -f "$stamp" ]; then
        install_series "$build" "$series"
        installed=1
    fi
done
if [ "$installed" = 0 ]; then
    echo "install: no QEMU series is built in $root" >&2
    exit 1
fi
install_tool
