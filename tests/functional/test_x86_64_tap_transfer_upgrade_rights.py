#!/usr/bin/env python3
#
# tap-transfer-upgrade gives the new QEMU exactly the rights of the old
# one, never the command's own (it runs as root), and the state the VM
# has now, not the one it booted with:
#
# - a VM whose QEMU runs as a user of its own (setpriv), its TAP opened
#   by root and passed as fds as management does, its files in a
#   directory of that user's; and a VM started as root with
#   -run-with user=, which drops its privileges itself: both upgraded to
#   TAP_TRANSFER_QEMU_NEW and back under a ping flood, no ping lost,
#   every acked disk record kept, the new QEMU with the old one's uids,
#   gids and groups, the QMP socket and pidfile owned as before;
# - a VM in cgroups of its own (a memory limit): the new QEMU is in
#   the same cgroups, in every hierarchy;
# - an external snapshot taken at run time (blockdev-snapshot-sync):
#   the upgrade is refused, the VM untouched, its records going on;
# - a QEMU whose command line was rewritten after it started (a
#   library preloaded into it rewrites its argv): the command creates
#   nothing outside the VM's own directory.
#
# This work is licensed under the terms of the GNU GPL, version 2 or
# later.  See the COPYING file in the top-level directory.

import os
import shutil
import subprocess
import time

from qemu_test import QemuSystemTest
from tap_transfer_host import GUEST_READY
from tap_transfer_lab import PPS, open_tap_in_netns
from tap_transfer_upgrade_lab import UpgradeLabTest, Vm, status_ids

# a library that rewrites its process's argv some time after it
# started: what a QEMU taken over by its guest could do to
# /proc/PID/cmdline
FORGE_C = r'''
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int forge_argc;
static char **forge_argv;

/* TT_FORGE: "FROM>TO|FROM>TO": each argument FROM becomes TO */
static void *forge(void *opaque)
{
    char *spec = getenv("TT_FORGE");
    char *pair, *save = NULL;

    sleep(2);
    for (pair = strtok_r(spec, "|", &save); pair;
         pair = strtok_r(NULL, "|", &save)) {
        char *to = strchr(pair, '>');
        int i;

        if (!to) {
            continue;
        }
        *to++ = '\0';
        for (i = 0; i < forge_argc; i++) {
            if (!strcmp(forge_argv[i], pair) &&
                strlen(to) == strlen(pair)) {
                memcpy(forge_argv[i], to, strlen(to));
            }
        }
    }
    return opaque;
}

__attribute__((constructor))
static void forge_init(int argc, char **argv)
{
    pthread_t t;

    forge_argc = argc;
    forge_argv = argv;
    if (getenv("TT_FORGE")) {
        pthread_create(&t, NULL, forge, NULL);
        pthread_detach(t);
    }
}
'''


def cgroup_mounts():
    """{mountpoint: fstype} of the cgroup hierarchies this process sees"""
    out = {}
    with open('/proc/self/mountinfo') as f:
        for line in f:
            left, _, right = line.partition(' - ')
            fstype = right.split()[0]
            if fstype in ('cgroup', 'cgroup2'):
                out[left.split()[4]] = fstype
    return out


