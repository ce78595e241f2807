"""One VM's upgrade, as a state machine whose point of no return is the
destination's `cont`.

    prepare     lock the VM (its QEMU's pid and start time), read it,
                plan: any refusal here changes nothing
    execute     journal, [onboard-taps], destination (-S, -incoming),
                compare (live state), parameters, migrate, verify (both
                QEMUs stopped), commit: `cont` on the destination
    forward     quit the source, put the paths back, check

Before `commit` any failure, refusal or signal (SIGINT, SIGTERM, SIGHUP)
rolls back from a `finally`: the destination, which never ran the
guest, is killed; the migration this run started is cancelled; the
parameters are put back; the source gets `cont` if this run stopped
it.  From `commit` on the run only goes forward, and a destination that
dies is reported as the VM lost, never resumed on the source.  Every
phase is written to the journal before it starts: a run killed anywhere
leaves what `--recover` needs.

Test hooks (test-only environment variables): TAP_TRANSFER_UPGRADE_FAULT
names a phase at which the run fails; TAP_TRANSFER_UPGRADE_STOP names a
phase at which it waits for a signal (SIGUSR1: go on)."""

import os
import re
import signal
import socket
import sys
import time

from . import journal
from .errors import Busy, Failed, Interrupted, Lost, Refused, Unknown
from .identity import IdentityError, SpawnError
from .livestate import LiveState
from .migsettings import MigrationSettings
from .plan import TEMP_SUFFIX, Plan, vstr
from .qmp import CommandError, MonitorGone, qom_get, value

PROG = 'tap-transfer-upgrade'
PHASES = ('planned', 'onboard-taps', 'destination', 'compare',
          'parameters', 'migrate', 'verify', 'commit', 'running',
          'quit-source', 'paths')
NO_RETURN = PHASES.index('commit')
FAULT_ENV = 'TAP_TRANSFER_UPGRADE_FAULT'
STOP_ENV = 'TAP_TRANSFER_UPGRADE_STOP'
ACTIVE = ('setup', 'active', 'device', 'pre-switchover', 'wait-unplug',
          'cancelling', 'postcopy-active')
MIGRATION_FD = 'ttu-migration'
# this command's nice value while it holds the stop token (measured on
# 2 cores with 4 runs side by side: the stop after the migration 26 ->
# 15 ms median, the token alone 37 -> 26 ms)
STOP_WINDOW_NICE = -10
ANY_TEMP = re.compile(r'\.tt-upgrade-[0-9a-z]{8}')


def after_no_return(phase):
    return phase in PHASES and PHASES.index(phase) >= NO_RETURN


class Unfinished(Exception):
    """After the point of no return a step failed: the VM runs on the
    destination; the journal is left for --recover."""


class Signals:
    """SIGINT, SIGTERM and SIGHUP: noted when they come, acted on where
    the run waits (never in the middle of a QMP exchange)."""

    NAMES = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.caught = []

    def install(self):
        for s in self.NAMES:
            signal.signal(s, self._on)
        return self

    def _on(self, signum, _frame):
        self.caught.append(signal.Signals(signum).name)


class Settings:
    """How long to wait, and whether to act at all."""

    def __init__(self, qmp_timeout=10.0, start_timeout=30.0, timeout=300.0,
                 dry_run=False, quiet=False):
        self.qmp_timeout = qmp_timeout
        self.start_timeout = start_timeout
        self.timeout = timeout
        self.dry_run = dry_run
        self.quiet = quiet


class Log:
    """Progress lines on stderr; never raises (a closed or full stderr
    must not stop a fail-safe)."""

    def __init__(self, name, quiet=False):
        self.name = name
        self.quiet = quiet
        self.t0 = time.monotonic()

    def __call__(self, msg):
        if self.quiet:
            return
        ms = (time.monotonic() - self.t0) * 1000
        try:
            print(f'{PROG}: {self.name}: [{ms:7.1f} ms] {msg}',
                  file=sys.stderr, flush=True)
        except (OSError, ValueError):
            self.quiet = True


