#!/usr/bin/python3
"""make demo: migrate a running Linux guest to a new QEMU on the same host
under a ping flood, handing its TAP over with backend-transfer, and
report what happened.  With --upgrade-to, the new QEMU is another
version (the upgrade an operator does), and with --rollback the guest
then goes back to the first one, still under the flood."""

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
    ap.add_argument('--upgrade-to', metavar='QEMU',
                    help='the destination QEMU binary, another version')
    ap.add_argument('--rollback', action='store_true',
                    help='after the upgrade, hand the guest back to --qemu')
    ap.add_argument('--machine', default=None,
                    help='machine type (default: pc, or pc-i440fx-10.0 '
                         'with --upgrade-to)')
    ap.add_argument('--python-dir',
                    help="python/ of the QEMU tree --qemu was built from "
                         "(needed for installed binaries)")
    args = ap.parse_args()
    if args.rollback and not args.upgrade_to:
        ap.error('--rollback needs --upgrade-to')
    machine = args.machine or ('pc-i440fx-10.0' if args.upgrade_to else 'pc')

    netdev = None
    with ttlab.Lab(args.qemu, args.guest, python_dir=args.python_dir,
                   machine=machine) as lab:
        netdev = (f'tap-transfer,ifname=tt0,script={lab.ifup},'
                  'downscript=no')
        print(f'booting a Linux guest (TCG, -M {machine}) on -netdev '
              f'{netdev} ...')
        src = lab.boot(netdev, name='source')
        versions = [lab.version(src)]
        before = {'ifindex': lab.ifindex('tt0'), 'links': lab.links()}
        src_fds = len(src.tun_fds())

        hops = [args.upgrade_to or args.qemu]
        if args.rollback:
            hops.append(args.qemu)
        seconds = args.seconds + 2 * (len(hops) - 1)
        count = int(args.pps * seconds)
        print(f'ping flood: {count} pings at {args.pps}/s from the bridge; '
              f'migrating after 1.5 s ...')
        ping = lab.start_ping(count, 1 / args.pps)
        time.sleep(1.5)
        stats, same_file = [], True
        for i, qemu in enumerate(hops):
            if i:
                time.sleep(2)
            dst, st = lab.migrate(src, netdev, transfer=True,
                                  name=f'destination{i + 1}', qemu=qemu)
            stats.append(st)
            versions.append(lab.version(dst))
            same_file = same_file and dst.shares_tap_with(src)
            lab.retire(src)
            src = dst
        result = lab.ping_result(ping)
        after = {'ifindex': lab.ifindex('tt0'), 'links': lab.links()}
        new_links = sorted(set(after['links']) - set(before['links']))

        print()
        print('tap-transfer local migration report')
        print('-----------------------------------')
        for i, st in enumerate(stats):
            what = 'handover' if not args.upgrade_to else \
                ('upgrade' if i == 0 else 'rollback')
            print(f"{what:<21} QEMU {versions[i]} -> QEMU {versions[i + 1]}")
            print(f"  downtime            {st['downtime_ms']} ms")
            print(f"  total time          {st['total_ms']} ms")
        print(f"pings sent/received   {result['sent']}/{result['received']}"
              f"  (lost {result['lost']})")
        print(f"longest reply gap     {result['max_gap_ms']:.1f} ms")
        print(f"TAP tt0 ifindex       {before['ifindex']} before, "
              f"{after['ifindex']} after")
        print(f"TAP devices created   {len(new_links)}"
              f"{' ' + ', '.join(new_links) if new_links else ''}")
        print(f"TAP fds               source {src_fds}, destination "
              f"{len(src.tun_fds())}: "
              f"{'the same open files (kcmp), every hop' if same_file else 'NOT the same'}")
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
