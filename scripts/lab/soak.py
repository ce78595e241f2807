#!/usr/bin/python3
"""make soak: many tap-transfer handovers of a real guest under a ping
flood, each one counted on its own.

Ping-pong between QEMU processes (A -> B -> A' ...), backend-transfer on,
every source quit right after its migration completed, as a user would.
Two modes:

  single queue   N handovers, ping -i 0.002 (500/s) from the bridge
  4 queues       N/2 handovers, multiqueue TAP, virtio-net-pci mq=on with
                 4 vCPUs so the guest uses all 4 queue pairs, shared RAM
                 (memory-backend-file,share=on + x-ignore-shared), ping
                 flood (-i 0: a new ping per reply) from several flows

Each handover gets a ping of its own, started before the migration and
stopped after the destination runs; a handover is "lossy" when any ping
whose later neighbours were answered got no reply.  The outage is split
with the QEMU trace events of both processes (log backend, wall-clock
timestamps): source stop -> state sent -> state loaded -> VM running ->
first frame delivered to the guest -> first reply back through the TAP.
Prints a report; writes it and all measurements to --out."""

import argparse
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import time

import ttlab

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# On in every QEMU for its whole life: cheap, a few lines per migration
TRACE_ALWAYS = ['vmstate_downtime_checkpoint', 'vm_state_notify',
                'tap_transfer_*']
# On in the destination only, from before the switchover until the end of
# the handover's ping: a few lines per frame
TRACE_WINDOW = ['virtqueue_pop', 'virtqueue_flush']

SPLIT = [
    ('stop', 'sent', 'source stop -> state sent (downtime)'),
    ('stop', 'ram', '  of which: stop -> last RAM sent'),
    ('ram', 'sent', '            last RAM -> device state sent'),
    ('sent', 'loaded', 'state sent -> state loaded'),
    ('loaded', 'running', 'state loaded -> VM running'),
    ('running', 'first_rx', 'VM running -> first frame to the guest'),
    ('first_rx', 'first_reply', 'first frame -> first reply on the TAP'),
    ('stop', 'first_reply', 'source stop -> first reply (outage)'),
]


class Mode:
    def __init__(self, key, title, queues, shared, interval, flows,
                 preload=None):
        self.key = key
        self.title = title
        self.queues = queues
        self.shared = shared
        self.interval = interval
        self.flows = flows
        self.preload = preload
        # one flow from the bridge's own address; more from more
        # addresses: the TAP steers by addresses, not by ICMP id
        self.sources = [None] if flows == 1 else [
            f'10.0.0.{11 + i}' for i in range(flows)]


