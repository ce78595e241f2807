#!/usr/bin/env python3
#
# tap-transfer-upgrade, the operator's command, on VMs shaped like
# production ones: a virtio-blk qcow2 disk the guest writes numbered,
# fsync'ed records to (acknowledged on its console), a serial console
# logged to a file, QMP on a UNIX socket, a pidfile, -daemonize, shared
# RAM and a 4-queue tap-transfer NIC whose TAP the test opened and
# passed as fds=, as management software does.
#
# The VM is upgraded from this QEMU (QEMU_TEST_QEMU_BINARY) to
# TAP_TRANSFER_QEMU_NEW (another version; this one again when unset) and
# rolled back, both with the command, under a ping flood; then three
# small VMs at once with --parallel 2; then the failures, each of which
# must leave the VM running on its QEMU with its paths untouched and
# nothing left over.  The command is TAP_TRANSFER_UPGRADE (tools/
# tap-transfer-upgrade, set by tap-transfer's scripts/pipeline/
# run-functional.sh); the guest TAP_TRANSFER_GUEST.  Each test makes a
# network namespace of its own with a bridge (10.0.0.1/24).
#
# This work is licensed under the terms of the GNU GPL, version 2 or
# later.  See the COPYING file in the top-level directory.

import json
import os
import signal
import subprocess
import threading
import time

from qemu_test import QemuSystemTest
from tap_transfer_host import GUEST_READY, alive, same_open_file, tun_fds
from tap_transfer_lab import PPS, open_tap_in_netns
from tap_transfer_upgrade_lab import UpgradeLabTest, Vm, upgrade_processes


