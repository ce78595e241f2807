#!/usr/bin/python3
"""make bench SCALE=1: how the handover's cost grows, on the lab's real
guest (TCG), each point --runs times, the fd and shared-RAM points
--fd-runs times (min / median / max):

- fds: the guest's outage (the source's stop to the destination running,
  from both QEMUs' trace timestamps, in microseconds) and QEMU's
  migration total, with backend-transfer on (the same TAPs handed over)
  and off (the destination's own new TAPs: today's practice), for one
  NIC of 1 to 256 queues and four NICs up to 256 TAP fds, and with it on
  again with glibc's malloc on transparent huge pages (MALLOC_THP); the
  slopes fitted, in microseconds per fd; the tap-transfer and
  virtio-net sections' own times;
- RAM: the outage for 128 MiB to 8 GiB of RAM, shared (a file in
  /dev/shm, x-ignore-shared: only device state moves) and copied (for
  reference, up to what this machine holds);
- VMs per host: 1, 2, 4 and 8 daemonized VMs upgraded by one
  tap-transfer-upgrade with --parallel 1, 2 and 4: the whole command and
  each VM's downtime plus the time the command kept it stopped;
- the command's phases (its --json phases_ms), one VM.

Writes results.json and the tables (reStructuredText) to --out, and the
figures as PNGs to --figures."""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time

import ttlab

TRACE = ['vmstate_downtime_checkpoint', 'vm_state_notify',
         # the tap-transfer sections' own time, saved and loaded
         'savevm_section_start', 'savevm_section_end',
         'qemu_loadvm_state_section', 'qemu_loadvm_state_section_startfull',
         # each fd sent and received (QEMU's own, in qemu-file.c)
         'qemu_file_put_fd', 'qemu_file_get_fd']
