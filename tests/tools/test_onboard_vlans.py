#!/usr/bin/env python3
"""The VLAN part of onboarding (tools/tap_transfer/onboard.py), against
iproute2's own JSON.

A bridge port's VLAN memberships only exist on a kernel built with
CONFIG_BRIDGE_VLAN_FILTERING, and the kernels the end-to-end tests run
on may lack it ("ip link set BR type bridge vlan_filtering 1" fails with
EOPNOTSUPP).  So these cases replace the commands that read and write a
port's VLANs (`bridge -j vlan show`, `bridge vlan add/del`) with a fake
bridge that answers in the format of iproute2's bridge(8) and records
what it is told, and check that a new port ends up with exactly the old
port's VLANs.  Prints TAP.
"""

import json
import unittest

import taptest
from tap_transfer import onboard  # pylint: disable=wrong-import-order


class FakeBridge:
    """The VLAN table of a VLAN-filtering bridge's ports, behind
    onboard._in_netns(); links, what onboard.link() reads"""

    def __init__(self, ports, links=None):
        # ifname -> {vid: (pvid, untagged)}
        self.ports = {p: dict(v) for p, v in ports.items()}
        self.links = links or {}
        self.calls = []

    def run(self, pid, *args, check=True):
        del pid, check
        self.calls.append(args)
        if args[:4] == ('bridge', '-j', 'vlan', 'show'):
            return self.show()
        if args[:2] == ('bridge', 'vlan'):
            return self.change(args)
        raise AssertionError(f'unexpected command: {args}')

    def show(self):
        """`bridge -j vlan show`, consecutive VIDs with the same flags
        folded into one range as the kernel reports them; every port's
        entry, so that the reader must pick its own"""
        return json.dumps([e for e in map(self.port_entry, self.ports)
                           if e]) + '\n'

    def port_entry(self, ifname):
        vlans = []
        for vid in sorted(self.ports[ifname]):
            pvid, untagged = self.ports[ifname][vid]
            flags = (['PVID'] if pvid else []) + \
                (['Egress Untagged'] if untagged else [])
            last = vlans[-1] if vlans else None
            if (last and not pvid and last.get('flags', []) == flags and
                    last.get('vlanEnd', last['vlan']) == vid - 1):
                last['vlanEnd'] = vid
                continue
            entry = {'vlan': vid}
            if flags:
                entry['flags'] = flags
            vlans.append(entry)
        return {'ifname': ifname, 'vlans': vlans} if vlans else None

    def change(self, args):
        op, ifname, vids = args[2], args[4], args[6]
        first, _, last = vids.partition('-')
        rng = range(int(first), int(last or first) + 1)
        # bridge(8): "master", the bridge's VLAN table, is the default
        assert 'self' not in args, 'a port VLAN is set on the bridge'
        table = self.ports[ifname]
        if op == 'del':
            for vid in rng:
                table.pop(vid)
        else:
            pvid = 'pvid' in args
            if pvid:
                # one PVID per port: a new one replaces the old
                for vid, (p, u) in table.items():
                    table[vid] = (False, u)
            for vid in rng:
                table[vid] = (pvid, 'untagged' in args)
        return ''


class OnboardVlans(unittest.TestCase):
    def setUp(self):
        self.saved = onboard._in_netns, onboard.link

    def tearDown(self):
        onboard._in_netns, onboard.link = self.saved

    def use(self, fake):
        onboard._in_netns = fake.run
        onboard.link = lambda pid, ifname: fake.links.get(ifname)

    def test_read(self):
        """Ranges, the PVID and egress-untagged flags, from iproute2's
        JSON; the other ports' entries ignored"""
        fake = FakeBridge({
            'tap0': {1: (False, True), 10: (True, True), 20: (False, False),
                     21: (False, False), 22: (False, False)},
            'tap1': {30: (True, True)},
            'tap2': {},
        })
        self.use(fake)
        self.assertEqual(onboard.bridge_vlans(1, 'tap0'),
                         [(1, 1, False, True), (10, 10, True, True),
                          (20, 22, False, False)])
        self.assertEqual(onboard.bridge_vlans(1, 'tap1'),
                         [(30, 30, True, True)])
        self.assertEqual(onboard.bridge_vlans(1, 'tap2'), [])

    def test_copy(self):
        """The new port loses the bridge's default VLAN 1 and gets the
        old port's VLANs, flags and all"""
        old = {10: (True, True), 20: (False, False), 21: (False, False),
               100: (False, True)}
        fake = FakeBridge({'tap0': old, 'tap0n': {1: (True, True)}})
        self.use(fake)
        onboard.copy_vlans(1, 'tap0n', onboard.bridge_vlans(1, 'tap0'))
        self.assertEqual(fake.ports['tap0n'], old)
        self.assertEqual(fake.ports['tap0'], old)

    def test_copy_keeps_vlan_1(self):
        """A port that is in VLAN 1 as a tagged member (not the bridge's
        default) keeps it exactly so"""
        old = {1: (False, False), 5: (True, True)}
        fake = FakeBridge({'tap0': old, 'tap0n': {1: (True, True)}})
        self.use(fake)
        onboard.copy_vlans(1, 'tap0n', onboard.bridge_vlans(1, 'tap0'))
        self.assertEqual(fake.ports['tap0n'], old)

    def test_copy_none(self):
        """A port in no VLAN: the new one ends up in none either"""
        fake = FakeBridge({'tap0': {}, 'tap0n': {1: (True, True)}})
        self.use(fake)
        onboard.copy_vlans(1, 'tap0n', onboard.bridge_vlans(1, 'tap0'))
        self.assertEqual(fake.ports['tap0n'], {})

    def read_tap(self, vlan_filtering):
        fake = FakeBridge({'tap0': {7: (True, True)}}, links={
            'tap0': {'ifindex': 5, 'mtu': 1500, 'flags': ['UP'],
                     'master': 'br0',
                     'linkinfo': {'info_kind': 'tun',
                                  'info_data': {'type': 'tap',
                                                'vnet_hdr': True},
                                  'info_slave_kind': 'bridge',
                                  'info_slave_data': {}}},
            'br0': {'ifindex': 2, 'linkinfo': {
                'info_kind': 'bridge',
                'info_data': {'vlan_filtering': vlan_filtering}}},
        })
        self.use(fake)
        return onboard.read_tap(1, 'tap0').vlans

    def test_read_tap(self):
        """The port's VLANs are read where the bridge filters VLANs, and
        only there (None: nothing to copy)"""
        self.assertEqual(self.read_tap(1), [(7, 7, True, True)])
        self.assertIsNone(self.read_tap(0))


if __name__ == '__main__':
    taptest.main(OnboardVlans)
