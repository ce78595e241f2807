# What the tap-transfer functional tests share: TAPs opened in a network
# namespace as management software opens them, and the kcmp and /proc
# checks that tell whether two QEMUs hold the same TAP.
#
# This work is licensed under the terms of the GNU GPL, version 2 or
# later.  See the COPYING file in the top-level directory.

import ctypes
import fcntl
import os
import struct


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
