#!/bin/bash
# Build the small real guest used by make demo, make bench and the
# end-to-end tests: Debian's kernel (downloaded, unpacked, not installed)
# and a busybox-static initramfs that loads virtio-net and configures a
# static address (and virtio-blk, for the tests that write records to a
# disk).  Cached outside the checkout; prints the directory.
#
#   build-guest.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${TAP_TRANSFER_CACHE:-/var/cache/tap-transfer}/guest
mkdir -p "$cache"
cd "$cache"

stamp_src=$(sha256sum "$here/init" "$here/build-guest.sh" | sha256sum | cut -c1-16)
if [ -f ready ] && [ "$(cat ready)" = "$stamp_src" ]; then
    echo "$cache"
    exit 0
fi

pkg=$(apt-cache depends linux-image-amd64 |
      awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
if [ -z "$pkg" ]; then
    echo "build-guest: no linux-image package found (apt-get update?)" >&2
    exit 1
fi
if ! ls "$pkg"_*.deb >/dev/null 2>&1; then
    rm -f linux-image-*.deb
    apt-get download "$pkg" >&2
fi
rm -rf kernel root
mkdir kernel
dpkg -x "$pkg"_*.deb kernel
kver=${pkg#linux-image-}
cp "kernel/boot/vmlinuz-$kver" vmlinuz

mkdir -p root/bin root/sbin root/proc root/sys root/dev root/lib/modules
cp /bin/busybox root/bin/busybox
for m in drivers/virtio/virtio_ring drivers/virtio/virtio \
         drivers/virtio/virtio_pci_modern_dev \
         drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci \
         net/core/failover drivers/net/net_failover drivers/net/virtio_net \
         drivers/block/virtio_blk; do
    cp "kernel/lib/modules/$kver/kernel/$m.ko" root/lib/modules/
done
install -m 0755 "$here/init" root/init
(cd root && find . | cpio -o -H newc --quiet | gzip -1) > initrd.gz
rm -rf kernel root
echo "$stamp_src" > ready
echo "$cache"
