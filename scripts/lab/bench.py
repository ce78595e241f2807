#!/usr/bin/python3
"""make bench: tap-transfer's handover against today's practice (a new TAP
attached to the bridge before migration, switched after), with ordinary
and with shared RAM (memory-backend-file in /dev/shm + x-ignore-shared);
plus a scale run, 16 NICs x 4 queues, downtime with backend-transfer on
vs off; plus the whole upgrade as the operator sees it, with
tools/tap-transfer-upgrade (from the command's start to its return, the
source gone and the paths put back), for 1 VM and for 3 VMs at
--parallel 1 and 2 (to --upgrade-to's QEMU, or the same one).  Prints
tables, writes them and a PNG timeline to --out."""

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import time

import ttlab

MODES = [
    ('tap-transfer', False, True),
    ('new TAP + switch', False, False),
    ('tap-transfer, shared RAM', True, True),
    ('new TAP + switch, shared RAM', True, False),
]
# wall-clock trace points for the timeline's outage window
TRACE = ['vmstate_downtime_checkpoint', 'vm_state_notify']
METRICS = [('downtime_ms', 'downtime ms'), ('total_ms', 'total ms'),
           ('lost', 'lost pings'), ('max_gap_ms', 'longest gap ms'),
           ('taps_created', 'TAPs created')]


def one_run(args, shared, transfer, pps=500, seconds=5):
    with ttlab.Lab(args.qemu, args.guest, shared_ram=shared) as lab:
        src_netdev = f'tap-transfer,ifname=tt0,script={lab.ifup},downscript=no'
        if transfer:
            dst_netdev = src_netdev
        else:
            # today's practice: the destination's own TAP, on the bridge
            # from the start; the old one goes with the source
            dst_netdev = (f'tap-transfer,ifname=tt1,script={lab.ifup},'
                          'downscript=no')
        src = lab.boot(src_netdev, name='source', trace=TRACE)
        links = set(lab.links())
        ping = lab.start_ping(int(pps * seconds), 1 / pps)
        time.sleep(1.5)
        dst, stats = lab.migrate(src, dst_netdev, transfer=transfer,
                                 name='destination', trace=TRACE)
        created = len(set(lab.links()) - links)
        lab.retire(src)
        r = lab.ping_result(ping)
        # the outage for the timeline: source stop -> destination running
        stop_at = next((ts for ts, name, rest in src.read_trace()
                        if rest == 'src-downtime-start'), None)
        running_at = next((ts for ts, name, rest in dst.read_trace()
                           if name == 'vm_state_notify'
                           and rest.startswith('running 1')), None)
        return dict(stats, lost=r['lost'], max_gap_ms=r['max_gap_ms'],
                    taps_created=created, replies=r['replies'],
                    lost_sent_at=sorted(r['sent_at'].values()),
                    stop_at=stop_at, running_at=running_at,
                    t0=stats['started_at'])


def scale_run(args, transfer):
    with ttlab.Lab(args.qemu, args.guest) as lab:
        netdev = (f'tap-transfer,ifname=ts%d,queues=4,script={lab.ifup},'
                  'downscript=no')
        dst_netdev = netdev if transfer else netdev.replace('ts%d', 'td%d')
        opts = ',mq=on,vectors=10'
        src = lab.start_vm(netdev, nics=16, device_opts=opts)
        src.wait_serial('tap-transfer guest ready')
        dst, stats = lab.migrate(src, dst_netdev, transfer=transfer,
                                 nics=16, device_opts=opts)
        assert len(dst.tun_fds()) == 64
        return stats['downtime_ms']


def operator_run(args, nvms, parallel):
    """Boot @nvms daemonized VMs (shared RAM, console log, QMP socket,
    pidfile), each pinged, and upgrade them all with one command:
    (wall-clock s of the command, [per-VM reports], lost pings)."""
    to = args.upgrade_to or args.qemu
    env = dict(os.environ,
               TAP_TRANSFER_QEMU_PYTHON=ttlab.qemu_python(args.qemu))
    with ttlab.Lab(args.qemu, args.guest) as lab:
        vms = []
        for i in range(nvms):
            addr = f'10.0.0.{i + 2}'
            netdev = (f'tap-transfer,ifname=tt{i},script={lab.ifup},'
                      'downscript=no')
            vms.append(lab.start_daemon(
                f'vm{i}', netdev, addr=addr,
                mac=ttlab.guest_mac(i)))
        for vm in vms:
            vm.wait_serial('tap-transfer guest ready')
        pings = []
        for i in range(nvms):
            lab.wait_ping(f'10.0.0.{i + 2}')
        for i in range(nvms):
            lab_addr = f'10.0.0.{i + 2}'
            pings.append(subprocess.Popen(
                ['ip', 'netns', 'exec', lab.ns, 'ping', '-n', '-i',
                 '0.01', '-w', '60', lab_addr], stdout=subprocess.PIPE,
                text=True))
        time.sleep(1)
        qmp = [a for vm in vms for a in ('--qmp', vm.qmp_path)]
        t0 = time.monotonic()
        r = subprocess.run([ttlab.UPGRADE_TOOL, *qmp, '--to', to, '--parallel',
                            str(parallel), '--json', '--quiet'],
                           stdout=subprocess.PIPE, text=True, env=env)
        seconds = time.monotonic() - t0
        report = json.loads(r.stdout)
        reports = report['reports'] if 'reports' in report else [report]
        if r.returncode:
            raise ttlab.LabError('tap-transfer-upgrade failed: ' + '; '.join(
                str(x.get('error')) for x in reports if not x['ok']))
        time.sleep(1)
        lost = 0
        for p in pings:
            p.send_signal(signal.SIGINT)
            out = p.communicate()[0]
            # unanswered before the last answered one (those still in
            # flight when ping stops do not count)
            seqs = {int(x) for x in re.findall(r'icmp_seq=(\d+)', out)}
            if not seqs:
                raise ttlab.LabError('a guest never answered its ping')
            lost += sum(1 for q in range(1, max(seqs)) if q not in seqs)
        return seconds, reports, lost


