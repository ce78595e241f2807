"""Onboarding: move a VM that runs with -netdev tap (on any QEMU from
7.2 up, e.g. Debian's stock one) onto this project's QEMU and
-netdev tap-transfer.

A stock QEMU cannot hand its TAP over, so this one hop is an ordinary
local migration onto a NEW TAP, made here to look like the old one:
the same queue count, vnet header and PI flags, attached the way the
old one is (the same master bridge, MTU, txqueuelen, MAC, bridge port
options, the port's VLANs where the bridge filters VLANs), and up.
The new TAP is opened here, one fd per queue, and its fds are given to
the destination (fds=), as management software does: the destination
needs no network privilege and the TAP is not persistent, so it lives
exactly as long as a QEMU holds it, like the one the source made.

Every call works in the network namespace of a given process (the
source QEMU's): /proc/PID/ns/net.  Nothing here talks to QEMU; the
caller (tools/tap-transfer-upgrade) runs the migration.

    taps = source_taps(pid, argv)             # what the source uses
    new = clone_tap(pid, taps[0].attrs)       # the new TAP, fds open
    netdev = destination_netdev(taps[0], fds) # -netdev for the new QEMU
    ... start the destination with the fds, close ours, migrate ...
    new.remove()                              # on failure
    rename_tap(pid, new.ifname, taps[0].ifname)  # after the source quit
"""

import ctypes
import fcntl
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time

from .cmdline import Opt
from .procfs import fd_ifname, tap_fds

TUNSETIFF = 0x400454ca
TUNSETPERSIST = 0x400454cb
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
CLONE_NEWNET = 0x40000000
IFNAMSIZ = 16
# rtnetlink, for the bridge's forwarding database
AF_BRIDGE = 7
RTM_NEWNEIGH = 28
RTM_NEWLINK, RTM_GETLINK = 16, 18
IFLA_STATS64 = 23
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 1, 4, 0x100, 0x400
NDA_LLADDR, NDA_VLAN = 2, 5
NUD_REACHABLE = 0x02
NTF_MASTER = 0x04

# bridge port options copied to the new port: ip-link(8) bridge_slave
# option -> its key in `ip -d -j link show`
PORT_OPTIONS = {
    'cost': 'cost', 'priority': 'priority', 'hairpin': 'hairpin',
    'guard': 'guard', 'root_block': 'root_block', 'fastleave': 'fastleave',
    'learning': 'learning', 'flood': 'flood', 'mcast_flood': 'mcast_flood',
    'bcast_flood': 'bcast_flood', 'proxy_arp': 'proxy_arp',
    'neigh_suppress': 'neigh_suppress', 'isolated': 'isolated',
}


class OnboardError(Exception):
    """What cannot be onboarded, or a step that failed: one line"""


_libc = ctypes.CDLL(None, use_errno=True)


def _netns(pid):
    """@pid: a process, whose network namespace is meant, or the path
    of a namespace (netns_handle())"""
    return pid if isinstance(pid, str) else f'/proc/{pid}/ns/net'


def netns_handle(pid):
    """A path to @pid's network namespace that stays valid after @pid
    exits (an fd of ours on it): (path, fd to close)"""
    fd = os.open(f'/proc/{pid}/ns/net', os.O_RDONLY | os.O_CLOEXEC)
    return f'/proc/{os.getpid()}/fd/{fd}', fd


def _in_netns(pid, *args, check=True):
    """Run a command in @pid's network namespace; its stdout"""
    r = subprocess.run(['nsenter', f'--net={_netns(pid)}', *args],
                       capture_output=True, text=True)
    if check and r.returncode:
        raise OnboardError(f"{' '.join(args)}: "
                           f"{(r.stderr or r.stdout).strip()}")
    return r.stdout


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET):
        err = ctypes.get_errno()
        raise OSError(err, f'setns: {os.strerror(err)}')


