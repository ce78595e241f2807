#!/usr/bin/env python3
#
# tap-transfer: local migration of a Linux guest that hands the very same
# TAP device (its file descriptors) over to the destination QEMU, under a
# ping flood.
#
# Each test makes a network namespace of its own with a bridge
# (10.0.0.1/24); QEMU runs in it and its ifup script attaches the TAP it
# creates to the bridge.  Source and destination start with -S and are
# let run with 'cont'; the migration goes over a UNIX socket with the
# backend-transfer parameter on (one test instead opens the TAP itself
# and migrates over fd: channels, as libvirt does).  The guest (a
# kernel and a busybox initramfs built by tap-transfer's
# scripts/lab/guest/build-guest.sh) is
# found through TAP_TRANSFER_GUEST; without it, or without root, the
# tests skip and say why.
#
# This work is licensed under the terms of the GNU GPL, version 2 or
# later.  See the COPYING file in the top-level directory.
#
# SPDX-License-Identifier: GPL-2.0-or-later

import os
import socket
import time

from qemu.machine import QEMUMachine
from qemu_test import QemuSystemTest, wait_for_console_pattern
from tap_transfer_host import (GUEST_ADDR, GUEST_MAC, GUEST_READY,
                               same_open_file, tun_fds)
from tap_transfer_lab import PPS, TapLabTest, open_tap_in_netns


# more flows for the multiqueue case: their hashes spread over the queues
EXTRA_SOURCES = ('10.0.0.11', '10.0.0.12', '10.0.0.13')