def mmm(values):
    values = [v for v in values if v is not None]
    if not values:
        return 'n/a'
    return (f'{min(values):.0f} / {statistics.median(values):.0f} / '
            f'{max(values):.0f}')


def plot(out, runs):
    """Two panels: the whole ping, and a close-up of the switchover.  Each
    reply is drawn at its send time (reply time - RTT), so the pings that
    waited out the outage stand inside it; lost pings are crosses at the
    top, also at their (estimated) send time; the shaded band of each mode
    is its outage, source stop -> destination running."""
    colours = ['#1f5fbf', '#d9480f', '#2b8a3e', '#862e9c']
    cairo = has_cairo()
    plots, shades = [], []
    lo, hi = [], []
    for i, (name, r) in enumerate(runs):
        slug = name.split(',')[0].replace(' ', '-').replace('+', 'plus')
        path = os.path.join(out, f'timeline-{slug}.dat')
        with open(path, 'w') as f:
            for ts, seq, rtt in r['replies']:
                f.write(f'{(ts - rtt / 1000 - r["t0"]) * 1000:.2f} {rtt}\n')
        colour = colours[i % len(colours)]
        plots.append(f"'{path}' using 1:2 with points pt 7 ps 0.35 "
                     f"lc rgb '{colour}' title '{name}: reply'")
        lost = os.path.join(out, f'timeline-{slug}-lost.dat')
        with open(lost, 'w') as f:
            for ts in r['lost_sent_at']:
                f.write(f'{(ts - r["t0"]) * 1000:.2f}\n')
        n = len(r['lost_sent_at'])
        # crosses in the top band of the plot, one row per mode
        mark = f"pt 2 ps 2.2 lw 2.5 lc rgb '{colour}'"
        lost_plot = (f"'{lost}' using 1:({0.95 - 0.05 * i}) axes x1y2 "
                     f'with points {mark}' if n else
                     f'keyentry with points {mark}')
        lost_plot += f" title '{name}: lost pings ({n})'"
        if r.get('stop_at') and r.get('running_at'):
            a = (r['stop_at'] - r['t0']) * 1000
            b = (r['running_at'] - r['t0']) * 1000
            lo.append(a)
            hi.append(b)
            fill = ('fs transparent solid 0.18 noborder' if cairo
                    else 'fs pattern 4 noborder')
            shades.append(f"set object {i + 1} rect from {a:.2f}, graph 0 "
                          f"to {b:.2f}, graph 1 behind fc rgb '{colour}' "
                          f"{fill}")
            # a key entry for the band
            plots.append(f"keyentry with boxes {fill} lc rgb '{colour}' "
                         f"title '{name}: stop -> destination running "
                         f"({b - a:.0f} ms)'")
        plots.append(lost_plot)
    png = os.path.join(out, 'timeline.png')
    every = ', '.join(plots)
    script = [
        'set terminal pngcairo size 1200,900 font ",10"' if cairo else
        'set terminal png size 1200,900',
        f"set output '{png}'",
        'set multiplot layout 2,1 title "ping RTT across a local migration '
        '(500 pings/s from the bridge, TCG guest, one run per mode)"',
        "set ylabel 'RTT ms'", 'set logscale y', 'set grid',
        'set y2range [0:1]', 'unset y2tics',
        'set key outside below maxrows 3',
        *shades,
        "set xlabel 'ms since migrate was issued (ping send time)'",
        "set title 'whole run'",
        'plot ' + every,
    ]
    if lo:
        script += [
            f'set xrange [{min(lo) - 60:.0f}:{max(hi) + 120:.0f}]',
            "set title 'close-up of the switchover'",
            'unset key',
            'plot ' + every,
        ]
    script.append('unset multiplot')
    subprocess.run(['gnuplot'], input='\n'.join(script), text=True,
                   check=True)
    return png