def link(pid, ifname):
    """`ip -d -j link show` of @ifname in @pid's namespace, or None"""
    r = subprocess.run(['nsenter', f'--net={_netns(pid)}', 'ip', '-d', '-s',
                        '-j', 'link', 'show', 'dev', ifname],
                       capture_output=True, text=True)
    if r.returncode:
        return None
    return json.loads(r.stdout)[0]


def tap_counters(pid, ifname):
    """The TAP's counters, host side: tx is towards the guest.
    tx_packets counts the frames a QEMU read, tx_dropped the ones the
    TAP dropped (queue full, no reader); qdisc_sent the frames the
    kernel handed to the TAP.  unread, the difference, is what waits in
    the TAP's queue: frames that are lost if nobody reads them.  None
    when the TAP is gone."""
    ln = link(pid, ifname)
    if not ln:
        return None
    s = ln.get('stats64', {})
    out = {'rx_packets': s.get('rx', {}).get('packets'),
           'tx_packets': s.get('tx', {}).get('packets'),
           'tx_dropped': s.get('tx', {}).get('dropped')}
    r = subprocess.run(['nsenter', f'--net={_netns(pid)}', 'tc', '-s', '-j',
                        'qdisc', 'show', 'dev', ifname],
                       capture_output=True, text=True)
    try:
        qdiscs = json.loads(r.stdout)
        root = [q for q in qdiscs if q.get('root')] or qdiscs
        out['qdisc_sent'] = root[0]['packets']
        out['unread'] = max(out['qdisc_sent'] - out['tx_packets'] -
                            out['tx_dropped'], 0)
    except (ValueError, IndexError, KeyError, TypeError):
        pass
    return out


class TapAttrs:
    """How a TAP is made and attached"""

    def __init__(self, **kw):
        self.ifname = kw['ifname']
        self.ifindex = kw.get('ifindex')
        self.queues = kw.get('queues', 1)
        self.multi_queue = kw.get('multi_queue', False)
        self.vnet_hdr = kw.get('vnet_hdr', True)
        self.pi = kw.get('pi', False)
        self.mtu = kw.get('mtu')
        self.txqlen = kw.get('txqlen')
        self.address = kw.get('address')
        self.up = kw.get('up', True)
        self.master = kw.get('master')
        self.port = kw.get('port', {})       # bridge port options
        self.vlans = kw.get('vlans')         # None: the bridge filters none

    def as_dict(self):
        return dict(vars(self))


def read_tap(pid, ifname):
    """The attributes of TAP @ifname in @pid's network namespace; refuse
    what cannot be reproduced by a new TAP on a bridge."""
    ln = link(pid, ifname)
    if ln is None:
        raise OnboardError(f'{ifname}: no such interface in the network '
                           f'namespace of process {pid}')
    info = ln.get('linkinfo', {})
    if info.get('info_kind') != 'tun':
        kind = info.get('info_kind') or 'non-TUN'
        raise OnboardError(f'{ifname} is a {kind} interface, not a TAP')
    data = info.get('info_data', {})
    if data.get('type') != 'tap':
        raise OnboardError(f'{ifname} is a TUN (layer 3) device, not a TAP')
    master = ln.get('master')
    if not master:
        raise OnboardError(f'{ifname} has no master: the command attaches a '
                           'new TAP to a bridge only')
    mln = link(pid, master)
    kind = (mln or {}).get('linkinfo', {}).get('info_kind')
    if kind != 'bridge':
        what = ('an Open vSwitch datapath' if kind == 'openvswitch'
                else f'a {kind}')
        raise OnboardError(f'{ifname}: its master {master} is {what}, not a '
                           'Linux bridge: not supported')
    vlans = None
    if mln['linkinfo'].get('info_data', {}).get('vlan_filtering'):
        vlans = bridge_vlans(pid, ifname)
    slave = info.get('info_slave_data', {})
    port = {opt: slave[key] for opt, key in PORT_OPTIONS.items()
            if key in slave}
    queues = data.get('numqueues', 0) + data.get('numdisabled', 0)
    return TapAttrs(ifname=ifname, ifindex=ln['ifindex'],
                    queues=max(queues, 1),
                    multi_queue=bool(data.get('multi_queue')),
                    vnet_hdr=bool(data.get('vnet_hdr')),
                    pi=bool(data.get('pi')), mtu=ln.get('mtu'),
                    txqlen=ln.get('txqlen'), address=ln.get('address'),
                    up='UP' in ln.get('flags', []), master=master,
                    port=port, vlans=vlans)


