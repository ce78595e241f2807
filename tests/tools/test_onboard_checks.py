#!/usr/bin/env python3
"""What --onboard refuses to leave behind on the old TAP
(tools/tap_transfer/onboard.py not_carried()), against iproute2's and
nft's own output: the bridge's static entries for the port, locked/mab
ports, tc filters and firewall rules by the TAP's name; not the
entries the kernel keeps on the device itself.  Prints TAP."""

import json
import unittest

import taptest
from tap_transfer import onboard  # pylint: disable=wrong-import-order
from tap_transfer.onboard import TapAttrs

# `bridge -j fdb show brport tapx` of a port with one static entry made
# by management, and what the kernel adds by itself
FDB = [{'mac': '52:54:00:aa:bb:cc', 'flags': [], 'master': 'br0',
        'state': 'static'},
       {'mac': 'f6:ae:c5:da:ae:15', 'flags': [], 'master': 'br0',
        'state': 'permanent'},
       {'mac': '33:33:00:00:00:01', 'flags': ['self'], 'state': 'permanent'},
       {'mac': '01:00:5e:00:00:01', 'flags': ['self'], 'state': 'permanent'}]


class Host:
    """The answers of the commands not_carried() runs"""

    def __init__(self, fdb=(), tc='', nft=None, slave=None):
        self.fdb, self.tc, self.nft = list(fdb), tc, nft
        self.slave = slave or {}

    def run(self, pid, *args, check=True):
        del pid, check
        if args[:2] == ('bridge', '-j'):
            return json.dumps(self.fdb)
        if args[:2] == ('tc', 'filter'):
            return self.tc if args[-1] == 'ingress' else ''
        if args[0] == 'nft':
            return self.nft or ''
        return ''

    def link(self, pid, ifname):
        del pid, ifname
        return {'linkinfo': {'info_slave_data': self.slave}}


class NotCarried(unittest.TestCase):

    def check(self, host, nft=False):
        saved = (onboard._in_netns, onboard.link, onboard.shutil.which)
        onboard._in_netns, onboard.link = host.run, host.link
        onboard.shutil.which = lambda tool: tool == 'nft' and nft
        try:
            return onboard.not_carried(1, 'tapx', TapAttrs(
                ifname='tapx', address='f6:ae:c5:da:ae:15'))
        finally:
            onboard._in_netns, onboard.link, onboard.shutil.which = saved

    def test_nothing(self):
        """The kernel's own entries (the device's multicast ones, the
        bridge's for the port's address) are nothing to carry"""
        self.assertEqual(self.check(Host(FDB[1:])), [])

    def test_static_entry(self):
        self.assertEqual(self.check(Host(FDB)),
                         ['static FDB entries 52:54:00:aa:bb:cc'])

    def test_locked_port(self):
        self.assertEqual(self.check(Host(slave={'locked': True,
                                                'mab': False})),
                         ['bridge port option locked on'])

    def test_tc_and_nft(self):
        rules = 'table inet f {\n chain c {\n  iifname "tapx" drop\n }\n}\n'
        self.assertEqual(self.check(Host(tc='filter protocol all pref 1 '
                                         'u32 chain 0', nft=rules), nft=True),
                         ['tc filters (ingress)',
                          'nftables rules matching its name'])
        other = rules.replace('tapx', 'tapy')
        self.assertEqual(self.check(Host(nft=other), nft=True), [])


if __name__ == '__main__':
    taptest.main(NotCarried)
