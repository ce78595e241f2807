#!/usr/bin/env python3
"""Does the guest survive a local migration with its RAM copied?

Boots the lab's guest (writing fsync'ed records to a qcow2 disk, under
a 500/s ping flood) on QEMU SRC with private RAM, migrates it once to a
new QEMU DST (-netdev tap on a new TAP on the same bridge, the source's
command line otherwise), and watches the destination's console for a
guest kernel oops.  One fresh boot per trial; one JSON line per trial.

No tap-transfer code runs unless DST is this project's QEMU: this is
the control for the guest oopses seen when onboarding from Debian's
stock QEMU 7.2 with RAM copied (docs/tools/tap-transfer-onboarding.rst),
e.g. stock 7.2 -> stock 7.2 with two vCPUs:

    ram-copy-repro.py --src STOCK72 --src-fw "$(cat .../firmware-args)" \\
        --dst STOCK72 --dst-fw "$(cat .../firmware-args)" --smp 2 --n 20
"""

import argparse
import json
import os
import shlex
import subprocess
import time

import ttlab

OOPS = ('BUG:', 'Oops', 'Kernel panic', 'general protection', 'RIP:')


def destination_args(vm, argv, d, dst_fw):
    """The source's QEMU options with its paths moved to directory @d,
    a new TAP (tB) and the destination's firmware, -incoming defer"""
    out, skip = [], False
    for a in argv[1:]:
        if skip or a == '-L':
            skip = not skip
            continue
        for old, new in ((vm.qmp_path, f'{d}/qmp.sock'),
                         (vm.pidfile, f'{d}/qemu.pid'),
                         (vm.console, f'{d}/console.log')):
            a = a.replace(old, new)
        out.append(a.replace('tap,ifname=tA', 'tap,ifname=tB'))
    return out + shlex.split(dst_fw) + ['-incoming', 'defer']


def trial(args, python_dir):
    res = {}
    with ttlab.Lab(args.src, args.guest, python_dir=python_dir,
                   machine=args.machine) as lab:
        vm = lab.start_daemon(
            'vm', f'tap,ifname=tA,script={lab.ifup},downscript=no',
            qemu=args.src, disk_mb=16, shared_ram=False,
            extra_args=shlex.split(args.src_fw) + ['-smp', str(args.smp)])
        vm.wait_serial('tap-transfer guest ready')
        lab.wait_ping()
        vm.wait_acks(5)
        ping = lab.start_ping(500 * 60, 1 / 500)
        time.sleep(1.5)

        with open(f'/proc/{vm.pid()}/cmdline', 'rb') as f:
            argv = [a.decode() for a in f.read().split(b'\0')[:-1]]
        d = os.path.join(lab.dir, 'dst')
        os.makedirs(d)
        r = subprocess.run(['nsenter', f'--net=/run/netns/{lab.ns}',
                            args.dst, *destination_args(vm, argv, d,
                                                        args.dst_fw)],
                           capture_output=True, text=True)
        if r.returncode:
            raise ttlab.LabError(f'destination: {r.stderr.strip()}')
        dst = ttlab.DaemonVm(lab, 'dst', d)
        lab.daemons.append(dst)

        uri = f'unix:{lab.dir}/mig.sock'
        dst.cmd('migrate-incoming', uri=uri)
        if args.pause is not None:
            # the onboarding command's way: it steers the bridge here
            vm.cmd('migrate-set-capabilities', capabilities=[
                {'capability': 'pause-before-switchover', 'state': True}])
        vm.cmd('migrate', uri=uri)
        while True:
            info = vm.cmd('query-migrate')
            if info['status'] == 'pre-switchover':
                time.sleep(args.pause)
                vm.cmd('migrate-continue', state='pre-switchover')
            if info['status'] in ('completed', 'failed', 'cancelled'):
                break
            time.sleep(0.01)
        res.update(status=info['status'], downtime_ms=info.get('downtime'))
        if info['status'] != 'completed':
            return res
        vm.quit()
        deadline = time.monotonic() + args.watch
        while (time.monotonic() < deadline and
               not any(o in dst.console_text() for o in OOPS)):
            time.sleep(0.2)
        text = dst.console_text()
        res['oops'] = any(o in text for o in OOPS)
        res['records_after'] = len(dst.acked())
        pings = lab.stop_ping(ping)
        res['pings_lost'] = pings['lost']
        res['pings_in_flight'] = pings['in_flight']
        if res['oops']:
            res['console_tail'] = text[-1500:]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--src', required=True, help='the source QEMU')
    ap.add_argument('--src-fw', default='', help="its -L options")
    ap.add_argument('--dst', required=True, help='the destination QEMU')
    ap.add_argument('--dst-fw', default='', help="its -L options")
    ap.add_argument('--machine', default='pc-i440fx-7.2',
                    help='a machine type both have')
    ap.add_argument('--smp', type=int, default=1, help='vCPUs')
    ap.add_argument('--pause', type=float, metavar='SECONDS',
                    help='pause-before-switchover, for this long')
    ap.add_argument('--n', type=int, default=10, help='trials')
    ap.add_argument('--watch', type=float, default=8,
                    help='seconds to watch the console after the hop')
    ap.add_argument('--guest', default=None,
                    help='guest directory (default: build-guest.sh)')
    ap.add_argument('--python-dir', required=True,
                    help="a QEMU tree's python/ (qemu.qmp, qemu.machine)")
    args = ap.parse_args()
    if not args.guest:
        here = os.path.dirname(os.path.abspath(__file__))
        args.guest = subprocess.run([f'{here}/guest/build-guest.sh'],
                                    check=True, capture_output=True,
                                    text=True).stdout.strip()
    oopses = 0
    for n in range(args.n):
        try:
            res = trial(args, args.python_dir)
        except ttlab.LabError as e:
            res = {'error': str(e)}
        oopses += bool(res.get('oops'))
        print(json.dumps({'trial': n, **res}), flush=True)
    print(json.dumps({'trials': args.n, 'oopses': oopses}))


if __name__ == '__main__':
    main()