class TapTransferUpgrade(UpgradeLabTest):

    def check_upgraded(self, vm, report, to, ifindex, links, dups):
        """After the command: the VM runs on @to's QEMU, at the same
        paths, on the same TAP."""
        new_pid = vm.read_pid()
        self.assertEqual(new_pid, report['new_pid'],
                         'the pidfile does not hold the new QEMU\'s pid')
        self.assertNotEqual(new_pid, vm.pid)
        self.assertFalse(alive(vm.pid), 'the old QEMU is still there')
        self.assertTrue(alive(new_pid), 'the new QEMU is not running')
        vm.pid = new_pid
        v = vm.qmp('query-version')['qemu']
        self.assertEqual(f"{v['major']}.{v['minor']}.{v['micro']}",
                         self.version_of(to),
                         'the QMP path does not answer from the new QEMU')
        self.assertEqual(vm.qmp('query-status')['status'], 'running')
        self.assertEqual(report['queues'], vm.queues)
        self.assertTrue(report['same_tap_kcmp'])
        self.assertTrue(report['same_ifindex'])
        fds = tun_fds(new_pid)
        self.assertEqual(len(fds), vm.queues, 'TAP fds of the new QEMU')
        for fd in fds:
            self.assertTrue(any(same_open_file(new_pid, fd, os.getpid(), d)
                                for d in dups),
                            f'fd {fd} of the new QEMU is not the TAP the '
                            'test opened (kcmp)')
        self.assertEqual(self.ifindex(vm.ifname), ifindex)
        self.assertEqual(self.links(), links, 'links came or went')
        self.assert_no_leftover([vm])
        self.assertEqual([f for f in os.listdir(vm.dir)
                          if '.tt-upgrade-' in f], [])

    # the tests

    def test_upgrade_and_rollback(self):
        """A production-shaped VM (disk records, console log, QMP socket,
        pidfile, -daemonize, shared RAM, 4-queue TAP opened by the test)
        upgraded and rolled back under a ping flood: every acked record
        on disk, qemu-img check clean, no ping lost, the same TAP, the
        same paths answering from the new QEMU."""
        queues = 4
        fds = open_tap_in_netns(self.ns, 'ttu1', queues)
        self.own_fds.extend(fds)
        # the test keeps its own copies, for kcmp against the QEMUs';
        # a dup is the same open file, the same TAP queue
        dups = [os.dup(fd) for fd in fds]
        self.own_fds.extend(dups)
        self.nsrun('ip', 'link', 'set', 'ttu1', 'master', 'br0', 'up')
        vm = Vm(self, 'vm1', self.old, 1, queues=queues, disk=True,
                tap_fds=fds)
        for fd in fds:
            self.own_fds.remove(fd)
            os.close(fd)
        vm.wait_console(GUEST_READY)
        self.wait_ping(vm.addr, timeout=90)
        vm.wait_acks(10)
        ifindex, links = self.ifindex('ttu1'), self.links()
        extra_flows = ('10.0.0.11', '10.0.0.12', '10.0.0.13')
        flows = [self.start_ping(int(PPS * 9), addr=vm.addr)]
        for source in extra_flows:
            self.nsrun('ip', 'addr', 'add', f'{source}/24', 'dev', 'br0')
            flows.append(self.start_ping(450, 50, source, vm.addr))
        time.sleep(1.5)
        acked_before = len(vm.acked())
        up = self.upgrade(vm.qmp_path, self.new)
        self.check_upgraded(vm, up, self.new, ifindex, links, dups)
        time.sleep(1.5)
        down = self.upgrade(vm.qmp_path, self.old)
        self.check_upgraded(vm, down, self.old, ifindex, links, dups)
        self.assert_flows_lossless(flows)
        # records go on after the rollback, into the same console log
        acked_after = len(vm.acked())
        vm.wait_acks(acked_after + 10)
        vm.quit()
        text = vm.console_text()
        self.assertTrue(text.startswith('') and GUEST_READY in text,
                        'the console log lost its start')
        acked = self.assert_records_at_rest(vm, vm.disk)
        self.assertGreater(acked_before, 0)
        self.assertGreater(acked, acked_after)
        for name, r in (('upgrade', up), ('rollback', down)):
            self.note(f"{name}: QEMU {r['old_version']} -> "
                      f"{r['new_version']}, mode {r['mode']}, downtime "
                      f"{r['downtime_ms']} ms, migration {r['total_ms']} ms, "
                      f"command {r['command_ms']} ms, {r['queues']} queues")
        self.note(f'records: {acked} acked ({acked_before} before the '
                  f'upgrade, {acked_after} after the rollback), all on '
                  'disk; qemu-img check clean')

    def test_fleet_parallel(self):
        """Three small VMs upgraded by one command, --parallel 2, each
        under its own ping (one of them not daemonized: its new QEMU is
        detached): all upgraded, none loses a ping."""
        # the third does not daemonize: the command detaches its new QEMU
        vms = [Vm(self, f'fleet{i}', self.old, i + 1, daemonize=i < 2)
               for i in range(3)]
        for vm in vms:
            vm.wait_console(GUEST_READY)
            self.wait_ping(vm.addr, timeout=90)
        pings = [self.start_ping(1000, 100, addr=vm.addr) for vm in vms]
        time.sleep(1)
        report = self.upgrade(os.path.join(self.base, 'fleet*', 'qmp.sock'),
                              self.new, '--parallel', '2')
        self.assertEqual(report['summary']['upgraded'], 3, report)
        self.assertEqual(report['summary']['failed'], 0)
        for vm, p in zip(vms, pings):
            r = self.ping_result(p)
            self.assertEqual(r['lost'], 0, f'{vm.name}: pings lost: '
                             f"{r['missing'][:20]}")
            vm.pid = vm.read_pid()
            v = vm.qmp('query-version')['qemu']
            self.assertEqual(f"{v['major']}.{v['minor']}.{v['micro']}",
                             self.version_of(self.new))
            # daemonized or detached: a session of its own, outliving
            # the command
            self.assertNotEqual(os.getsid(vm.pid), os.getsid(0),
                                f'{vm.name}: the new QEMU is not detached')
        # the one that did not daemonize did not start to now
        with open(f'/proc/{vms[2].pid}/cmdline', 'rb') as f:
            self.assertNotIn(b'-daemonize', f.read())
        self.assertIsNotNone(vms[2].proc.poll(),
                             'the old QEMU of fleet2 is still running')
        for r in report['reports']:
            self.note(f"{r['qmp']}: downtime {r['downtime_ms']} ms, command "
                      f"{r['command_ms']} ms")
        self.note(f"3 VMs, --parallel 2: {report['summary']['seconds']} s")
        self.assert_no_leftover(vms)

    def test_memfd_modes(self):
        """memfd RAM: cpr-transfer for the upgrade (the newer QEMU loads
        the older's cpr state), RAM copied for the rollback (10.0 cannot
        load 10.2's), as the command chooses them; --mode overrides."""
        vm = Vm(self, 'memfd', self.old, 1, shared_ram=False, boot=False,
                memfd=True)
        same = self.version_of(self.new) == self.version_of(self.old)
        up = self.upgrade(vm.qmp_path, self.new)
        self.assertEqual(up['mode'], 'cpr-transfer')
        self.assertEqual(vm.read_pid(), up['new_pid'])
        vm.pid = up['new_pid']
        down = self.upgrade(vm.qmp_path, self.old)
        self.assertEqual(down['mode'], 'cpr-transfer' if same else 'copy')
        vm.pid = down['new_pid']
        forced = self.upgrade(vm.qmp_path, self.new, '--mode', 'copy')
        self.assertEqual(forced['mode'], 'copy')
        vm.pid = forced['new_pid']
        self.assertEqual(vm.qmp('query-status')['status'], 'running')
        self.assert_no_leftover([vm])
        for name, r in (('upgrade', up), ('rollback', down),
                        ('--mode copy', forced)):
            self.note(f"memfd {name}: {r['old_version']} -> "
                      f"{r['new_version']}, {r['mode']}, downtime "
                      f"{r['downtime_ms']} ms, command {r['command_ms']} ms")

    # failures: the VM stays on its QEMU, untouched

    def assert_untouched(self, vm, before, addr=None):
        self.assertTrue(alive(vm.pid), 'the source QEMU is gone')
        self.assertEqual(vm.snapshot(), before)
        self.assertEqual(vm.qmp('query-status')['status'], 'running')
        params = vm.qmp('query-migrate-parameters')
        self.assertFalse(params.get('backend-transfer'))
        self.assert_no_leftover([vm])
        if addr:
            r = self.ping_result(self.start_ping(100, 100, addr=addr))
            self.assertEqual(r['lost'], 0,
                             'the guest does not answer through the source')

    def run_and_strike(self, vm, strike, *extra):
        """Run the command; once it says it migrates, @strike(proc)."""
        proc = subprocess.Popen([self.tool, '--qmp', vm.qmp_path, '--to',
                                 self.new, '--json', '--mode', 'copy',
                                 '--max-bandwidth', '4', *extra],
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=self.tool_env())
        lines, migrating = [], threading.Event()

        def read_stderr():
            for line in proc.stderr:
                lines.append(line)
                if 'migrating (' in line:
                    migrating.set()
        t = threading.Thread(target=read_stderr, daemon=True)
        t.start()
        self.assertTrue(migrating.wait(60), 'the command never migrated: '
                        f"{''.join(lines)}")
        time.sleep(0.3)
        strike(proc)
        out, _ = proc.communicate(timeout=120)
        t.join(10)
        report = json.loads(out)
        self.log.info(''.join(lines))
        return proc.returncode, report

    def test_failures_leave_the_vm_alone(self):
        """A target that does not start, a destination killed during
        the load, SIGINT to the command mid-migration, a NIC added at
        run time, a plain -netdev tap, a machine type the target lacks:
        each time the VM runs on its QEMU as before, paths untouched,
        nothing left over."""
        vm = Vm(self, 'vm1', self.old, 1, shared_ram=False)
        vm.wait_console(GUEST_READY)
        self.wait_ping(vm.addr, timeout=90)
        before = vm.snapshot()

        # a target binary that fails to start
        fake = os.path.join(self.base, 'broken-qemu')
        with open(fake, 'w') as f:
            f.write('#!/bin/sh\n'
                    'if [ "$1" = --version ] || [ "$*" = "-machine help" ]; '
                    f'then exec {self.new} "$@"; fi\n'
                    'echo "broken-qemu: cannot start" >&2\nexit 1\n')
        os.chmod(fake, 0o755)
        r = self.upgrade(vm.qmp_path, fake, expect_ok=False)
        self.note(f"broken target: exit {r['returncode']}: {r['error']}")
        self.assertEqual(r['returncode'], 1)
        self.assertIn('cannot start', r['error'])
        self.assert_untouched(vm, before, vm.addr)

        # the destination killed during the load
        def kill_destination(_proc):
            pids = upgrade_processes(self.base)
            self.assertEqual(len(pids), 1, 'no destination QEMU to kill')
            os.kill(pids[0], signal.SIGKILL)
        rc, r = self.run_and_strike(vm, kill_destination)
        self.note(f"destination killed: exit {rc}: {r['error']}")
        self.assertEqual(rc, 1)
        self.assert_untouched(vm, before, vm.addr)

        # SIGINT to the command mid-migration
        rc, r = self.run_and_strike(vm, lambda p: p.send_signal(
            signal.SIGINT))
        self.note(f"SIGINT: exit {rc}: {r['error']}")
        self.assertEqual(rc, 1)
        self.assertIn('SIGINT', r['error'])
        self.assert_untouched(vm, before, vm.addr)

        # a NIC added at run time, not on the command line
        vm.qmp('netdev_add', type='tap-transfer', id='hot0',
               ifname='ttuhot0', script='no', downscript='no')
        vm.qmp('device_add', driver='virtio-net-pci', netdev='hot0',
               id='hotnic0', mac='52:54:00:12:35:01')
        before = vm.snapshot()
        r = self.upgrade(vm.qmp_path, self.new, expect_ok=False)
        self.note(f"hot-added NIC: exit {r['returncode']}: {r['error']}")
        self.assertEqual(r['returncode'], 2)
        self.assertIn('hotnic0', r['error'])
        self.assertIn('--extra-args', r['error'])
        self.assert_untouched(vm, before, vm.addr)
        # ... which --extra-args brings along
        r = self.upgrade(vm.qmp_path, self.new, '--dry-run', '--extra-args',
                         '-netdev tap-transfer,id=hot0,ifname=ttuhot0,'
                         'script=no,downscript=no -device virtio-net-pci,'
                         'netdev=hot0,id=hotnic0,mac=52:54:00:12:35:01')
        self.assertTrue(r['ok'], r)

        # an option it cannot hand over: a plain -netdev tap
        plain = Vm(self, 'plain', self.old, 9, shared_ram=False, boot=False,
                   extra=['-netdev', 'tap,id=p0,ifname=ttuplain,script=no,'
                          'downscript=no',
                          '-device', 'e1000,netdev=p0'])
        before = plain.snapshot()
        r = self.upgrade(plain.qmp_path, self.new, expect_ok=False)
        self.note(f"plain tap: exit {r['returncode']}: {r['error']}")
        self.assertEqual(r['returncode'], 2)
        self.assertIn('-netdev tap', r['error'])
        self.assertIn('--onboard', r['error'])
        self.assert_untouched(plain, before)

        # a machine type the target lacks: a VM on the newer QEMU's
        # newest machine type cannot go back to the older QEMU
        if self.version_of(self.new) == self.version_of(self.old):
            self.note('machine type missing: skipped, both QEMUs are '
                      f'{self.version_of(self.old)}')
            return
        newest = Vm(self, 'newest', self.new, 10, shared_ram=False,
                    boot=False)
        before = newest.snapshot()
        r = self.upgrade(newest.qmp_path, self.old, expect_ok=False)
        self.note(f"machine type: exit {r['returncode']}: {r['error']}")
        self.assertEqual(r['returncode'], 2)
        self.assertIn('machine type', r['error'])
        self.assert_untouched(newest, before)


if __name__ == '__main__':
    QemuSystemTest.main()
