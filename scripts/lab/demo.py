#!/usr/bin/python3
"""make demo: a VM shaped like a production one -- a qcow2 disk the guest
writes numbered, fsync'ed records to, its console logged to a file, QMP on
a UNIX socket, a pidfile, -daemonize, shared RAM -- on -netdev
tap-transfer in the lab's network namespace, under a ping flood from the
bridge.  tools/tap-transfer-upgrade moves it to --upgrade-to's QEMU and,
with --rollback, two seconds later back to the first one.  The report
is the command's, plus the ping and disk figures.  Without --upgrade-to:
one hop to the same binary."""

import argparse
import os
import time

import ttlab
from tap_transfer_host import describe_lost  # noqa: E402  (ttlab's path)


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
    ap.add_argument('--tool', default=ttlab.UPGRADE_TOOL,
                    help='the tap-transfer-upgrade command (default: this '
                         'checkout\'s)')
    ap.add_argument('--python-dir',
                    help="python/ of the QEMU tree --qemu was built from "
                         "(needed for installed binaries)")
    args = ap.parse_args()
    if args.rollback and not args.upgrade_to:
        ap.error('--rollback needs --upgrade-to')
    python_dir = args.python_dir or ttlab.qemu_python(args.qemu)
    env = dict(os.environ)
    if args.tool == ttlab.UPGRADE_TOOL:
        # this checkout's command, on the QEMU tree's python/
        env['TAP_TRANSFER_QEMU_PYTHON'] = python_dir
    else:
        # an installed one brings its own
        env.pop('TAP_TRANSFER_QEMU_PYTHON', None)

    ok = False
    with ttlab.Lab(args.qemu, args.guest, python_dir=python_dir,
                   shared_ram=True) as lab:
        qemu_img = lab.qemu_img()
        netdev = (f'tap-transfer,ifname=tt0,script={lab.ifup},'
                  'downscript=no')
        print(f'booting a Linux guest (TCG, -M pc, daemonized, qcow2 disk, '
              f'shared RAM) on -netdev {netdev} ...', flush=True)
        vm = lab.start_daemon('vm', netdev, disk_mb=16)
        vm.wait_serial('tap-transfer guest ready')
        lab.wait_ping()
        vm.wait_acks(5)
        before = {'ifindex': lab.ifindex('tt0'), 'links': lab.links()}

        hops = [args.upgrade_to or args.qemu]
        if args.rollback:
            hops.append(args.qemu)
        seconds = args.seconds + 2 * (len(hops) - 1)
        count = int(args.pps * seconds)
        print(f'ping flood: {count} pings at {args.pps}/s from the bridge; '
              'the guest writes a record to its disk every ~20 ms; '
              'upgrading after 1.5 s ...', flush=True)
        ping = lab.start_ping(count, 1 / args.pps)
        time.sleep(1.5)
        acked_before = len(vm.acked())
        reports = []
        for i, to in enumerate(hops):
            if i:
                time.sleep(2)
            reports.append(ttlab.run_upgrade(args.tool, env, vm, to))
        result = lab.ping_result(ping)
        final_pid = vm.pid()
        final_version = vm.cmd('query-version')['qemu']
        acked_after = len(vm.acked())
        vm.wait_acks(acked_after + 5)
        after = {'ifindex': lab.ifindex('tt0'), 'links': lab.links()}
        vm.quit()
        acked, missing, check = vm.check_disk(qemu_img)
        console = vm.console_text()
        new_links = sorted(set(after['links']) - set(before['links']))

        print()
        print('tap-transfer upgrade report (tools/tap-transfer-upgrade)')
        print('--------------------------------------------------------')
        for i, r in enumerate(reports):
            what = 'handover' if not args.upgrade_to else \
                ('upgrade' if i == 0 else 'rollback')
            mode = {'shared': 'shared RAM left in place (x-ignore-shared)',
                    'copy': 'RAM copied',
                    'cpr-transfer': 'cpr-transfer'}.get(r['mode'], r['mode'])
            print(f"{what:<21} QEMU {r['old_version']} (pid {r['old_pid']})"
                  f" -> QEMU {r['new_version']} (pid {r['new_pid']})")
            print(f"  mode                {mode}, machine {r['machine']}")
            print(f"  downtime            {r['downtime_ms']} ms")
            print(f"  migration           {r['total_ms']} ms")
            print(f"  command, all told   {r['command_ms']:.0f} ms")
            print(f"  TAP                 {r['queues']} queue(s) handed "
                  f"over; same open files (kcmp): "
                  f"{'yes' if r['same_tap_kcmp'] else 'NO'}; same ifindex: "
                  f"{'yes' if r['same_ifindex'] else 'NO'}")
        print(f"pings sent/received   {result['sent']}/{result['received']}"
              f"  (lost {describe_lost(result)})")
        print(f"longest reply gap     {result['max_gap_ms']:.1f} ms")
        print(f"disk records          {len(acked)} written and acked "
              f"({acked_before} before the upgrade, {acked_after} by the "
              f"end), {len(acked) - len(missing)} read back from the image "
              f"after the final quit")
        print(f"qemu-img check        "
              f"{'clean' if check.returncode == 0 else check.stdout.strip()}")
        # not truncated: the boot's line is still there, and records
        # acked after the rollback went to the same file
        console_ok = 'tap-transfer guest ready' in console and \
            len(acked) > acked_after
        console_kept = ('one file, from boot to the last record'
                        if console_ok else 'NOT kept')
        print(f"console log           "
              f"{console_kept}")
        v = final_version
        print(f"QMP socket, pidfile   same paths; QEMU {v['major']}."
              f"{v['minor']}.{v['micro']}, pid {final_pid}, answered there")
        print(f"TAP tt0 ifindex       {before['ifindex']} before, "
              f"{after['ifindex']} after")
        print(f"TAP devices created   {len(new_links)}"
              f"{' ' + ', '.join(new_links) if new_links else ''}")
        ok = (result['lost'] == 0 and before['ifindex'] == after['ifindex']
              and not new_links and not missing and check.returncode == 0
              and console_ok and all(r['same_tap_kcmp'] and
                                     r['same_ifindex'] for r in reports))
        verdict = ('OK: same TAP, zero loss, every record on disk'
                   if ok else 'NOT OK')
        print(f"verdict               "
              f"{verdict}")
    return 0 if ok else 1


if __name__ == '__main__':
    ttlab.run_main(main, 'demo')
