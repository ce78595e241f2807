#!/usr/bin/env python3
#
# tap-transfer-upgrade fails, is interrupted or killed at each of its
# phases, on a production-shaped VM (a qcow2 disk the guest writes
# numbered, fsync'ed records to, console log, QMP socket, pidfile,
# -daemonize, shared RAM) under a ping flood, from this QEMU to
# TAP_TRANSFER_QEMU_NEW and back.  At each phase: the command's fault
# hook (TAP_TRANSFER_UPGRADE_FAULT), SIGINT, SIGTERM and SIGHUP while it
# waits there (TAP_TRANSFER_UPGRADE_STOP), and SIGKILL followed by
# --recover.  After every case exactly one QEMU runs the guest, the real
# QMP path answers `running`, the guest answers pings, no record number
# was acknowledged twice on the console (what two QEMUs running one guest
# look like), every acknowledged record is on the disk and qemu-img
# check is clean.  Before the point of no return (the destination's
# cont) the VM is on its old QEMU; from it on, on the new one.
#
# Also: two runs at once through two QMP monitors of one VM (one
# upgrades, the other refuses), and a fleet of three VMs interrupted by
# SIGINT.
#
# This work is licensed under the terms of the GNU GPL, version 2 or
# later.  See the COPYING file in the top-level directory.

import os
import signal
import time

from qemu_test import QemuSystemTest
from tap_transfer_host import GUEST_READY
from tap_transfer_upgrade_lab import UpgradeLabTest, Vm, qemu_processes

# the command's phases (docs/tools/tap-transfer-upgrade.rst), but
# onboarding's; from 'commit' on it only goes forward
PHASES = ('planned', 'destination', 'compare', 'parameters', 'migrate',
          'verify', 'commit', 'running', 'quit-source', 'paths')
NO_RETURN = PHASES.index('commit')
HOW = ('fault', 'SIGINT', 'SIGTERM', 'SIGHUP', 'SIGKILL')


