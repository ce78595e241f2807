# The host side of the tap-transfer lab, shared by the functional tests
# (tap_transfer_lab.py, on QEMU's test framework) and the lab scripts
# (scripts/lab/ttlab.py: make demo, bench, soak): the network namespace
# with its bridge, the ping flood and what counts as a lost ping, and the
# /proc and kcmp(2) facts that tell which QEMU holds which TAP.
#
# Plain Python, no QEMU test framework, no QEMU: the lab scripts import
# it from here (tests/functional, which prepare-tree.sh overlays onto
# QEMU's tree).  It is the tests' own way of looking at the host, kept
# apart from the upgrade command's (tools/tap_transfer/procfs.py), which
# the tests check.
#
# This work is licensed under the terms of the GNU GPL, version 2 or
# later.  See the COPYING file in the top-level directory.
#
# SPDX-License-Identifier: GPL-2.0-or-later

import bisect
import ctypes
import os
import platform
import re

HOST_ADDR = '10.0.0.1'
GUEST_ADDR = '10.0.0.2'
GUEST_MAC = '52:54:00:12:34:56'
GUEST_READY = 'tap-transfer guest ready'
BRIDGE = 'br0'

_libc = ctypes.CDLL(None, use_errno=True)
# kcmp(2) has no libc wrapper; its number is the architecture's
SYS_KCMP = {'x86_64': 312, 'aarch64': 272}
KCMP_FILE = 0


# processes and their TAPs

def same_open_file(pid1, fd1, pid2, fd2):
    """kcmp(2): are fd @fd1 of @pid1 and fd @fd2 of @pid2 the same open
    file description?  OSError where kcmp fails or its number is not
    known for this host's architecture."""
    machine = platform.machine()
    if machine not in SYS_KCMP:
        raise OSError(f'kcmp: no syscall number for {machine} here (known: '
                      f'{", ".join(sorted(SYS_KCMP))})')
    r = _libc.syscall(SYS_KCMP[machine], pid1, pid2, KCMP_FILE, fd1, fd2)
    if r < 0:
        err = ctypes.get_errno()
        raise OSError(err, f'kcmp({pid1}:{fd1}, {pid2}:{fd2}): '
                      f'{os.strerror(err)}')
    return r == 0


def tun_fds(pid):
    """The fds of process @pid that are open on /dev/net/tun, sorted."""
    fds = []
    d = f'/proc/{pid}/fd'
    for fd in os.listdir(d):
        try:
            # /net/tun: a process in a mount namespace of its own may see
            # another path before it
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


# the network namespace

_namespaces = 0


def netns_name(prefix):
    """A new namespace name, @prefix-PID-N: what reap-lab.sh looks for
    when the process PID was killed before it could clean up."""
    global _namespaces
    _namespaces += 1
    return f'{prefix}-{os.getpid()}-{_namespaces}'


def in_netns(ns, *argv):
    """@argv run in namespace @ns"""
    return ['ip', 'netns', 'exec', ns, *argv]


def bridge_setup(ns, uplink=False):
    """The commands that make the lab in the (new, empty) namespace @ns:
    lo up, no IPv6 (no router solicitations in the flood's way), bridge
    BRIDGE with HOST_ADDR/24.  @uplink: a veth port on the bridge too, as
    a host's bridge has: the bridge keeps its carrier while the VM's port
    is down (for a rename)."""
    cmds = [['ip', 'link', 'set', 'lo', 'up'],
            ['sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1'],
            ['sysctl', '-qw', 'net.ipv6.conf.default.disable_ipv6=1'],
            ['ip', 'link', 'add', BRIDGE, 'type', 'bridge'],
            ['ip', 'addr', 'add', f'{HOST_ADDR}/24', 'dev', BRIDGE]]
    if uplink:
        cmds += [['ip', 'link', 'add', 'up0', 'type', 'veth', 'peer',
                  'name', 'up1'],
                 ['ip', 'link', 'set', 'up0', 'master', BRIDGE, 'up'],
                 ['ip', 'link', 'set', 'up1', 'up']]
    cmds.append(['ip', 'link', 'set', BRIDGE, 'up'])
    return [in_netns(ns, *c) for c in cmds]


def write_ifup(path, link_opts='up'):
    """An ifup script at @path for QEMU's script=: the TAP on the
    bridge, with @link_opts"""
    with open(path, 'w') as f:
        f.write(f'#!/bin/sh\nip link set "$1" master {BRIDGE} {link_opts}\n')
    os.chmod(path, 0o755)


def link_names(text):
    """The interface names in the output of ip -o link show"""
    return [line.split(':')[1].strip().split('@')[0]
            for line in text.splitlines()]