def bridge_vlans(pid, ifname):
    """The port's VLANs as [(first, last, pvid, untagged)]"""
    out = _in_netns(pid, 'bridge', '-j', 'vlan', 'show', 'dev', ifname)
    vlans = []
    for entry in json.loads(out or '[]'):
        if entry.get('ifname') != ifname:
            continue
        for v in entry.get('vlans', []):
            flags = v.get('flags', [])
            vlans.append((v['vlan'], v.get('vlanEnd', v['vlan']),
                          'PVID' in flags, 'Egress Untagged' in flags))
    return vlans


# which TAP each -netdev tap of the source uses

class SourceTap:
    """A -netdev tap of the source: its id, its options (as given), the
    TAP it uses and that TAP's attributes."""

    def __init__(self, netdev_id, options, ifname, attrs):
        self.id = netdev_id
        self.options = options
        self.ifname = ifname
        self.attrs = attrs


def tap_fds_of(pid):
    """{ifname: [fd, ...]} over every fd of @pid attached to a TUN/TAP"""
    return tap_fds(pid)


def _netdev_args(argv):
    """(option, Opt) of each -netdev/-nic/-net in @argv"""
    out = []
    for i, a in enumerate(argv[:-1]):
        if a.lstrip('-') in ('netdev', 'nic', 'net') and a.startswith('-'):
            out.append((a.lstrip('-'), Opt(a.lstrip('-'), argv[i + 1])))
    return out


def source_taps(pid, argv, fdsets=None):
    """The -netdev tap netdevs of QEMU process @pid (command line
    @argv) with their TAPs.  @fdsets: {set id: [fd, ...]} as QMP's
    query-fdsets tells, for fds=/dev/fdset/N.  Refuses (OnboardError)
    what it cannot onboard: -nic/-net tap, a TAP it cannot find, a fd
    that is no TAP (macvtap), a TAP not on a Linux bridge."""
    fdsets = fdsets or {}
    taps, unresolved = [], []
    by_name = tap_fds_of(pid)
    for opt, o in _netdev_args(argv):
        value = o.value
        if o.get('type') not in ('tap', 'bridge'):
            if o.get('type') == 'vhost-user':
                raise OnboardError(f"-{opt} {o.get('id', '')}: vhost-user "
                                   'netdevs are not onboarded')
            continue
        if opt != 'netdev':
            raise OnboardError(f'-{opt} {value}: only -netdev tap is '
                               'onboarded; -nic/-net tap are not')
        if o.get('type') == 'bridge':
            raise OnboardError(f"-netdev bridge,id={o.get('id')}: the "
                               'bridge helper is not onboarded')
        if o.get('vhostfd') or o.get('vhostfds'):
            raise OnboardError(f"-netdev tap,id={o.get('id')}: vhostfd/"
                               'vhostfds: the new QEMU would need new '
                               'vhost fds')
        fds = []
        for f in (o.get('fds') or o.get('fd') or '').split(':'):
            if not f:
                continue
            m = re.match(r'/dev/fdset/(\d+)$', f)
            if m:
                fds += fdsets.get(int(m.group(1)), [])
            elif f.isdigit():
                fds.append(int(f))
            else:
                # a named fd (getfd): not in /proc's view of the argv
                fds = None
                break
        ifname = o.get('ifname')
        if ifname and ifname not in by_name:
            raise OnboardError(f"-netdev tap,id={o.get('id')}: ifname="
                               f'{ifname} is not a TAP this QEMU holds open')
        if not ifname and fds:
            names = {fd_ifname(pid, fd) for fd in fds}
            if None in names or len(names) != 1:
                raise OnboardError(
                    f"-netdev tap,id={o.get('id')}: its fd is not a TAP "
                    '(macvtap?) or not open in the process any more')
            ifname = names.pop()
        taps.append([o, ifname])
        if not ifname:
            unresolved.append(taps[-1])
    # fds that were given as fdsets the monitor no longer lists, or by
    # name: the TAPs left over, if they are as many as those netdevs
    left = sorted(set(by_name) - {t[1] for t in taps if t[1]})
    if unresolved:
        if len(left) != 1 or len(unresolved) != 1:
            raise OnboardError(
                'cannot tell which TAP belongs to netdev '
                f"{', '.join(t[0].get('id', '?') for t in unresolved)}")
        unresolved[0][1] = left[0]
    out = []
    for o, ifname in taps:
        attrs = read_tap(pid, ifname)
        held = len(by_name.get(ifname, []))
        if held:
            attrs.queues = held
        out.append(SourceTap(o.get('id'), o, ifname, attrs))
    return out