class TapTransfer(TapLabTest):

    MEM = 128

    # set-up: a namespace, a bridge, and everything undone afterwards

    def setUp(self):
        super().setUp()
        self.require_lab('ip', 'nsenter', 'ping')
        self.require_accelerator('tcg')
        self.require_netdev('tap-transfer')
        self.set_machine('pc')

        self.shm = None
        self.hops = 0
        self.make_lab('tt-func', self.workdir)
        self.mig_uri = f'unix:{self.socket_dir().name}/mig.sock'

    def _new_vm(self, name, *args):
        # as QemuSystemTest's, but QEMU runs in the test's namespace;
        # nsenter execs it, so the pid is QEMU's
        vm = QEMUMachine(self.qemu_bin, name=name,
                         wrapper=['nsenter', f'--net=/run/netns/{self.ns}'],
                         base_temp_dir=self.workdir,
                         log_dir=self.log_file())
        vm.add_args(*args)
        return vm

    def use_shared_ram(self):
        self.shm = f'/dev/shm/tap-transfer-func-{self.ns}'
        self.addCleanup(lambda: os.path.exists(self.shm) and
                        os.unlink(self.shm))

    # the network

    def tap_queues(self, ifname='tt0'):
        """How many queues are attached to the TAP now."""
        return len([q for q in self.nsrun('ls',
                                          f'/sys/class/net/{ifname}/queues')
                    .split() if q.startswith('tx-')])

    # guests

    def launch(self, queues=1, incoming=False, netdev=None, tap_fds=()):
        """A QEMU with the guest on -netdev tap-transfer, started with -S;
        the source is let run ('cont') and waited for on its console.
        @netdev replaces the -netdev that opens the TAP itself; @tap_fds
        go in file descriptor sets 1, 2, ... (-add-fd), and once QEMU
        runs, the test's copies are closed and the sets removed, as
        libvirt does."""
        name = f'dst{self.hops}' if incoming else 'src'
        vm = self.get_vm(name=name)
        device = f'virtio-net-pci,netdev=n0,mac={GUEST_MAC}'
        if netdev is None:
            netdev = (f'tap-transfer,id=n0,ifname=tt0,script={self.ifup},'
                      'downscript=no')
            if queues > 1:
                netdev += f',queues={queues}'
        for i, fd in enumerate(tap_fds):
            vm.add_fd(fd, i + 1, f'tap-queue-{i}')
        if queues > 1:
            device += f',mq=on,vectors={2 * queues + 2}'
            # Linux uses as many queue pairs as it has CPUs
            vm.add_args('-smp', str(queues))
        vm.add_args('-accel', 'tcg', '-m', str(self.MEM), '-nodefaults',
                    '-S',
                    '-kernel', os.path.join(self.guest, 'vmlinuz'),
                    '-initrd', os.path.join(self.guest, 'initrd.gz'),
                    '-append',
                    f'console=ttyS0 quiet tt.addr={GUEST_ADDR}/24',
                    '-netdev', netdev, '-device', device)
        if self.shm:
            vm.add_args('-object', 'memory-backend-file,id=ram0,share=on,'
                        f'mem-path={self.shm},size={self.MEM}M',
                        '-machine', 'memory-backend=ram0')
        if incoming:
            vm.add_args('-incoming', 'defer')
        vm.set_console()
        vm.launch()
        for i, fd in enumerate(tap_fds):
            self.own_fds.remove(fd)
            os.close(fd)
            vm.cmd('remove-fd', {'fdset-id': i + 1})
        if not incoming:
            vm.cmd('cont')
            wait_for_console_pattern(self, GUEST_READY, 'Kernel panic',
                                     vm=vm)
            self.wait_ping()
        return vm

    def fd_channel(self, src, dst, fdname='mig'):
        """The migration channel as libvirt makes it for fd: URIs: the
        two ends of a socketpair, one passed to each QEMU (getfd)."""
        ends = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for vm, end in zip((src, dst), ends):
                vm.send_fd_scm(fd=end.fileno())
                vm.cmd('getfd', fdname=fdname)
        finally:
            for end in ends:
                end.close()

    def prepare(self, src, dst, transfer=True):
        for vm in (src, dst):
            vm.cmd('migrate-set-parameters',
                   {'backend-transfer': transfer})
            if self.shm:
                vm.cmd('migrate-set-capabilities', capabilities=[
                    {'capability': 'x-ignore-shared', 'state': True}])
        dst.cmd('migrate-incoming', uri=self.mig_uri)

    def wait_migration(self, vm, states, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = vm.cmd('query-migrate')
            if info.get('status') in states:
                return info
            self.assertNotIn(info.get('status'), ('failed', 'cancelled'),
                             f"migration: {info.get('error-desc')}")
            time.sleep(0.01)
        self.fail(f'migration not {"/".join(states)} after {timeout} s')

    def migrate(self, src, queues=1, netdev=None):
        """Hand @src over to a new QEMU (also started with -S, with
        @netdev if given) and let it run; returns the destination and
        the source's statistics."""
        self.hops += 1
        dst = self.launch(queues, incoming=True, netdev=netdev)
        if self.mig_uri.startswith('fd:'):
            self.fd_channel(src, dst, self.mig_uri[3:])
        self.prepare(src, dst)
        src.cmd('migrate', uri=self.mig_uri)
        info = self.wait_migration(src, ('completed',))
        self.wait_migration(dst, ('completed',))
        # -S: the destination waits, paused, for 'cont'
        deadline = time.monotonic() + 30
        while dst.cmd('query-status')['status'] != 'paused':
            self.assertLess(time.monotonic(), deadline,
                            'the destination did not pause after loading')
            time.sleep(0.01)
        dst.cmd('cont')
        self.assertEqual(dst.cmd('query-status')['status'], 'running')
        self.assertEqual(src.cmd('query-status')['status'], 'postmigrate')
        return dst, info

    def assert_same_tap(self, src, dst, queues):
        """@dst holds the open files @src held, one per queue (kcmp)."""
        src_pid, dst_pid = src.get_pid(), dst.get_pid()
        src_fds, dst_fds = tun_fds(src_pid), tun_fds(dst_pid)
        self.assertEqual(len(src_fds), queues, 'TAP fds on the source')
        self.assertEqual(len(dst_fds), queues, 'TAP fds on the destination')
        for fd in dst_fds:
            self.assertTrue(any(same_open_file(dst_pid, fd, src_pid, s)
                                for s in src_fds),
                            f'destination fd {fd} is no fd of the source')
        for fd in src_fds:
            self.assertTrue(any(same_open_file(src_pid, fd, dst_pid, d)
                                for d in dst_fds),
                            f'source fd {fd} was not handed over')

    # the tests

    def handover_under_flood(self, queues, src_netdev=None, dst_netdev=None,
                             tap_fds=()):
        src = self.launch(queues, netdev=src_netdev, tap_fds=tap_fds)
        self.assertEqual(self.tap_queues(), queues,
                         'queues attached to the TAP')
        ifindex, links = self.ifindex('tt0'), self.links()
        flows = [self.start_ping(int(PPS * 5))]
        if queues > 1:
            for source in EXTRA_SOURCES:
                self.nsrun('ip', 'addr', 'add', f'{source}/24', 'dev', 'br0')
                flows.append(self.start_ping(250, 50, source))
        time.sleep(1.5)
        dst, info = self.migrate(src, queues, dst_netdev)
        self.assert_same_tap(src, dst, queues)
        src.shutdown()
        self.assert_flows_lossless(flows,
                                   f"downtime {info.get('downtime')} ms, ")
        self.assertEqual(self.ifindex('tt0'), ifindex,
                         'the TAP ifindex changed')
        self.assertEqual(self.links(), links, 'links came or went')
        self.assertEqual(self.tap_queues(), queues,
                         'queues attached to the TAP after the handover')

    def test_multiqueue_shared_ram_zero_loss(self):
        """4-queue TAP, shared RAM (x-ignore-shared): no ping lost, the
        same TAP and open files, no new link."""
        self.use_shared_ram()
        self.handover_under_flood(4)

    def test_management_fds_fd_migration(self):
        """Driven as libvirt drives QEMU: the test opens the 4-queue TAP
        itself, passes its fds in fd sets (-add-fd, fds=/dev/fdset/N)
        and closes its own copies at once; the destination has only
        queues=4; the migration goes over fd: channels (a socketpair,
        getfd).  No ping lost, the same TAP and open files, no new link."""
        queues = 4
        self.use_shared_ram()
        fds = open_tap_in_netns(self.ns, 'tt0', queues)
        self.own_fds.extend(fds)
        self.nsrun('ip', 'link', 'set', 'tt0', 'master', 'br0', 'up')
        ifindex, links = self.ifindex('tt0'), self.links()
        self.assertEqual(self.tap_queues(), queues, 'queues of the new TAP')
        self.mig_uri = 'fd:mig'
        fdsets = ':'.join(f'/dev/fdset/{i + 1}' for i in range(queues))
        self.handover_under_flood(
            queues, src_netdev=f'tap-transfer,id=n0,fds={fdsets}',
            dst_netdev=f'tap-transfer,id=n0,queues={queues}', tap_fds=fds)
        self.assertEqual(self.own_fds, [], 'the test kept TAP fds')
        self.assertEqual(tun_fds(os.getpid()), [],
                         'the test still has /dev/net/tun open')
        self.assertEqual(self.ifindex('tt0'), ifindex,
                         'the TAP ifindex changed')
        self.assertEqual(self.links(), links, 'links came or went')

    def test_zero_loss(self):
        """Single queue, RAM copied: no ping lost, the same TAP."""
        self.handover_under_flood(1)

    def test_ping_pong(self):
        """Three handovers in a row, each under a flood: each keeps the
        same TAP and the guest answers on the new side (zero loss is
        what the other tests assert)."""
        vm = self.launch()
        links = self.links()
        for hop in range(1, 4):
            p = self.start_ping(1000)
            time.sleep(0.5)
            dst, info = self.migrate(vm)
            self.assert_same_tap(vm, dst, 1)
            vm.shutdown()
            vm = dst
            r = self.ping_result(p)
            self.note(f"handover {hop}: downtime {info.get('downtime')} ms, "
                      f"lost {r['lost']} of {r['sent']}")
            late = [seq for seq in r['missing'] if seq > r['sent'] - 200]
            self.assertFalse(late, f'handover {hop}: the guest stopped '
                             'answering')
            self.assertEqual(self.links(), links, 'links came or went')

    def test_cancel(self):
        """A handover cancelled half-way: the destination goes, the
        source keeps its TAP fds and the guest answers through it."""
        src = self.launch()
        fds = tun_fds(src.get_pid())
        self.hops += 1
        dst = self.launch(incoming=True)
        self.prepare(src, dst)
        # slow enough to be caught while active
        src.cmd('migrate-set-parameters', {'max-bandwidth': 4 << 20})
        src.cmd('migrate', uri=self.mig_uri)
        self.wait_migration(src, ('active',))
        src.cmd('migrate_cancel')
        self.wait_migration(src, ('cancelled',))
        dst.wait(30)            # its incoming migration failed: it quits
        self.assertEqual(src.cmd('query-status')['status'], 'running')
        r = self.ping_result(self.start_ping(500))
        self.note(f"after cancel: lost {r['lost']} of {r['sent']}")
        self.assertEqual(r['lost'], 0,
                         'the guest does not answer through the source')
        self.assertEqual(tun_fds(src.get_pid()), fds, 'source fds changed')


if __name__ == '__main__':
    QemuSystemTest.main()
