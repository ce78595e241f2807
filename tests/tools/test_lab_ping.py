#!/usr/bin/env python3
"""What the lab and the functional tests make of a ping flood's output
(tests/functional/tap_transfer_host.py): the replies, the one definition
of a lost ping, the longest reply gap, the send time estimates; and the
lab's commands as they are spelt.  On canned ping -D output: no network,
no root.  Prints TAP."""

import os
import sys
import unittest

import taptest
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', 'functional'))
# pylint: disable=wrong-import-position,wrong-import-order
import tap_transfer_host as host  # noqa: E402


def reply(ts, seq, rtt=0.5, dup=False):
    return (f'[{ts:.6f}] 64 bytes from 10.0.0.2: icmp_seq={seq} ttl=64 '
            f'time={rtt} ms{" (DUP!)" if dup else ""}\n')


def summary(sent, received, dups=0):
    extra = f', +{dups} duplicates' if dups else ''
    return (f'\n--- 10.0.0.2 ping statistics ---\n{sent} packets '
            f'transmitted, {received} received{extra}, '
            f'{100 * (sent - received) // sent}% packet loss, time 20ms\n'
            'rtt min/avg/max/mdev = 0.400/0.500/0.600/0.050 ms\n')


HEAD = 'PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n'


def flood(answered, sent, t0=1000.0, step=0.002, dups=(), outstanding=()):
    """ping -D output: replies to @answered (one every @step from @t0,
    by sequence number), another reply for each of @dups, -O's line
    for each of @outstanding, and the summary for @sent"""
    text = HEAD
    for seq in range(1, sent + 1):
        ts = t0 + seq * step
        if seq in answered:
            text += reply(ts, seq)
        if seq in dups:
            text += reply(ts + 0.0005, seq, dup=True)
        if seq in outstanding:
            text += f'[{ts:.6f}] no answer yet for icmp_seq={seq}\n'
    return text + summary(sent, len(set(answered)))


class Replies(unittest.TestCase):

    def test_parsed(self):
        text = HEAD + reply(1000.5, 1, 0.25) + reply(1000.75, 2, 12.5)
        self.assertEqual(host.ping_replies(text),
                         [(1000.5, 1, 0.25), (1000.75, 2, 12.5)])

    def test_not_replies(self):
        """-O's lines, errors, the summary: not replies"""
        text = (HEAD + '[1000.100000] no answer yet for icmp_seq=1\n'
                '[1000.200000] From 10.0.0.1 icmp_seq=2 Destination Host '
                'Unreachable\n' + summary(2, 0))
        self.assertEqual(host.ping_replies(text), [])

    def test_duplicate_kept(self):
        text = flood({1, 2}, 2, dups={2})
        self.assertEqual([seq for _, seq, _ in host.ping_replies(text)],
                         [1, 2, 2])


class Lost(unittest.TestCase):

    def test_none(self):
        r = host.ping_result(flood(set(range(1, 101)), 100))
        self.assertEqual((r['sent'], r['received'], r['lost'],
                          r['missing'], r['in_flight'], r['last']),
                         (100, 100, 0, [], 0, 100))
        self.assertEqual(host.describe_lost(r), '0')

    def test_which(self):
        answered = set(range(1, 101)) - {40, 41, 42, 77}
        r = host.ping_result(flood(answered, 100))
        self.assertEqual(r['missing'], [40, 41, 42, 77])
        self.assertEqual(r['lost'], 4)
        self.assertEqual(host.describe_lost(r, most=3), '4: 40, 41, 42, ...')

    def test_duplicate_hides_nothing(self):
        """A duplicate reply does not stand in for a lost ping"""
        answered = set(range(1, 11)) - {5}
        r = host.ping_result(flood(answered, 10, dups={6}))
        self.assertEqual(r['missing'], [5])
        self.assertEqual(r['duplicates'], 1)
        self.assertEqual(len(r['replies']), 10)     # 9 + the duplicate

    def test_finished_tail_lost(self):
        """A flood that ran its course waited for every ping: the
        unanswered ones at the end are lost too"""
        r = host.ping_result(flood(set(range(1, 8)), 10))
        self.assertEqual(r['missing'], [8, 9, 10])
        self.assertEqual(r['in_flight'], 0)

    def test_stopped_tail_in_flight(self):
        """A flood stopped early: the ones after the last reply were in
        flight, not lost; the ones before it are"""
        answered = set(range(1, 8)) - {3}
        r = host.ping_result(flood(answered, 10), stopped=True)
        self.assertEqual((r['missing'], r['last'], r['in_flight']),
                         ([3], 7, 3))

    def test_stopped_without_replies(self):
        r = host.ping_result(flood(set(), 5), stopped=True)
        self.assertEqual((r['missing'], r['last'], r['in_flight']),
                         ([], 0, 5))

    def test_outstanding_lines(self):
        """-O's lines for late replies change nothing"""
        answered = set(range(1, 11)) - {4}
        r = host.ping_result(flood(answered, 10, outstanding={4, 5}))
        self.assertEqual(r['missing'], [4])

    def test_no_summary(self):
        with self.assertRaises(host.PingError):
            host.ping_result(HEAD + reply(1000.0, 1))


