#!/usr/bin/python3
"""make demo ONBOARD=1: the production-shaped VM of make demo (qcow2 disk
with fsync'ed records, console log, QMP socket, pidfile, -daemonize,
shared RAM), booted on Debian's stock QEMU 7.2 with -netdev tap, under a
ping flood from the bridge.  tools/tap-transfer-upgrade --onboard moves
it onto this project's QEMU (--qemu) and -netdev tap-transfer on a new
TAP: the one lossy hop.  Then the command upgrades it to --upgrade-to
and rolls it back, handing the TAP over: no ping lost.  The report is
the command's, with the pings of each part and the disk figures."""

import argparse
import os
import shlex
import time

import ttlab


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--stock', required=True,
                    help='the stock QEMU binary (fetch-stock-qemu.sh)')
    ap.add_argument('--stock-fw', default='',
                    help='its -L options (firmware-args)')
    ap.add_argument('--qemu', required=True,
                    help='this project\'s QEMU the VM is onboarded to')
    ap.add_argument('--upgrade-to', metavar='QEMU',
                    help='then upgrade to this one and roll back')
    ap.add_argument('--guest', required=True, help='guest kernel+initrd dir')
    ap.add_argument('--keep-name', action='store_true',
                    help='rename the new TAP to the old name')
    ap.add_argument('--qemu-img', help='default: qemu-img on PATH')
    ap.add_argument('--pps', type=int, default=500)
    args = ap.parse_args()
    python_dir = ttlab.qemu_python(args.qemu)
    env = dict(os.environ, TAP_TRANSFER_QEMU_PYTHON=python_dir)

    ok = False
    with ttlab.Lab(args.qemu, args.guest, python_dir=python_dir,
                   shared_ram=True) as lab:
        qemu_img = args.qemu_img or lab.qemu_img()
        netdev = f'tap,ifname=tt0,script={lab.ifup},downscript=no'
        print(f'booting a Linux guest on stock QEMU ({args.stock}), -M pc, '
              f'daemonized, qcow2 disk, shared RAM, -netdev {netdev} ...',
              flush=True)
        vm = lab.start_daemon('vm', netdev, qemu=args.stock, disk_mb=16,
                              extra_args=shlex.split(args.stock_fw))
        vm.wait_serial('tap-transfer guest ready')
        lab.wait_ping()
        vm.wait_acks(5)
        links = lab.links()

        print(f'ping flood at {args.pps}/s; onboarding after 1.5 s ...',
              flush=True)
        ping = lab.start_ping(args.pps * 60, 1 / args.pps)
        time.sleep(1.5)
        acked_before = len(vm.acked())
        extra = ['--onboard'] + (['--keep-name'] if args.keep_name else [])
        onboarding = ttlab.run_upgrade(ttlab.UPGRADE_TOOL, env, vm,
                                       args.qemu, *extra)
        time.sleep(1.5)
        onboard_ping = lab.stop_ping(ping)

        reports = []
        if args.upgrade_to:
            print('ping flood; upgrade, and rollback 2 s later ...',
                  flush=True)
            ping = lab.start_ping(args.pps * 60, 1 / args.pps)
            time.sleep(1.5)
            reports.append(ttlab.run_upgrade(ttlab.UPGRADE_TOOL, env, vm,
                                             args.upgrade_to))
            time.sleep(2)
            reports.append(ttlab.run_upgrade(ttlab.UPGRADE_TOOL, env, vm,
                                             args.qemu))
            time.sleep(1.5)
            handover_ping = lab.stop_ping(ping)
        final_pid = vm.pid()
        final_version = vm.cmd('query-version')['qemu']
        acked_after = len(vm.acked())
        vm.wait_acks(acked_after + 5)
        links_after = lab.links()
        vm.quit()
        acked, missing, check = vm.check_disk(qemu_img)

        print()
        print('tap-transfer onboarding report (tools/tap-transfer-upgrade)')
        print('-----------------------------------------------------------')
        r = onboarding
        tap = r['onboard']['taps']['n0']
        lost = onboard_ping['missing']
        print(f"onboarding            QEMU {r['old_version']} (pid "
              f"{r['old_pid']}) -tap-> QEMU {r['new_version']} (pid "
              f"{r['new_pid']}), machine {r['machine']}")
        print(f"  downtime            {r['downtime_ms']} ms; command "
              f"{r['command_ms']:.0f} ms")
        renamed = (', renamed, link down %s ms' % tap['rename_link_down_ms']
                   if tap.get('renamed') else '')
        print(f"  TAP                 new {tap['new_ifname']} (ifindex "
              f"{tap['new_ifindex']}) for {tap['old_ifname']} (ifindex "
              f"{tap['old_ifindex']}), {tap['queues']} queue(s)"
              f"{renamed}")
        print(f"  the lossy hop       {len(lost)} ping(s) lost of "
              f"{onboard_ping['sent']}; {tap.get('old_tap_lost')} frame(s) "
              f"lost on the old TAP (its counters); longest reply gap "
              f"{onboard_ping['max_gap_ms']:.1f} ms")
        hop_lost = []
        for i, r in enumerate(reports):
            print(f"{'upgrade' if i == 0 else 'rollback':<21} QEMU "
                  f"{r['old_version']} (pid {r['old_pid']}) -> QEMU "
                  f"{r['new_version']} (pid {r['new_pid']}), {r['mode']}, "
                  f"downtime {r['downtime_ms']} ms, TAP handed over: same "
                  f"open files {'yes' if r['same_tap_kcmp'] else 'NO'}, same "
                  f"ifindex {'yes' if r['same_ifindex'] else 'NO'}")
        if reports:
            hop_lost = handover_ping['missing']
            print(f"  pings               {len(hop_lost)} lost of "
                  f"{handover_ping['sent']} over both; longest reply gap "
                  f"{handover_ping['max_gap_ms']:.1f} ms")
        print(f"links                 before {', '.join(links)}; at the end "
              f"{', '.join(links_after)}")
        print(f"disk records          {len(acked)} acked ({acked_before} "
              f"before the onboarding, {acked_after} by the end), "
              f"{len(acked) - len(missing)} read back after the final quit")
        print(f"qemu-img check        "
              f"{'clean' if check.returncode == 0 else check.stdout.strip()}")
        v = final_version
        print(f"QMP socket, pidfile   same paths; QEMU {v['major']}."
              f"{v['minor']}.{v['micro']}, pid {final_pid}, answered there")
        ok = (not missing and check.returncode == 0 and not hop_lost and
              all(r['same_tap_kcmp'] and r['same_ifindex'] for r in reports))
        verdict = ('OK: onboarded (one lossy hop), then zero loss, every '
                   'record on disk' if ok else 'NOT OK')
        print(f"verdict               "
              f"{verdict}")
    return 0 if ok else 1


if __name__ == '__main__':
    ttlab.run_main(main, 'demo')