def guest_mac(index=0):
    """The MAC of the guest's NIC @index (of the lab's VM @index)"""
    return GUEST_MAC[:-2] + f'{int(GUEST_MAC[-2:], 16) + index:02x}'


# ping floods

PING_REPLY = re.compile(r'^\[([\d.]+)\] .*icmp_seq=(\d+) .*time=([\d.]+)',
                        re.M)
PING_SUMMARY = re.compile(r'(\d+) packets transmitted, (\d+) received')


class PingError(Exception):
    """ping's output has no summary: it did not end as ping ends"""


def ping_command(ns, addr, count, interval, preload=None, source=None,
                 outstanding=False):
    """A ping flood from namespace @ns to @addr: @count pings every
    @interval s (0: ping's flood pacing), each waited for 1 s, every
    line timestamped (-D); @preload pings kept in flight; from the
    address @source; @outstanding: a line for each reply still missing
    when the next ping goes (-O)."""
    extra = ['-l', str(preload)] if preload else []
    extra += ['-I', source] if source else []
    extra += ['-O'] if outstanding else []
    return in_netns(ns, 'ping', '-n', '-D', '-i', str(interval),
                    '-c', str(count), '-W', '1', *extra, addr)


def ping_once_command(ns, addr):
    return in_netns(ns, 'ping', '-n', '-c', '1', '-W', '1', addr)


def ping_replies(text):
    """The replies in the output of ping -D, as they came (a duplicate
    too): (time, sequence number, round trip ms)."""
    return [(float(m.group(1)), int(m.group(2)), float(m.group(3)))
            for m in PING_REPLY.finditer(text)]


def lost_pings(replies, judged):
    """The lost pings: the sequence numbers 1..@judged with no reply
    among @replies.  The one definition of a lost ping; it names them,
    and no duplicate reply can stand in for a missing one."""
    answered = {seq for _, seq, _ in replies}
    return [seq for seq in range(1, judged + 1) if seq not in answered]


def longest_gap_ms(replies):
    """The longest time between two replies, in ms; 0 with fewer than
    two replies (then the lost pings say what happened)."""
    times = sorted(ts for ts, _, _ in replies)
    return max((b - a for a, b in zip(times, times[1:])), default=0) * 1000


def sent_at(replies, seqs):
    """When each of @seqs (unanswered) was sent, estimated from the
    answered neighbours' send times (reply time - round trip):
    {seq: time}."""
    sent = sorted((seq, ts - rtt / 1000) for ts, seq, rtt in replies)
    keys = [seq for seq, _ in sent]
    out = {}
    for seq in seqs:
        i = bisect.bisect_left(keys, seq)
        if 0 < i < len(sent):
            (s0, t0), (s1, t1) = sent[i - 1], sent[i]
            out[seq] = t0 + (t1 - t0) * (seq - s0) / (s1 - s0)
        elif sent:
            out[seq] = sent[min(i, len(sent) - 1)][1]
    return out


def ping_result(text, stopped=False):
    """What a ping flood saw, from its output @text (ping -D).  A flood
    that ran its course judges every ping it sent; one @stopped before
    (SIGINT) only those up to the last one answered: the ones after it
    were still in flight (in_flight).  PingError without ping's summary.

    sent, received: ping's summary; replies: ping_replies(); last: the
    highest sequence number answered; missing: the lost pings
    (lost_pings()), lost: how many; in_flight; duplicates: replies beyond
    the first for a sequence number; max_gap_ms: longest_gap_ms();
    sent_at: sent_at() of the lost ones."""
    m = PING_SUMMARY.search(text)
    if not m:
        raise PingError(f'no ping summary in: {text[-300:]}')
    sent, received = int(m.group(1)), int(m.group(2))
    replies = ping_replies(text)
    answered = {seq for _, seq, _ in replies}
    last = max(answered, default=0)
    judged = min(last, sent) if stopped else sent
    missing = lost_pings(replies, judged)
    return {'sent': sent, 'received': received, 'replies': replies,
            'last': last, 'missing': missing, 'lost': len(missing),
            'in_flight': sent - judged,
            'duplicates': len(replies) - len(answered),
            'max_gap_ms': longest_gap_ms(replies),
            'sent_at': sent_at(replies, missing)}


def describe_lost(result, most=10):
    """'N' or 'N: seq, seq, ...' for @result's lost pings"""
    seqs = result['missing']
    if not seqs:
        return '0'
    more = ', ...' if len(seqs) > most else ''
    return f"{len(seqs)}: {', '.join(map(str, seqs[:most]))}{more}"
