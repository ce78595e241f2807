#!/bin/bash
# Unpack one of Debian's stock QEMUs (qemu-system-x86 with its common and
# data packages, qemu-utils for qemu-img, seabios and ipxe-qemu) into a
# directory of its own, with apt-get download + dpkg -x: the system's
# QEMU, if any, is left alone.
# The runtime libraries the binary links to are installed with apt (they
# are ordinary Debian libraries, not QEMU).  Prints the binary's path.
#
#   fetch-stock-qemu.sh OUTDIR SERIES
#
# SERIES is 7.2 (Debian 12's own qemu-system-x86) or 10.0 (the
# bookworm-backports one, whose source entry scripts/install-deps.sh
# adds).  The tree lands in OUTDIR/stock-SERIES/root; run the binary with
# the -L options listed in OUTDIR/stock-SERIES/firmware-args.  When the
# archive does not serve the series, the reason is written to
# OUTDIR/stock-SERIES.unavailable, printed in one line, and the exit
# status is 77 (the test runners' "skip").
set -euo pipefail

usage="usage: fetch-stock-qemu.sh OUTDIR 7.2|10.0"
out=${1:?$usage}
series=${2:?$usage}
case "$series" in
    7.2)  prefix='1:7.2+' ;;
    10.0) prefix='1:10.0.' ;;
    *)    echo "fetch-stock-qemu: unknown series $series ($usage)" >&2
          exit 2 ;;
esac

mkdir -p "$out"
out=$(cd "$out" && pwd)
dir=$out/stock-$series
unavailable=$out/stock-$series.unavailable

# the newest version of package $1 the archive serves that starts with $2
served() {
    apt-cache madison "$1" 2>/dev/null |
        awk -F' *[|] *' -v p="$2" \
            '$3 ~ /Packages/ && index($2, p) == 1 { print $2; exit }'
}

unserved() {
    echo "$1" > "$unavailable"
    echo "$1"
    exit 77
}

qemu_ver=$(served qemu-system-x86 "$prefix")
[ -n "$qemu_ver" ] ||
    unserved "stock QEMU $series: the archive serves no qemu-system-x86 ${prefix#1:}x (apt-get update; bookworm-backports for 10.0: scripts/install-deps.sh)"
common_ver=$(served qemu-system-common "$prefix")
data_ver=$(served qemu-system-data "$prefix")
utils_ver=$(served qemu-utils "$prefix")
bios_ver=$(served seabios '')
ipxe_ver=$(served ipxe-qemu '')
for pv in "qemu-system-common:$common_ver" "qemu-system-data:$data_ver" \
          "qemu-utils:$utils_ver" \
          "seabios:$bios_ver" "ipxe-qemu:$ipxe_ver"; do
    [ -n "${pv#*:}" ] ||
        unserved "stock QEMU $series: the archive serves no ${pv%%:*} to go with qemu-system-x86 $qemu_ver"
done
rm -f "$unavailable"

want="$qemu_ver $common_ver $data_ver $utils_ver $bios_ver $ipxe_ver v2"
if [ -f "$dir/ready" ] && [ "$(cat "$dir/ready")" = "$want" ] &&
   [ -x "$dir/root/usr/bin/qemu-system-x86_64" ]; then
    echo "$dir/root/usr/bin/qemu-system-x86_64"
    exit 0
fi

rm -rf "$dir"
mkdir -p "$dir/debs" "$dir/root"
(cd "$dir/debs" &&
 apt-get download -q -o APT::Sandbox::User=root "qemu-system-x86=$qemu_ver" \
     "qemu-system-common=$common_ver" "qemu-system-data=$data_ver" \
     "qemu-utils=$utils_ver" \
     "seabios=$bios_ver" "ipxe-qemu=$ipxe_ver" >&2) ||
    unserved "stock QEMU $series: apt-get download of qemu-system-x86 $qemu_ver failed"
for deb in "$dir"/debs/*.deb; do
    dpkg -x "$deb" "$dir/root"
done

# The libraries: what the two packages with binaries depend on, minus
# QEMU's own packages and firmware; installed only when missing.
libs=$(for deb in "$dir"/debs/qemu-system-x86_*.deb \
                  "$dir"/debs/qemu-system-common_*.deb \
                  "$dir"/debs/qemu-utils_*.deb; do
           dpkg-deb -f "$deb" Depends
       done | tr ',' '\n' | sed 's/([^)]*)//; s/|.*//; s/ //g' |
       grep -v -e '^$' -e '^qemu-' -e '^seabios$' -e '^ipxe-qemu$' | sort -u)
missing=
for lib in $libs; do
    dpkg-query -W -f='${Status}' "$lib" 2>/dev/null |
        grep -q 'install ok installed' || missing="$missing $lib"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "fetch-stock-qemu: must run as root to install:$missing" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -q -y \
        -o DPkg::Lock::Timeout=300 --no-install-recommends $missing >&2
fi

bin=$dir/root/usr/bin/qemu-system-x86_64
for b in "$bin" "$dir/root/usr/bin/qemu-img"; do
    if ldd "$b" | grep -q 'not found'; then
        echo "fetch-stock-qemu: $b still lacks: $(ldd "$b" | awk '/not found/ { printf "%s ", $1 }')" >&2
        exit 1
    fi
done

# Firmware from the unpacked tree: QEMU's data, SeaBIOS, iPXE's ROMs
fw=
for d in usr/share/qemu usr/share/seabios usr/lib/ipxe/qemu; do
    [ -d "$dir/root/$d" ] && fw="$fw -L $dir/root/$d"
done
echo "${fw# }" > "$dir/firmware-args"
"$bin" -version | head -1 >&2
echo "$want" > "$dir/ready"
echo "$bin"
