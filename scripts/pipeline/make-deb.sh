#!/bin/bash
# make deb: Debian packages of the QEMU series built here and of the
# operator's command, for Debian 12 hosts, in OUT (default BUILD_ROOT/deb):
#
#   tap-transfer-qemu-SERIES   QEMU SERIES with tap-transfer, under
#                              /usr/lib/tap-transfer/qemu-SERIES: the
#                              binary and its module directory; firmware
#                              from Debian's packages (dependencies)
#   tap-transfer-tools         /usr/sbin/tap-transfer-upgrade, its Python
#                              package and QEMU's qemu.qmp, in
#                              /usr/lib/tap-transfer
#
# Versions: a QEMU package carries the version of Debian's QEMU source
# package it was built from (without its epoch) and this project's
# revision (commit count and hash, ".dirty" for uncommitted changes):
# 10.0.13+ds-0+deb13u1+tt412.g816b516.  The tools: 0.412+g816b516.
# Nothing is installed under /usr/bin, /usr/lib/x86_64-linux-gnu or
# /usr/share/qemu: the packages install beside Debian's qemu-system-x86.
# lintian checks them (LINTIAN=0 skips it); an error fails the build.
#
#   make-deb.sh BUILD_ROOT [OUT]
set -euo pipefail

root=$(cd "${1:?usage: make-deb.sh BUILD_ROOT [OUT]}" && pwd)
out=${2:-$root/deb}
top=$(cd "$(dirname "$0")/../.." && pwd)
pkgdata=$top/packaging/debian
# shellcheck source=series.sh
. "$top/scripts/pipeline/series.sh"

prefix=/usr/lib/tap-transfer
arch=$(dpkg --print-architecture)

# This project's revision
if git -C "$top" rev-parse --verify -q HEAD >/dev/null 2>&1; then
    count=$(git -C "$top" rev-list --count HEAD)
    sha=$(git -C "$top" rev-parse --short=7 HEAD)
    dirty=
    if [ -n "$(git -C "$top" status --porcelain --untracked-files=normal)" ]; then
        dirty=.dirty
    fi
    epoch=$(git -C "$top" log -1 --format=%ct)
    maintainer=${DEB_MAINTAINER:-$(git -C "$top" log -1 --format='%an <%ae>')}
else
    count=0 sha=0000000 dirty=.unknown epoch=$(date +%s)
    maintainer=${DEB_MAINTAINER:-tap-transfer builder <root@$(hostname -f)>}
fi
rev=tt$count.g$sha$dirty
# dpkg-deb clamps file times to it: the same revision, the same archive
export SOURCE_DATE_EPOCH=$epoch
date=$(date -R -u -d "@$epoch")

series=$(series_built "$root")
if [ -z "$series" ]; then
    echo "make-deb: no QEMU series is built in $root (make build)" >&2
    exit 1
fi

mkdir -p "$out"
work=$out/work
rm -rf "$work"
rm -f "$out"/*.deb "$out/lintian.txt"
mkdir -p "$work/debian"

config() {
    sed -n "s/^#define $2 \"\\(.*\\)\"$/\\1/p" "$1/config-host.h"
}

# The package's md5sums, Installed-Size, and the archive
finish() {
    local stage=$1 name=$2 version=$3 a=$4 size
    (cd "$stage" && find . -type f ! -path './DEBIAN/*' -printf '%P\n' |
        LC_ALL=C sort | xargs -d '\n' md5sum) > "$stage/DEBIAN/md5sums"
    chmod 644 "$stage/DEBIAN/md5sums"
    size=$(du -s -k --apparent-size --exclude=DEBIAN "$stage" | cut -f1)
    sed -i "s/^Installed-Size: .*/Installed-Size: $size/" "$stage/DEBIAN/control"
    dpkg-deb --root-owner-group -Zxz --build "$stage" \
        "$out/${name}_${version}_$a.deb" >/dev/null
}

changelog() {
    local name=$1 version=$2 file=$3
    shift 3
    {
        echo "$name ($version) bookworm; urgency=medium"
        echo
        for line in "$@"; do
            echo "  $line"
        done
        echo
        echo " -- $maintainer  $date"
    } | gzip -9n > "$file"
}