# the new TAP

def free_name(pid, base):
    """A free interface name in @pid's namespace, from @base"""
    for n in range(100):
        name = f'{base[:IFNAMSIZ - 1 - len(str(n))]}{n}'
        if link(pid, name) is None:
            return name
    raise OnboardError(f'no free interface name like {base}')


class NewTap:
    """The TAP made by clone_tap(): its name, this process's fds on it
    (one per queue; close them once the destination holds its own
    copies), and remove() to undo everything."""

    def __init__(self, pid, ifname, fds, seconds):
        self.pid = pid
        self.ifname = ifname
        self.fds = fds
        self.seconds = seconds

    def close_fds(self):
        while self.fds:
            os.close(self.fds.pop())

    def remove(self):
        """Close our fds and delete the TAP if it still exists (it goes
        by itself when no process holds it any more)."""
        self.close_fds()
        if link(self.pid, self.ifname) is not None:
            _in_netns(self.pid, 'ip', 'link', 'del', 'dev', self.ifname,
                      check=False)


def open_tap(pid, ifname, queues, multi_queue, vnet_hdr, pi=False):
    """Create TAP @ifname in @pid's network namespace by opening
    /dev/net/tun once per queue (TUNSETIFF); returns the fds.  The
    calling thread enters the namespace for the while: a TAP is made in
    the namespace of the thread that creates it."""
    flags = IFF_TAP | (0 if pi else IFF_NO_PI)
    flags |= (IFF_VNET_HDR if vnet_hdr else 0)
    flags |= (IFF_MULTI_QUEUE if multi_queue else 0)
    if queues > 1 and not multi_queue:
        raise OnboardError(f'{ifname}: {queues} queues on a TAP that is not '
                           'multi_queue')
    ifr = struct.pack('16sH22x', ifname.encode(), flags)
    home = os.open('/proc/thread-self/ns/net', os.O_RDONLY)
    fds = []
    try:
        there = os.open(_netns(pid), os.O_RDONLY)
        try:
            _setns(there)
        finally:
            os.close(there)
        try:
            for _ in range(queues):
                fds.append(os.open('/dev/net/tun', os.O_RDWR | os.O_CLOEXEC))
                fcntl.ioctl(fds[-1], TUNSETIFF, ifr)
        finally:
            _setns(home)
    except BaseException as e:
        for fd in fds:
            os.close(fd)
        if isinstance(e, OSError):
            raise OnboardError(f'creating TAP {ifname}: {e}') from e
        raise
    finally:
        os.close(home)
    return fds