# NICs x queues: one NIC with more and more queues (the fds grow, the
# devices do not), then four NICs up to the same 256 fds
FDS = ((1, 1), (1, 4), (1, 16), (1, 64), (1, 256), (4, 4), (4, 16), (4, 64))
# the fd sweep's guest RAM (shared, so the outage does not depend on
# it): a 128 MiB guest runs out of memory filling 64 rx queues
FD_MEM_MB = 2048
# glibc's switch backing malloc's heap with transparent huge pages: the
# destination allocates each virtqueue while it loads the device state,
# and without it takes a page fault per 4 KiB of them in the outage
MALLOC_THP = 'GLIBC_TUNABLES=glibc.malloc.hugetlb=1'
RAM_MB = (128, 512, 2048, 8192)
FLEET = ((1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (4, 4), (8, 1), (8, 2),
         (8, 4))
FD_GOAL_US = 20


def outage_us(src, dst):
    """The source's stop to the destination running, from the trace
    timestamps of both QEMUs (wall clock, microseconds)"""
    stop = next((ts for ts, _, rest in src.read_trace()
                 if rest == 'src-downtime-start'), None)
    run = [ts for ts, name, rest in dst.read_trace()
           if name == 'vm_state_notify' and rest.startswith('running 1')]
    if stop is None or not run:
        return None
    return round((run[0] - stop) * 1e6)


def sections_us(src, dst):
    """The time the tap-transfer sections (not their setup sections)
    took to save on the source plus to load on the destination, from
    their trace events, in microseconds: the part of the outage that is
    the handover's own"""
    total, begun = 0.0, {}
    for ts, name, rest in src.read_trace():
        idstr = rest.split(',')[0]
        if not idstr.endswith('/tap-transfer'):
            continue
        if name == 'savevm_section_start':
            begun[idstr] = ts
        elif name == 'savevm_section_end' and idstr in begun:
            total += ts - begun.pop(idstr)
    return round(total * 1e6) + loads_us(dst, '/tap-transfer')


def loads_us(dst, suffix):
    """The time the destination took to load the sections whose idstr
    ends with @suffix (each timed to the next section), microseconds"""
    total, start = 0.0, None
    for ts, name, rest in dst.read_trace():
        if start is not None and name.startswith('qemu_loadvm_state_section'):
            total += ts - start
            start = None
        if name == 'qemu_loadvm_state_section_startfull' and \
           f'{suffix})' in rest:
            start = ts
    return round(total * 1e6)


def fd_spacing_us(trace, event):
    """The mean time from one fd to the next in @trace's @event
    (qemu_file_put_fd or qemu_file_get_fd), in microseconds; None with
    fewer than two fds"""
    ts = [t for t, name, _ in trace if name == event]
    if len(ts) < 2:
        return None
    return round((ts[-1] - ts[0]) / (len(ts) - 1) * 1e6, 1)


def fit(xs, ys):
    """Least squares: (intercept, slope, worst point over the fit)"""
    n, sx, sy = len(xs), sum(xs), sum(ys)
    sxx, sxy = sum(x * x for x in xs), sum(x * y for x, y in zip(xs, ys))
    slope = (n * sxy - sx * sy) / (n * sxx - sx * sx)
    icpt = (sy - slope * sx) / n
    worst = max(y / (icpt + slope * x) for x, y in zip(xs, ys))
    return icpt, slope, worst


def hops(lab, vm, netdevs, transfer, runs, **kw):
    """@runs migrations of @vm, ping-pong, the destination on
    netdevs[i % 2]; [{outage_us, downtime_ms, total_ms}] and the VM"""
    out = []
    for i in range(runs):
        dst, st = lab.migrate(vm, netdevs[i % len(netdevs)],
                              transfer=transfer, trace=TRACE, **kw)
        out.append({'outage_us': outage_us(vm, dst),
                    'sections_us': sections_us(vm, dst),
                    'virtio_net_load_us': loads_us(dst, '/virtio-net'),
                    'put_fd_us': fd_spacing_us(vm.read_trace(),
                                               'qemu_file_put_fd'),
                    'get_fd_us': fd_spacing_us(dst.read_trace(),
                                               'qemu_file_get_fd'),
                    'downtime_ms': st['downtime_ms'],
                    'total_ms': st['total_ms']})
        lab.retire(vm)
        vm = dst
    return out, vm


def fd_sweep(args):
    points = []
    for nics, queues in FDS:
        p = {'fds': nics * queues, 'nics': nics, 'queues': queues}
        for env in ((), (MALLOC_THP,)):
            with ttlab.Lab(args.qemu, args.guest, mem=FD_MEM_MB,
                           shared_ram=True) as lab:
                net = (f'tap-transfer,ifname=t%s%%d,queues={queues},'
                       f'script={lab.ifup},downscript=no')
                opts = f',mq=on,vectors={2 * queues + 2}' if queues > 1 \
                    else ''
                kw = {'nics': nics, 'device_opts': opts, 'env': env}
                vm = lab.boot(net % 'a', timeout=300, trace=TRACE, **kw)
                if env:
                    p['on_thp'], vm = hops(lab, vm, [net % 'a'], True,
                                           args.fd_runs, **kw)
                    continue
                p['on'], vm = hops(lab, vm, [net % 'a'], True, args.fd_runs,
                                   **kw)
                # today's practice: each destination on TAPs of its own
                p['off'], vm = hops(lab, vm, [net % 'b', net % 'a'], False,
                                    args.fd_runs, **kw)
        print(f"fds {p['fds']} ({nics} x {queues}): outage us on "
              f"{mmm(p['on'], 'outage_us')}, on with malloc THP "
              f"{mmm(p['on_thp'], 'outage_us')}, off "
              f"{mmm(p['off'], 'outage_us')}; tap-transfer sections us "
              f"{mmm(p['on'], 'sections_us')}; us from one fd to the next: "
              f"sent {mmm(p['on'], 'put_fd_us')}, received "
              f"{mmm(p['on'], 'get_fd_us')}", flush=True)
        points.append(p)
    # least squares on the medians: one NIC (the fds alone grow) and
    # four; the whole outage, which also grows with each queue's device
    # state, and the tap-transfer sections alone
    fits = {}
    for nics in (1, 4):
        row = [p for p in points if p['nics'] == nics]
        for key in ('on', 'on_thp', 'sections'):
            ys = [med(p['on'], 'sections_us') if key == 'sections' else
                  med(p[key], 'outage_us') for p in row]
            icpt, slope, worst = fit([p['fds'] for p in row], ys)
            fits[f'{nics}:{key}'] = {'intercept_us': round(icpt),
                                     'slope_us_per_fd': round(slope, 2),
                                     'worst_over_fit': round(worst, 2)}
    return {'points': points, 'runs': args.fd_runs, 'mem_mb': FD_MEM_MB,
            'fits': fits}


def ram_sweep(args):
    points = []
    avail = ttlab_meminfo('MemAvailable')
    shm = os.statvfs('/dev/shm')
    shm_free = shm.f_bavail * shm.f_frsize
    for shared in (True, False):
        for mb in RAM_MB:
            # a copy needs room for both QEMUs' RAM; shared RAM, the file
            need = (mb << 20) * (1 if shared else 2) + (2 << 30)
            if need > avail or (shared and (mb << 20) > shm_free):
                print(f'RAM {mb} MiB {"shared" if shared else "copied"}: '
                      'skipped, does not fit', flush=True)
                continue
            with ttlab.Lab(args.qemu, args.guest, mem=mb,
                           shared_ram=shared) as lab:
                net = (f'tap-transfer,ifname=tr0,script={lab.ifup},'
                       'downscript=no')
                vm = lab.boot(net, timeout=300, trace=TRACE)
                runs, vm = hops(lab, vm, [net], True,
                                args.fd_runs if shared else args.runs)
            points.append({'mb': mb, 'shared': shared, 'runs': runs})
            print(f'RAM {mb} MiB {"shared" if shared else "copied"}: outage '
                  f"us {mmm(runs, 'outage_us')}, total ms "
                  f"{mmm(runs, 'total_ms')}", flush=True)
    return points


def ttlab_meminfo(field):
    with open('/proc/meminfo') as f:
        for line in f:
            k, _, v = line.partition(':')
            if k == field:
                return int(v.split()[0]) << 10
    return 0


def fleet_sweep(args):
    to = args.upgrade_to or args.qemu
    env = dict(os.environ,
               TAP_TRANSFER_QEMU_PYTHON=ttlab.qemu_python(args.qemu))
    points = []
    with ttlab.Lab(args.qemu, args.guest) as lab:
        vms = []
        for i in range(max(n for n, _ in FLEET)):
            netdev = (f'tap-transfer,ifname=tf{i},script={lab.ifup},'
                      'downscript=no')
            vms.append(lab.start_daemon(
                f'vm{i}', netdev, addr=f'10.0.0.{i + 2}',
                mac=ttlab.guest_mac(i)))
        for vm in vms:
            vm.wait_serial('tap-transfer guest ready')
        targets = [os.path.abspath(to), os.path.abspath(args.qemu)]
        # off the clock: one VM there and back, so that the command has
        # probed both binaries once (it caches what it learns of each:
        # a first use costs some 55 ms more in 'prepare')
        for target in targets:
            subprocess.run([ttlab.UPGRADE_TOOL, '--qmp', vms[0].qmp_path,
                            '--to', target, '--quiet'], env=env,
                           stdout=subprocess.DEVNULL, check=True)
        hop = 0
        for nvms, parallel in FLEET:
            runs = []
            for _ in range(args.runs):
                qmp = [a for vm in vms[:nvms] for a in ('--qmp', vm.qmp_path)]
                t0 = time.monotonic()
                r = subprocess.run([ttlab.UPGRADE_TOOL, *qmp, '--to',
                                    targets[hop % 2], '--parallel',
                                    str(parallel), '--json', '--quiet'],
                                   stdout=subprocess.PIPE, text=True,
                                   env=env, check=False)
                seconds = time.monotonic() - t0
                report = json.loads(r.stdout)
                reports = report.get('reports', [report])
                if r.returncode or not all(x['ok'] for x in reports):
                    raise ttlab.LabError('tap-transfer-upgrade failed: ' +
                                         '; '.join(str(x.get('error'))
                                                   for x in reports))
                runs.append({'seconds': round(seconds, 3),
                             'vms': [{'downtime_ms': x['downtime_ms'],
                                      'stopped_ms':
                                      x.get('stopped_after_migration_ms'),
                                      'command_ms': x['command_ms'],
                                      'phases_ms': x['phases_ms']}
                                     for x in reports]})
                # VMs not in this run stay where they were: move those
                # that are on the other binary along, off the clock
                hop += 1
                if nvms < len(vms):
                    rest = [a for vm in vms[nvms:]
                            for a in ('--qmp', vm.qmp_path)]
                    subprocess.run([ttlab.UPGRADE_TOOL, *rest, '--to',
                                    targets[(hop - 1) % 2], '--parallel',
                                    '4', '--quiet'], env=env,
                                   stdout=subprocess.DEVNULL, check=True)
            points.append({'vms': nvms, 'parallel': parallel, 'runs': runs})
            print(f"{nvms} VMs --parallel {parallel}: "
                  f"{mmm(runs, 'seconds')} s, downtime ms "
                  f"{mmm([v for r in runs for v in r['vms']], 'downtime_ms')}",
                  flush=True)
    return points


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def rounded(x):
    return 'n/a' if x is None else f'{x:.1f}'


def mmm(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    if not vals:
        return 'n/a'
    return (f'{min(vals):g} / {statistics.median(vals):g} / '
            f'{max(vals):g}')


def tables(res):
    fd = res['fds']
    hops_n = fd.get('runs', res.get('runs'))
    out = ['.. list-table:: Outage (us) and migration total (ms) against '
           f'the TAP fds handed over, min / median / max of {hops_n} '
           'hops; from one fd to the next (us, median)',
           '   :header-rows: 1', '',
           '   * - fds (NICs x queues)', '     - outage, backend-transfer on',
           '     - outage, on, malloc THP',
           '     - outage, off (new TAPs)',
           '     - tap-transfer sections (save + load), on',
           '     - virtio-net sections\' load, on',
           '     - one fd to the next, sent / received',
           '     - total ms, on', '     - total ms, off']
    for p in fd['points']:
        out += [f"   * - {p['fds']} ({p['nics']} x {p['queues']})",
                f"     - {mmm(p['on'], 'outage_us')}",
                f"     - {mmm(p['on_thp'], 'outage_us')}",
                f"     - {mmm(p['off'], 'outage_us')}",
                f"     - {mmm(p['on'], 'sections_us')}",
                f"     - {mmm(p['on'], 'virtio_net_load_us')}",
                f"     - {rounded(med(p['on'], 'put_fd_us'))} / "
                f"{rounded(med(p['on'], 'get_fd_us'))}",
                f"     - {mmm(p['on'], 'total_ms')}",
                f"     - {mmm(p['off'], 'total_ms')}"]
    out += ['', '.. list-table:: Fits on the medians (least squares; goal: '
            f'at most {FD_GOAL_US} us per fd, no point above 2 x the fit)',
            '   :header-rows: 1', '',
            '   * - NICs', '     - what', '     - us + us per fd',
            '     - worst point over the fit']
    what = {'on': 'outage, on', 'on_thp': 'outage, on, malloc THP',
            'sections': 'tap-transfer sections, on'}
    for key, f in fd['fits'].items():
        nics, kind = key.split(':')
        out += [f'   * - {nics}', f'     - {what[kind]}',
                f"     - {f['intercept_us']} + {f['slope_us_per_fd']}",
                f"     - {f['worst_over_fit']}"]
    out += ['',
            '.. list-table:: Outage (us) and migration total (ms) against '
            'RAM size, min / median / max (shared: of '
            f"{hops_n} hops, copied: of {res.get('runs')})",
            '   :header-rows: 1', '',
            '   * - RAM', '     - outage', '     - total ms']
    for p in res['ram']:
        how = 'shared' if p['shared'] else 'copied'
        out += [f"   * - {p['mb']} MiB, {how}",
                f"     - {mmm(p['runs'], 'outage_us')}",
                f"     - {mmm(p['runs'], 'total_ms')}"]
    out += ['', '.. list-table:: VMs per host: one tap-transfer-upgrade '
            'for all, min / median / max',
            '   :header-rows: 1', '',
            '   * - VMs', '     - --parallel', '     - whole command s',
            '     - each VM\'s downtime ms',
            '     - each VM\'s stop after the migration ms',
            '     - both: the guest stopped until the cont, ms']
    for p in res['fleet']:
        vms = [v for r in p['runs'] for v in r['vms']]
        out += [f"   * - {p['vms']}", f"     - {p['parallel']}",
                f"     - {mmm(p['runs'], 'seconds')}",
                f"     - {mmm(vms, 'downtime_ms')}",
                f"     - {mmm(vms, 'stopped_ms')}",
                f"     - {mmm([{'ms': seen(v)} for v in vms], 'ms')}"]
    phases = res['phases']
    out += ['', '.. list-table:: The command\'s phases, one VM, median ms',
            '   :header-rows: 1', '', '   * - phase', '     - ms']
    for k, v in phases.items():
        out += [f'   * - {k}', f'     - {v:g}']
    return '\n'.join(out) + '\n'


def phases(res):
    one = next(p for p in res['fleet'] if p['vms'] == 1)
    vms = [v for r in one['runs'] for v in r['vms']]
    out = {}
    for k in vms[0]['phases_ms']:
        out[k] = round(statistics.median(v['phases_ms'].get(k, 0)
                                         for v in vms), 1)
    out['command'] = round(statistics.median(v['command_ms'] for v in vms),
                           1)
    out['command without the destination\'s start and the migration'] = \
        round(statistics.median(
            v['command_ms'] - v['phases_ms'].get('destination', 0) -
            v['phases_ms'].get('migrate', 0) for v in vms), 1)
    return out


def seen(vm):
    """QEMU's downtime of @vm, and what its guest sees: that plus the
    time the command keeps it stopped until the cont"""
    return vm['downtime_ms'] + (vm.get('stopped_ms') or 0)


def gnuplot(script):
    subprocess.run(['gnuplot'], input='\n'.join(script), text=True,
                   check=True)


def figures(res, outdir, figdir):
    os.makedirs(figdir, exist_ok=True)
    fd = res['fds']
    plots = []
    for nics, pt in ((1, 7), (4, 5)):
        dat = os.path.join(outdir, f'fds-{nics}.dat')
        with open(dat, 'w') as f:
            for p in fd['points']:
                if p['nics'] == nics:
                    f.write(f"{p['fds']} {med(p['on'], 'outage_us')} "
                            f"{med(p['on_thp'], 'outage_us')} "
                            f"{med(p['off'], 'outage_us')} "
                            f"{med(p['on'], 'sections_us')}\n")
        nic = f'{nics} NIC' + ('s' if nics > 1 else '')
        plots += [f"'{dat}' using 1:2 with linespoints lc 1 pt {pt} title "
                  f"'{nic}: backend-transfer on'",
                  f"'{dat}' using 1:3 with linespoints lc 2 pt {pt} title "
                  f"'{nic}: on, malloc THP'",
                  f"'{dat}' using 1:4 with linespoints lc 3 pt {pt} title "
                  f"'{nic}: off, new TAPs (today)'",
                  f"'{dat}' using 1:5 with linespoints lc 4 pt {pt} title "
                  f"'{nic}: tap-transfer sections alone (on)'"]
    for key, lc in (('1:on', 1), ('1:on_thp', 2)):
        a, b = fd['fits'][key]['intercept_us'], \
            fd['fits'][key]['slope_us_per_fd']
        plots.append(f"{a} + {b} * x with lines dt 2 lc {lc} title "
                     f"'fit, 1 NIC: {a} + {b} us/fd'")
    a = fd['fits']['1:on_thp']['intercept_us']
    plots.append(f"{a} + {FD_GOAL_US} * x with lines dt 3 lc rgb 'red' "
                 f"title 'goal: {FD_GOAL_US} us/fd'")
    term = 'set terminal pngcairo size 900,560 font ",10"'
    gnuplot([term, f"set output '{figdir}/tap-transfer-scale-fds.png'",
             "set title 'guest outage against TAP fds handed over (median)'",
             "set xlabel 'TAP fds (NICs x queues)'", "set ylabel 'us'",
             'set logscale xy 2', 'set grid', 'set key top left',
             'plot ' + ', '.join(plots)])
    for shared in (True, False):
        with open(os.path.join(outdir, f'ram-{shared}.dat'), 'w') as f:
            for p in res['ram']:
                if p['shared'] == shared:
                    f.write(f"{p['mb']} {med(p['runs'], 'outage_us')}\n")
    base = next((med(p['runs'], 'outage_us') for p in res['ram']
                 if p['shared'] and p['mb'] == 128), 0)
    gnuplot([term, f"set output '{figdir}/tap-transfer-scale-ram.png'",
             "set title 'guest outage against RAM size (median)'",
             "set xlabel 'MiB'", "set ylabel 'us'", 'set logscale xy 2',
             'set grid', 'set key top left',
             f"plot '{outdir}/ram-True.dat' with linespoints pt 7 title "
             "'shared (x-ignore-shared)', "
             f"'{outdir}/ram-False.dat' with linespoints pt 5 title "
             "'copied', "
             f"{base + 1000} with lines dt 3 lc rgb 'red' title "
             "'goal: 128 MiB + 1 ms (shared)'"])
    ones = [v for p in res['fleet'] if p['vms'] == 1
            for r in p['runs'] for v in r['vms']]
    single = statistics.median(v['downtime_ms'] for v in ones)
    single_seen = statistics.median(seen(v) for v in ones)
    plots = []
    for par in (1, 2, 4):
        path = os.path.join(outdir, f'fleet-{par}.dat')
        with open(path, 'w') as f:
            for p in res['fleet']:
                if p['parallel'] == par:
                    vms = [v for r in p['runs'] for v in r['vms']]
                    f.write(f"{p['vms']} {med(vms, 'downtime_ms')} "
                            f"{max(v['downtime_ms'] for v in vms)} "
                            f"{max(seen(v) for v in vms)}\n")
        plots.append(f"'{path}' using 1:3 with linespoints lc {par} title "
                     f"'--parallel {par}: worst VM, QEMU downtime'")
        plots.append(f"'{path}' using 1:4 with linespoints dt 2 lc {par} "
                     f"title '--parallel {par}: worst VM, until the cont'")
    plots.append(f"{2 * single} with lines dt 3 lc rgb 'red' title "
                 "'goal: 2 x one VM alone (median), QEMU downtime'")
    plots.append(f"{2 * single_seen} with lines dt 4 lc rgb 'dark-red' "
                 "title 'goal: 2 x one VM alone (median), until the cont'")
    gnuplot([term, f"set output '{figdir}/tap-transfer-scale-vms.png'",
             'set title "each VM\'s downtime against VMs upgraded by one '
             'command"', "set xlabel 'VMs'", "set ylabel 'ms'",
             'set grid', 'set key top left', 'plot ' + ', '.join(plots)])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--qemu', required=True)
    ap.add_argument('--guest', required=True)
    ap.add_argument('--upgrade-to', metavar='QEMU')
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--fd-runs', type=int, default=10,
                    help='hops per point of the fd sweep and of shared RAM '
                    '(their goals, a few us per fd in ms of outage and 1 '
                    'ms between RAM sizes, need more than --runs)')
    ap.add_argument('--out', default='build/bench/scale')
    ap.add_argument('--figures', default='docs/devel/migration')
    ap.add_argument('--only', choices=['fds', 'ram', 'fleet'],
                    action='append')
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.monotonic()
    only = args.only or ['fds', 'ram', 'fleet']
    # --only: a part run again, the others kept from the last run
    path = os.path.join(args.out, 'results.json')
    res = {}
    if args.only and os.path.exists(path):
        with open(path) as f:
            res = json.load(f)
    res.update({'date': datetime.date.today().isoformat(),
                'machine': f'{platform.node()}, {os.cpu_count()} cores, '
                           f'{ttlab_meminfo("MemTotal") >> 30} GiB, guest '
                           'under TCG',
                'runs': args.runs})
    if 'fds' in only:
        res['fds'] = fd_sweep(args)
    if 'ram' in only:
        res['ram'] = ram_sweep(args)
    if 'fleet' in only:
        res['fleet'] = fleet_sweep(args)
        res['phases'] = phases(res)
    res['seconds'] = round(time.monotonic() - t0)
    with open(path, 'w') as f:
        json.dump(res, f, indent=1)
    if all(k in res for k in ('fds', 'ram', 'fleet')):
        with open(os.path.join(args.out, 'tables.rst'), 'w') as f:
            f.write(tables(res))
        figures(res, args.out, args.figures)
        print(tables(res))
    print(f"sweep: {res['seconds']} s; {args.out}/results.json")


if __name__ == '__main__':
    ttlab.run_main(main, 'scale')