qemu_deb() {
    local s=$1 src build debver from version name stage cprefix bindir moddir
    local bin mod shlibs
    src=$(series_src "$root" "$s")
    build=$(series_build "$root" "$s")
    if [ -f "$src/debian/changelog" ]; then
        debver=$(dpkg-parsechangelog -l "$src/debian/changelog" -S Version)
        from="Debian's source package qemu $debver"
    else
        debver="$(cat "$src/VERSION")-0local"
        from="a QEMU $(cat "$src/VERSION") tree given as QEMU_SRC"
    fi
    version=${debver#*:}+$rev
    name=tap-transfer-qemu-$s
    stage=$work/$name

    cprefix=$(config "$build" CONFIG_PREFIX)
    bindir=$prefix/qemu-$s$(config "$build" CONFIG_BINDIR | sed "s|^$cprefix||")
    moddir=$prefix/qemu-$s$(config "$build" CONFIG_QEMU_MODDIR | sed "s|^$cprefix||")
    bin=$bindir/qemu-system-x86_64
    mod=$moddir/net-tap-transfer.so
    install -d -m 755 "$stage/DEBIAN" "$stage$bindir" "$stage$moddir" \
        "$stage/usr/share/doc/$name"
    # stripped as dh_strip does; the module keeps its dynamic symbols
    # (QEMU's stamp check), the binary the ones its modules use
    install -m 755 "$build/qemu-system-x86_64" "$stage$bin"
    strip --remove-section=.comment --remove-section=.note "$stage$bin"
    install -m 644 "$build/net-tap-transfer.so" "$stage$mod"
    strip --remove-section=.comment --remove-section=.note --strip-unneeded \
        "$stage$mod"

    if [ -f "$src/debian/copyright" ]; then
        cat "$src/debian/copyright" "$pkgdata/copyright.tap-transfer"
    else
        echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
        echo
        echo "Files: *"
        echo "Copyright: the QEMU authors"
        echo "License: GPL-2"
        echo " On Debian systems, the complete text of the GNU General Public License"
        echo " version 2 can be found in /usr/share/common-licenses/GPL-2."
        cat "$pkgdata/copyright.tap-transfer"
    fi > "$stage/usr/share/doc/$name/copyright"
    chmod 644 "$stage/usr/share/doc/$name/copyright"
    changelog "$name" "$version" "$stage/usr/share/doc/$name/changelog.Debian.gz" \
        "* QEMU $(cat "$src/VERSION") from $from," \
        "  with tap-transfer $sha$dirty (patches/qemu-$s/, net-tap-transfer.so)."

    printf 'Source: tap-transfer\n\nPackage: %s\nArchitecture: %s\n' \
        "$name" "$arch" > "$work/debian/control"
    shlibs=$(cd "$work" && dpkg-shlibdeps -O -e"$stage$bin" -e"$stage$mod" \
             2>"$work/shlibdeps-$s.log" | sed -n 's/^shlibs:Depends=//p')
    if [ -z "$shlibs" ]; then
        cat "$work/shlibdeps-$s.log" >&2
        echo "make-deb: dpkg-shlibdeps found no dependencies for $bin" >&2
        exit 1
    fi
    rm "$work/debian/control"

    cat > "$stage/DEBIAN/control" <<EOF
Package: $name
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: 0
Depends: $shlibs, seabios, ipxe-qemu, qemu-system-data
Recommends: tap-transfer-tools
Built-Using: qemu (= $debver)
Section: otherosfs
Priority: optional
Description: QEMU $s x86-64 emulator with tap-transfer, beside Debian's QEMU
 QEMU $(cat "$src/VERSION") built from $from,
 with tap-transfer (revision $sha$dirty): -netdev tap-transfer, a TAP
 netdev whose open TAP devices a local migration hands over to the new
 QEMU process, so that the QEMU under a running VM can be upgraded or
 rolled back without a new TAP and without losing packets.
 .
 The emulator and its net-tap-transfer.so module are installed under
 $prefix/qemu-$s, beside Debian's qemu-system-x86 and the
 other tap-transfer series; the firmware comes from Debian's seabios,
 ipxe-qemu and qemu-system-data.  tap-transfer-upgrade (package
 tap-transfer-tools) moves running VMs from one series to another.
EOF
    if [ ! -f "$src/debian/changelog" ]; then
        sed -i '/^Built-Using:/d' "$stage/DEBIAN/control"
    fi
    finish "$stage" "$name" "$version" "$arch"
    echo "make-deb: $name $version"
}

tools_deb() {
    local name=tap-transfer-tools version=0.$count+g$sha$dirty stage
    local python doc f s0
    stage=$work/$name
    s0=$(echo "$series" | head -n 1)
    python=$(series_src "$root" "$s0")/python
    doc=$stage/usr/share/doc/$name
    if [ ! -d "$python/qemu/qmp" ]; then
        echo "make-deb: no QEMU Python tree with qemu.qmp in $python" >&2
        exit 1
    fi
    install -d -m 755 "$stage/DEBIAN" "$stage/usr/sbin" \
        "$stage$prefix/tap_transfer" "$stage$prefix/python/qemu/qmp" \
        "$stage/usr/share/man/man8" "$doc"
    install -m 755 "$top/tools/tap-transfer-upgrade" "$stage/usr/sbin/"
    install -m 644 "$top"/tools/tap_transfer/*.py "$stage$prefix/tap_transfer/"
    # the library; not QEMU's qmp-shell and qmp-tui programs
    for f in "$python"/qemu/qmp/*.py; do
        case "$(basename "$f")" in
        qmp_shell.py | qmp_tui.py) ;;
        *) install -m 644 "$f" "$stage$prefix/python/qemu/qmp/" ;;
        esac
    done
    gzip -9n < "$pkgdata/tap-transfer-upgrade.8" \
        > "$stage/usr/share/man/man8/tap-transfer-upgrade.8.gz"
    for f in tap-transfer-upgrade tap-transfer-onboarding tap-transfer-fleet; do
        gzip -9n < "$top/docs/tools/$f.rst" > "$doc/$f.rst.gz"
    done
    {
        echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
        echo "Upstream-Name: tap-transfer"
        echo "Comment: tap-transfer-upgrade and QEMU's qemu.qmp library it runs on."
        cat "$pkgdata/copyright.tap-transfer" "$pkgdata/copyright.qmp"
    } > "$doc/copyright"
    changelog "$name" "$version" "$doc/changelog.gz" \
        "* tap-transfer $sha$dirty: tap-transfer-upgrade, with qemu.qmp" \
        "  from QEMU $(cat "$(series_src "$root" "$s0")/VERSION")."
    chmod 644 "$doc"/* "$stage/usr/share/man/man8/tap-transfer-upgrade.8.gz"
    for f in postinst prerm postrm; do
        install -m 755 "$pkgdata/tools.$f" "$stage/DEBIAN/$f"
    done

    cat > "$stage/DEBIAN/control" <<EOF
Package: $name
Version: $version
Architecture: all
Maintainer: $maintainer
Installed-Size: 0
Depends: python3 (>= 3.9), iproute2
Recommends: $(for s in $series; do printf 'tap-transfer-qemu-%s | ' "$s"; done | sed 's/ | $//')
Section: admin
Priority: optional
Description: upgrade the QEMU under running VMs, handing their TAPs over
 tap-transfer-upgrade moves a running VM to another QEMU binary on the
 same host -- an upgrade, or its rollback -- with its TAP devices handed
 over by tap-transfer (no new TAP, no lost packet), its disk, console
 log, QMP socket and pidfile kept where they were.  Everything is
 derived from the VM's QMP socket; what cannot be handed over is refused
 before anything changes, and a failure leaves the VM on its old QEMU.
 Many VMs at a time, a dry run and a JSON report for automation.
 .
 The QEMU it moves VMs between: the tap-transfer-qemu-SERIES packages.
EOF
    finish "$stage" "$name" "$version" all
    echo "make-deb: $name $version"
}

for s in $series; do
    qemu_deb "$s"
done
tools_deb
rm -rf "$work"

(cd "$out" && for d in *.deb; do
    printf '%-60s %6s KiB  Depends: %s\n' "$d" "$(($(stat -c %s "$d") / 1024))" \
        "$(dpkg-deb -f "$d" Depends)"
done)

if [ "${LINTIAN:-1}" != 0 ]; then
    if ! command -v lintian >/dev/null; then
        echo "make-deb: lintian is not installed (make deps); not checked" >&2
        exit 0
    fi
    rc=0
    lintian --allow-root --display-info --tag-display-limit 0 "$out"/*.deb \
        > "$out/lintian.txt" 2>&1 || rc=$?
    if [ -s "$out/lintian.txt" ]; then
        sed 's/^/lintian: /' "$out/lintian.txt"
    else
        echo "lintian: no tags"
    fi
    if [ "$rc" != 0 ] || grep -q '^E: ' "$out/lintian.txt"; then
        echo "make-deb: lintian reports errors" >&2
        exit 1
    fi
fi
