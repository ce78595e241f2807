"""Many VMs: one worker process per VM (this command on one --qmp),
--parallel at a time.  A signal stops the fleet from starting more VMs;
the workers running get it too and finish or roll back on their own.
--max-failures N stops it after N VMs that were not upgraded."""

import json
import signal
import subprocess
import sys
import time

from .report import one_line, summary_line

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Fleet:
    """The upgrade of the VMs behind @paths, each by @worker_argv plus
    `--qmp PATH --json`."""

    def __init__(self, paths, worker_argv, parallel, max_failures, as_json):
        self.paths = paths
        self.worker_argv = worker_argv
        self.parallel = parallel
        self.max_failures = max_failures
        self.as_json = as_json
        self.stopped = None
        self.running = {}

    def _on_signal(self, signum, _frame):
        name = signal.Signals(signum).name
        if not self.stopped:
            self.stopped = name
        for proc in self.running:
            if proc.poll() is None:
                proc.send_signal(signum)

    def run(self):
        t0 = time.monotonic()
        for s in SIGNALS:
            signal.signal(s, self._on_signal)
        pending, reports = list(self.paths), []
        failures = 0
        while pending or self.running:
            while pending and len(self.running) < self.parallel and \
                    not self.stopped:
                path = pending.pop(0)
                proc = subprocess.Popen(self.worker_argv +
                                        ['--qmp', path, '--json'],
                                        stdout=subprocess.PIPE, text=True)
                self.running[proc] = path
            for proc in list(self.running):
                if proc.poll() is None:
                    continue
                r = self.collect(proc, self.running.pop(proc))
                reports.append(r)
                if not r['ok'] and r.get('status') != 'dry-run':
                    failures += 1
                if not self.as_json:
                    try:
                        print(one_line(r), flush=True)
                    except OSError:
                        pass
            if self.max_failures and failures >= self.max_failures and \
                    not self.stopped:
                self.stopped = f'--max-failures {self.max_failures}'
            if self.stopped and pending and not self.running:
                break
            time.sleep(0.02)
        summary = self.summary(reports, pending, t0)
        return reports, summary

    def collect(self, proc, path):
        out = proc.stdout.read()
        proc.stdout.close()
        try:
            return json.loads(out)
        except ValueError:
            return {'qmp': path, 'ok': False, 'status': 'failed',
                    'error': f'the worker exited {proc.returncode} without '
                             'a report'}

    def summary(self, reports, never_tried, t0):
        by = {}
        for r in reports:
            by.setdefault(r.get('status'), []).append(r['qmp'])
        ok = len(by.get('upgraded', [])) + len(by.get('dry-run', []))
        refused = len(by.get('refused', [])) + len(by.get('busy', []))
        return {'vms': len(self.paths), 'upgraded': ok,
                'refused': refused,
                'failed': len(reports) - ok - refused,
                'never_tried': never_tried,
                'lost': by.get('lost', []),
                'unfinished': by.get('unfinished', []),
                'parallel': self.parallel,
                'stopped': self.stopped,
                'seconds': round(time.monotonic() - t0, 2)}


def run_fleet(paths, worker_argv, args):
    fleet = Fleet(paths, worker_argv, args.parallel, args.max_failures,
                  args.json)
    reports, summary = fleet.run()
    try:
        if args.json:
            print(json.dumps({'reports': reports, 'summary': summary},
                             indent=1))
        else:
            print(summary_line(summary), flush=True)
    except OSError:
        pass
    done = summary['upgraded'] == len(paths)
    return 0 if done else 1


def worker_command(launcher, argv):
    """This command's argv for one worker: without --qmp, --parallel,
    --max-failures and --json"""
    out, skip = [sys.executable, launcher], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ('--qmp', '--parallel', '--max-failures'):
            skip = True
            continue
        if a.startswith(('--qmp=', '--parallel=', '--max-failures=')) or \
                a == '--json':
            continue
        out.append(a)
    return out
