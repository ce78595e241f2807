#!/bin/bash
# The packages on a fresh host: a clean Debian 12 root made by debootstrap
# from the machine's Debian archive (sources taken from its own entry),
# the packages installed there with "apt-get install ./*.deb" (every
# dependency from the archive, nothing from this machine), then, in that
# root:
#   - each QEMU: --version, -netdev help lists tap-transfer, and it boots
#     the test guest on -netdev tap-transfer (firmware from Debian's
#     packages, -kernel), its own net-tap-transfer.so mapped;
#   - tap-transfer-upgrade --help;
#   - purging them leaves nothing (the root's files as before the
#     install);
#   - installed again beside Debian's qemu-system-x86 (no file in
#     common), both emulators run;
#   - a real guest upgraded 10.0 -> 10.2 -> 10.0 with the installed
#     command and QEMUs under a ping flood (make demo's report, checked;
#     the lab's own tools, ping, sysctl and qemu-img, are installed in
#     the root for it).
# TAP output for meson.  Debootstrap's result is cached for a week in
# /var/cache/tap-transfer/roots (TAP_TRANSFER_FRESH_ROOT=1: never).
#
#   fresh-root-check.sh BUILD_ROOT
set -uo pipefail

root=$(cd "${1:?usage: fresh-root-check.sh BUILD_ROOT}" && pwd)
pipeline=$(cd "$(dirname "$0")/../../scripts/pipeline" && pwd)
top=$(cd "$pipeline/../.." && pwd)
# shellcheck source=series.sh
. "$pipeline/series.sh"
suite=bookworm

skip() {
    echo "1..0 # SKIP $*"
    exit 0
}

[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, chroot, network namespaces)"
command -v debootstrap >/dev/null || skip "no debootstrap (make deps installs it)"
[ -c /dev/net/tun ] || skip "no /dev/net/tun"
if [ "${SANITIZE:-0}" = 1 ]; then
    skip "the packages are made from the ordinary build, not the sanitizer one"
fi
series=$(series_built "$root")
[ -n "$series" ] || skip "no QEMU series is built in $root"
guest=$("$pipeline/../lab/guest/build-guest.sh" 2>/dev/null) || skip "the guest could not be built"
src=/etc/apt/sources.list.d/debian.sources
archive=$(awk '/^URIs:/ { print $2; exit }' "$src" 2>/dev/null || true)
[ -n "$archive" ] || skip "no Debian archive in $src"

# The packages: make deb's, made now if the build has none
debs=$root/deb
if ! ls "$debs"/tap-transfer-tools_*.deb >/dev/null 2>&1; then
    if ! out=$(LINTIAN=0 "$pipeline/make-deb.sh" "$root" 2>&1); then
        echo "1..1"
        echo "not ok 1 - make deb"
        echo "$out" | sed 's/^/# /'
        exit 1
    fi
fi

