"""What the command prints: one line per VM, the fleet's summary, and
the exit status."""

EXIT = {'upgraded': 0, 'dry-run': 0, 'nothing': 0, 'undone': 0,
        'finished': 0, 'failed': 1, 'interrupted': 1, 'refused': 2,
        'busy': 2, 'lost': 3, 'unfinished': 4}


def exit_status(r):
    return EXIT.get(r.get('status'), 1)


def one_line(r):
    """@r, a report, as one line"""
    q, st = r['qmp'], r.get('status')
    if r.get('recover'):
        return f"{q}: {r.get('message') or r.get('error')}"
    if st == 'dry-run':
        return f'{q}: dry run'
    if st in ('refused', 'busy'):
        return f"{q}: refused: {r.get('error')}"
    if st == 'failed':
        return f"{q}: FAILED, still on the source: {r.get('error')}"
    if st == 'interrupted':
        return f"{q}: interrupted, still on the source: {r.get('error')}"
    if st == 'lost':
        return f"{q}: LOST: {r.get('error')}"
    if st == 'unfinished':
        return (f"{q}: upgraded, not finished: {r.get('error')}; run "
                f"tap-transfer-upgrade --recover --qmp {q}")
    if r.get('onboarded'):
        ob = r.get('onboard', {})
        taps = ', '.join(f"{t['old_ifname']} -> {t['new_ifname']}"
                         for t in ob.get('taps', {}).values())
        return (f"{q}: onboarded: QEMU {r.get('old_version')} (pid "
                f"{r.get('old_pid')}) -tap-> QEMU {r.get('new_version')} (pid "
                f"{r.get('new_pid')}) on tap-transfer, new TAP(s) {taps}, "
                f"downtime {r.get('downtime_ms')} ms, command "
                f"{r.get('command_ms')} ms; the lossy hop: "
                f"{ob.get('old_tap_frames_lost')} frame(s) lost on the old "
                'TAP (its counters)')
    same = r.get('same_tap_kcmp')
    same = 'not compared' if same is None else ('yes' if same else 'NO')
    return (f"{q}: QEMU {r.get('old_version')} (pid {r.get('old_pid')}) -> "
            f"QEMU {r.get('new_version')} (pid {r.get('new_pid')}), "
            f"{r.get('mode')}, downtime {r.get('downtime_ms')} ms (+"
            f"{r.get('stopped_after_migration_ms')} ms checked while "
            f"stopped), migration {r.get('total_ms')} ms, command "
            f"{r.get('command_ms')} ms, {r.get('queues')} queue(s) handed "
            f"over, same TAP: {same}")


def summary_line(s):
    out = (f"{s['upgraded']} upgraded, {s['failed']} failed, "
           f"{s['refused']} refused")
    if s['never_tried']:
        out += f", {len(s['never_tried'])} never tried"
    return (out + f", of {s['vms']} VMs, --parallel {s['parallel']}, "
            f"{s['seconds']} s" +
            (f" (stopped: {s['stopped']})" if s.get('stopped') else ''))