class Gap(unittest.TestCase):

    def test_longest(self):
        """The longest gap spans the lost ones"""
        answered = set(range(1, 101)) - set(range(50, 60))
        r = host.ping_result(flood(answered, 100, step=0.002))
        self.assertAlmostEqual(r['max_gap_ms'], 22.0, places=3)

    def test_few_replies(self):
        self.assertEqual(host.longest_gap_ms([]), 0)
        self.assertEqual(host.longest_gap_ms([(1000.0, 1, 0.5)]), 0)

    def test_out_of_order(self):
        """A late reply printed after a later one's: gaps by time"""
        replies = [(1000.0, 1, 0.5), (1000.010, 3, 0.5), (1000.005, 2, 9)]
        self.assertAlmostEqual(host.longest_gap_ms(replies), 5.0, places=3)


class SentAt(unittest.TestCase):

    def test_between(self):
        """Interpolated between the answered neighbours' send times"""
        replies = [(1000.0105, 1, 0.5), (1000.0405, 4, 0.5)]
        est = host.sent_at(replies, [2, 3])
        self.assertAlmostEqual(est[2], 1000.020, places=6)
        self.assertAlmostEqual(est[3], 1000.030, places=6)

    def test_ends(self):
        """Before the first or after the last answered one: its time"""
        replies = [(1000.0105, 2, 0.5), (1000.0205, 3, 0.5)]
        est = host.sent_at(replies, [1, 5])
        self.assertAlmostEqual(est[1], 1000.010, places=6)
        self.assertAlmostEqual(est[5], 1000.020, places=6)
        self.assertEqual(host.sent_at([], [1]), {})

    def test_in_result(self):
        answered = set(range(1, 11)) - {5}
        r = host.ping_result(flood(answered, 10))
        self.assertEqual(sorted(r['sent_at']), [5])


class Spelling(unittest.TestCase):

    def test_ping_command(self):
        self.assertEqual(
            host.ping_command('ns1', '10.0.0.2', 100, 0.002, preload=4,
                              source='10.0.0.9', outstanding=True),
            ['ip', 'netns', 'exec', 'ns1', 'ping', '-n', '-D', '-i', '0.002',
             '-c', '100', '-W', '1', '-l', '4', '-I', '10.0.0.9', '-O',
             '10.0.0.2'])

    def test_bridge_setup(self):
        plain = host.bridge_setup('ns1')
        self.assertTrue(all(c[:4] == ['ip', 'netns', 'exec', 'ns1']
                            for c in plain))
        self.assertEqual(plain[-1][4:], ['ip', 'link', 'set', 'br0', 'up'])
        uplink = host.bridge_setup('ns1', uplink=True)
        self.assertEqual(len(uplink), len(plain) + 3)
        self.assertEqual(uplink[-1], plain[-1])

    def test_names(self):
        self.assertRegex(host.netns_name('tt-x'), rf'^tt-x-{os.getpid()}-\d+$')
        self.assertNotEqual(host.netns_name('tt-x'), host.netns_name('tt-x'))
        self.assertEqual(host.guest_mac(0), host.GUEST_MAC)
        self.assertEqual(host.guest_mac(2), '52:54:00:12:34:58')
        self.assertEqual(host.link_names(
            '1: lo: <LOOPBACK,UP> mtu 65536\n'
            '5: up0@up1: <BROADCAST> mtu 1500\n'), ['lo', 'up0'])


class Host(unittest.TestCase):

    def test_alive(self):
        self.assertTrue(host.alive(os.getpid()))
        self.assertFalse(host.alive(2 ** 22 + 1))   # above pid_max

    def test_tun_fds_none(self):
        self.assertEqual(host.tun_fds(os.getpid()), [])

    def test_kcmp(self):
        """The same open file through two fds; another file"""
        if os.uname().machine not in host.SYS_KCMP:
            with self.assertRaises(OSError):
                host.same_open_file(os.getpid(), 0, os.getpid(), 0)
            return
        r, w = os.pipe()
        dup = os.dup(r)
        try:
            try:
                same = host.same_open_file(os.getpid(), r, os.getpid(), dup)
            except OSError as e:
                self.skipTest(f'kcmp not allowed here: {e}')
            self.assertTrue(same)
            self.assertFalse(host.same_open_file(os.getpid(), r,
                                                 os.getpid(), w))
        finally:
            for fd in (r, w, dup):
                os.close(fd)


if __name__ == '__main__':
    taptest.main(Replies, Lost, Gap, SentAt, Spelling, Host)