def clone_tap(pid, attrs, ifname=None, copy_mac=True):
    """A new TAP like @attrs (see read_tap), in @pid's network
    namespace, attached like it and up; @ifname or a free name made
    from the old one.  On any failure nothing is left behind."""
    t0 = time.monotonic()
    name = ifname or free_name(pid, attrs.ifname + 'n')
    fds = open_tap(pid, name, attrs.queues, attrs.multi_queue,
                   attrs.vnet_hdr, attrs.pi)
    new = NewTap(pid, name, fds, None)
    try:
        args = ['ip', 'link', 'set', 'dev', name]
        if attrs.mtu:
            args += ['mtu', str(attrs.mtu)]
        if attrs.txqlen is not None:
            args += ['txqueuelen', str(attrs.txqlen)]
        if copy_mac and attrs.address:
            args += ['address', attrs.address]
        _in_netns(pid, *args)
        _in_netns(pid, 'ip', 'link', 'set', 'dev', name,
                  'master', attrs.master)
        port = []
        for opt, val in attrs.port.items():
            if isinstance(val, bool):
                val = 'on' if val else 'off'
            port += [opt, str(val)]
        if port:
            _in_netns(pid, 'ip', 'link', 'set', 'dev', name,
                      'type', 'bridge_slave', *port)
        if attrs.vlans is not None:
            copy_vlans(pid, name, attrs.vlans)
        if attrs.up:
            _in_netns(pid, 'ip', 'link', 'set', 'dev', name, 'up')
    except BaseException:
        new.remove()
        raise
    new.seconds = time.monotonic() - t0
    return new


def copy_vlans(pid, ifname, vlans):
    """Give port @ifname exactly @vlans (bridge_vlans()' format): the
    default VLAN the bridge gave the new port goes first"""
    for first, last, _, _ in bridge_vlans(pid, ifname):
        _in_netns(pid, 'bridge', 'vlan', 'del', 'dev', ifname,
                  'vid', f'{first}-{last}' if last != first else str(first))
    for first, last, pvid, untagged in vlans:
        args = ['bridge', 'vlan', 'add', 'dev', ifname, 'vid',
                f'{first}-{last}' if last != first else str(first)]
        args += ['pvid'] if pvid else []
        args += ['untagged'] if untagged else []
        _in_netns(pid, *args, 'master')


def destination_netdev(src, fds, prefix=''):
    """The -netdev of the destination for SourceTap @src on the new
    TAP's @fds (numbers as the destination sees them, or /dev/fdset/N
    strings): tap-transfer with the options of the source that apply."""
    opts = [f'tap-transfer,id={src.id}']
    fds = [str(f) for f in fds]
    opts.append(f"fds={':'.join(fds)}" if len(fds) > 1 else f'fd={fds[0]}')
    for key in ('sndbuf', 'vhost', 'vhostforce', 'poll-us'):
        if src.options.get(key) is not None:
            opts.append(f'{key}={src.options.get(key)}')
    return prefix + ','.join(opts)


def rename_tap(pid, new, old, timeout=10):
    """Give the new TAP the old TAP's name once the old one is gone (it
    goes when its last holder, the source QEMU, exits).  The link must
    be down to be renamed: returns the seconds it was down."""
    deadline = time.monotonic() + timeout
    while link(pid, old) is not None:
        if time.monotonic() > deadline:
            raise OnboardError(f'{old} still exists (held by another '
                               'process, or persistent): not renamed')
        time.sleep(0.01)
    was_up = 'UP' in (link(pid, new) or {}).get('flags', [])
    # one ip process: down, then the new name and up in one request
    batch = f'link set dev {new} down\nlink set dev {new} name {old}'
    batch += ' up\n' if was_up else '\n'
    t0 = time.monotonic()
    r = subprocess.run(['nsenter', f'--net={_netns(pid)}', 'ip', '-batch',
                        '-'], input=batch, capture_output=True, text=True)
    seconds = time.monotonic() - t0
    if r.returncode:
        if was_up and link(pid, new) is not None:
            _in_netns(pid, 'ip', 'link', 'set', 'dev', new, 'up',
                      check=False)
        raise OnboardError(f'renaming {new} to {old}: {r.stderr.strip()}')
    return seconds


def learned_macs(pid, ifname):
    """The addresses the bridge learned on port @ifname (the guest's):
    [(mac, vlan or None)]"""
    out = _in_netns(pid, 'bridge', '-j', 'fdb', 'show', 'brport', ifname)
    return sorted({(e['mac'], e.get('vlan')) for e in json.loads(out or '[]')
                   if e.get('master') and 'self' not in e.get('flags', [])
                   and e.get('state', '') not in ('permanent', 'static')},
                  key=str)


