# Where each QEMU series is built under a build root: the one place the
# packaging and the fleet tests take these paths from.  Sourced, not run.
#
#   series_src ROOT SERIES     the prepared tree (Debian's source + this repo)
#   series_build ROOT SERIES   its build directory
#   series_stamp ROOT SERIES   the stamp meson leaves once it is built
#   series_built ROOT          the series built there, one a line
#
# Every series alike: ROOT/qemu-X.Y-src, ROOT/qemu-X.Y-build,
# ROOT/qemu-X.Y.stamp.

TT_SERIES="10.0 10.2"

series_src() {
    echo "$1/qemu-$2-src"
}

series_build() {
    echo "$1/qemu-$2-build"
}

series_stamp() {
    echo "$1/qemu-$2.stamp"
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
