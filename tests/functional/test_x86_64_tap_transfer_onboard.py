#!/usr/bin/env python3
#
# Onboarding: a VM started on Debian's stock QEMU with -netdev tap (7.2
# from bookworm, 10.0.x from bookworm-backports, unpacked by
# scripts/pipeline/fetch-stock-qemu.sh) is moved onto this project's
# QEMU and -netdev tap-transfer by `tap-transfer-upgrade --onboard`: a
# new TAP like the old one, an ordinary migration (the lossy hop), and
# from then on upgrades that hand the TAP over with zero loss.
#
# The VM is shaped like a production one: daemonized, QMP on a UNIX
# socket, a pidfile, its serial console logged to a file, a qcow2 disk on
# which the guest writes numbered fsync'ed records, a TAP made by its
# ifup script on a bridge that also has an uplink port (a veth pair), in
# a network namespace of the test's own with 10.0.0.0/24.  Everything is
# removed afterwards, also on failure.
#
# Environment (scripts/pipeline/run-onboard-test.sh sets it):
#   TAP_TRANSFER_GUEST        the guest's kernel and initrd
#   TAP_TRANSFER_UPGRADE      tools/tap-transfer-upgrade
#   TAP_TRANSFER_QEMU_10_2    this project's 10.2 binary
#   TAP_TRANSFER_STOCK_7_2, TAP_TRANSFER_STOCK_10_0
#                             a stock binary, or "unavailable: WHY"
#   TAP_TRANSFER_STOCK_L_7_2, TAP_TRANSFER_STOCK_L_10_0
#                             its -L options (firmware)
# QEMU_TEST_QEMU_BINARY is this project's 10.0 build.  What is missing
# makes the test skip, saying so.
#
# This work is licensed under the terms of the GNU GPL, version 2 or
# later.  See the COPYING file in the top-level directory.
#
# SPDX-License-Identifier: GPL-2.0-or-later

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

from qemu_test import QemuSystemTest
from tap_transfer_host import (GUEST_ADDR, GUEST_MAC, GUEST_READY, alive,
                               describe_lost)
from tap_transfer_lab import PPS, TapLabTest, open_tap_in_netns


RECORDS = 2000