def has_cairo():
    r = subprocess.run(['gnuplot', '-e', 'set terminal'],
                       capture_output=True, text=True)
    return 'pngcairo' in r.stdout + r.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--qemu', required=True)
    ap.add_argument('--guest', required=True)
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--scale-runs', type=int, default=3)
    ap.add_argument('--out', default='build/bench')
    ap.add_argument('--upgrade-to', metavar='QEMU',
                    help='the QEMU the operator\'s upgrade goes to '
                    '(default: --qemu)')
    ap.add_argument('--only-operator', action='store_true',
                    help='only the operator\'s upgrade')
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    lines = []
    if not args.only_operator:
        lines = handover_bench(args)
    lines += operator_bench(args)
    report = '\n'.join(lines)
    print()
    print(report)
    with open(os.path.join(args.out, 'results.txt'), 'w') as f:
        f.write(report + '\n')


def operator_bench(args):
    rows = []
    for nvms, parallel in ((1, 1), (3, 1), (3, 2)):
        runs = []
        for i in range(args.runs):
            seconds, reports, lost = operator_run(args, nvms, parallel)
            print(f'operator, {nvms} VM(s), --parallel {parallel}, run '
                  f'{i + 1}: {seconds:.2f} s, downtimes '
                  f"{[r['downtime_ms'] for r in reports]} ms, lost {lost}",
                  flush=True)
            runs.append((seconds, reports, lost))
        rows.append((nvms, parallel, runs))
    to = args.upgrade_to or args.qemu
    old_build = os.path.basename(os.path.dirname(args.qemu))
    lines = ['', f'the upgrade as the operator sees it: tools/'
             f'tap-transfer-upgrade, {args.runs} runs, min / median / max; '
             f'daemonized VMs, shared RAM, {old_build}'
             f' -> {os.path.basename(os.path.dirname(to))}', '',
             '| VMs | --parallel | whole command ms (start to return, '
             'sources gone) | downtime ms (per VM) | command ms (per VM) '
             '| lost pings |',
             '|---|---|---|---|---|---|']
    for nvms, parallel, runs in rows:
        lines.append(
            f'| {nvms} | {parallel} | '
            f'{mmm([s * 1000 for s, _, _ in runs])} | '
            f"{mmm([r['downtime_ms'] for _, rs, _ in runs for r in rs])} | "
            f"{mmm([r['command_ms'] for _, rs, _ in runs for r in rs])} | "
            f'{sum(lost for _, _, lost in runs)} |')
    return lines


def handover_bench(args):
    results = {}
    for name, shared, transfer in MODES:
        results[name] = []
        for i in range(args.runs):
            r = one_run(args, shared, transfer)
            print(f"{name} run {i + 1}: downtime {r['downtime_ms']} ms, "
                  f"lost {r['lost']}, gap {r['max_gap_ms']:.0f} ms",
                  flush=True)
            results[name].append(r)

    lines = [f'tap-transfer bench: {args.runs} runs per mode, min / median / '
             f'max; {platform.node()}, {os.cpu_count()} cores, guest under '
             f'TCG, 128 MiB, ping -i 0.002 from the bridge', '']
    head = f"| {'mode':30} | " + ' | '.join(f'{t:>16}' for _, t in METRICS)
    lines += [head, '|' + '-' * (len(head) - 2) + '|']
    for name, _, _ in MODES:
        lines.append(f'| {name:30} | ' + ' | '.join(
            f'{mmm([r[k] for r in results[name]]):>16}' for k, _ in METRICS))
    lines.append('')
    for a, b in (('tap-transfer', 'new TAP + switch'),
                 ('tap-transfer, shared RAM', 'new TAP + switch, shared RAM')):
        ratios = []
        for k, t in METRICS[:4]:
            ma = statistics.median(r[k] for r in results[a])
            mb = statistics.median(r[k] for r in results[b])
            ratios.append(f'{t} {ma / mb:.2f}' if mb else f'{t} {ma}/{mb}')
        lines.append(f'{a} / {b} (medians): ' + ', '.join(ratios))

    scale = {}
    for transfer in (True, False):
        scale[transfer] = [scale_run(args, transfer)
                           for _ in range(args.scale_runs)]
    lines += ['', f'scale, 16 NICs x 4 queues (64 TAP fds), '
              f'{args.scale_runs} runs: downtime ms min / median / max: '
              f'backend-transfer on {mmm(scale[True])}, '
              f'off {mmm(scale[False])}']

    png = plot(args.out, [('tap-transfer', results['tap-transfer'][0]),
                          ('new TAP + switch',
                           results['new TAP + switch'][0])])
    lines += ['', f'timeline: {png}']
    return lines


if __name__ == '__main__':
    main()