class FdbSteer:
    """Point the bridge's forwarding entries of the guest's addresses
    (learned_macs()) at the new TAP's port, at the moment the source has
    stopped and before the destination runs: the frames for the guest
    then wait in the new TAP's queue for the destination instead of
    being stranded in the old TAP, which nobody reads any more.  The
    netlink socket is made in the TAP's namespace beforehand, so the
    switch itself is one request (RTM_NEWNEIGH, AF_BRIDGE, dynamic
    entries that age and re-learn as any other).  back() points them at
    the old port again, for a migration that failed."""

    def __init__(self, pid, macs, old, new):
        self.macs = macs
        self.old = link(pid, old)['ifindex']
        self.new = link(pid, new)['ifindex']
        home = os.open('/proc/thread-self/ns/net', os.O_RDONLY)
        try:
            there = os.open(_netns(pid), os.O_RDONLY)
            try:
                _setns(there)
            finally:
                os.close(there)
            try:
                self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                          socket.NETLINK_ROUTE)
            finally:
                _setns(home)
        finally:
            os.close(home)
        self.seq = 0

    def _send(self, ifindex):
        for mac, vlan in self.macs:
            self.seq += 1
            attrs = _rtattr(NDA_LLADDR, bytes.fromhex(mac.replace(':', '')))
            if vlan:
                attrs += _rtattr(NDA_VLAN, struct.pack('=H', int(vlan)))
            body = struct.pack('=BBHiHBB', AF_BRIDGE, 0, 0, ifindex,
                               NUD_REACHABLE, NTF_MASTER, 0) + attrs
            flags = (NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE |
                     NLM_F_REPLACE)
            msg = struct.pack('=IHHII', 16 + len(body), RTM_NEWNEIGH, flags,
                              self.seq, 0) + body
            self.sock.send(msg)
            ack = self.sock.recv(4096)
            err = struct.unpack_from('=i', ack, 16)[0]
            if err:
                raise OnboardError(f'steering {mac} to ifindex {ifindex}: '
                                   f'{os.strerror(-err)}')

    def to_new(self):
        self._send(self.new)

    def stats(self, old=True):
        """The old (or new) port's counters, over the same socket:
        {'tx_packets', 'tx_dropped', 'rx_packets'}, in a millisecond"""
        ifindex = self.old if old else self.new
        self.seq += 1
        body = struct.pack('=BBHiII', socket.AF_UNSPEC, 0, 0, ifindex, 0, 0)
        self.sock.send(struct.pack('=IHHII', 16 + len(body), RTM_GETLINK,
                                   NLM_F_REQUEST, self.seq, 0) + body)
        data = self.sock.recv(65536)
        _, kind = struct.unpack_from('=IH', data, 0)
        if kind != RTM_NEWLINK:
            return None
        off = 32
        while off + 4 <= len(data):
            alen, atype = struct.unpack_from('=HH', data, off)
            if alen < 4:
                break
            if atype == IFLA_STATS64:
                v = struct.unpack_from('=8Q', data, off + 4)
                return {'rx_packets': v[0], 'tx_packets': v[1],
                        'tx_dropped': v[7]}
            off += (alen + 3) & ~3
        return None

    def back(self):
        self._send(self.old)

    def close(self):
        self.sock.close()


