#!/bin/bash
# Reap what a lab test that was killed left behind: the network
# namespaces its process PID made (named PREFIX-PID-N, see netns_name()
# in tests/functional/tap_transfer_host.py), every process still inside them
# (daemonized QEMUs, which left the test's process group, and pings),
# and their RAM files in /dev/shm.  The namespace's TAPs and bridge go
# with it.  Does nothing when the test cleaned up after itself.
#
#   reap-lab.sh PID
pid=${1:?usage: reap-lab.sh PID}
for ns in $(ip netns list | awk '{ print $1 }' | grep -E -- "-$pid-[0-9]+\$"); do
    pids=$(ip netns pids "$ns")
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null
    fi
    ip netns del "$ns" 2>/dev/null
    rm -f /dev/shm/*"$ns"*
done
exit 0
