#!/bin/bash
# make deb, checked: the packages of every series built here and of the
# command are made (BUILD_ROOT/deb, which the fresh-root and fleet tests
# then install), lintian reports no error, their versions name Debian's
# QEMU and this revision, and every file they hold is under a path of
# theirs -- none where Debian's qemu-system-x86 installs.  TAP output.
#
#   deb-check.sh BUILD_ROOT
set -uo pipefail

root=$(cd "${1:?usage: deb-check.sh BUILD_ROOT}" && pwd)
pipeline=$(cd "$(dirname "$0")/../../scripts/pipeline" && pwd)
# shellcheck source=series.sh
. "$pipeline/series.sh"
out=$root/deb

if [ "${SANITIZE:-0}" = 1 ]; then
    echo "1..0 # SKIP the packages are made from the ordinary build, not the sanitizer one"
    exit 0
fi
series=$(series_built "$root")
if [ -z "$series" ]; then
    echo "1..0 # SKIP no QEMU series is built in $root"
    exit 0
fi

n=0 failed=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
fail() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $*"; }

t0=$(date +%s)
if log=$("$pipeline/make-deb.sh" "$root" 2>&1); then
    ok "make deb: $(ls "$out"/*.deb | wc -l) packages in $(($(date +%s) - t0)) s"
else
    fail "make deb"
fi
echo "$log" | sed 's/^/# /'
if ! command -v lintian >/dev/null; then
    ok "lintian # SKIP lintian is not installed (make deps)"
elif [ -f "$out/lintian.txt" ] && ! grep -q '^E: ' "$out/lintian.txt"; then
    ok "lintian: no error ($(grep -c '^W: ' "$out/lintian.txt") warnings," \
       "$(grep -c '^I: ' "$out/lintian.txt") notes)"
else
    fail "lintian reports errors"
fi

# One package per series and the tools, named and versioned as said
for s in $series; do
    deb=$(ls "$out"/tap-transfer-qemu-"$s"_*.deb 2>/dev/null)
    src=$(series_src "$root" "$s")
    want=
    if [ -f "$src/debian/changelog" ]; then
        want=$(dpkg-parsechangelog -l "$src/debian/changelog" -S Version)
        want=${want#*:}+tt
    fi
    v=$(dpkg-deb -f "$deb" Version 2>/dev/null)
    case "$v" in
    "$want"*) ok "tap-transfer-qemu-$s $v: Debian's qemu ${want%+tt}, this project's revision" ;;
    *) fail "tap-transfer-qemu-$s: version '$v', not ${want}N.gHASH" ;;
    esac
done
if v=$(dpkg-deb -f "$out"/tap-transfer-tools_*.deb Version 2>/dev/null); then
    ok "tap-transfer-tools $v"
else
    fail "no tap-transfer-tools package"
fi

# Where their files go: their own directories, the command, its man
# page and each package's doc directory
bad=$(for d in "$out"/*.deb; do
    p=$(dpkg-deb -f "$d" Package)
    dpkg-deb -c "$d" | awk '$1 !~ /^d/ { print $6 }' | sed 's|^\.||' |
        grep -vE "^(/usr/lib/tap-transfer/|/usr/share/doc/$p/|/usr/sbin/tap-transfer-upgrade$|/usr/share/man/man8/tap-transfer-upgrade\.8\.gz$)" |
        sed "s|^|$p: |"
done)
if [ -z "$bad" ]; then
    ok "every file under /usr/lib/tap-transfer, /usr/share/doc/PACKAGE, or the command and its man page"
else
    fail "files outside the packages' own paths"
    echo "$bad" | sed 's/^/# /'
fi
echo "1..$n"
[ "$failed" = 0 ]