class TapTransferOnboard(TapLabTest):

    def setUp(self):
        super().setUp()
        self.require_lab('ip', 'nsenter', 'ping', 'bridge', 'tc')
        self.tool = os.environ.get('TAP_TRANSFER_UPGRADE')
        if not self.tool or not os.path.isfile(self.tool):
            self.skipTest('TAP_TRANSFER_UPGRADE names no '
                          'tools/tap-transfer-upgrade')
        self.require_netdev('tap-transfer')
        self.qemu_img = os.environ.get('QEMU_TEST_QEMU_IMG')
        if not self.qemu_img or not os.path.isfile(self.qemu_img):
            self.skipTest('no qemu-img (QEMU_TEST_QEMU_IMG)')

        self.pids = set()
        self.dir = self.workdir
        self.make_lab('tt-onb', self.dir, 'mtu 1400 txqueuelen 700 up',
                      uplink=True)
        self.addCleanup(self.kill_qemus)
        self.qmp = os.path.join(self.socket_dir().name, 'qmp.sock')
        self.pidfile = os.path.join(self.dir, 'qemu.pid')
        self.console = os.path.join(self.dir, 'console.log')
        self.disk = os.path.join(self.dir, 'disk.qcow2')
        self.shm = f'/dev/shm/tap-transfer-onboard-{self.ns}'
        self.addCleanup(lambda: os.path.exists(self.shm) and
                        os.unlink(self.shm))

    # helpers

    def binary(self, var, what):
        b = os.environ.get(var, '')
        if b.startswith('unavailable'):
            self.skipTest(f'{what}: {b}')
        if not b or not os.access(b, os.X_OK):
            self.skipTest(f'{what}: {var} names no binary')
        return b

    def kill_qemus(self):
        for pid in list(self.pids) + [self.read_pid()]:
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)

    def read_pid(self):
        try:
            with open(self.pidfile) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return None

    def link(self, ifname):
        out = self.nsrun('ip', '-j', 'link', 'show', 'dev', ifname,
                         check=False)
        return json.loads(out)[0] if out.strip() else None

    # the VM

    def start_stock(self, binary, fw, queues=1, extra=(), fds=False,
                    attach=True):
        """The VM on a stock QEMU, -netdev tap with ifname= and its ifup
        script; or, @fds, on a TAP the test opened and passed as fds=,
        management style (the test closes its copies)"""
        subprocess.run([self.qemu_img, 'create', '-q', '-f', 'qcow2',
                        self.disk, '16M'], check=True)
        tap_fds = []
        netdev = f'tap,id=n0,ifname=tap0,script={self.ifup},downscript=no'
        if not attach:
            netdev = 'tap,id=n0,ifname=tap0,script=no,downscript=no'
        if queues > 1:
            netdev += f',queues={queues}'
        if fds:
            tap_fds = open_tap_in_netns(self.ns, 'tap0', queues)
            self.nsrun('ip', 'link', 'set', 'tap0', 'master', 'br0', 'mtu',
                       '1400', 'txqueuelen', '700', 'up')
            netdev = f"tap,id=n0,fds={':'.join(map(str, tap_fds))}"
        args = ['nsenter', f'--net=/run/netns/{self.ns}', binary, *fw,
                '-M', 'pc', '-accel', 'tcg', '-m', '128', '-nodefaults',
                '-display', 'none', '-name', 'onboard-vm',
                '-kernel', os.path.join(self.guest, 'vmlinuz'),
                '-initrd', os.path.join(self.guest, 'initrd.gz'),
                '-append', f'console=ttyS0 quiet tt.addr={GUEST_ADDR}/24 '
                f'tt.records={RECORDS}',
                '-drive', f'file={self.disk},if=none,id=d0,format=qcow2',
                '-device', 'virtio-blk-pci,drive=d0,id=blk0',
                '-netdev', netdev,
                '-device', f'virtio-net-pci,netdev=n0,mac={GUEST_MAC},'
                f"id=nic0{f',mq=on,vectors={2 * queues + 2}' if queues > 1 else ''}",
                # Linux uses as many queue pairs as it has CPUs
                '-smp', str(queues),
                '-serial', f'file:{self.console}',
                '-qmp', f'unix:{self.qmp},server=on,wait=off',
                '-pidfile', self.pidfile, '-daemonize',
                # shared RAM, as production-shaped VMs here have (the
                # command picks x-ignore-shared): with RAM copied, stock
                # 7.2 under TCG with 2 vCPUs corrupts the guest's memory
                # in some migrations, onboarding or not (see
                # docs/tools/tap-transfer-onboarding.rst)
                '-object', 'memory-backend-file,id=ram0,share=on,'
                f'mem-path={self.shm},size=128M',
                '-machine', 'memory-backend=ram0', *extra]
        try:
            r = subprocess.run(args, capture_output=True, text=True,
                               timeout=60, pass_fds=tap_fds)
        finally:
            for fd in tap_fds:
                os.close(fd)
        self.assertEqual(r.returncode, 0, f'stock QEMU: {r.stderr.strip()}')
        self.pids.add(self.read_pid())
        self.wait_console(GUEST_READY)
        if attach:
            self.wait_ping()

    def wait_console(self, text, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(self.console, errors='replace') as f:
                    if text in f.read():
                        return
            except FileNotFoundError:
                pass
            time.sleep(0.1)
        self.fail(f'no "{text}" on the console')

    def stop_ping(self, p):
        """Stop the flood; its ping_result(), stopped: the lost pings are
        the unanswered ones that a later one was answered after (those
        in flight at the end do not count), up to 'last'.  The guest
        must have answered."""
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        r = self.ping_result(p, 30, stopped=True)
        if not r['replies']:
            self.dump_network()
            p.out.seek(0)
            self.fail('the guest stopped answering (network state in the '
                      f'log): {p.out.read()[-300:]}')
        return r

    def dump_network(self):
        """What the log needs to explain a guest that stopped answering:
        the bridge's forwarding entries, the links and their counters,
        the TAP qdiscs, the QEMU's view, the end of the console"""
        for cmd in (('bridge', 'fdb', 'show', 'br', 'br0'),
                    ('ip', '-s', '-d', 'link'), ('tc', '-s', 'qdisc'),
                    ('ip', 'neigh')):
            self.log.info('%s:\n%s', ' '.join(cmd),
                          self.nsrun(*cmd, check=False))
        try:
            for cmd in ('info network', 'info status'):
                out, = self.query(('human-monitor-command',
                                   {'command-line': cmd}))
                self.log.info('%s:\n%s', cmd, out)
        except Exception as e:      # pylint: disable=broad-except
            self.log.info('QMP: %s', e)
        with open(self.console, errors='replace') as f:
            self.log.info('console (end):\n%s', f.read()[-2000:])

    def upgrade(self, to, *extra, ok=True, env=None):
        """Run the command on the VM; its JSON report (and exit status
        when a failure is expected).  @env: more environment"""
        cmd = [sys.executable, self.tool, '--qmp', self.qmp, '--to', to,
               '--json', *extra]
        self.log.info('running %s', shlex.join(cmd))
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, **(env or {})))
        self.log.info('stderr: %s', r.stderr)
        try:
            report = json.loads(r.stdout)
        except ValueError:
            self.fail(f'no JSON report (exit {r.returncode}): '
                      f'{r.stderr[-500:]}')
        if not ok:
            return report, r.returncode
        self.assertTrue(report.get('ok'), f"failed: {report.get('error')}")
        self.assertEqual(r.returncode, 0)
        self.pids.add(report.get('new_pid'))
        return report

    def hop(self, to, *extra):
        """One upgrade under a ping flood: (report, ping result)"""
        p = self.start_ping(PPS * 60)
        time.sleep(1.5)
        report = self.upgrade(to, *extra)
        time.sleep(1.5)
        return report, self.stop_ping(p)

    def query(self, *cmds):
        """Commands on the VM's QMP socket, with QEMU's own QMP library"""
        from qemu.qmp.legacy import QEMUMonitorProtocol
        q = QEMUMonitorProtocol(self.qmp)
        q.connect()
        try:
            return [q.cmd(name, **args) for name, args in cmds]
        finally:
            try:
                q.close()
            except EOFError:
                # after 'quit' QEMU may have gone first
                pass

    def check_paths(self, report, version):
        """The QMP path answers from the new QEMU, which the pidfile
        names; the console log was appended to"""
        v, = self.query(('query-version', {}))
        self.assertEqual(f"{v['qemu']['major']}.{v['qemu']['minor']}",
                         version)
        self.assertEqual(self.read_pid(), report['new_pid'])
        self.assertFalse(alive(report['old_pid']), 'the source runs')
        with open(self.console, errors='replace') as f:
            self.assertIn(GUEST_READY, f.read(),
                          'the console log lost its start')

    def check_disk(self):
        """Quit the VM; every record the guest acknowledged is on the
        disk, and qemu-img check finds nothing wrong"""
        pid = self.read_pid()
        self.query(('quit', {}))
        deadline = time.monotonic() + 30
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(self.console, errors='replace') as f:
            acked = {int(n) for n in re.findall(r'tt-record (\d+) acked',
                                                f.read())}
        self.assertTrue(acked, 'the guest acknowledged no record')
        raw = os.path.join(self.dir, 'disk.raw')
        subprocess.run([self.qemu_img, 'convert', '-O', 'raw', self.disk,
                        raw], check=True)
        with open(raw, 'rb') as f:
            data = f.read()
        bad = [n for n in sorted(acked)
               if data[n * 512:n * 512 + 14] != b'TTREC %08d' % n]
        self.assertFalse(bad, f'acknowledged records not on disk: {bad[:10]}')
        r = subprocess.run([self.qemu_img, 'check', self.disk],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, f'qemu-img check: {r.stdout}')
        self.note(f'{len(acked)} records acknowledged, all on disk, '
                  'qemu-img check clean')

    def onboard(self, to, keep_name, queues=1):
        old = self.link('tap0')
        extra = ['--onboard'] + (['--keep-name'] if keep_name else [])
        report, r = self.hop(to, *extra)
        ob = report['onboard']
        tap = ob['taps']['n0']
        self.note(f"onboarding hop {report['old_version']} -> "
                  f"{report['new_version']}: downtime "
                  f"{report['downtime_ms']} ms, {r['last']} pings at "
                  f"{PPS}/s, lost {describe_lost(r)}, longest reply gap "
                  f"{r['max_gap_ms']:.1f} ms; frames lost on the old "
                  f"TAP (counters) {ob['old_tap_frames_lost']}; "
                  f"{tap['old_ifname']} -> {tap['new_ifname']}"
                  f"{', rename: link down %s ms' % tap['rename_link_down_ms'] if tap.get('renamed') else ''}")
        self.assertTrue(ob['lossy_hop'])
        new = self.link(tap['new_ifname'])
        self.assertIsNotNone(new, 'the new TAP is gone')
        self.assertNotEqual(new['ifindex'], old['ifindex'])
        self.assertEqual(new.get('master'), 'br0')
        self.assertEqual(new['mtu'], old['mtu'])
        self.assertEqual(new['txqlen'], old['txqlen'])
        self.assertIn('UP', new['flags'])
        self.assertEqual(tap['queues'], queues)
        self.assertEqual(report['queues'], queues)
        self.assertIsNone(self.link(tap['old_ifname'])
                          if not keep_name else None)
        if keep_name:
            self.assertTrue(tap.get('renamed'), tap.get('rename_error'))
            self.assertEqual(tap['new_ifname'], 'tap0')
        return report, r

    # the tests

    def next_hop(self, to, version):
        """An upgrade with the TAP handed over: 0 pings lost"""
        links = self.links()
        report, r = self.hop(to)
        self.note(f"next hop {report['old_version']} -> "
                  f"{report['new_version']} (handover): downtime "
                  f"{report['downtime_ms']} ms, {r['last']} pings, lost "
                  f"{describe_lost(r)}, longest reply gap "
                  f"{r['max_gap_ms']:.1f} ms")
        self.assertTrue(report['same_tap_kcmp'])
        self.assertTrue(report['same_ifindex'])
        self.assertEqual(r['missing'], [], 'pings lost on the handover')
        self.assertEqual(self.links(), links, 'links came or went')
        self.check_paths(report, version)

    def test_onboard_7_2_then_upgrade_10_2(self):
        """Stock 7.2 (machine pc = pc-i440fx-7.2) onboarded onto this
        project's 10.0; then upgraded to 10.2 with the TAP handed over:
        0 pings lost on that hop.  Disk records, console log, QMP path
        and pidfile carried through both."""
        stock = self.binary('TAP_TRANSFER_STOCK_7_2', 'stock QEMU 7.2')
        fw = shlex.split(os.environ.get('TAP_TRANSFER_STOCK_L_7_2', ''))
        q102 = self.binary('TAP_TRANSFER_QEMU_10_2', 'QEMU 10.2 build')
        self.start_stock(stock, fw)
        report, _ = self.onboard(self.qemu_bin, keep_name=False)
        self.assertEqual(report['machine'], 'pc-i440fx-7.2')
        self.check_paths(report, '10.0')
        self.next_hop(q102, '10.2')
        self.wait_console('tt-record 300 acked')
        self.check_disk()

    def test_onboard_keep_name(self):
        """Stock 7.2 on a 2-queue TAP the test opened and passed as
        fds=, onboarded onto 10.0 with --keep-name: the new TAP takes the
        old name once the source is gone (its link goes down for the
        rename: the cost is measured under the flood); then a handover
        to 10.2 on the renamed TAP."""
        stock = self.binary('TAP_TRANSFER_STOCK_7_2', 'stock QEMU 7.2')
        fw = shlex.split(os.environ.get('TAP_TRANSFER_STOCK_L_7_2', ''))
        q102 = self.binary('TAP_TRANSFER_QEMU_10_2', 'QEMU 10.2 build')
        self.start_stock(stock, fw, queues=2, fds=True)
        _, r = self.onboard(self.qemu_bin, keep_name=True, queues=2)
        ifname, = self.query(('qom-get', {'path': '/netdevs/n0',
                                          'property': 'ifname'}))
        if ifname != 'tap0':
            # net/tap-transfer must name the TAP as the kernel does now,
            # or the destination refuses the handover on the old name
            self.skipTest(f'the tap-transfer module still calls the '
                          f'renamed TAP {ifname}: a handover after the '
                          'rename is refused on the name (module fix '
                          'pending)')
        self.next_hop(q102, '10.2')

    def test_onboard_stock_10_0_to_10_2(self):
        """Stock 10.0.x (bookworm-backports), a 4-queue TAP, onboarded
        onto this project's 10.2 (4 queues on the new TAP); the new TAP
        keeps its new name."""
        stock = self.binary('TAP_TRANSFER_STOCK_10_0', 'stock QEMU 10.0')
        fw = shlex.split(os.environ.get('TAP_TRANSFER_STOCK_L_10_0', ''))
        q102 = self.binary('TAP_TRANSFER_QEMU_10_2', 'QEMU 10.2 build')
        self.start_stock(stock, fw, queues=4)
        report, _ = self.onboard(q102, keep_name=False, queues=4)
        self.assertEqual(report['machine'], 'pc-i440fx-10.0')
        self.check_paths(report, '10.2')
        self.wait_ping()
        self.check_disk()

    def test_onboard_failure_leaves_the_vm_alone(self):
        """A destination that lacks a device the source has is refused
        before anything moves (the live state differs); an onboarding
        that fails after the switchover (the command's fault hook at its
        verify phase) rolls back: the bridge forwards to the old TAP
        again, the new TAP is gone, and the VM runs on the stock QEMU
        and its old TAP, answering."""
        stock = self.binary('TAP_TRANSFER_STOCK_7_2', 'stock QEMU 7.2')
        fw = shlex.split(os.environ.get('TAP_TRANSFER_STOCK_L_7_2', ''))
        rng = 'virtio-rng-pci,id=rng0'
        self.start_stock(stock, fw, extra=('-device', rng))
        # the new QEMU, without that device: its load fails on the
        # source's rng0 section, after the source paused for switchover
        wrapper = os.path.join(self.dir, 'qemu-without-rng')
        with open(wrapper, 'w') as f:
            f.write(f'#!{sys.executable}\n'
                    'import os, sys\n'
                    'a = sys.argv[1:]\n'
                    f'if {rng!r} in a:\n'
                    f'    i = a.index({rng!r})\n'
                    '    del a[i - 1:i + 1]\n'
                    f'os.execv({self.qemu_bin!r}, [{self.qemu_bin!r}] + a)\n')
        os.chmod(wrapper, 0o755)
        old, links = self.link('tap0'), self.links()
        pid = self.read_pid()
        p = self.start_ping(PPS * 60)
        time.sleep(1.5)
        report, rc = self.upgrade(wrapper, '--onboard', ok=False)
        self.note(f"refused onboarding: exit {rc}: {report.get('error')}")
        self.assertEqual(rc, 2)
        self.assertIn('rng0', report['error'])
        self.assertEqual(self.links(), links, 'links came or went')
        # the VM migrated, the bridge's entries steered: then it fails
        report, rc = self.upgrade(self.qemu_bin, '--onboard', ok=False,
                                  env={'TAP_TRANSFER_UPGRADE_FAULT':
                                       'verify'})
        self.note(f"failed onboarding: exit {rc}: {report.get('error')}")
        self.assertEqual(rc, 1)
        self.assertFalse(report['ok'])
        self.assertTrue(alive(pid), 'the stock QEMU is gone')
        self.assertEqual(self.read_pid(), pid)
        self.assertEqual(self.links(), links, 'links came or went')
        self.assertEqual(self.link('tap0')['ifindex'], old['ifindex'])
        st, = self.query(('query-status', {}))
        self.assertEqual(st['status'], 'running')
        fdb = self.nsrun('bridge', 'fdb', 'show', 'br', 'br0')
        self.assertIn(f'{GUEST_MAC} dev tap0 master br0', fdb)
        r = self.stop_ping(p)
        self.note(f"{r['last']} pings, lost {describe_lost(r)} while the "
                  'onboarding failed')
        # after the failure, a flood of its own: counted in pings, not
        # seconds, so that a loaded host that paces ping slower than
        # PPS does not move the failure's losses into it
        p = self.start_ping(PPS)
        p.wait(60)
        r = self.stop_ping(p)
        self.assertEqual(r['missing'], [], 'the guest does not answer on the '
                         'source after the failed onboarding')

    def test_onboard_refusals(self):
        """What the command refuses, up front, in one line, exit status
        2, with nothing made: a plain tap without --onboard, --keep-name
        without --onboard, and a TAP on no bridge (routed: the command
        cannot see how to wire a new one)."""
        stock = self.binary('TAP_TRANSFER_STOCK_7_2', 'stock QEMU 7.2')
        fw = shlex.split(os.environ.get('TAP_TRANSFER_STOCK_L_7_2', ''))
        self.start_stock(stock, fw, attach=False)
        links = self.links()
        pid = self.read_pid()
        for extra, want in (((), 'use --onboard'),
                            (('--keep-name',), 'use --onboard'),
                            (('--onboard',), 'tap0 has no master')):
            report, rc = self.upgrade(self.qemu_bin, *extra, ok=False)
            self.note(f"{' '.join(extra) or '(plain)'}: exit {rc}: "
                      f"{report.get('error')}")
            self.assertEqual(rc, 2)
            self.assertEqual(report.get('status'), 'refused')
            self.assertIn(want, report.get('error', ''))
            self.assertEqual(self.links(), links, 'links came or went')
            self.assertTrue(alive(pid))
            self.assertEqual(self.read_pid(), pid)


if __name__ == '__main__':
    QemuSystemTest.main()
