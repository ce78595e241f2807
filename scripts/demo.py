#!/usr/bin/python3
"""make demo: migrate a running Linux guest to a new QEMU on the same host
under a ping flood, handing its TAP over with backend-transfer, and
report what happened."""

import argparse
import sys
import time

import ttlab


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--qemu', required=True)
    ap.add_argument('--guest', required=True, help='guest kernel+initrd dir')
    ap.add_argument('--pps', type=int, default=500)
    ap.add_argument('--seconds', type=float, default=6)
    args = ap.parse_args()

    netdev = None
    with ttlab.Lab(args.qemu, args.guest) as lab:
        netdev = (f'tap-transfer,ifname=tt0,script={lab.ifup},'
                  'downscript=no')
        print(f'booting a Linux guest (TCG) on -netdev {netdev} ...')
        src = lab.boot(netdev, name='source')
        before = {'ifindex': lab.ifindex('tt0'), 'links': lab.links()}
        src_fds = len(src.tun_fds())

        count = int(args.pps * args.seconds)
        print(f'ping flood: {count} pings at {args.pps}/s from the bridge; '
              f'migrating after 1.5 s ...')
        ping = lab.start_ping(count, 1 / args.pps)
        time.sleep(1.5)
        dst, stats = lab.migrate(src, netdev, transfer=True,
                                 name='destination')
        same_file = dst.shares_tap_with(src)
        lab.retire(src)
        result = lab.ping_result(ping)
        after = {'ifindex': lab.ifindex('tt0'), 'links': lab.links()}
        new_links = sorted(set(after['links']) - set(before['links']))

        print()
        print('tap-transfer local migration report')
        print('-----------------------------------')
        print(f"downtime              {stats['downtime_ms']} ms")
        print(f"total migration time  {stats['total_ms']} ms")
        print(f"pings sent/received   {result['sent']}/{result['received']}"
              f"  (lost {result['lost']})")
        print(f"longest reply gap     {result['max_gap_ms']:.1f} ms")
        print(f"TAP tt0 ifindex       {before['ifindex']} before, "
              f"{after['ifindex']} after")
        print(f"TAP devices created   {len(new_links)}"
              f"{' ' + ', '.join(new_links) if new_links else ''}")
        print(f"TAP fds               source {src_fds}, destination "
              f"{len(dst.tun_fds())}: "
              f"{'the same open files (kcmp)' if same_file else 'NOT the same'}")
        ok = (result['lost'] == 0 and before['ifindex'] == after['ifindex']
              and not new_links and same_file)
        print(f"verdict               {'OK: same TAP, zero loss' if ok else 'NOT OK'}")
    return 0 if ok else 1


if __name__ == '__main__':
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print('interrupted; everything was cleaned up')
        sys.exit(130)