class TapTransferUpgradeFaults(UpgradeLabTest):

    def disk_vm(self):
        vm = Vm(self, 'vm1', self.old, 1, disk=True)
        vm.wait_console(GUEST_READY)
        self.wait_ping(vm.addr, timeout=90)
        vm.wait_acks(5)
        return vm

    def strike(self, vm, to, phase, how):
        """One case: the command from the VM's QEMU to @to, made to fail
        at @phase, or signalled there; its report (and --recover's)"""
        forward = PHASES.index(phase) >= NO_RETURN
        if how == 'fault':
            r = self.upgrade(vm.qmp_path, to, expect_ok=False,
                             env={'TAP_TRANSFER_UPGRADE_FAULT': phase})
            self.assertIn('injected fault', r.get('error', ''), r)
            if not forward:
                self.assertEqual(r['status'], 'failed', r)
                return r, None
            self.assertEqual(r['status'], 'unfinished', r)
            rec = self.recover(vm)
            self.assertEqual(rec['status'], 'finished', rec)
            return r, rec
        proc = self.start_stopped(vm.qmp_path, to, phase)
        if how == 'SIGKILL':
            proc.kill()
            self.finish(proc)
            rec = self.recover(vm)
            self.assertEqual(rec['status'],
                             'finished' if forward else 'undone', rec)
            return None, rec
        proc.send_signal(getattr(signal, how))
        r = self.finish(proc)
        if forward:
            self.assertEqual(r['status'], 'upgraded', r)
            self.assertEqual(r.get('signals_ignored'), [how], r)
        else:
            self.assertEqual(r['status'], 'interrupted', r)
            self.assertIn(how, r['error'])
        return r, None

    def every_phase(self, origin):
        """Every case, the VM starting each on @origin"""
        vm = self.disk_vm()
        if origin != self.old:
            self.upgrade(vm.qmp_path, origin)
        flood = self.start_ping(10 ** 6, 200, addr=vm.addr)
        target = self.other(origin)
        cases, failed, records = 0, [], 0
        for phase in PHASES:
            forward = PHASES.index(phase) >= NO_RETURN
            for how in HOW:
                # every case runs; the failures are listed at the end
                cases += 1
                try:
                    self.strike(vm, target, phase, how)
                    binary = self.assert_one_qemu(vm)
                    self.assertEqual(os.path.realpath(binary),
                                     os.path.realpath(target if forward
                                                      else origin),
                                     'the VM runs on the wrong QEMU')
                    self.assert_answers(vm)
                    records = self.assert_records(vm)
                    self.assert_no_leftover([vm])
                    if forward:
                        self.upgrade(vm.qmp_path, origin)
                except AssertionError as e:
                    failed.append(f'{phase}/{how}: {e}')
                    self.note(f'FAILED {phase}/{how}: {e}')
                    self.settle(vm, origin)
        flood.send_signal(signal.SIGINT)     # ping prints its summary
        r = self.ping_result(flood)
        self.note(f'{self.version_of(origin)} -> {self.version_of(target)}: '
                  f'{cases - len(failed)} of {cases} cases ({len(PHASES)} '
                  f'phases x {", ".join(HOW)}) with the VM on exactly one '
                  f'QEMU after each; {records} records acked once each, '
                  f"all on disk; flood {r['sent']} pings at 200/s, "
                  f"{r['lost']} unanswered (longest gap "
                  f"{r['max_gap_ms']:.0f} ms)")
        self.assertEqual(failed, [])

    def settle(self, vm, origin):
        """After a failed case: recover whatever is left, and the VM
        back on @origin, so that the next case starts as the others"""
        self.recover(vm)
        try:
            binary = os.readlink(f'/proc/{vm.read_pid()}/exe')
            if os.path.realpath(binary) != os.path.realpath(origin):
                self.upgrade(vm.qmp_path, origin, expect_ok=False)
        except OSError:
            pass

    def test_every_phase_upgrade(self):
        """At each phase of an upgrade to TAP_TRANSFER_QEMU_NEW"""
        self.every_phase(self.old)

    def test_every_phase_rollback(self):
        """At each phase of a rollback from TAP_TRANSFER_QEMU_NEW"""
        if self.version_of(self.new) == self.version_of(self.old):
            self.skipTest('both QEMUs are the same version: the upgrade '
                          'case covers it')
        self.every_phase(self.new)

    def test_two_monitors(self):
        """Two runs at once through two QMP monitors of one VM: the
        second refuses and changes nothing; the first upgrades"""
        vm = Vm(self, 'twomon', self.old, 2, monitors=['mon2.sock'])
        vm.wait_console(GUEST_READY)
        self.wait_ping(vm.addr, timeout=90)
        first = self.start_stopped(vm.qmp_path, self.new, 'migrate')
        second = self.upgrade(vm.monitors[0], self.new, expect_ok=False)
        self.note(f"second run: exit {second['returncode']}: "
                  f"{second.get('error')}")
        self.assertEqual(second['returncode'], 2)
        self.assertIn('another tap-transfer-upgrade run', second['error'])
        first.send_signal(signal.SIGUSR1)
        r = self.finish(first)
        self.assertEqual(r['status'], 'upgraded', r)
        self.assertEqual(os.path.realpath(self.assert_one_qemu(vm)),
                         os.path.realpath(self.new))
        # both monitors are the new QEMU's
        self.assertEqual(vm.qmp('query-status', path=vm.monitors[0])
                         ['status'], 'running')
        self.assert_answers(vm)
        self.assert_no_leftover([vm])

    def test_fleet_interrupted(self):
        """Three VMs, one at a time; SIGINT while the second migrates:
        the first is upgraded, the second rolls back, the third is never
        tried, and the summary says so"""
        vms = [Vm(self, f'fleet{i}', self.old, 3 + i) for i in range(3)]
        for vm in vms:
            vm.wait_console(GUEST_READY)
            self.wait_ping(vm.addr, timeout=90)
        fleet = self.start_stopped(os.path.join(self.base, 'fleet*',
                                                'qmp.sock'), self.new,
                                   'migrate')
        # the first worker is let go on; the second is interrupted
        self.release_worker(vms[0])
        self.wait_stopped(fleet, vms[1])
        fleet.send_signal(signal.SIGINT)
        r = self.finish(fleet)
        s = r['summary']
        self.note(f'fleet: {s}')
        self.assertEqual(r['returncode'], 1)
        self.assertEqual(s['upgraded'], 1)
        self.assertEqual(s['failed'], 1)
        self.assertEqual(s['never_tried'], [vms[2].qmp_path])
        self.assertEqual(s['stopped'], 'SIGINT')
        status = {x['qmp']: x['status'] for x in r['reports']}
        self.assertEqual(status, {vms[0].qmp_path: 'upgraded',
                                  vms[1].qmp_path: 'interrupted'})
        for vm, qemu in zip(vms, (self.new, self.old, self.old)):
            self.assertEqual(os.path.realpath(self.assert_one_qemu(vm)),
                             os.path.realpath(qemu))
            self.assert_answers(vm)
        self.assert_no_leftover(vms)

    def worker_of(self, vm):
        """The pid of the fleet's worker for @vm"""
        mark = f'--qmp\0{vm.qmp_path}\0'
        pids = [p for p in qemu_processes(mark)
                if b'tap-transfer-upgrade' in open(f'/proc/{p}/cmdline',
                                                   'rb').read()]
        return pids[0] if pids else None

    def wait_stopped(self, fleet, vm):
        """Until the fleet's worker for @vm stopped at its phase"""
        for _ in range(1200):
            if any(vm.qmp_path in line and 'stopped at phase' in line
                   for line in fleet.lines):
                return
            self.assertIsNone(fleet.poll(), 'the fleet ended')
            time.sleep(0.1)
        self.fail(f'the worker for {vm.name} did not stop')

    def release_worker(self, vm):
        pid = self.worker_of(vm)
        self.assertIsNotNone(pid, f'no worker for {vm.name}')
        os.kill(pid, signal.SIGUSR1)


if __name__ == '__main__':
    QemuSystemTest.main()
