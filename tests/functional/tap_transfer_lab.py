# What the tap-transfer functional tests share: TAPs opened in a network
# namespace as management software opens them, the kcmp and /proc checks
# that tell whether two QEMUs hold the same TAP, and the lab each test
# makes for itself (TapLabTest): a network namespace with a bridge, an
# ifup script, ping floods from the bridge.
#
# This work is licensed under the terms of the GNU GPL, version 2 or
# later.  See the COPYING file in the top-level directory.
#
# SPDX-License-Identifier: GPL-2.0-or-later

import ctypes
import fcntl
import os
import re
import shutil
import struct
import subprocess
import time

from qemu_test import QemuSystemTest


HOST_ADDR = '10.0.0.1'
GUEST_ADDR = '10.0.0.2'
GUEST_MAC = '52:54:00:12:34:56'
GUEST_READY = 'tap-transfer guest ready'
PPS = 500

_libc = ctypes.CDLL(None, use_errno=True)
SYS_KCMP = 312          # x86_64
KCMP_FILE = 0
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


def same_open_file(pid1, fd1, pid2, fd2):
    """kcmp(2): are these two fds the same open file description?"""
    return _libc.syscall(SYS_KCMP, pid1, pid2, KCMP_FILE, fd1, fd2) == 0


def tun_fds(pid):
    """The fds of process @pid that are open on /dev/net/tun."""
    fds = []
    d = f'/proc/{pid}/fd'
    for fd in os.listdir(d):
        try:
            # the upgrade command matches them the same way
            if os.readlink(f'{d}/{fd}').endswith('/net/tun'):
                fds.append(int(fd))
        except OSError:
            pass
    return sorted(fds)


def alive(pid):
    """@pid runs (a zombie counts as gone)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] not in ('Z', 'X')
    except (OSError, IndexError):
        return False


def ping_replies(text):
    """The replies in the output of ping -D: (time, sequence number)."""
    return [(float(m.group(1)), int(m.group(2))) for m in re.finditer(
        r'^\[([\d.]+)\] .*icmp_seq=(\d+) .*time=', text, re.M)]


class TapLabTest(QemuSystemTest):
    """A test with a lab of its own: network namespace self.ns with
    bridge br0 (HOST_ADDR/24), an ifup script that attaches TAPs to it,
    ping floods from the bridge; all undone by the test's cleanups."""

    _namespaces = 0

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
        TapLabTest._namespaces += 1
        self.ns = f'{prefix}-{os.getpid()}-{self._namespaces}'
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
        self.nsrun('ip', 'link', 'set', 'lo', 'up')
        self.nsrun('sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1')
        self.nsrun('sysctl', '-qw', 'net.ipv6.conf.default.disable_ipv6=1')
        self.nsrun('ip', 'link', 'add', 'br0', 'type', 'bridge')
        self.nsrun('ip', 'addr', 'add', f'{HOST_ADDR}/24', 'dev', 'br0')
        if uplink:
            # as a host's bridge has: the bridge keeps its carrier while
            # the VM's port is down for a rename
            self.nsrun('ip', 'link', 'add', 'up0', 'type', 'veth', 'peer',
                       'name', 'up1')
            self.nsrun('ip', 'link', 'set', 'up0', 'master', 'br0', 'up')
            self.nsrun('ip', 'link', 'set', 'up1', 'up')
        self.nsrun('ip', 'link', 'set', 'br0', 'up')
        self.ifup = os.path.join(directory, 'ifup')
        with open(self.ifup, 'w') as f:
            f.write(f'#!/bin/sh\nip link set "$1" master br0 {link_opts}\n')
        os.chmod(self.ifup, 0o755)

    def nsrun(self, *args, check=True):
        return subprocess.run(['ip', 'netns', 'exec', self.ns, *args],
                              check=check, capture_output=True,
                              text=True).stdout

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
        return sorted(line.split(':')[1].strip().split('@')[0]
                      for line in self.nsrun('ip', '-o', 'link',
                                             'show').splitlines())

    def ifindex(self, ifname):
        return int(self.nsrun('cat', f'/sys/class/net/{ifname}/ifindex'))

    def wait_ping(self, addr=GUEST_ADDR, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = subprocess.run(['ip', 'netns', 'exec', self.ns, 'ping',
                                '-n', '-c', '1', '-W', '1', addr],
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
        extra = ['-I', source] if source else []
        p = subprocess.Popen(['ip', 'netns', 'exec', self.ns, 'ping', '-n',
                              '-O', '-D', '-i', str(1 / pps),
                              '-c', str(count), '-W', '1', *extra, addr],
                             stdout=out, stderr=subprocess.STDOUT, text=True)
        p.out = out
        self.pings.append(p)
        return p

    def ping_result(self, p, timeout=120):
        """What ping @p saw when it ends: sent, received, lost, the
        unanswered sequence numbers, the longest gap between replies."""
        p.wait(timeout)
        p.out.seek(0)
        text = p.out.read()
        replies = ping_replies(text)
        m = re.search(r'(\d+) packets transmitted, (\d+) received', text)
        self.assertIsNotNone(m, f'no ping summary in: {text[-300:]}')
        sent, received = int(m.group(1)), int(m.group(2))
        answered = {seq for _, seq in replies}
        missing = [seq for seq in range(1, sent + 1) if seq not in answered]
        gaps = [b[0] - a[0] for a, b in zip(replies, replies[1:])]
        return {'sent': sent, 'received': received, 'lost': len(missing),
                'missing': missing,
                'max_gap_ms': max(gaps) * 1000 if gaps else 0}

    def assert_flows_lossless(self, flows, what=''):
        """Each ping flood of @flows, once it ends, noted (after @what)
        and without a lost ping."""
        for i, p in enumerate(flows):
            r = self.ping_result(p)
            self.note(f"flow {i}: {what}{r['sent']} pings, lost {r['lost']} "
                      f"{r['missing'][:10]}, longest reply gap "
                      f"{r['max_gap_ms']:.1f} ms")
            self.assertEqual(r['lost'], 0,
                             f"flow {i}: pings lost: {r['missing'][:20]}")
