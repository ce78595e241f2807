#!/bin/bash
# Run the refused handover that once aborted its source (issue 27:
# /x86_64/tap-transfer/refused/on-off of virtio-net-migration-test) many
# times on the sanitizer build, with every core kept busy, and count
# what fails.  `make stress-refusal` builds build-sanitize/ and runs it.
#
#   stress-refusal.sh BUILD_ROOT [RUNS] [SERIES...]
#
# RUNS defaults to 200, SERIES to 10.0 and 10.2.  The log of each run
# that did not pass is kept in BUILD_ROOT/stress-refusal/; the summary,
# one line per series, goes to stdout and to summary.txt there.  Exit
# status 1 if any run failed.
set -uo pipefail

root=${1:?usage: stress-refusal.sh BUILD_ROOT [RUNS] [SERIES...]}
runs=${2:-200}
shift $(($# < 2 ? $# : 2))
series=("$@")
if [ ${#series[@]} = 0 ]; then
    series=(10.0 10.2)
fi
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$root" && pwd)
case=/x86_64/tap-transfer/refused/on-off
out=$root/stress-refusal
rm -rf "$out"
mkdir -p "$out"

# Load: one busy loop per core for the whole run, ended by their ids
burners=()
stop_burners() {
    for pid in "${burners[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${burners[@]}"; do
        wait "$pid" 2>/dev/null
    done
    burners=()
}
trap stop_burners EXIT
trap 'exit 130' INT TERM
for _ in $(seq "$(nproc)"); do
    (while :; do :; done) &
    burners+=($!)
done

export SANITIZE=1
failed_any=0
for v in "${series[@]}"; do
    build=$root/qemu-$v-build
    if [ ! -x "$build/tests/qtest/virtio-net-migration-test" ]; then
        echo "stress-refusal: no QEMU $v sanitizer build in $build" >&2
        failed_any=1
        continue
    fi
    pass=0
    fail=0
    skip=0
    start=$(date +%s)
    for i in $(seq "$runs"); do
        log=$out/$v-run$i.log
        "$here/run-qtest.sh" "$build" virtio-net-migration-test \
            -p "$case" >"$log" 2>&1
        rc=$?
        if [ $rc = 0 ] && grep -q "^ok .*# SKIP" "$log"; then
            skip=$((skip + 1))
            # The reason is the same every time: one log is enough
            if [ $skip -gt 1 ]; then
                rm -f "$log"
            fi
        elif [ $rc = 0 ] && grep -q "^ok .*refused/on-off" "$log"; then
            pass=$((pass + 1))
            rm -f "$log"
        else
            fail=$((fail + 1))
            echo "stress-refusal: QEMU $v run $i failed (exit $rc): $log" >&2
        fi
    done
    secs=$(($(date +%s) - start))
    line="QEMU $v: $runs runs of refused/on-off under ASan+UBSan, $(nproc) cores busy: $pass passed, $fail failed, $skip skipped in ${secs}s"
    echo "$line"
    echo "$line" >> "$out/summary.txt"
    if [ $fail -gt 0 ]; then
        failed_any=1
    fi
done
exit $failed_any
