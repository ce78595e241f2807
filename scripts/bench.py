#!/usr/bin/python3
"""make bench: tap-transfer's handover against today's practice (a new TAP
attached to the bridge before migration, switched after), with ordinary
and with shared RAM (memory-backend-file in /dev/shm + x-ignore-shared);
plus a scale run, 16 NICs x 4 queues, downtime with backend-transfer on
vs off.  Prints tables, writes them and a PNG timeline to --out."""

import argparse
import os
import platform
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
        src = lab.boot(src_netdev, name='source')
        links = set(lab.links())
        ping = lab.start_ping(int(pps * seconds), 1 / pps)
        time.sleep(1.5)
        dst, stats = lab.migrate(src, dst_netdev, transfer=transfer,
                                 name='destination')
        created = len(set(lab.links()) - links)
        lab.retire(src)
        r = lab.ping_result(ping)
        return dict(stats, lost=r['lost'], max_gap_ms=r['max_gap_ms'],
                    taps_created=created, replies=r['replies'],
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


def mmm(values):
    values = [v for v in values if v is not None]
    if not values:
        return 'n/a'
    return (f'{min(values):.0f} / {statistics.median(values):.0f} / '
            f'{max(values):.0f}')


def plot(out, runs):
    data = []
    for name, r in runs:
        path = os.path.join(out, f"timeline-{name.split(',')[0].replace(' ', '-').replace('+', 'plus')}.dat")
        with open(path, 'w') as f:
            for ts, seq, rtt in r['replies']:
                f.write(f'{(ts - r["t0"]) * 1000:.1f} {rtt}\n')
        data.append((name, path))
    png = os.path.join(out, 'timeline.png')
    script = [
        'set terminal pngcairo size 1100,500' if has_cairo() else
        'set terminal png size 1100,500',
        f"set output '{png}'",
        "set title 'ping RTT across a local migration (500 pings/s, TCG guest)'",
        "set xlabel 'ms since migrate was issued'",
        "set ylabel 'RTT ms'", 'set logscale y', 'set grid',
        'plot ' + ', '.join(f"'{p}' using 1:2 with points pt 7 ps 0.4 "
                            f"title '{n}'" for n, p in data),
    ]
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
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

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
    report = '\n'.join(lines)
    print()
    print(report)
    with open(os.path.join(args.out, 'results.txt'), 'w') as f:
        f.write(report + '\n')


if __name__ == '__main__':
    main()
