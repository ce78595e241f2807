"""tap-transfer-upgrade's command line."""

import argparse
import glob
import json
import os
import shlex

from .fleet import run_fleet, worker_command
from .handover import PROG, Settings, Signals, Upgrade
from .plan import Options
from .recover import Recovery
from .report import exit_status, one_line
from .system import LocalSystem


def parser():
    ap = argparse.ArgumentParser(
        prog=PROG, description='Move running VMs to another QEMU binary on '
        'this host, handing their TAP devices over (tap-transfer).  The '
        'new QEMU runs as the old one did (user, groups, capabilities, '
        'cgroups, namespaces, limits, environment) and takes the guest '
        'only once everything was checked; any failure or signal before '
        'that leaves the VM on its QEMU.')
    ap.add_argument('--qmp', action='append', required=True,
                    metavar='PATH', help='the VM\'s QMP UNIX socket; '
                    'repeat it or give a glob for many VMs')
    ap.add_argument('--to', metavar='QEMU',
                    help='the QEMU binary to run the VM on')
    ap.add_argument('--recover', action='store_true',
                    help='finish or undo a run on the VM at --qmp that '
                    'was killed (it left a journal in /run/tap-transfer)')
    ap.add_argument('--mode', default='auto',
                    choices=['auto', 'shared', 'copy', 'cpr-transfer'],
                    help='shared: precopy with x-ignore-shared (RAM in a '
                    'shared file stays in place); copy: precopy, RAM '
                    'copied; cpr-transfer: memfd RAM kept in place; auto '
                    '(default): chosen from the VM\'s memory backends')
    ap.add_argument('--extra-args', metavar='ARGS',
                    help='QEMU options for the destination, for what was '
                    'added at run time (netdev_add, device_add)')
    ap.add_argument('--parallel', type=int, default=1, metavar='N',
                    help='upgrade N VMs at a time (default 1); their '
                    'migrations, and so their stops, take turns')
    ap.add_argument('--max-failures', type=int, default=0, metavar='N',
                    help='with many VMs: start no more after N were not '
                    'upgraded (default: go on)')
    ap.add_argument('--timeout', type=float, default=300, metavar='S',
                    help='give up a migration after S seconds (default 300)')
    ap.add_argument('--max-bandwidth', type=float, metavar='MIB',
                    help='limit the migration to MIB MiB/s (precopy)')
    ap.add_argument('--start-timeout', type=float, default=30, metavar='S',
                    help='wait S seconds for the destination to start')
    ap.add_argument('--qmp-timeout', type=float, default=10,
                    help=argparse.SUPPRESS)
    ap.add_argument('--onboard', action='store_true',
                    help='move a VM on -netdev tap (any QEMU from 7.2) to '
                    '-netdev tap-transfer on a new TAP like the old one: '
                    'an ordinary, lossy migration, once per VM')
    ap.add_argument('--keep-name', action='store_true',
                    help='with --onboard: once the source has quit, rename '
                    'the new TAP to the old one\'s name (its link goes down '
                    'for the rename)')
    ap.add_argument('--force', action='store_true',
                    help='with --onboard: go on although what refers to the '
                    'old TAP (firewall rules by name, static FDB entries, '
                    'locked ports, tc filters) is not carried to the new one')
    ap.add_argument('--no-steer', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--dry-run', action='store_true',
                    help='print the destination\'s command line and the '
                    'steps; change nothing')
    ap.add_argument('--json', action='store_true',
                    help='print the report as JSON')
    ap.add_argument('--quiet', '-q', action='store_true',
                    help='no progress lines on stderr')
    return ap


def main(argv, launcher):
    ap = parser()
    args = ap.parse_args(argv)
    if args.parallel < 1:
        ap.error('--parallel must be at least 1')
    if not args.recover and not args.to:
        ap.error('--to is required (or --recover)')
    paths = []
    for q in args.qmp:
        found = sorted(glob.glob(q)) if glob.has_magic(q) else [q]
        if not found:
            ap.error(f'--qmp {q}: no such socket')
        paths += [f for f in found if f not in paths]
    if args.recover and len(paths) > 1:
        ap.error('--recover takes one --qmp')
    if len(paths) > 1:
        return run_fleet(paths, worker_command(launcher, argv), args)

    signals = Signals().install()
    settings = Settings(qmp_timeout=args.qmp_timeout,
                        start_timeout=args.start_timeout,
                        timeout=args.timeout, dry_run=args.dry_run,
                        quiet=args.quiet)
    if args.recover:
        r = Recovery(paths[0], settings, LocalSystem()).run()
    else:
        options = Options(mode=args.mode, extra_args=args.extra_args,
                          onboard=args.onboard, keep_name=args.keep_name,
                          force=args.force,
                          max_bandwidth=args.max_bandwidth,
                          no_steer=args.no_steer)
        r = Upgrade(paths[0], os.path.abspath(args.to), options, settings,
                    LocalSystem(), signals).run()
    try:
        if args.json:
            print(json.dumps(r, indent=1))
        elif r.get('status') == 'dry-run':
            print(shlex.join(r['dest_argv']))
            for i, s in enumerate(r['steps'], 1):
                print(f'  {i}. {s}')
        else:
            print(one_line(r))
    except OSError:
        pass
    return exit_status(r)