def modes(args):
    return [
        (Mode('single-queue', 'single queue, ping -i 0.002 (500/s)', 1,
              False, 0.002, 1), args.n),
        (Mode('4-queues', f'4 queues, shared RAM, ping flood -i 0 x '
              f'{args.flows}', 4, True, 0, args.flows, args.preload),
         args.n // 2),
    ]


def parse_trace(events):
    """The points of a handover in one process's trace."""
    t = {}
    rx_vqs, tx_vqs = set(), set()
    for ts, name, rest in events:
        if name == 'vmstate_downtime_checkpoint':
            key = {'src-downtime-start': 'stop',
                   'src-iterable-saved': 'ram',
                   'src-non-iterable-saved': 'sent',
                   'src-downtime-end': 'downtime_end',
                   'dst-precopy-loadvm-completed': 'loaded'}.get(rest)
            if key:
                t[key] = ts
        elif name == 'vm_state_notify':
            if rest.startswith('running 1') and 'loaded' in t:
                t.setdefault('running', ts)
        elif name == 'tap_transfer_handover':
            t['handover'] = ts
            m = re.search(r'with (\d+) (?:queued|held)', rest)
            if m:
                t['handover_frames'] = int(m.group(1))
        elif name == 'tap_transfer_adopted':
            t['adopted'] = ts
        elif name == 'tap_transfer_tx_unsent':
            t['tx_unsent'] = t.get('tx_unsent', 0) + 1
        elif name == 'virtqueue_pop' and 'running' in t:
            m = re.match(r'vq (\S+) elem \S+ in_num (\d+) out_num (\d+)',
                         rest)
            if m and int(m.group(3)) == 0:
                rx_vqs.add(m.group(1))
            elif m:
                tx_vqs.add(m.group(1))
                if 'first_rx' in t:
                    t.setdefault('first_tx', ts)
        elif name == 'virtqueue_flush' and 'running' in t:
            vq = rest.split()[1]
            if vq in rx_vqs:
                t.setdefault('first_rx', ts)
                t.setdefault('rx_flushes', {}).setdefault(vq, 0)
                t['rx_flushes'][vq] += 1
    return t


def tap_drops(lab):
    """The TAP's own drop counters: frames the kernel dropped on the way
    to the guest (tx) and from it (rx)."""
    out = lab.nsrun('cat', '/sys/class/net/tt0/statistics/tx_dropped',
                    '/sys/class/net/tt0/statistics/rx_dropped', capture=True)
    tx, rx = (int(x) for x in out.split())
    return {'tx': tx, 'rx': rx}


def hop(lab, args, mode, vm, index, netdev, vm_kw):
    drops = tap_drops(lab)
    pings = [lab.start_ping(65000, mode.interval, mode.preload, source)
             for source in mode.sources]
    time.sleep(args.lead)

    window = TRACE_WINDOW if args.trace_frames else []

    def arm(dst):
        for pattern in window:
            dst.trace(pattern)

    dst, stats = lab.migrate(vm, netdev, transfer=True, before_switch=arm,
                             name=f'{mode.key}-{index}', **vm_kw)
    lab.retire(vm)                          # quit right after completion
    time.sleep(args.tail)
    stop_at = time.time()
    results = [lab.stop_ping(p) for p in pings]
    for pattern in window:
        dst.trace(pattern, False)
    drops = {k: v - drops[k] for k, v in tap_drops(lab).items()}

    # the source's log also has its own arrival, the hop before
    src_t, dst_t = parse_trace(vm.read_trace()), parse_trace(dst.read_trace())
    t = {k: src_t[k] for k in ('stop', 'ram', 'sent', 'downtime_end',
                               'handover', 'handover_frames', 'tx_unsent')
         if k in src_t}
    t.update({k: dst_t[k] for k in ('loaded', 'adopted', 'running',
                                    'first_rx', 'first_tx', 'rx_flushes')
              if k in dst_t})

    h = {'hop': index, 'downtime_ms': stats['downtime_ms'],
         'total_ms': stats['total_ms'], 'sent': 0, 'lost': 0,
         'lost_pings': [], 'max_gap_ms': 0}
    for flow, r in enumerate(results):
        last_ts = max((ts for ts, _, _ in r['replies']), default=0)
        if stop_at - last_ts > 0.5:
            raise ttlab.LabError(f'handover {index}: no ping reply in the '
                                 f'last {stop_at - last_ts:.1f} s; the guest '
                                 'stopped answering')
        # stopped floods: the pings up to the last answered one count,
        # the ones after it were still in flight
        h['sent'] += r['last']
        h['max_gap_ms'] = max(h['max_gap_ms'], r['max_gap_ms'])
        for seq in r['missing']:
            sent = r['sent_at'].get(seq)
            h['lost_pings'].append({
                'flow': flow, 'seq': seq, 'sent_at': sent,
                'after_stop_ms': (sent - t['stop']) * 1000
                if sent and 'stop' in t else None})
        if 'first_rx' in t:
            later = [ts for ts, _, _ in r['replies'] if ts >= t['first_rx']]
            if later:
                t['first_reply'] = min(later + [t.get('first_reply', 1e12)])
    h['lost'] = len(h['lost_pings'])
    h['times'] = t
    h['split_ms'] = {f'{a}-{b}': (t[b] - t[a]) * 1000
                     for a, b, _ in SPLIT if a in t and b in t}
    h['handover_frames'] = t.get('handover_frames')
    h['tx_unsent'] = t.get('tx_unsent', 0)
    h['rx_queues_used'] = len(t.get('rx_flushes', {}))
    h['tap_dropped'] = drops
    return dst, h


def run_mode(args, mode, n, log, hops):
    """Appends each handover to @hops as it is done."""
    # the copy of the binary is not in a build: QEMU's Python tooling comes
    # from the tree next to the original
    with ttlab.Lab(args.run_qemu, args.guest, shared_ram=mode.shared,
                   python_dir=ttlab.qemu_python(args.qemu)) as lab:
        netdev = f'tap-transfer,ifname=tt0,script={lab.ifup},downscript=no'
        vm_kw = {'trace': TRACE_ALWAYS}
        if mode.queues > 1:
            netdev += f',queues={mode.queues}'
            vm_kw['device_opts'] = f',mq=on,vectors={2 * mode.queues + 2}'
            # Linux uses as many queue pairs as it has CPUs
            vm_kw['extra_args'] = ['-smp', str(mode.queues)]
        for source in mode.sources:
            if source:
                lab.nsrun('ip', 'addr', 'add', f'{source}/24', 'dev', 'br0')
        vm = lab.boot(netdev, name=f'{mode.key}-0', **vm_kw)
        queues = len([q for q in lab.nsrun('ls', '/sys/class/net/tt0/queues',
                                           capture=True).split()
                      if q.startswith('tx-')])
        log(f'{mode.title}: guest up, TAP tt0 has {queues} attached '
            f'queue(s); {n} handovers')
        if queues != mode.queues:
            raise ttlab.LabError(f'the guest uses {queues} of '
                                 f'{mode.queues} queues')
        for i in range(1, n + 1):
            vm, h = hop(lab, args, mode, vm, i, netdev, vm_kw)
            hops.append(h)
            if h['lost'] or i % args.progress == 0 or i == n:
                lossy = sum(1 for x in hops if x['lost'])
                detail = ''
                if h['lost']:
                    detail = ' LOST ' + ', '.join(
                        f"seq {p['seq']}" + (
                            f" (sent {p['after_stop_ms']:+.1f} ms from "
                            'source stop)'
                            if p['after_stop_ms'] is not None else '')
                        for p in h['lost_pings'])
                dropped = h['tap_dropped']
                if dropped['tx'] or dropped['rx']:
                    detail += (f"; the TAP dropped {dropped['tx']} to / "
                               f"{dropped['rx']} from the guest")
                log(f"  {mode.key} {i}/{n}: downtime {h['downtime_ms']} ms, "
                    f"{h['sent']} pings, lost {h['lost']}; lossy so far "
                    f"{lossy}{detail}")


def mmm(values, fmt='.0f'):
    values = [v for v in values if v is not None]
    if not values:
        return 'n/a'
    return ' / '.join(format(v, fmt) for v in
                      (min(values), statistics.median(values), max(values)))


def build_id(qemu_dir):
    """Which sources a QEMU build was made from: the commit, and whether
    the prepared tree's copies of this project's files (the module, the
    channel check) differ from it; and the module's hash."""
    def git(*a):
        return subprocess.run(['git', '-C', REPO, *a], capture_output=True,
                              text=True).stdout
    head = git('rev-parse', '--short', 'HEAD').strip() or '?'
    tree = re.sub(r'-build$', '-src', qemu_dir)
    differ = []
    for path in git('ls-files', 'net/tap-transfer',
                    'migration/backend-transfer.c',
                    'migration/backend-transfer.h').split():
        try:
            with open(os.path.join(tree, path)) as f:
                if f.read() != git('show', f'HEAD:{path}'):
                    differ.append(path)
        except OSError:
            differ.append(path)
    last = git('log', '-1', '--format=%h', '--', 'net/tap-transfer',
               'migration/backend-transfer.c', 'migration/backend-transfer.h',
               'patches').strip()
    info = f'HEAD {head}; the build\'s copy of ' + (
        'net/tap-transfer/ and migration/backend-transfer.[ch] is as '
        f'committed (last changed in {last})' if not differ else
        f"{', '.join(differ)} differs from HEAD")
    module = os.path.join(qemu_dir, 'net-tap-transfer.so')
    if os.path.exists(module):
        with open(module, 'rb') as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        built = time.strftime('%Y-%m-%d %H:%M',
                              time.localtime(os.path.getmtime(module)))
        info += f'; net-tap-transfer.so built {built}, sha256 {digest}'
    return info


def snapshot(qemu, out):
    """A copy of the QEMU binary and its modules under @out, so that a
    rebuild during a long run changes nothing under it; its path and
    what it was built from."""
    src = os.path.dirname(os.path.abspath(qemu))
    snap = os.path.join(os.path.abspath(out), 'qemu')
    for attempt in range(30):
        before = build_id(src), os.path.getmtime(qemu)
        shutil.rmtree(snap, ignore_errors=True)
        os.makedirs(os.path.join(snap, 'modules'))
        shutil.copy2(qemu, snap)
        for so in glob.glob(os.path.join(src, '*.so')):
            shutil.copy2(so, os.path.join(snap, 'modules'))
        # firmware and data; its module links are not used, see below
        shutil.copytree(os.path.join(src, 'qemu-bundle'),
                        os.path.join(snap, 'qemu-bundle'), symlinks=True)
        if (build_id(src), os.path.getmtime(qemu)) == before:
            break
        time.sleep(10)                  # being rebuilt: try again
    else:
        raise ttlab.LabError(f'{qemu} keeps changing')
    # looked in before the bundle's module directory
    os.environ['QEMU_MODULE_DIR'] = os.path.join(snap, 'modules')
    return os.path.join(snap, os.path.basename(qemu)), before[0]


def report(args, build, done, failed):
    lines = [f'tap-transfer soak: {platform.node()}, {os.cpu_count()} cores, '
             'guest under TCG, 128 MiB; ping-pong handovers, '
             'backend-transfer on, source quit after each',
             f'build: {build}',
             'trace events: handover points in every QEMU; per-frame '
             '(virtqueue_pop/flush) in each destination until its ping ends'
             if args.trace_frames else 'trace events: handover points only '
             '(--no-trace-frames)', '']
    lines.append(f"{'mode':44} {'lossy/handovers':>15} {'lost':>5} "
                 f"{'pings':>8}  {'downtime ms':>12}  {'longest gap ms':>14}")
    for mode, hops in done:
        lossy = sum(1 for h in hops if h['lost'])
        lines.append(
            f"{mode.title:44} {f'{lossy}/{len(hops)}':>15} "
            f"{sum(h['lost'] for h in hops):>5} "
            f"{sum(h['sent'] for h in hops):>8}  "
            f"{mmm([h['downtime_ms'] for h in hops]):>12}  "
            f"{mmm([h['max_gap_ms'] for h in hops]):>14}")
    lines += ['', '(min / median / max per handover)']
    for mode, hops in done:
        lossy = [h for h in hops if h['lost']]
        if lossy:
            lines += ['', f'lossy handovers, {mode.title} (send times '
                      'estimated from the neighbours\'):']
            for h in lossy:
                lines.append(f"  #{h['hop']}: " + ', '.join(
                    f"seq {p['seq']}" + (
                        f" sent {p['after_stop_ms']:+.1f} ms from source stop"
                        if p['after_stop_ms'] is not None else '')
                    for p in h['lost_pings']))
    lines += ['', 'outage split from the trace events, ms, min / median / '
              'max over the handovers:']
    lines.append(f"{'':42}" + ''.join(f'{mode.key:>24}'
                                      for mode, _ in done))
    for a, b, title in SPLIT:
        row = f'{title:42}'
        for mode, hops in done:
            split = [h['split_ms'].get(f'{a}-{b}') for h in hops]
            row += f"{mmm(split, '.1f'):>24}"
        lines.append(row)
    row = f"{'frames carried by the module':42}"
    for mode, hops in done:
        frames = [h['handover_frames'] for h in hops]
        row += f"{mmm(frames)} ({sum(1 for f in frames if f)}x)".rjust(24)
    lines.append(row)
    row = f"{'guest frames dropped at the stop':42}"
    for mode, hops in done:
        row += f"{mmm([h['tx_unsent'] for h in hops]):>24}"
    lines.append(row)
    row = f"{'rx queues used after it':42}"
    for mode, hops in done:
        row += f"{mmm([h['rx_queues_used'] for h in hops]):>24}"
    lines.append(row)
    lines += ['',
              'stop, last RAM, state sent: the source\'s '
              'vmstate_downtime_checkpoint src-downtime-start, '
              'src-iterable-saved, src-non-iterable-saved;',
              'loaded: the destination\'s dst-precopy-loadvm-completed; '
              'QEMU\'s own downtime (query-migrate, in the table above) '
              'ends later, src-downtime-end;',
              'running: vm_state_notify running 1 on the destination; '
              'first frame: its first virtqueue_flush on an rx queue;',
              'first reply: the first echo reply ping received after that '
              '(ping -D).  One clock (gettimeofday) for all of them.',
              'frames carried: tap_transfer_handover\'s count, (Nx) in how '
              'many handovers; dropped: tap_transfer_tx_unsent events.']
    if failed:
        lines += ['', f'FAILED: {failed}']
    return '\n'.join(lines)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument('--qemu', required=True)
    ap.add_argument('--guest', required=True)
    ap.add_argument('--n', type=int, default=200,
                    help='single-queue handovers; half as many with 4 '
                    'queues (default 200)')
    ap.add_argument('--modes', default='single-queue,4-queues')
    ap.add_argument('--flows', type=int, default=4,
                    help='ping floods at once in the 4-queue mode')
    ap.add_argument('--preload', type=int, default=None,
                    help='pings kept in flight by each flood (ping -l)')
    ap.add_argument('--lead', type=float, default=0.3,
                    help='seconds of ping before each migration')
    ap.add_argument('--tail', type=float, default=0.4,
                    help='seconds of ping after the source quit')
    ap.add_argument('--no-trace-frames', dest='trace_frames',
                    action='store_false',
                    help='no per-frame trace events (virtqueue_*) on the '
                    'destination: the split then ends at VM running')
    ap.add_argument('--progress', type=int, default=10)
    ap.add_argument('--out', default='build/soak')
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    wanted = args.modes.split(',')

    def log(msg):
        print(msg, flush=True)

    done, failed = [], None
    started = time.time()
    args.run_qemu, build = snapshot(args.qemu, args.out)
    log(f'running a copy of {args.qemu}: {build}')
    try:
        for mode, n in modes(args):
            if mode.key in wanted and n > 0:
                done.append((mode, []))
                run_mode(args, mode, n, log, done[-1][1])
    except ttlab.LabError as e:
        failed = f'{e} (after {len(done[-1][1])} handovers of {mode.key})'
        log(f'soak failed: {failed}')
    text = report(args, build, done, failed)
    with open(os.path.join(args.out, 'soak.txt'), 'w') as f:
        f.write(text + '\n')
    with open(os.path.join(args.out, 'soak.json'), 'w') as f:
        json.dump({'build': build, 'args': vars(args),
                   'seconds': time.time() - started, 'failed': failed,
                   'modes': [{'mode': m.key, 'title': m.title,
                              'handovers': len(hops),
                              'lossy': sum(1 for h in hops if h['lost']),
                              'lost': sum(h['lost'] for h in hops),
                              'hops': hops} for m, hops in done]},
                  f, indent=1)
    print()
    print(text)
    print(f"\nwritten: {os.path.join(args.out, 'soak.txt')}, soak.json")
    lossy = any(h['lost'] for _, hops in done for h in hops)
    return 1 if failed or lossy else 0


if __name__ == '__main__':
    ttlab.run_main(main, 'soak')
