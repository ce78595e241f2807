# Where each QEMU series is built under a build root: the one place the
# packaging and the fleet tests take these paths from.  Sourced, not run.
#
#   series_src ROOT SERIES     the prepared tree (Debian's source + this repo)
#   series_build ROOT SERIES   its build directory
#   series_stamp ROOT SERIES   the stamp meson leaves once it is built
#   series_built ROOT          the series built there, one a line
#
# 10.0 keeps the names the first builds had (qemu-src, qemu-build).

TT_SERIES="10.0 10.2"

series_src() {
    if [ "$2" = 10.0 ]; then echo "$1/qemu-src"; else echo "$1/qemu-$2-src"; fi
}

series_build() {
    if [ "$2" = 10.0 ]; then echo "$1/qemu-build"; else echo "$1/qemu-$2-build"; fi
}

series_stamp() {
    if [ "$2" = 10.0 ]; then echo "$1/qemu.stamp"; else echo "$1/qemu-$2.stamp"; fi
}

# A series counts as built when meson finished it and the archive served
# its source (otherwise BUILD.unavailable says why)
series_built() {
    local s b
    for s in $TT_SERIES; do
        b=$(series_build "$1" "$s")
        if [ -f "$(series_stamp "$1" "$s")" ] && [ ! -f "$b.unavailable" ] &&
           [ -x "$b/qemu-system-x86_64" ]; then
            echo "$s"
        fi
    done
}
