# What the tap-transfer functional tests share: TAPs opened in a network
# namespace as management software opens them, and the lab each test
# makes for itself (TapLabTest): a network namespace with a bridge, an
# ifup script, ping floods from the bridge.  The host side of it (the
# namespace's commands, the ping flood and its lost pings, kcmp and
# /proc) is tap_transfer_host.py, which the lab scripts share.
#
# This work is licensed under the terms of the GNU GPL, version 2 or
# later.  See the COPYING file in the top-level directory.
#
# SPDX-License-Identifier: GPL-2.0-or-later

import ctypes
import fcntl
import os
import shutil
import struct
import subprocess
import time

from qemu_test import QemuSystemTest

from tap_transfer_host import (GUEST_ADDR, PingError, bridge_setup,
                               describe_lost, in_netns, link_names,
                               netns_name, ping_command, ping_once_command,
                               ping_result, write_ifup)


PPS = 500

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454ca
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET):
        err = ctypes.get_errno()
        raise OSError(err, f'setns: {os.strerror(err)}')


def open_tap_in_netns(ns, ifname, queues):
    """Create the multiqueue TAP @ifname in namespace @ns the way
    management software does: open /dev/net/tun once per queue and
    TUNSETIFF, with this thread in @ns for the while (the TAP is made in
    the namespace of whoever creates it).  Returns the fds, O_RDWR."""
    flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE
    ifr = struct.pack('16sH22x', ifname.encode(), flags)
    home = os.open('/proc/thread-self/ns/net', os.O_RDONLY)
    fds = []
    try:
        there = os.open(f'/run/netns/{ns}', os.O_RDONLY)
        try:
            _setns(there)
        finally:
            os.close(there)
        try:
            for _ in range(queues):
                fds.append(os.open('/dev/net/tun', os.O_RDWR))
                fcntl.ioctl(fds[-1], TUNSETIFF, ifr)
        finally:
            _setns(home)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        os.close(home)
    return fds


class TapLabTest(QemuSystemTest):
    """A test with a lab of its own: network namespace self.ns with
    bridge br0 (tap_transfer_host.HOST_ADDR/24), an ifup script that
    attaches TAPs to it, ping floods from the bridge; all undone by the
    test's cleanups."""

    def require_lab(self, *commands):
        """Skip, saying why, without root, /dev/net/tun, the guest
        (TAP_TRANSFER_GUEST, kept in self.guest) or one of @commands."""
        if os.geteuid() != 0:
            self.skipTest('needs root: a network namespace, TAPs, a bridge')
        if not os.path.exists('/dev/net/tun'):
            self.skipTest('no /dev/net/tun')
        self.guest = os.environ.get('TAP_TRANSFER_GUEST')
        if not self.guest:
            self.skipTest('TAP_TRANSFER_GUEST is not set: no guest kernel '
                          'and initrd (scripts/lab/guest/build-guest.sh)')
        for f in ('vmlinuz', 'initrd.gz'):
            if not os.path.isfile(os.path.join(self.guest, f)):
                self.skipTest(f'no {f} in TAP_TRANSFER_GUEST={self.guest}')
        for tool in commands:
            if not shutil.which(tool):
                self.skipTest(f'no {tool} command')

    def make_lab(self, prefix, directory, link_opts='up', uplink=False):
        """Namespace self.ns (@prefix-PID-N) with its bridge, and
        self.ifup, @directory/ifup, which puts a TAP on the bridge with
        @link_opts; the ping output goes to @directory too.  @uplink: a
        veth port on the bridge as well."""
        self.ns = netns_name(prefix)
        self.lab_dir = directory
        self.pings = []
        self.own_fds = []
        # cleanups run after tearDown has shut the QEMUs down, last
        # registered first: the test's fds, the pings, then the namespace
        subprocess.run(['ip', 'netns', 'add', self.ns], check=True)
        self.addCleanup(subprocess.run, ['ip', 'netns', 'del', self.ns],
                        stderr=subprocess.DEVNULL)
        self.addCleanup(self.kill_pings)
        self.addCleanup(self.close_own_fds)
        for cmd in bridge_setup(self.ns, uplink):
            subprocess.run(cmd, check=True, capture_output=True)
        self.ifup = os.path.join(directory, 'ifup')
        write_ifup(self.ifup, link_opts)

    def nsrun(self, *args, check=True):
        return subprocess.run(in_netns(self.ns, *args), check=check,
                              capture_output=True, text=True).stdout

    def kill_pings(self):
        for p in self.pings:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.out.close()

    def close_own_fds(self):
        while self.own_fds:
            os.close(self.own_fds.pop())

    def note(self, text):
        self.log.info(text)
        print(f'# {text}', flush=True)

    # the network

    def links(self):
        return sorted(link_names(self.nsrun('ip', '-o', 'link', 'show')))

    def ifindex(self, ifname):
        return int(self.nsrun('cat', f'/sys/class/net/{ifname}/ifindex'))

    def wait_ping(self, addr=GUEST_ADDR, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = subprocess.run(ping_once_command(self.ns, addr),
                               capture_output=True, check=False)
            if r.returncode == 0:
                return
        self.fail(f'the guest ({addr}) does not answer')

    def start_ping(self, count, pps=PPS, source=None, addr=GUEST_ADDR):
        """A ping flood from the bridge (from its address @source if
        given), timestamped (-D) and reporting each reply still
        outstanding when the next ping goes (-O)."""
        out = open(os.path.join(self.lab_dir, f'ping{len(self.pings)}'),
                   'w+')
        p = subprocess.Popen(ping_command(self.ns, addr, count, 1 / pps,
                                          source=source, outstanding=True),
                             stdout=out, stderr=subprocess.STDOUT, text=True)
        p.out = out
        self.pings.append(p)
        return p

    def ping_result(self, p, timeout=120, stopped=False):
        """What ping @p saw when it ends (tap_transfer_host.ping_result():
        sent, received, the lost pings in missing and how many in lost,
        the longest gap between replies...); @stopped: it was stopped
        early, the pings after the last reply were in flight."""
        p.wait(timeout)
        p.out.seek(0)
        text = p.out.read()
        try:
            return ping_result(text, stopped)
        except PingError as e:
            self.fail(str(e))

    def assert_flows_lossless(self, flows, what=''):
        """Each ping flood of @flows, once it ends, noted (after @what)
        and without a lost ping."""
        for i, p in enumerate(flows):
            r = self.ping_result(p)
            self.note(f"flow {i}: {what}{r['sent']} pings, lost "
                      f"{describe_lost(r)}, longest reply gap "
                      f"{r['max_gap_ms']:.1f} ms")
            self.assertEqual(r['lost'], 0,
                             f"flow {i}: pings lost: {r['missing'][:20]}")