def not_carried(pid, ifname, attrs):
    """What refers to TAP @ifname by its name or port and would not
    follow a new TAP: [one line each]"""
    out = []
    slave = link(pid, ifname).get('linkinfo', {}).get('info_slave_data', {})
    out += [f'bridge port option {k} on' for k in ('locked', 'mab')
            if slave.get(k)]
    fdb = json.loads(_in_netns(pid, 'bridge', '-j', 'fdb', 'show', 'brport',
                               ifname, check=False) or '[]')
    own = (attrs.address or '').lower()
    # the bridge's entries (master), not the device's own (self), and
    # not the one the bridge keeps for the port's own address
    static = sorted({e['mac'] for e in fdb if e.get('master') and
                     'self' not in e.get('flags', []) and
                     e.get('mac', '').lower() != own and
                     e.get('state') in ('static', 'permanent')})
    if static:
        out.append(f'static FDB entries {", ".join(static)}')
    for where in ('ingress', 'egress'):
        if _in_netns(pid, 'tc', 'filter', 'show', 'dev', ifname, where,
                     check=False).strip():
            out.append(f'tc filters ({where})')
    if shutil.which('nft'):
        rules = _in_netns(pid, 'nft', 'list', 'ruleset', check=False)
        if f'"{ifname}"' in rules:
            out.append('nftables rules matching its name')
    for tool in ('iptables-legacy-save', 'ip6tables-legacy-save',
                 'ebtables-legacy-save'):
        if shutil.which(tool):
            rules = _in_netns(pid, tool, check=False)
            if re.search(rf'(-[io]|--physdev-(in|out)|--logical-(in|out)) '
                         rf'{re.escape(ifname)}\b', rules):
                out.append(f'{tool.split("-")[0]} rules matching its name')
    return out


def undo_from_journal(pid, ob, log):
    """Recovery: the bridge's entries for the guest back to the old TAPs,
    the new TAPs gone (they go by themselves when no QEMU holds them)"""
    for nd, ifname in ob.get('new', {}).items():
        if link(pid, ifname) is not None:
            _in_netns(pid, 'ip', 'link', 'del', 'dev', ifname, check=False)
            log(f'netdev {nd}: new TAP {ifname} removed')
    if not ob.get('switched'):
        return
    for nd, old in ob.get('old', {}).items():
        for mac, vlan in ob.get('macs', {}).get(nd, []):
            args = ['bridge', 'fdb', 'replace', mac, 'dev', old, 'master']
            args += ['vlan', str(vlan)] if vlan else []
            _in_netns(pid, *args, check=False)
        log(f'netdev {nd}: the guest\'s addresses point at {old} again')


def _rtattr(kind, data):
    pad = (4 - len(data) % 4) % 4
    return struct.pack('=HH', 4 + len(data), kind) + data + b'\0' * pad


