#!/bin/bash
# Configure (once) and build the prepared QEMU tree.
#
#   build-qemu.sh QEMU_TREE BUILD_DIR [ninja targets...]
#
# ccache is used when installed, with its cache outside the checkout;
# CCACHE_NOHASHDIR lets a clone at another path hit the same cache.
set -euo pipefail

tree=$(cd "${1:?usage: build-qemu.sh QEMU_TREE BUILD_DIR}" && pwd)
build=${2:?usage: build-qemu.sh QEMU_TREE BUILD_DIR}
shift 2

# One QEMU build at a time on this machine, whichever checkout asks:
# two at once only slow each other down (and a 2-core machine to a crawl)
lock=${TAP_TRANSFER_BUILD_LOCK:-/var/lock/tap-transfer-build.lock}
exec 9>"$lock"
if ! flock -n 9; then
    echo "build-qemu: waiting for another QEMU build ($lock)" >&2
    flock 9
fi

if [ -x /usr/lib/ccache/cc ]; then
    export PATH=/usr/lib/ccache:$PATH
    export CCACHE_DIR=${CCACHE_DIR:-/var/cache/tap-transfer/ccache}
    export CCACHE_NOHASHDIR=1
    # -iquote paths are absolute: make them relative so clones share hits
    export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$(dirname "$tree")}
    export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
fi

mkdir -p "$build"
cd "$build"
if [ ! -f build.ninja ]; then
    extra=()
    if [ "${SANITIZE:-0}" = 1 ]; then
        extra+=(--enable-asan --enable-ubsan)
    fi
    "$tree/configure" --python=/usr/bin/python3 \
        --target-list=x86_64-softmmu --enable-modules \
        --without-default-features --disable-docs --disable-download \
        --disable-install-blobs --enable-kvm --enable-tcg \
        --enable-vhost-net --enable-vhost-kernel --enable-cap-ng \
        --enable-fdt=system \
        --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu \
        "${extra[@]}"
fi

# The binary looks for firmware under its relocated bundle directory
for fw in /usr/share/seabios /usr/lib/ipxe/qemu /usr/share/qemu; do
    if [ -d "$fw" ] && [ ! -e "qemu-bundle$fw" ]; then
        mkdir -p "qemu-bundle$(dirname "$fw")"
        ln -s "$fw" "qemu-bundle$fw"
    fi
done

ninja "$@"
