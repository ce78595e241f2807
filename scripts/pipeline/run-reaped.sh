#!/bin/bash
# Run a lab test (COMMAND...) so that nothing of it outlives it, also
# when meson's timeout kills it: meson sends TERM to the test's process
# group and SIGKILL half a second later, while the test's daemonized
# QEMUs have left the group.  On TERM or INT, a reaper that is not in
# the group (setsid) removes the namespaces the test made and what runs
# in them (reap-lab.sh); after a normal exit, the same for anything a
# crash left.
#
#   run-reaped.sh COMMAND [ARG...]
here=$(cd "$(dirname "$0")" && pwd)

"$@" &
child=$!
reap_detached() {
    setsid "$here/reap-lab.sh" "$child" </dev/null >/dev/null 2>&1 &
    exit "$1"
}
trap 'reap_detached 143' TERM
trap 'reap_detached 130' INT
wait "$child"
rc=$?
"$here/reap-lab.sh" "$child"
exit "$rc"