class Onboarding:
    """The onboarding hop of one VM, for tools/tap-transfer-upgrade:

        ob = Onboarding(pid, argv, fdsets)   # refuses what it cannot do
        ob.create()                          # the new TAPs, fds open
        value = ob.netdev_value(netdev_id)   # -netdev for the destination
        ... start the destination with pass_fds=ob.fds() ...
        ob.started()                         # close our fds
        ob.prepare_switch()                  # before 'migrate'
        ob.switch()                          # source paused pre-switchover
        ob.rollback()                        # any failure before the quit
        report = ob.finish(keep_name)        # after the source quit

    All TAPs live in @pid's (the source QEMU's) network namespace."""

    def __init__(self, pid, argv, fdsets=None, log=None, force=False):
        self.log = log or (lambda msg: None)
        self.taps = source_taps(pid, argv, fdsets)
        self.not_carried = [f'{t.ifname}: {what}' for t in self.taps
                            for what in not_carried(pid, t.ifname,
                                                    t.attrs)]
        if self.not_carried and not force:
            raise OnboardError(
                'what refers to the old TAP would not follow the new one: '
                f'{"; ".join(self.not_carried)} (--force goes on without '
                'it)')
        # the namespace outlives the source: the rename comes after it
        self.pid, self._ns_fd = netns_handle(pid)
        self.new = {}
        self.steers = []
        self.switched = False
        self.counters = {}

    def journal(self):
        """What recovery needs to undo this onboarding"""
        return {'old': {t.id: t.ifname for t in self.taps},
                'new': {i: n.ifname for i, n in self.new.items()},
                'macs': {t.id: s.macs for t, s in zip(self.taps,
                                                      self.steers)},
                'switched': self.switched}

    def ids(self):
        return [t.id for t in self.taps]

    def create(self):
        try:
            for t in self.taps:
                new = clone_tap(self.pid, t.attrs)
                self.new[t.id] = new
                self.log(f'netdev {t.id}: new TAP {new.ifname} like '
                         f'{t.ifname} ({t.attrs.queues} queue(s), vnet_hdr '
                         f"{'on' if t.attrs.vnet_hdr else 'off'}, on "
                         f'{t.attrs.master}) in {new.seconds * 1000:.1f} ms')
        except BaseException:
            self.rollback()
            raise

    def fds(self):
        return [fd for n in self.new.values() for fd in n.fds]

    def netdev_value(self, netdev_id):
        t = next(t for t in self.taps if t.id == netdev_id)
        return destination_netdev(t, self.new[netdev_id].fds)

    def started(self):
        for n in self.new.values():
            n.close_fds()

    def prepare_switch(self):
        """The netlink sockets and the guest's addresses, ahead of the
        switch; a guest that sent nothing yet has none to steer."""
        for t in self.taps:
            macs = learned_macs(self.pid, t.ifname)
            self.steers.append(FdbSteer(self.pid, macs, t.ifname,
                                        self.new[t.id].ifname))

    def switch(self, steer=True):
        """The source has stopped: frames for the guest go to the new
        TAPs from now on.  The old TAPs' counters are read first, over
        netlink (a millisecond: every frame meanwhile is lost)."""
        for t, s in zip(self.taps, self.steers):
            self.counters[t.id] = {'at_stop': s.stats()}
        if steer:
            for s in self.steers:
                s.to_new()
            self.switched = True

    def before_quit(self):
        """Just before the source quits: what the old TAPs hold unread"""
        for t in self.taps:
            self.counters.setdefault(t.id, {})['at_quit'] = \
                tap_counters(self.pid, t.ifname)

    def rollback(self):
        """The VM stays on the source: forwarding back to the old TAPs,
        the new ones gone."""
        if self.switched:
            for s in self.steers:
                try:
                    s.back()
                except OnboardError as e:
                    self.log(f'{e}')
            self.switched = False
        for s in self.steers:
            s.close()
        self.steers = []
        for n in self.new.values():
            n.remove()
        self.new = {}
        self.close()

    def close(self):
        if self._ns_fd is not None:
            os.close(self._ns_fd)
            self._ns_fd = None

    def finish(self, keep_name, timeout=10):
        """The source has quit: rename the new TAPs to the old names if
        @keep_name; the report per netdev."""
        for s in self.steers:
            s.close()
        self.steers = []
        out = {}
        for t in self.taps:
            new = self.new[t.id]
            c = self.counters.get(t.id, {})
            r = {'old_ifname': t.ifname, 'old_ifindex': t.attrs.ifindex,
                 'new_ifname': new.ifname,
                 'new_ifindex': (link(self.pid, new.ifname) or
                                 {}).get('ifindex'),
                 'queues': t.attrs.queues,
                 'tap_create_ms': round(new.seconds * 1000, 1)}
            stop, quit_ = c.get('at_stop'), c.get('at_quit')
            if stop and quit_ and None not in stop.values():
                r['old_tap_at_stop'] = stop
                r['old_tap_at_quit'] = quit_
                # lost with the old TAP: what the stopped source read
                # (it cannot give it to the guest any more), what it
                # dropped, and what nobody read
                r['old_tap_lost'] = (quit_['tx_packets'] - stop['tx_packets']
                                     + quit_['tx_dropped'] -
                                     stop['tx_dropped'] +
                                     quit_.get('unread', 0))
            if keep_name:
                try:
                    down = rename_tap(self.pid, new.ifname, t.ifname,
                                      timeout)
                    r['renamed'] = True
                    r['new_ifname'] = t.ifname
                    r['rename_link_down_ms'] = round(down * 1000, 1)
                    self.log(f'netdev {t.id}: {new.ifname} renamed '
                             f'{t.ifname} (link down {down * 1000:.1f} ms)')
                except OnboardError as e:
                    r['renamed'] = False
                    r['rename_error'] = str(e)
                    self.log(f'netdev {t.id}: not renamed: {e}')
            out[t.id] = r
        self.new = {}
        self.close()
        return out