work=$(mktemp -d /var/tmp/tap-transfer-root.XXXXXX)
rootfs=$work/root
# Killed by meson's timeout or ^C too: the QEMUs started in the root
# (their pidfiles are there), then the root.  Mounts live in mount
# namespaces of their own and go with their processes.
cleanup() {
    local f pid
    while read -r f; do
        pid=$(cat "$f" 2>/dev/null) && [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
    done < <(find "$rootfs/tmp" -name '*.pid' 2>/dev/null)
    sleep 0.2
    if grep -qs " $rootfs/" /proc/mounts; then
        echo "# mounts left under $rootfs: not removing it"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

n=0
failed=0
ok() {
    n=$((n + 1))
    echo "ok $n - $*"
}
fail() {
    n=$((n + 1))
    failed=$((failed + 1))
    echo "not ok $n - $*"
}
finish() {
    echo "1..$n"
    [ "$failed" = 0 ]
    exit
}
indent() {
    sed 's/^/# /'
}
# seconds since @1 (date +%s.%N), one decimal
since() {
    awk -v t0="$1" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.1f", t1 - t0 }'
}

# Run a command in the root, as root, with its own /proc, /sys, /dev and
# /run, in a mount namespace of its own and a clean environment; the
# root a mount point of its own (ip netns wants / to be one)
in_root() {
    unshare --mount --propagation private -- /bin/sh -c '
        r=$1; shift
        mount --bind "$r" "$r" &&
        mount -t proc proc "$r/proc" && mount --rbind /sys "$r/sys" &&
        mount --rbind /dev "$r/dev" && mount -t tmpfs run "$r/run" &&
        exec chroot "$r" /usr/bin/env -i HOME=/root LC_ALL=C.UTF-8 \
            PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
            TMPDIR=/tmp "$@"' sh "$rootfs" "$@"
}

# The root's files, less what apt and dpkg keep for themselves
snapshot() {
    (cd "$rootfs" && find . -xdev \( -path ./proc -o -path ./sys -o -path ./dev \
        -o -path ./run -o -path ./tmp -o -path ./var/lib/dpkg \
        -o -path ./var/lib/apt -o -path ./var/cache -o -path ./var/log \) -prune \
        -o -print | LC_ALL=C sort) > "$1"
}

# 1. The root
cache=${TAP_TRANSFER_CACHE:-/var/cache/tap-transfer}/roots
tarball=$cache/$suite-minbase.tar
t0=$(date +%s.%N)
if [ "${TAP_TRANSFER_FRESH_ROOT:-0}" != 1 ] && [ -f "$tarball" ] &&
   [ -n "$(find "$tarball" -mtime -7)" ]; then
    mkdir "$rootfs" && tar -C "$rootfs" -xf "$tarball"
    how="debootstrap's root of $(date -r "$tarball" +%F), cached"
else
    if ! debootstrap --variant=minbase "$suite" "$rootfs" "$archive" \
            > "$work/debootstrap.log" 2>&1; then
        fail "debootstrap --variant=minbase $suite"
        tail -n 20 "$work/debootstrap.log" | indent
        finish
    fi
    mkdir -p "$cache"
    tar -C "$rootfs" -cf "$tarball.new" . && mv "$tarball.new" "$tarball"
    how="debootstrap --variant=minbase $suite"
fi
# The archive as this machine reaches it: its sources entry, and its
# apt settings for that archive (a frozen snapshot's Release files
# carry no valid date)
rm -f "$rootfs/etc/apt/sources.list"
cp "$src" "$rootfs/etc/apt/sources.list.d/debian.sources"
apt-config dump | grep -E '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy) ' \
    > "$rootfs/etc/apt/apt.conf.d/00archive" || true
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
if ! in_root apt-get -q update > "$work/update.log" 2>&1; then
    fail "apt-get update in the fresh root"
    tail -n 20 "$work/update.log" | indent
    finish
fi
ok "a clean Debian 12 root ($how, apt-get update): $(since "$t0") s"

# 2. The packages, as an operator installs them
mkdir -m 755 "$rootfs/tmp/debs"
install -m 644 "$debs"/*.deb "$rootfs/tmp/debs/"
snapshot "$work/before"
t0=$(date +%s.%N)
if in_root /bin/sh -c 'cd /tmp/debs && apt-get install -y ./*.deb' \
        > "$work/install.log" 2>&1; then
    took=$(since "$t0")
    ok "apt-get install ./*.deb: $(ls "$debs"/*.deb | wc -l) packages and" \
       "$(grep -c '^Setting up ' "$work/install.log") in all," \
       "$(grep -o 'Need to get [^ ]* [kMG]*B' "$work/install.log" | head -n 1 | cut -d' ' -f4-5) fetched," \
       "$took s"
    grep -E '^(Need to get|After this|Setting up tap-transfer)' "$work/install.log" | indent
else
    fail "apt-get install ./*.deb in the fresh root"
    tail -n 30 "$work/install.log" | indent
    finish
fi

# 3. Each QEMU, from its installed files alone
cp "$guest/vmlinuz" "$guest/initrd.gz" "$rootfs/tmp/"
for s in $series; do
    q=/usr/lib/tap-transfer/qemu-$s/bin/qemu-system-x86_64
    want=$(cat "$(series_src "$root" "$s")/VERSION")
    v=$(in_root "$q" --version 2>&1 | head -n 1)
    if [ "$v" = "QEMU emulator version $want" ]; then
        ok "QEMU $s --version: $v"
    else
        fail "QEMU $s --version: '$v', not QEMU $want"
    fi
    if in_root "$q" -netdev help 2>&1 | grep -qx 'tap-transfer'; then
        ok "QEMU $s -netdev help lists tap-transfer"
    else
        fail "QEMU $s -netdev help does not list tap-transfer"
        in_root "$q" -netdev help 2>&1 | indent
    fi
    # In a network namespace of its own, which goes with the QEMU: it
    # boots the guest (-M pc: the BIOS; -kernel: linuxboot_dma.bin) on
    # a TAP it opened itself, with its own module
    in_root unshare --net /bin/sh -c '
        q=$1 s=$2
        ip link set lo up
        "$q" -name boot-$s -M pc -accel tcg -m 128 -nodefaults -display none \
            -kernel /tmp/vmlinuz -initrd /tmp/initrd.gz \
            -append "console=ttyS0 quiet tt.addr=10.0.0.2/24" \
            -serial file:/tmp/boot-$s.log -pidfile /tmp/boot-$s.pid -daemonize \
            -netdev tap-transfer,id=n0,ifname=tt0,script=no,downscript=no \
            -device virtio-net-pci,netdev=n0 || exit 1
        for i in $(seq 900); do
            grep -qs "tap-transfer guest ready" /tmp/boot-$s.log && break
            sleep 0.1
        done
        grep -o "/[^ ]*net-tap-transfer\.so" /proc/$(cat /tmp/boot-$s.pid)/maps | sort -u
        kill $(cat /tmp/boot-$s.pid)' sh "$q" "$s" > "$work/boot-$s.out" 2>&1
    mapped=$(grep -o '/[^ ]*net-tap-transfer\.so' "$work/boot-$s.out" | sort -u)
    if grep -qs 'tap-transfer guest ready' "$rootfs/tmp/boot-$s.log" &&
       [ "$mapped" = "/usr/lib/tap-transfer/qemu-$s/lib/x86_64-linux-gnu/qemu/net-tap-transfer.so" ]; then
        ok "QEMU $s boots the guest on -netdev tap-transfer with its own module ($mapped)"
    else
        fail "QEMU $s did not boot the guest with its own module (mapped: '${mapped:-none}')"
        cat "$work/boot-$s.out" "$rootfs/tmp/boot-$s.log" 2>/dev/null | tail -n 20 | indent
    fi
done
if in_root tap-transfer-upgrade --help > "$work/help.log" 2>&1 &&
   grep -q -- '--qmp' "$work/help.log"; then
    ok "tap-transfer-upgrade --help ($(in_root sh -c 'command -v tap-transfer-upgrade'))"
else
    fail "tap-transfer-upgrade --help"
    indent < "$work/help.log"
fi

# 4. Removal leaves nothing: purged, the packages take every file of
# theirs with them (and what running them wrote) and nothing else; then
# the dependencies they pulled in go with --autoremove
pkgs=$(for d in "$debs"/*.deb; do dpkg-deb -f "$d" Package; done | tr '\n' ' ')
for d in "$debs"/*.deb; do
    dpkg-deb -c "$d" | awk '{ print $6 }' | sed 's|/$||'
done | LC_ALL=C sort -u > "$work/ours"
snapshot "$work/installed"
t0=$(date +%s.%N)
# shellcheck disable=SC2086
if in_root apt-get purge -y $pkgs > "$work/purge.log" 2>&1; then
    took=$(since "$t0")
    snapshot "$work/after"
    # left: a file of ours, or one under a path of ours, that was not
    # there before the install; new: a file the purge made; gone: one
    # it removed that was neither ours nor under a path of ours (the
    # byte code postinst wrote is)
    left=$(LC_ALL=C comm -23 "$work/after" "$work/before" |
           grep -E 'tap-transfer|tap_transfer' ;
           LC_ALL=C comm -12 "$work/after" "$work/ours" |
           LC_ALL=C comm -23 - "$work/before")
    new=$(LC_ALL=C comm -13 "$work/installed" "$work/after")
    gone=$(LC_ALL=C comm -23 "$work/installed" "$work/after" |
           LC_ALL=C comm -23 - "$work/ours" | grep -vE 'tap-transfer|tap_transfer')
    if [ -z "$left$new$gone" ]; then
        ok "apt-get purge $pkgs: $(LC_ALL=C comm -23 "$work/installed" \
            "$work/after" | wc -l) files and directories gone, nothing of" \
           "theirs left, nothing else touched, $took s"
    else
        fail "apt-get purge $pkgs"
        { [ -z "$left" ] || echo "left behind: $left"
          [ -z "$new" ] || echo "made by the purge: $new"
          [ -z "$gone" ] || echo "removed, not theirs: $gone"; } | head -n 40 | indent
    fi
else
    fail "apt-get purge $pkgs"
    tail -n 20 "$work/purge.log" | indent
fi
# What the dependencies' own purge leaves is theirs (ca-certificates
# leaves its generated /etc/ssl/certs): said, not judged
if in_root apt-get purge -y --autoremove > "$work/autoremove.log" 2>&1; then
    snapshot "$work/autoremoved"
    echo "# apt-get purge --autoremove: $(grep -c '^Removing ' "$work/autoremove.log")" \
         "dependencies removed; left by them, against the fresh root:" \
         "$(LC_ALL=C comm -13 "$work/before" "$work/autoremoved" | wc -l) paths" \
         "($(LC_ALL=C comm -13 "$work/before" "$work/autoremoved" |
             cut -d/ -f2-4 | sort -u | head -n 5 | tr '\n' ' '))"
fi

# 5. Beside Debian's own QEMU; and the lab's tools for the guest upgrade
t0=$(date +%s.%N)
# (its recommends, a GUI and more firmware, are not what is proved here)
if in_root /bin/sh -c 'cd /tmp/debs && apt-get install -y --no-install-recommends \
        ./*.deb qemu-system-x86 iputils-ping procps qemu-utils' \
        > "$work/coinstall.log" 2>&1; then
    debian=$(in_root qemu-system-x86_64 --version | head -n 1)
    ours=$(for s in $series; do
        in_root "/usr/lib/tap-transfer/qemu-$s/bin/qemu-system-x86_64" --version | head -n 1
    done | tr '\n' ';')
    ok "installed beside Debian's qemu-system-x86 ($(in_root dpkg-query -W \
        -f '${Version}' qemu-system-x86)): /usr/bin/qemu-system-x86_64 says" \
       "'$debian'; ours say '${ours%;}' ($(since "$t0") s)"
else
    fail "apt-get install ./*.deb beside qemu-system-x86"
    tail -n 30 "$work/coinstall.log" | indent
    finish
fi

# 6. A real guest upgraded and rolled back with the installed files: the
# lab (make demo) runs in the root on QEMU's Python tooling, copied in
if echo "$series" | grep -qx 10.0 && echo "$series" | grep -qx 10.2; then
    mkdir -p "$rootfs/tmp/lab/guest" "$rootfs/tmp/lab/python"
    cp "$top"/scripts/lab/demo.py "$top"/scripts/lab/ttlab.py \
       "$top"/tests/functional/tap_transfer_host.py "$rootfs/tmp/lab/"
    cp -r "$(series_src "$root" 10.0)/python/qemu" "$rootfs/tmp/lab/python/"
    cp "$guest/vmlinuz" "$guest/initrd.gz" "$rootfs/tmp/lab/guest/"
    t0=$(date +%s.%N)
    if in_root python3 /tmp/lab/demo.py \
            --qemu /usr/lib/tap-transfer/qemu-10.0/bin/qemu-system-x86_64 \
            --upgrade-to /usr/lib/tap-transfer/qemu-10.2/bin/qemu-system-x86_64 \
            --rollback --tool /usr/sbin/tap-transfer-upgrade \
            --python-dir /tmp/lab/python --guest /tmp/lab/guest \
            > "$work/demo.log" 2>&1; then
        ok "a real guest upgraded 10.0 -> 10.2 -> 10.0 in the root by the installed" \
           "command and QEMUs: $(grep -o 'lost [0-9]*' "$work/demo.log" | head -n 1) pings," \
           "$(since "$t0") s"
    else
        fail "the guest upgrade with the installed files"
    fi
    sed -n '/upgrade report/,$p' "$work/demo.log" | indent
    grep -q 'upgrade report' "$work/demo.log" || tail -n 30 "$work/demo.log" | indent
else
    ok "guest upgrade # SKIP it needs both series built"
fi
finish