class Upgrade:
    """The upgrade of the VM whose QMP socket is @qmp_path."""

    def __init__(self, qmp_path, target_path, options, settings, system,
                 signals):
        self.qmp_path = qmp_path
        self.target_path = target_path
        self.options = options
        self.settings = settings
        self.system = system
        self.signals = signals
        self.log = Log(qmp_path, settings.quiet)
        self.t0 = time.monotonic()
        self.times = {}
        self.report = {'qmp': qmp_path, 'ok': False, 'status': None}
        self.lock = self.journal = self.plan = self.token = None
        self.nice = None
        self.src = self.dst = None
        self.src_proc = self.dst_proc = None
        self.dest = None
        self.files = None
        self.before = None
        self.phase_name = None
        self.committed = False
        self.migrating = False
        self.params_set = False
        self.saved = None
        self.channel = None
        self.completed_at = None
        self.signals_ignored = []

    # the run

    def run(self):
        """The report, whatever happens"""
        try:
            self.prepare()
            if self.settings.dry_run:
                return self.dry_run()
            self.execute()
            self.forward()
            self.report.update(ok=True, status='upgraded')
        except Busy as e:
            self.end('busy', e)
        except Refused as e:
            self.end('refused', e)
        except Interrupted as e:
            self.end('interrupted', e)
        except Failed as e:
            self.end('failed', e)
        except Lost as e:
            self.end('lost', e)
        except (Unfinished, Unknown) as e:
            self.end('unfinished', e)
        except Exception as e:      # pylint: disable=broad-except
            # a QMP error, an OSError, or a bug: rolled back already if
            # it came before the point of no return
            self.end('unfinished' if self.committed else 'failed',
                     f'{type(e).__name__}: {e}')
        finally:
            self.close()
        self.report['command_ms'] = self.ms(self.t0)
        self.report['phases_ms'] = self.phase_durations()
        return self.report

    def end(self, status, e):
        self.report.update(ok=False, status=status,
                           error=str(e) or type(e).__name__)
        self.log(f'{status}: {self.report["error"]}')

    def mark(self, name):
        """A point in the time both QEMUs are stopped"""
        if self.completed_at:
            self.stop_marks.append((name, time.monotonic()))

    def ms(self, t0, t1=None):
        return round(((t1 or time.monotonic()) - t0) * 1000, 1)

    def phase_durations(self):
        names = [n for n in ('prepare',) + PHASES if n in self.times]
        names += ['end']
        self.times['end'] = time.monotonic()
        return {n: self.ms(self.times[n], self.times[m])
                for n, m in zip(names, names[1:])}

    def check_signals(self):
        if not self.signals.caught:
            return
        if self.committed:
            for s in self.signals.caught:
                self.log(f'{s} after the point of no return: ignored')
                self.signals_ignored.append(s)
            self.signals.caught.clear()
            return
        raise Interrupted(f'interrupted by {self.signals.caught[0]}')

    def phase(self, name):
        """Enter phase @name: the journal says it before it happens
        (not 'verify', which changes nothing and comes while the guest
        is stopped: for recovery it is still 'migrate')"""
        self.check_signals()
        self.phase_name = name
        self.times[name] = time.monotonic()
        if self.journal and name != 'verify':
            self.journal.write(phase=name)
        if name == 'commit':
            self.committed = True
        if os.environ.get(STOP_ENV) == name:
            self.stop_here(name)
        if os.environ.get(FAULT_ENV) == name:
            msg = f'injected fault at phase {name} ({FAULT_ENV})'
            raise Unfinished(msg) if after_no_return(name) else Failed(msg)

    def stop_here(self, name):
        """The test hook: wait at phase @name for a signal; SIGUSR1 lets
        the run go on as if nothing happened"""
        released = []
        old = signal.signal(signal.SIGUSR1, lambda *_: released.append(1))
        self.log(f'stopped at phase {name} ({STOP_ENV}): waiting for a '
                 'signal')
        deadline = time.monotonic() + 300
        while not self.signals.caught and not released and \
                time.monotonic() < deadline:
            time.sleep(0.01)
        signal.signal(signal.SIGUSR1, old)
        self.check_signals()

    # prepare: nothing changes

    def prepare(self):
        self.times['prepare'] = time.monotonic()
        sysm, st = self.system, self.settings
        if TEMP_SUFFIX.search(self.qmp_path):
            raise Busy(f'--qmp {self.qmp_path}: a temporary name of an '
                       'upgrade in progress or interrupted; run '
                       f'{PROG} --recover --qmp '
                       f'{TEMP_SUFFIX.sub("", self.qmp_path)}')
        probe = sysm.probe(self.target_path)
        state = journal.state_dir()
        try:
            pid = sysm.peer(self.qmp_path, st.qmp_timeout)
        except OSError as e:
            left = journal.find(state, path=self.qmp_path)
            if left:
                raise Busy(self.interrupted_run(left[0])) from e
            raise Refused(f'--qmp {self.qmp_path}: {e.strerror or e}') \
                from e
        self.src_proc = sysm.identify(pid)
        if self.src_proc is None:
            raise Refused(f'--qmp {self.qmp_path}: its QEMU exited')
        # one run per VM: the lock first, then what an earlier run left
        self.lock = journal.Lock.take(state, self.src_proc.key())
        left = journal.find(state, path=self.qmp_path, pid=pid)
        if left:
            raise Busy(self.interrupted_run(left[0]))
        try:
            self.src = sysm.connect(self.qmp_path, st.qmp_timeout)
        except MonitorGone as e:
            raise Refused(f'--qmp {self.qmp_path}: {e}') from e
        if self.src.pid != pid:
            raise Refused(f'--qmp {self.qmp_path}: another QEMU answers now')
        self.log(f'source QEMU pid {pid}')
        try:
            source = sysm.read_source(self.src)
        except (CommandError, MonitorGone) as e:
            raise Refused(f'reading the VM: {e}') from e
        self.plan = Plan.make(source, probe.result(), self.options,
                              self.qmp_path)
        p = self.plan
        if p.onboarding:
            p.onboarding.log = self.log
            if p.onboarding.not_carried:
                # --force: what the new TAPs go on without, said
                self.report['not_carried'] = p.onboarding.not_carried
                for what in p.onboarding.not_carried:
                    self.log(f'--force: not carried to the new TAP: {what}')
        self.report.update({
            'old_pid': pid, 'old_version': vstr(source.version),
            'new_version': vstr(p.target.version), 'mode': p.mode,
            'machine': source.machine,
            'uid': source.identity.uid})
        self.log(f'QEMU {vstr(source.version)} -> '
                 f'{vstr(p.target.version)}, machine {source.machine}, '
                 f'mode {p.mode}, as uid {source.identity.uid}')

    def interrupted_run(self, j):
        return (f'an earlier run (pid {j["tool_pid"]}) on this VM was '
                f'interrupted in phase {j["phase"]}: run {PROG} --recover '
                f'--qmp {j["qmp"]}')

    def dry_run(self):
        p = self.plan
        incoming = (['-incoming', 'cpr,...', '-incoming', 'fd:N']
                    if p.mode == 'cpr-transfer' else ['-incoming', 'defer'])
        self.report.update(ok=True, status='dry-run', dry_run=True,
                           dest_argv=p.dest_argv(incoming),
                           steps=p.steps())
        return self.report

    # execute: before the point of no return

    def execute(self):
        p, src = self.plan, self.plan.source
        self.saved = MigrationSettings.of(src.caps, src.params)
        self.journal = journal.Journal.create(
            journal.state_dir(), self.src_proc.key(), phase='planned',
            qmp=self.qmp_path, qmp_real=os.path.realpath(self.qmp_path),
            source=self.src_proc.as_dict(), source_status=src.status,
            destination=None, token=p.token, mode=p.mode,
            moves=[list(m) for m in p.moves], migrating=False,
            restore=self.saved.as_dict(), onboard=None,
            user={'uids': src.identity.uids, 'gids': src.identity.gids,
                  'groups': src.identity.groups})
        ok = False
        try:
            self.phase('planned')
            self.files = self.system.file_launch(p)
            self.before = self.tap_snapshot()
            if p.onboarding:
                self.phase('onboard-taps')
                p.onboarding.create()
                p.onboard_netdevs()
                self.journal.write(onboard=p.onboarding.journal())
            self.phase('destination')
            self.start_destination()
            if p.mode != 'cpr-transfer':
                self.phase('compare')
                self.compare()
            self.phase('parameters')
            self.set_parameters()
            self.take_token()
            self.phase('migrate')
            self.migrate()
            self.phase('verify')
            if p.mode == 'cpr-transfer':
                self.compare()
            self.verify()
            self.commit()
            ok = True
        finally:
            if not ok and not self.committed:
                self.roll_back()

    def take_token(self):
        """The host's stop token (journal.StopToken), waited for while
        the guest runs; held until the cont.  Meanwhile this command
        (not the VM's QEMUs) runs at a higher priority than the other
        runs' commands: their QEMUs starting and their checks would
        otherwise take the CPU from the guest's stopped time."""
        t0 = time.monotonic()
        limit = self.settings.timeout

        def waiting():
            self.check_signals()
            if time.monotonic() - t0 > limit:
                raise Failed(f'another run held the host\'s stop token '
                             f'for {limit:g} s (--timeout)')

        self.token = journal.StopToken.take(journal.state_dir(), waiting)
        self.report['stop_token_wait_ms'] = self.ms(t0)
        self.nice = os.getpriority(os.PRIO_PROCESS, 0)
        try:
            os.setpriority(os.PRIO_PROCESS, 0, min(self.nice,
                                                   STOP_WINDOW_NICE))
        except PermissionError:
            pass

    def release_token(self):
        if self.token:
            self.token.release()
            self.token = None
            try:
                os.setpriority(os.PRIO_PROCESS, 0, self.nice)
            except PermissionError:
                pass

    def tap_snapshot(self):
        """The source's TAP fds and each netdev's ifindex, before"""
        p = self.plan
        out = {'fds': self.system.tun_fds(self.src_proc), 'ifname': {},
               'ifindex': {}, 'queues': {}}
        self.netns = self.system.netns_socket(self.src_proc)
        props = [(nd, prop) for nd in p.netdevs for prop in ('ifname',
                                                             'queues')]
        replies = self.src.cmds(*(qom_get(f'/netdevs/{nd}', prop)
                                  for nd, prop in props))
        for (nd, prop), reply in zip(props, replies):
            out[prop][nd] = value(reply)
        for nd, ifname in out['ifname'].items():
            out['ifindex'][nd] = self.system.ifindex(self.netns, ifname)
        return out

    def start_destination(self):
        p = self.plan
        pass_fds = list(p.onboarding.fds()) if p.onboarding else []
        if p.mode == 'cpr-transfer':
            # both channels are sockets the destination binds beside the
            # QMP socket, as the VM's user: QEMU resolves the main
            # channel only once the cpr state is loaded, outside the
            # monitor, where a named fd cannot be looked up
            qmp_real = next(r for k, r, _ in p.moves if k == 'qmp')
            self.cpr_path = p.temp_for('cpr', qmp_real + '.cpr')
            self.mig_path = p.temp_for('cpr', qmp_real + '.mig')
            self.journal.write(moves=[list(m) for m in p.moves],
                               durable=True)
            incoming = ['-global', 'migration.backend-transfer=on',
                        '-incoming', 'cpr,addr.transport=socket,'
                        f'addr.type=unix,addr.path={self.cpr_path}',
                        '-incoming', f'unix:{self.mig_path}']
        else:
            self.channel = socket.socketpair(socket.AF_UNIX,
                                             socket.SOCK_STREAM)
            incoming = ['-incoming', 'defer']
        argv = p.dest_argv(incoming)
        self.log(f'starting {argv[0]}')
        try:
            self.dest = self.system.spawn(argv, p, pass_fds)
        except (SpawnError, IdentityError, OSError) as e:
            raise Failed(f'the destination did not start: {e}') from e
        finally:
            if p.onboarding:
                p.onboarding.started()
        self.dst_proc = self.system.identify(self.dest.pid)
        self.journal.write(destination=self.dst_proc.as_dict()
                           if self.dst_proc else {'pid': self.dest.pid,
                                                  'start': None})
        self.report['new_pid'] = self.dest.pid
        wait_for = self.cpr_path if p.mode == 'cpr-transfer' else p.qmp_temp
        deadline = time.monotonic() + self.settings.start_timeout
        while not self.system.exists(wait_for):
            self.check_destination()
            if time.monotonic() > deadline:
                raise Failed('the destination did not start in '
                             f'{self.settings.start_timeout} s')
            self.check_signals()
            time.sleep(0.002)
        if p.mode != 'cpr-transfer':
            self.connect_destination()

    def check_destination(self):
        """Failed if the destination exited"""
        self.dest.drain()
        if self.system.running(self.dst_proc):
            return
        rc = self.dest.reap()
        tail = self.dest.tail()
        raise Failed('the destination QEMU exited'
                     f'{f" ({rc})" if rc is not None else ""}'
                     f'{": " + tail if tail else ""}')

    def connect_destination(self):
        p = self.plan
        deadline = time.monotonic() + self.settings.start_timeout
        while True:
            # the socket file exists from bind(), before listen()
            try:
                self.dst = self.system.connect(p.qmp_temp,
                                               self.settings.start_timeout)
                break
            except MonitorGone as e:
                self.check_destination()
                if time.monotonic() > deadline:
                    raise Failed(f'the destination does not answer: {e}') \
                        from e
                self.check_signals()
                time.sleep(0.002)
        if self.dst.pid != self.dest.pid:
            raise Failed(f'{p.qmp_temp} answers from pid {self.dst.pid}, '
                         f'not the destination {self.dest.pid}')
        self.log(f'destination QEMU pid {self.dst.pid} answers, paused')

    def compare(self):
        """The live state of both: anything the VM got at run time that
        its command line does not give the destination refuses"""
        try:
            src = self.plan.source.live
            dst = LiveState.read(self.dst)
        except (CommandError, MonitorGone) as e:
            raise Failed(f'reading the live state: {e}') from e
        if self.plan.onboarding:
            # -netdev tap has no QOM object; its tap-transfer successor
            # has, on the destination
            dst.netdevs = {k: v for k, v in dst.netdevs.items()
                           if k not in self.plan.onboard_ids}
        diffs = src.differences(dst, lambda name: ANY_TEMP.sub('', name))
        if diffs:
            more = f' (and {len(diffs) - 1} more)' if len(diffs) > 1 else ''
            raise Refused(f'the VM differs from its command line: '
                          f'{diffs[0]}{more}; give what was added at run '
                          'time with --extra-args')
        self.log('live state compared: devices, netdevs, chardevs, block '
                 'graph and memory backends are the same')

    def set_parameters(self):
        p = self.plan
        self.params_set = True
        MigrationSettings.apply_source(self.src, p.mode, p.onboarding,
                                       self.options.max_bandwidth)
        if self.dst:
            MigrationSettings.apply_destination(self.dst, p.mode,
                                                p.onboarding)

    def migrate(self):
        p = self.plan
        if p.onboarding:
            p.onboarding.prepare_switch()
        if p.mode != 'cpr-transfer':
            a, b = self.channel
            self.dst.send_fd(a.fileno(), MIGRATION_FD)
            self.dst.cmd('migrate-incoming', uri=f'fd:{MIGRATION_FD}')
            a.close()
            self.src.send_fd(b.fileno(), MIGRATION_FD)
            b.close()
            self.channel = None
        self.migrating = True
        self.journal.write(migrating=True)
        how = {'shared': 'x-ignore-shared', 'copy': 'RAM copied',
               'cpr-transfer': 'cpr-transfer'}[p.mode]
        if p.onboarding:
            how += ', backend-transfer off: onboarding'
        self.log(f'migrating ({how})')
        if p.mode == 'cpr-transfer':
            self.src.cmd('migrate', channels=[
                {'channel-type': 'main',
                 'addr': {'transport': 'socket', 'type': 'unix',
                          'path': self.mig_path}},
                {'channel-type': 'cpr',
                 'addr': {'transport': 'socket', 'type': 'unix',
                          'path': self.cpr_path}}])
        else:
            self.src.cmd('migrate', uri=f'fd:{MIGRATION_FD}')
        self.wait_completed()

    def wait_completed(self):
        """Until the destination has loaded the VM, stopped: events from
        it (fast), the source's status polled (failures, onboarding's
        pre-switchover)"""
        p = self.plan
        deadline = time.monotonic() + self.settings.timeout
        next_poll, done, info = 0.0, False, {}
        while not done:
            self.check_signals()
            self.check_destination()
            if self.dst is None and self.system.exists(p.qmp_temp):
                self.connect_destination()
            if self.dst:
                while True:
                    ev = self.dst.event(0)
                    if ev is None:
                        break
                    if ev.get('event') == 'MIGRATION':
                        st = ev['data']['status']
                        if st == 'completed':
                            done = True
                        elif st == 'failed':
                            next_poll = 0.0
            now = time.monotonic()
            if not done and now >= next_poll:
                info = self.src.cmd('query-migrate')
                st = info.get('status')
                if st in ('failed', 'cancelled'):
                    tail = self.dest.tail()
                    if not self.system.running(self.dst_proc):
                        st = f'{st} (the destination QEMU exited)'
                    raise Failed(f'migration {st}: '
                                 f'{info.get("error-desc", "")}'
                                 f'{": " + tail if tail else ""}')
                if st == 'pre-switchover' and p.onboarding:
                    p.onboarding.switch(steer=not self.options.no_steer)
                    self.journal.write(onboard=p.onboarding.journal())
                    self.src.cmd('migrate-continue', state='pre-switchover')
                    self.log('source stopped: the bridge forwards to the '
                             'new TAP(s)')
                if self.dst and (st == 'completed' or
                                 p.mode == 'cpr-transfer'):
                    dinfo = self.dst.cmd('query-migrate')
                    done = dinfo.get('status') == 'completed'
                fast = p.mode == 'cpr-transfer' or st in (
                    'device', 'pre-switchover', 'completed')
                next_poll = now + (0.002 if fast else 0.05)
            if done:
                break
            if now > deadline:
                raise Failed(f'migration not completed in '
                             f'{self.settings.timeout} s (status '
                             f'{info.get("status")})')
            self.system.wait([self.dst] if self.dst else [], self.dest,
                             max(0.0, min(next_poll - now, 0.05)))
        self.completed_at = time.monotonic()
        self.stop_marks = [('completed', self.completed_at)]

    def verify(self):
        """With both QEMUs stopped, the least that proves the handover
        (every round trip here is time the guest does not run): each
        netdev of the destination adopted its fds (QOM state idle), it
        holds as many TAP fds as the source's netdevs had queues, the
        same open files (kcmp), the same ifindex.  The rest is read for
        the report after the cont."""
        p = self.plan
        self.mark('verify')
        if p.onboarding:
            return self.verify_onboard()
        states = self.dst.cmds(*(qom_get(f'/netdevs/{nd}', 'state')
                                 for nd in p.netdevs))
        for nd, state in zip(p.netdevs, states):
            state = value(state)
            if state != 'idle':
                raise Failed(f'netdev {nd}: the destination is {state}: the '
                             'TAP was not handed over')
        self.mark('qom')
        queues = sum(self.before['queues'].values())
        dst_fds = self.system.tun_fds(self.dst_proc)
        if len(dst_fds) != queues:
            raise Failed(f'the destination holds {len(dst_fds)} TAP fds for '
                         f'{queues} queue(s)')
        same = None
        if self.system.kcmp_supported():
            same = all(any(self.system.same_file(self.dst_proc, d,
                                                 self.src_proc, s)
                           for s in self.before['fds']) for d in dst_fds)
            if not same:
                raise Failed('the destination holds other TAP files than '
                             'the source did (kcmp)')
        self.mark('kcmp')
        after = {nd: self.system.ifindex(self.netns, ifname)
                 for nd, ifname in self.before['ifname'].items()}
        self.mark('ifindex')
        if after != self.before['ifindex']:
            raise Failed(f'the TAPs\' ifindex changed: '
                         f'{self.before["ifindex"]} -> {after}')
        self.report.update({'queues': queues, 'same_tap_kcmp': same,
                            'same_ifindex': True, 'ifindex': after})
        return None

    def report_source(self):
        """What the report tells of the source (its migration, its
        netdevs' state), read after the cont and before it quits"""
        p = self.plan
        replies = self.src.cmds(('query-migrate', {}), *(
            qom_get(f'/netdevs/{nd}', 'state') for nd in p.netdevs))
        info = value(replies[0])
        self.report['downtime_ms'] = info.get('downtime')
        self.report['total_ms'] = info.get('total-time')
        if p.netdevs:
            self.report['netdevs'] = {
                nd: {'ifname': self.before['ifname'][nd],
                     'queues': self.before['queues'][nd],
                     'source_state': value(r)}
                for nd, r in zip(p.netdevs, replies[1:])}

    def finish_destination(self):
        """While the source quits: what the report tells of the
        destination's netdevs, and its migration settings put back as
        the source's were, for whatever migrates it next (one round
        trip)"""
        p = self.plan
        props = [(nd, k) for nd in p.netdevs for k in ('state',
                                                       'frames-held')]
        settings = self.saved.copy_commands()
        replies = self.dst.cmds(*(qom_get(f'/netdevs/{nd}', k)
                                  for nd, k in props), *settings)
        err = next((r for r in replies[len(props):]
                    if isinstance(r, CommandError)), None)
        if err:
            self.log(f'the destination\'s migration settings: {err}')
        nds = self.report.setdefault('netdevs', {})
        for (nd, k), r in zip(props, replies):
            nds.setdefault(nd, {})[k] = value(r)
        times = (f'downtime {self.report.get("downtime_ms")} ms, migration '
                 f'{self.report.get("total_ms")} ms')
        if p.onboarding:
            self.log(times)
            return
        same = self.report.get('same_tap_kcmp')
        self.log(f'{times}; {len(nds)} netdev(s), '
                 f'{self.report.get("queues")} queue(s) handed over, '
                 + ('the same open files (kcmp)' if same else
                    f'kcmp(2) not on {os.uname().machine}: open files not '
                    'compared' if same is None else '')
                 + ', same ifindex')

    def verify_onboard(self):
        """--onboard: each netdev of the destination holds the new TAP
        (its own fds, one per queue)"""
        ob = self.plan.onboarding
        queues, nds = 0, {}
        for t in ob.taps:
            new = ob.new[t.id].ifname
            path = f'/netdevs/{t.id}'
            q = self.dst.cmd('qom-get', path=path, property='queues')
            ifname = self.dst.cmd('qom-get', path=path, property='ifname')
            held = [fd for fd in self.system.tun_fds(self.dst_proc)
                    if self.system.fd_ifname(self.dst_proc, fd) == new]
            nds[t.id] = {'queues': q, 'ifname': ifname,
                         'old_ifname': t.ifname}
            if ifname != new or q != t.attrs.queues or \
                    len(held) != t.attrs.queues:
                raise Failed(f'netdev {t.id}: the destination holds '
                             f'{ifname} with {q} queue(s) ({len(held)} fds), '
                             f'not {new} with {t.attrs.queues}')
            queues += q
        self.report.update({'queues': queues, 'netdevs': nds,
                            'onboarded': True})
        self.log(f'verified: {len(nds)} netdev(s) on the new TAP(s)')

    def commit(self):
        """The point of no return: the destination runs the guest"""
        self.mark('verified')
        self.phase('commit')
        self.mark('journal')
        if self.plan.source.status == 'running':
            try:
                self.dst.cmd('cont')
            except CommandError as e:
                st = (self.dst.try_cmd('query-status') or {}).get('status')
                if st == 'paused':
                    # it refused to start: the guest never ran there
                    self.committed = False
                    raise Failed(f'the destination refused to run: {e}') \
                        from e
            except MonitorGone as e:
                if not self.system.running(self.dst_proc):
                    raise Lost(f'the destination QEMU (pid {self.dest.pid}) '
                               'died at cont: the VM is not running; the '
                               f'source (pid {self.src_proc.pid}) is '
                               'stopped and must not run it') from e
                raise Unknown('the destination stopped answering at cont; '
                              f'run {PROG} --recover --qmp '
                              f'{self.qmp_path}') from e
            self.mark('cont')
            self.report['stopped_after_migration_ms'] = \
                self.ms(self.completed_at)
            self.report['stopped_ms'] = {
                n: self.ms(t0, t1) for (_, t0), (n, t1) in
                zip(self.stop_marks, self.stop_marks[1:])}
        self.release_token()
        self.phase('running')
        self.log('destination running: the point of no return is behind '
                 f'({self.report.get("stopped_after_migration_ms")} ms '
                 'stopped after the migration)')

    # forward: after the point of no return

    def forward(self):
        p = self.plan
        self.check_alive()
        self.reading_report(self.report_source)
        self.phase('quit-source')
        # the source takes some ms to exit: the destination is read
        # and set meanwhile
        self.quit_source()
        self.reading_report(self.finish_destination)
        self.wait_source_gone()
        self.src.close()
        self.src = None
        self.phase('paths')
        self.put_back()
        self.final_check()
        self.check_signals()
        if self.signals_ignored:
            self.report['signals_ignored'] = self.signals_ignored
        self.journal.remove()
        self.journal = None
        if p.onboarding:
            p.onboarding.close()

    def check_alive(self):
        self.check_signals()
        if not self.system.running(self.dst_proc):
            raise Lost(f'the destination QEMU (pid {self.dest.pid}) exited '
                       'after it ran the guest: the VM is not running; the '
                       f'source (pid {self.src_proc.pid}) is stopped and must '
                       'not run it')

    def reading_report(self, step):
        try:
            step()
        except (CommandError, MonitorGone) as e:
            self.log(f'reading the report: {e}')

    def quit_source(self):
        if self.plan.onboarding:
            self.plan.onboarding.before_quit()
        # its exit is the answer (wait_source_gone); the monitor stays
        # open until then: QEMU drops the requests of a client that
        # hangs up
        self.src.send_only('quit')

    def wait_source_gone(self):
        if not self.system.wait_gone(self.src_proc, 10):
            self.log('the source did not quit in 10 s: killing it')
            self.system.kill(self.src_proc)
            self.system.wait_gone(self.src_proc, 10)
        self.log(f'source QEMU {self.src_proc.pid} quit')
        if self.plan.onboarding:
            self.finish_onboard()

    def finish_onboard(self):
        ob = self.plan.onboarding
        taps = ob.finish(self.options.keep_name)
        lost = [t.get('old_tap_lost') for t in taps.values()]
        self.report['onboard'] = {
            'taps': taps, 'lossy_hop': True,
            'old_tap_frames_lost': sum(lost) if None not in lost else None}
        for nd, t in taps.items():
            self.log(f"netdev {nd}: {t['old_ifname']} -> {t['new_ifname']}, "
                     f"frames lost on the old TAP: {t.get('old_tap_lost')}")

    def put_back(self):
        """Each temporary name to its real one, as the VM's user; a
        failed rename does not stop the others"""
        moves = self.plan.moves
        self.system.unlink(self.files, [t for k, _, t in moves if k == 'cpr'])
        errors = self.system.rename(self.files, [(t, r) for k, r, t in moves
                                                 if k != 'cpr'])
        left = []
        for kind, real, temp in moves:
            if kind == 'cpr':
                continue
            if temp in errors:
                left.append({'kind': kind, 'path': real, 'temporary': temp,
                             'error': errors[temp]})
                self.log(f'{kind} {temp} not renamed to {real}: '
                         f'{errors[temp]}')
            else:
                self.log(f'{kind} {real} is the new QEMU\'s')
        if left:
            self.report['left_at_temporary_names'] = left
            qmp = next((x for x in left if x['kind'] == 'qmp'), None)
            self.report['answers_at'] = (qmp['temporary'] if qmp
                                         else self.qmp_path)
            raise Unfinished('the VM runs on the new QEMU, but '
                             f'{len(left)} path(s) kept their temporary '
                             f'names ({left[0]["error"]}); it answers at '
                             f'{self.report["answers_at"]}')

    def final_check(self):
        """The VM's QMP path answers, from the new QEMU (its greeting is
        proof enough: the destination's monitor answered all along)"""
        self.dst.close()
        self.dst = None
        try:
            pid, greeting = self.system.greeting_at(
                self.qmp_path, self.settings.qmp_timeout)
        except MonitorGone as e:
            raise Unfinished(f'{self.qmp_path} does not answer: {e}') from e
        if pid != self.dest.pid:
            raise Unfinished(f'{self.qmp_path} answers from pid {pid}, not '
                             f'the new QEMU ({self.dest.pid})')
        try:
            v = greeting['QMP']['version']['qemu']
            self.report['new_version'] = \
                f"{v['major']}.{v['minor']}.{v['micro']}"
        except (KeyError, TypeError) as e:
            raise Unfinished(f'{self.qmp_path}: no QMP greeting: '
                             f'{greeting}') from e
        self.report['answers_at'] = self.qmp_path

    # rollback: before the point of no return

    def roll_back(self):
        """The VM stays on the source, as it was.  Every step is tried,
        whatever the one before did."""
        p = self.plan
        self.log('rolling back: the VM stays on the source')
        if self.journal:
            self.journal.write(phase='rolling-back')
        steps = [self.kill_destination, self.restore_source,
                 self.remove_temporaries]
        if p and p.onboarding:
            steps.append(p.onboarding.rollback)
        for step in steps:
            try:
                step()
            except Exception as e:   # pylint: disable=broad-except
                self.log(f'rolling back: {step.__name__}: {e}')
        if self.journal:
            self.journal.remove()
            self.journal = None

    def kill_destination(self):
        if self.channel:
            for s in self.channel:
                s.close()
            self.channel = None
        if self.dst:
            self.dst.close()
            self.dst = None
        keep = [self.src_proc] if self.src_proc else []
        procs = [self.dst_proc] if self.dst_proc else []
        if self.plan:
            procs += self.system.leftovers(self.plan.token, keep + procs)
        for proc in procs:
            self.system.kill(proc)
        for proc in procs:
            self.system.wait_gone(proc, 10)
        if self.dest:
            self.dest.reap()

    def restore_source(self):
        """Cancel this run's migration, put the settings back, and cont
        the source if this run stopped it"""
        if not self.src:
            return
        src = self.src
        if self.migrating:
            st = src.cmd('query-migrate').get('status')
            if st in ACTIVE:
                src.cmd('migrate_cancel')
                deadline = time.monotonic() + 30
                while src.cmd('query-migrate').get('status') in ACTIVE and \
                        time.monotonic() < deadline:
                    time.sleep(0.01)
        if self.params_set:
            self.saved.restore(src)
        if self.migrating and self.plan.source.status == 'running':
            status = src.cmd('query-status')['status']
            if status != 'running':
                src.cmd('cont')
                self.log(f'source was {status}: cont')

    def remove_temporaries(self):
        if not self.plan or not self.files:
            return
        self.system.unlink(self.files, [t for _, _, t in self.plan.moves])

    def close(self):
        self.release_token()
        for mon in (self.src, self.dst):
            if mon:
                mon.close()
        self.src = self.dst = None
        if self.dest:
            self.dest.close()
        if self.files:
            self.files.close()
            self.files = None
        if getattr(self, 'netns', None):
            self.netns.close()
        if self.plan and self.plan.onboarding:
            self.plan.onboarding.close()
        if self.lock:
            self.lock.release()
            self.lock = None