class TapTransferUpgradeRights(UpgradeLabTest):

    def tap_vm(self, name, index, owner=None, **kw):
        """A disk VM on a 2-queue TAP that root opened and passed as
        fds, owned by @owner"""
        ifname = f'ttr{index}'
        fds = open_tap_in_netns(self.ns, ifname, 2)
        self.nsrun('ip', 'link', 'set', ifname, 'master', 'br0', 'up')
        vm = Vm(self, name, self.old, index, queues=2, disk=True,
                tap_fds=fds, **kw)
        for fd in fds:
            os.close(fd)
        vm.ifname = ifname
        vm.wait_console(GUEST_READY)
        self.wait_ping(vm.addr, timeout=90)
        vm.wait_acks(5)
        return vm

    def round_trip(self, vm, owners):
        """Upgraded and rolled back under a ping flood; after each hop
        the new QEMU has the old one's ids and the files their owners"""
        flood = self.start_ping(int(PPS * 8), addr=vm.addr)
        time.sleep(1)
        for to in (self.new, self.old):
            ids = status_ids(vm.pid)
            r = self.upgrade(vm.qmp_path, to)
            self.assertEqual(r['status'], 'upgraded', r)
            new_pid = vm.read_pid()
            self.assertEqual(new_pid, r['new_pid'])
            self.assertEqual(status_ids(new_pid), ids,
                             'the new QEMU has other ids than the old')
            for path, uid in owners.items():
                self.assertEqual(os.stat(path).st_uid, uid,
                                 f'{path} changed owner')
            self.assertEqual(os.path.realpath(self.assert_one_qemu(vm)),
                             os.path.realpath(to))
            self.note(f"{vm.name}: QEMU {r['old_version']} -> "
                      f"{r['new_version']} as uid {r['uid']}, downtime "
                      f"{r['downtime_ms']} ms, ids {ids[0]} / {ids[1]} / "
                      f"groups '{ids[2]}'")
            time.sleep(1)
        self.assert_flows_lossless([flood], f'{vm.name}: ')
        self.note(f'{vm.name}: {self.assert_records(vm)} records acked once '
                  'each, all on disk')

    def test_unprivileged_user(self):
        """A VM whose QEMU runs as a uid of its own"""
        user = (4242, 4242)
        vm = self.tap_vm('user', 1, user=user)
        self.assertEqual(status_ids(vm.pid)[0].split()[:2], ['4242', '4242'])
        self.round_trip(vm, {vm.qmp_path: 4242, vm.pidfile: 4242})

    def test_run_with_user(self):
        """A VM started as root that drops to a user itself: the new QEMU
        starts as root as it did and drops to the same user"""
        user = (4243, 4243)
        vm = self.tap_vm('runwith', 2, run_with_user=user)
        self.assertEqual(status_ids(vm.pid)[0].split()[:2], ['4243', '4243'])
        # made by root before QEMU dropped its privileges
        self.round_trip(vm, {vm.qmp_path: 0, vm.pidfile: 0})

    def test_cgroups(self):
        """A VM in cgroups of its own, in every hierarchy, with a memory
        limit: the new QEMU is in the same ones"""
        dirs = []
        for mnt, fstype in cgroup_mounts().items():
            d = os.path.join(mnt, f'tt-upgrade-{self.ns}')
            try:
                os.mkdir(d)
            except OSError:
                continue
            dirs.append(d)
            self.addCleanup(self.remove_cgroup, d)
            limit = 'memory.max' if fstype == 'cgroup2' else \
                'memory.limit_in_bytes'
            if os.path.exists(os.path.join(d, limit)):
                with open(os.path.join(d, limit), 'w') as f:
                    f.write(str(1 << 30))
        if not dirs:
            self.skipTest('no cgroup hierarchy where a cgroup can be made')
        vm = Vm(self, 'cgroup', self.old, 3, boot=False, cgroups=dirs)
        with open(f'/proc/{vm.pid}/cgroup') as f:
            before = f.read()
        for d in dirs:
            self.assertIn(f'/tt-upgrade-{self.ns}\n', before, d)
        r = self.upgrade(vm.qmp_path, self.new)
        with open(f"/proc/{r['new_pid']}/cgroup") as f:
            self.assertEqual(f.read(), before)
        with open('/proc/self/cgroup') as f:
            self.assertNotEqual(f.read(), before,
                                'the test runs in the VM\'s cgroups')
        self.note(f'cgroups carried: {len(dirs)} hierarchies '
                  f'({", ".join(sorted(dirs))})')

    def remove_cgroup(self, d):
        for _ in range(100):
            try:
                os.rmdir(d)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)

    def test_snapshot_refused(self):
        """An external snapshot taken at run time: the destination
        would open the base image; refused, the VM untouched"""
        vm = Vm(self, 'snap', self.old, 4, disk=True)
        vm.wait_console(GUEST_READY)
        self.wait_ping(vm.addr, timeout=90)
        vm.wait_acks(5)
        overlay = os.path.join(vm.dir, 'overlay.qcow2')
        vm.qmp('blockdev-snapshot-sync', device='disk0',
               **{'snapshot-file': overlay, 'format': 'qcow2'})
        before = vm.snapshot()
        acked = len(vm.acked())
        r = self.upgrade(vm.qmp_path, self.new, expect_ok=False)
        self.note(f"snapshot: exit {r['returncode']}: {r.get('error')}")
        self.assertEqual(r['returncode'], 2)
        self.assertIn('disk0', r['error'])
        self.assertEqual(vm.snapshot(), before)
        self.assertEqual(vm.qmp('query-status')['status'], 'running')
        self.assert_no_leftover([vm])
        self.assert_answers(vm)
        vm.wait_acks(acked + 5)
        self.assert_records(vm, image=overlay)

    def test_logs_appended(self):
        """-D: QEMU truncates the log it opens; the new QEMU writes on the
        source's open log instead, after what was there"""
        log = os.path.join(self.base, 'dlog', 'qemu.log')
        vm = Vm(self, 'dlog', self.old, 6, boot=False,
                extra=['-D', log, '-trace', 'enable=vm_state_notify'])
        # what the source logged since it started (written through its
        # own file offset: an extra line from here would be overwritten)
        with open(log) as f:
            before = f.read()
        self.assertIn('vm_state_notify running 1', before)
        r = self.upgrade(vm.qmp_path, self.new)
        deadline = time.monotonic() + 10
        while True:
            with open(log) as f:
                after = f.read()
            tail = after[len(before):]
            if 'running 1' in tail or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertTrue(after.startswith(before), 'the log was truncated')
        # the source logged its stop, the new QEMU its start, after them
        self.assertIn('vm_state_notify running 0', tail)
        self.assertIn('vm_state_notify running 1', tail)
        self.assertEqual(vm.read_pid(), r['new_pid'])
        self.note(f'-D log: {len(before)} bytes kept, '
                  f'{len(tail)} appended by the two QEMUs')

    def test_forged_argv(self):
        """A QEMU whose argv names other files after it started cannot
        make the command create or rename anything outside its
        directory: the new QEMU has the VM's rights only, and fails"""
        cc = shutil.which('cc') or shutil.which('gcc')
        if not cc:
            self.skipTest('no C compiler for the argv-forging library')
        lib = os.path.join(self.base, 'forge.so')
        src = os.path.join(self.base, 'forge.c')
        with open(src, 'w') as f:
            f.write(FORGE_C)
        subprocess.run([cc, '-shared', '-fPIC', '-pthread', '-o', lib, src],
                       check=True)
        os.chmod(lib, 0o755)
        victim = '/etc'
        name = os.path.join(self.base, 'forged', 'qemu.pid')
        forged_pid = os.path.join(victim, 'x' * (len(name) -
                                                 len(victim) - 1))
        log = os.path.join(self.base, 'forged', 'console.log')
        forged_log = os.path.join(victim, 'y' * (len(log) - len(victim) - 1))
        spec = f'{name}>{forged_pid}|file:{log}>file:{forged_log}'
        before = sorted(os.listdir(victim))
        fds = open_tap_in_netns(self.ns, 'ttr5', 1)
        vm = Vm(self, 'forged', self.old, 5, boot=False, daemonize=False,
                user=(4244, 4244), tap_fds=fds,
                wrapper=['env', f'LD_PRELOAD={lib}', f'TT_FORGE={spec}'])
        for fd in fds:
            os.close(fd)
        deadline = time.monotonic() + 30
        while forged_pid.encode() not in open(f'/proc/{vm.pid}/cmdline',
                                              'rb').read():
            self.assertLess(time.monotonic(), deadline, 'argv not forged')
            time.sleep(0.1)
        vm_before = vm.snapshot()
        r = self.upgrade(vm.qmp_path, self.new, expect_ok=False)
        self.note(f"forged argv: exit {r['returncode']}: {r.get('error')}")
        self.assertNotEqual(r['returncode'], 0)
        self.assertEqual(sorted(os.listdir(victim)), before,
                         f'files appeared in {victim}')
        self.assertEqual(vm.snapshot(), vm_before)
        self.assertEqual(vm.qmp('query-status')['status'], 'running')
        self.assert_no_leftover([vm])


if __name__ == '__main__':
    QemuSystemTest.main()
