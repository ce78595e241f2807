#!/usr/bin/env python3
"""tap-transfer-upgrade's state machine against a fake host: two fake
QEMUs that answer QMP as QEMU does for a local migration with -S on the
destination, fake processes, files and TAP fds.  At every phase the run
is made to fail (the test-only fault hook), is sent SIGINT, SIGTERM and
SIGHUP, or is killed (then `--recover` runs); afterwards exactly one
QEMU runs the guest, at the real QMP path, and at no moment did two run
it, or the source run it after the destination had.  Prints TAP."""

import fcntl
import glob
import json
import os
import shutil
import tempfile
import threading
import time
import unittest

import taptest
# pylint: disable=wrong-import-order
from tap_transfer import handover
from tap_transfer.handover import PHASES, Settings, Signals, Upgrade
from tap_transfer.identity import Identity, SpawnError
from tap_transfer import journal as journal_mod
from tap_transfer.journal import StopToken
from tap_transfer.livestate import LiveState
from tap_transfer.plan import Options, Target
from tap_transfer.procfs import ProcessId
from tap_transfer.qmp import CommandError, MonitorGone
from tap_transfer.recover import Recovery
from tap_transfer.source import Source

QMP = '/run/vm1/qmp.sock'
PIDFILE = '/run/vm1/qemu.pid'
MACHINES = {'pc-i440fx-10.0'}


class Killed(BaseException):
    """SIGKILL: no Python code of the run runs after it"""


class FakeQemu:
    """One QEMU as QMP shows it during a local migration"""

    def __init__(self, world, role, pid, status):
        self.world = world
        self.role = role
        self.pid = pid
        self.status = status
        self.alive = True
        self.mig = 'none'
        self.caps = {'x-ignore-shared': False, 'events': False,
                     'pause-before-switchover': False}
        self.params = {'backend-transfer': False, 'max-bandwidth': 1 << 27,
                       'mode': 'normal'}
        self.netdev = 'own' if role == 'source' else 'awaiting'
        self.events = []
        self.fdnames = set()
        self.qmp_path = None

    def set_status(self, status):
        self.status = status
        self.world.check()

    def handle(self, name, args):
        w = self.world
        if not self.alive:
            raise MonitorGone(f'{self.role}: gone')
        fail = w.fail_cmd.get((self.role, name))
        if fail == 'die':
            self.alive = False
            raise MonitorGone(f'{self.role} died at {name}')
        if fail:
            raise CommandError(name, fail)
        fn = getattr(self, 'cmd_' + name.replace('-', '_'), None)
        if fn is None:
            return {}
        return fn(**args)

    def cmd_query_status(self):
        return {'status': self.status}

    def cmd_query_version(self):
        return {'qemu': {'major': 10, 'minor': 2 if self.role ==
                         'destination' else 0, 'micro': 2}}

    def cmd_query_migrate(self):
        w = self.world
        if self.role == 'source' and self.mig == 'active':
            w.polls += 1
            if w.polls >= 2:
                w.complete()
        out = {'status': self.mig}
        if self.mig == 'completed':
            out.update({'downtime': 3, 'total-time': 40})
        if self.mig == 'failed':
            out['error-desc'] = 'the destination refused'
        return out

    def cmd_migrate_set_capabilities(self, capabilities):
        for c in capabilities:
            self.caps[c['capability']] = c['state']

    def cmd_migrate_set_parameters(self, **params):
        self.params.update(params)

    def cmd_getfd(self, fdname):
        self.fdnames.add(fdname)

    def cmd_migrate_incoming(self, uri):
        assert uri[3:] in self.fdnames, 'migrate-incoming before getfd'
        self.mig = 'active'

    def cmd_migrate(self, uri=None, channels=None):
        del channels
        w = self.world
        assert uri[3:] in self.fdnames, 'migrate before getfd'
        assert w.dest.mig == 'active', 'migrate before migrate-incoming'
        self.mig = 'active'
        w.polls = 0
        if w.migration_fails:
            self.mig = 'failed'

    def cmd_migrate_cancel(self):
        if self.mig == 'active':
            self.mig = 'cancelled'

    def cmd_cont(self):
        w = self.world
        if self.role == 'destination' and w.dest_refuses_cont:
            raise CommandError('cont', 'could not activate the block devices')
        if self.role == 'source' and self.netdev == 'handed-over':
            self.netdev = 'own'
        if self.role == 'destination':
            self.netdev = 'adopted'
            w.dest_ran = True
        self.set_status('running')

    def cmd_quit(self):
        self.alive = False
        self.world.unlink_own_paths(self)

    def cmd_qom_get(self, path, property):  # pylint: disable=W0622
        if path == '/machine':
            return 'pc-i440fx-10.0-machine'
        return {'state': self.netdev, 'queues': 2, 'ifname': 'tap0',
                'frames-held': 0}[property]

    def cmd_qom_list(self, path):
        if path == '/machine/peripheral':
            return [{'name': 'nic0', 'type': 'child<virtio-net-pci>'}]
        if path == '/netdevs':
            return [{'name': 'n0', 'type': 'child<netdev-tap-transfer>'}]
        return []

    def cmd_query_chardev(self):
        return [{'label': 'compat_monitor0',
                 'filename': f'unix:{self.qmp_path},server=on'}]

    def cmd_query_block(self):
        return []

    def cmd_query_named_block_nodes(self, flat):
        del flat
        return []


class FakeMonitor:
    def __init__(self, qemu, path):
        self.qemu = qemu
        self.path = path
        self.pid = qemu.pid
        self.closed = False

    def cmd(self, name, **args):
        if self.closed:
            raise MonitorGone('closed')
        return self.qemu.handle(name, args)

    def cmds(self, *commands):
        out = []
        for name, args in commands:
            try:
                out.append(self.cmd(name, **args))
            except CommandError as e:
                out.append(e)
        return out

    def version(self):
        """As the greeting says it"""
        return self.qemu.cmd_query_version()['qemu']

    def try_cmd(self, name, **args):
        try:
            return self.cmd(name, **args)
        except (CommandError, MonitorGone):
            return None

    def send_fd(self, fd, name):
        del fd
        self.cmd('getfd', fdname=name)

    def send_only(self, name):
        try:
            self.cmd(name)
        except (CommandError, MonitorGone):
            pass

    def event(self, timeout):
        del timeout
        return self.qemu.events.pop(0) if self.qemu.events else None

    def close(self):
        self.closed = True


class FakeDest:
    def __init__(self, pid):
        self.pid = pid
        self.errpipe = None

    def drain(self):
        pass

    def tail(self):
        return 'fake destination said goodbye'

    def reap(self):
        return None

    def close(self):
        pass


class FakeLaunch:
    def close(self):
        pass


class World:
    """The fake host: QEMUs, paths, fds, and the invariants"""

    def __init__(self, source_status='running'):
        self.source = FakeQemu(self, 'source', 100, source_status)
        self.source.qmp_path = QMP
        self.dest = None
        self.paths = {QMP: self.source, PIDFILE: self.source}
        self.fail_cmd = {}
        self.migration_fails = False
        self.dest_refuses_cont = False
        self.dest_dies_in = None
        self.rename_fails = set()
        self.spawn_fails = False
        self.kcmp = True
        self.same_files = True
        self.polls = 0
        self.dest_ran = False
        self.violations = []
        self.hook = None

    def qemus(self):
        return [q for q in (self.source, self.dest) if q]

    def check(self):
        running = [q.role for q in self.qemus() if q.alive and
                   q.status == 'running']
        if len(running) > 1:
            self.violations.append('two QEMUs ran the guest at once')
        if self.dest_ran and self.source.alive and \
                self.source.status == 'running':
            self.violations.append('the source ran after the destination')

    def complete(self):
        src, dst = self.source, self.dest
        if self.dest_dies_in == 'migration':
            dst.alive = False
            src.mig = 'failed'
            return
        src.mig = 'completed'
        src.set_status('postmigrate')
        src.netdev = 'handed-over'
        dst.mig = 'completed'
        dst.netdev = 'idle'
        dst.set_status('paused')
        if dst.caps['events']:
            dst.events.append({'event': 'MIGRATION',
                               'data': {'status': 'completed'}})

    def unlink_own_paths(self, qemu):
        for p in [p for p, q in self.paths.items() if q is qemu]:
            del self.paths[p]

    def answering(self, path):
        q = self.paths.get(path)
        return q if q and q.alive else None

    def guest_runs_on(self):
        """The one QEMU that runs the guest, or what is wrong"""
        running = [q for q in self.qemus() if q.alive and
                   q.status == 'running']
        assert len(running) == 1, f'{len(running)} QEMUs run the guest'
        return running[0]


class FakeSystem:
    def __init__(self, world):
        self.w = world

    def connect(self, path, timeout):
        del timeout
        q = self.w.answering(path)
        if not q:
            raise MonitorGone(f'{path}: no answer')
        return FakeMonitor(q, path)

    def peer(self, path, timeout):
        del timeout
        q = self.w.answering(path)
        if not q:
            raise FileNotFoundError(2, 'No such file or directory')
        return q.pid

    def greeting_at(self, path, timeout):
        del timeout
        q = self.w.answering(path)
        if not q:
            raise MonitorGone(f'{path}: no answer')
        return q.pid, {'QMP': {'version': q.cmd_query_version(),
                               'capabilities': []}}

    def read_source(self, mon):
        ident = Identity.read(os.getpid())
        ident.cwd = '/run/vm1'
        live = LiveState.read(mon)
        argv = ['/usr/bin/qemu-system-x86_64', '-M', 'pc', '-qmp',
                f'unix:{QMP},server=on,wait=off', '-pidfile', PIDFILE,
                '-netdev', 'tap-transfer,id=n0,fds=3:4', '-device',
                'virtio-net-pci,netdev=n0,id=nic0']
        q = mon.qemu
        return Source(pid=ProcessId(q.pid, 1), argv=argv, identity=ident,
                      version=(10, 0, 13), status=q.status,
                      migration=q.mig, machine='pc-i440fx-10.0',
                      params=dict(q.params), caps=dict(q.caps), live=live,
                      fdsets={}, exe_stat=os.stat('/bin/sh'))

    def probe(self, path):
        target = Target(path, (10, 2, 2), MACHINES, (0, 0))
        return type('Probe', (), {'result': lambda self: target})()

    def exists(self, path):
        return path in self.w.paths

    def wait(self, monitors, dest, timeout):
        del monitors, dest, timeout

    def running(self, proc):
        q = self.qemu(proc)
        return bool(q and q.alive)

    def qemu(self, proc):
        if proc is None:
            return None
        return next((q for q in self.w.qemus() if q.pid == proc.pid), None)

    def identify(self, pid):
        return ProcessId(pid, 1)

    def kill(self, proc, sig=9):
        del sig
        q = self.qemu(proc)
        if q:
            q.alive = False

    def wait_gone(self, proc, timeout):
        del timeout
        return not self.running(proc)

    def leftovers(self, token, keep=()):
        d = self.w.dest
        if d and d.alive and token in (d.qmp_path or '') and \
                ProcessId(d.pid, 1) not in keep:
            return [ProcessId(d.pid, 1)]
        return []

    def spawn(self, argv, plan, pass_fds):
        del pass_fds
        w = self.w
        assert '-S' in argv, 'the destination must start paused'
        if w.spawn_fails:
            raise SpawnError('setresuid: Operation not permitted')
        d = w.dest = FakeQemu(w, 'destination', 200, 'inmigrate')
        d.qmp_path = plan.qmp_temp
        for _, _, temp in plan.moves:
            w.paths[temp] = d
        if w.hook:
            w.hook('spawned')
        return FakeDest(d.pid)

    def tun_fds(self, proc):
        q = self.qemu(proc)
        if q.role == 'source':
            return [10, 11]
        return [20, 21] if q.netdev in ('idle', 'adopted') else []

    def kcmp_supported(self):
        return self.w.kcmp

    def same_file(self, p1, fd1, p2, fd2):
        del p1, p2
        return self.w.same_files and fd1 - 10 == fd2

    def netns_socket(self, proc):
        del proc

    def ifindex(self, sock, ifname):
        del sock, ifname
        return 7

    def fd_ifname(self, proc, fd):
        del proc, fd
        return 'tap0'

    def file_launch(self, plan):
        del plan
        return FakeLaunch()

    def launch_of(self, proc):
        del proc
        return FakeLaunch()

    def rename(self, launch, pairs):
        del launch
        errors = {}
        for temp, real in pairs:
            if real in self.w.rename_fails:
                errors[temp] = 'Permission denied'
            elif temp in self.w.paths:
                self.w.paths[real] = self.w.paths.pop(temp)
        return errors

    def unlink(self, launch, paths):
        del launch
        for path in paths:
            self.w.paths.pop(path, None)
        return {}


class HookedUpgrade(Upgrade):
    """An Upgrade with a hook at each phase, and a SIGKILL that runs no
    code of the run (no rollback)"""

    hook = None
    killed = False

    def phase(self, name):
        super().phase(name)
        if self.hook:
            self.hook(self, name)

    def roll_back(self):
        if not self.killed:
            super().roll_back()


class Base(unittest.TestCase):
    def setUp(self):
        self.state = tempfile.mkdtemp(prefix='tt-state-')
        os.environ['TAP_TRANSFER_STATE_DIR'] = self.state
        self.addCleanup(shutil.rmtree, self.state, True)
        for env in (handover.FAULT_ENV, handover.STOP_ENV):
            os.environ.pop(env, None)

    def upgrade(self, world, hook=None, **opts):
        up = HookedUpgrade(QMP, '/opt/new/qemu-system-x86_64',
                           Options(**opts), Settings(quiet=True),
                           FakeSystem(world), Signals())
        up.hook = hook
        try:
            return up.run()
        except Killed:
            up.close()
            return None

    def token_held(self):
        """Whether some open file holds the host's stop token"""
        try:
            fd = os.open(os.path.join(self.state, StopToken.NAME),
                         os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def hold_token(self):
        """The stop token, as another run would hold it"""
        fd = os.open(os.path.join(self.state, StopToken.NAME),
                     os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def recover(self, world):
        return Recovery(QMP, Settings(quiet=True), FakeSystem(world)).run()

    def assert_on(self, world, role):
        """The guest runs on @role only, which answers at the real
        paths; no temporary name is left; nothing broke an invariant"""
        self.assertEqual(world.violations, [])
        q = world.guest_runs_on()
        self.assertEqual(q.role, role)
        self.assertIs(world.answering(QMP), q)
        self.assertIs(world.paths.get(PIDFILE), q)
        self.assertEqual([p for p in world.paths if '.tt-upgrade-' in p], [])
        self.assertEqual([f for f in os.listdir(self.state)
                          if f != StopToken.NAME], [],
                         'a journal or lock was left')
        self.assertFalse(self.token_held(), 'the stop token was kept')
        if role == 'source':
            self.assertFalse(q.params['backend-transfer'],
                             'the source\'s parameters were not put back')
            self.assertFalse(world.dest and world.dest.alive,
                             'the destination is still there')
            self.assertFalse(world.dest_ran)
        else:
            self.assertFalse(world.source.alive, 'the source is still there')


class StateMachine(Base):
    """The handover, phase by phase"""

    def test_upgrade(self):
        w = World()
        r = self.upgrade(w)
        self.assertEqual(r['status'], 'upgraded', r.get('error'))
        self.assert_on(w, 'destination')
        self.assertTrue(r['same_tap_kcmp'])
        self.assertIn('stopped_after_migration_ms', r)

    def test_stop_token(self):
        """A run migrates only once it holds the host's stop token, holds
        it until the cont, and lets it go then"""
        w = World()
        held = self.hold_token()
        seen = {}

        def hook(up, name):
            del up
            if name == 'parameters':
                seen['released'] = time.monotonic() + 0.05
                threading.Timer(0.05, os.close, (held,)).start()
            elif name in ('migrate', 'verify', 'running'):
                seen[name] = (time.monotonic(), self.token_held(),
                              os.getpriority(os.PRIO_PROCESS, 0))

        r = self.upgrade(w, hook)
        self.assertEqual(r['status'], 'upgraded', r.get('error'))
        self.assertGreaterEqual(seen['migrate'][0], seen['released'])
        self.assertGreaterEqual(r['stop_token_wait_ms'], 40)
        self.assertTrue(seen['migrate'][1] and seen['verify'][1])
        self.assertFalse(seen['running'][1])
        # as root, the command runs at a higher priority meanwhile
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        if os.geteuid() == 0:
            self.assertEqual(seen['verify'][2],
                             min(nice, handover.STOP_WINDOW_NICE))
        self.assertEqual(seen['running'][2], nice)
        self.assert_on(w, 'destination')

    def test_signal_waiting_for_token(self):
        """A signal while the run waits for the stop token rolls it back:
        the guest never stopped"""
        w = World()
        held = self.hold_token()

        def hook(up, name):
            if name == 'parameters':
                up.signals.caught.append('SIGINT')

        r = self.upgrade(w, hook)
        self.assertEqual(r['status'], 'interrupted', r.get('error'))
        self.assertEqual(w.source.mig, 'none', 'the source migrated')
        os.close(held)
        self.assert_on(w, 'source')

    def test_token_wait_bounded(self):
        """A token held longer than --timeout fails the run before its
        migration: the guest never stopped"""
        w = World()
        held = self.hold_token()
        up = HookedUpgrade(QMP, '/opt/new/qemu-system-x86_64', Options(),
                           Settings(quiet=True, timeout=0.05),
                           FakeSystem(w), Signals())
        r = up.run()
        os.close(held)
        self.assertEqual(r['status'], 'failed', r.get('error'))
        self.assertIn('stop token', r['error'])
        self.assertEqual(w.source.mig, 'none', 'the source migrated')
        self.assert_on(w, 'source')

    def test_paused_vm(self):
        """A paused VM stays paused on the destination; no cont (and the
        stop token goes at the commit all the same)"""
        w = World(source_status='paused')
        held = {}

        def hook(up, name):
            del up
            if name == 'running':
                held['running'] = self.token_held()

        r = self.upgrade(w, hook)
        self.assertEqual(held, {'running': False})
        self.assertEqual(r['status'], 'upgraded', r.get('error'))
        self.assertFalse(w.source.alive)
        self.assertEqual(w.dest.status, 'paused')
        self.assertIs(w.answering(QMP), w.dest)

    def test_fault_at_each_phase(self):
        """A step that fails before the point of no return leaves the VM
        on the source; after it, the run goes forward and leaves a
        journal that --recover finishes"""
        for phase in PHASES:
            if phase == 'onboard-taps':
                continue
            with self.subTest(phase=phase):
                self.setUp()
                os.environ[handover.FAULT_ENV] = phase
                w = World()
                r = self.upgrade(w)
                del os.environ[handover.FAULT_ENV]
                if handover.after_no_return(phase):
                    self.assertEqual(r['status'], 'unfinished', r)
                    self.assertEqual(self.recover(w)['status'], 'finished')
                    self.assert_on(w, 'destination')
                else:
                    self.assertEqual(r['status'], 'failed', r)
                    self.assertIn('injected fault', r['error'])
                    self.assert_on(w, 'source')

    def test_signal_at_each_phase(self):
        """SIGINT, SIGTERM and SIGHUP before the point of no return roll
        back; after it they are ignored and the run finishes"""
        for sig in ('SIGINT', 'SIGTERM', 'SIGHUP'):
            for phase in PHASES:
                if phase == 'onboard-taps':
                    continue
                with self.subTest(signal=sig, phase=phase):
                    self.setUp()
                    w = World()

                    def hook(up, name, phase=phase, sig=sig):
                        if name == phase:
                            up.signals.caught.append(sig)
                    r = self.upgrade(w, hook)
                    if handover.after_no_return(phase):
                        self.assertEqual(r['status'], 'upgraded', r)
                        self.assertEqual(r['signals_ignored'], [sig])
                        self.assert_on(w, 'destination')
                    else:
                        self.assertEqual(r['status'], 'interrupted', r)
                        self.assertIn(sig, r['error'])
                        self.assert_on(w, 'source')

    def test_sigkill_at_each_phase(self):
        """Killed anywhere, then --recover: undone before the point of
        no return, finished after it"""
        points = list(PHASES) + ['spawned']
        for phase in points:
            if phase == 'onboard-taps':
                continue
            with self.subTest(phase=phase):
                self.setUp()
                w = World()
                state = {}

                def hook(up, name, phase=phase):
                    if name == phase:
                        up.killed = True
                        raise Killed()

                def spawned(name, phase=phase):
                    if name == phase:
                        state['up'].killed = True
                        raise Killed()
                w.hook = spawned
                up = HookedUpgrade(QMP, '/opt/new/qemu-system-x86_64',
                                   Options(), Settings(quiet=True),
                                   FakeSystem(w), Signals())
                up.hook = hook
                state['up'] = up
                try:
                    up.run()
                    self.fail('not killed')
                except Killed:
                    up.close()
                r = self.recover(w)
                if handover.after_no_return(phase):
                    self.assertEqual(r['status'], 'finished', r)
                    self.assert_on(w, 'destination')
                else:
                    self.assertIn(r['status'], ('undone', 'nothing'), r)
                    self.assert_on(w, 'source')

    def test_journal_left_refuses(self):
        """A run on a VM whose earlier run died refuses and points to
        --recover; after it, the upgrade works"""
        w = World()

        def hook(up, name):
            if name == 'migrate':
                up.killed = True
                raise Killed()
        self.upgrade(w, hook)
        r = self.upgrade(w)
        self.assertEqual(r['status'], 'busy')
        self.assertIn('--recover', r['error'])
        self.assertEqual(self.recover(w)['status'], 'undone')
        self.assertEqual(self.upgrade(w)['status'], 'upgraded')

    def test_temporary_name_refused(self):
        r = Upgrade(QMP + '.tt-upgrade-abcd1234', '/x', Options(),
                    Settings(quiet=True), FakeSystem(World()),
                    Signals()).run()
        self.assertEqual(r['status'], 'busy')
        self.assertIn(f'--recover --qmp {QMP}', r['error'])

    def test_second_run_refused(self):
        """A second run on the same VM (whatever monitor it came by)
        refuses while the first holds it, and changes nothing"""
        w = World()
        seen = {}

        def hook(up, name):
            if name == 'migrate':
                seen['second'] = self.upgrade(w)
        r = self.upgrade(w, hook)
        self.assertEqual(seen['second']['status'], 'busy')
        self.assertIn('another tap-transfer-upgrade run', seen['second']
                      ['error'])
        self.assertEqual(r['status'], 'upgraded')
        self.assert_on(w, 'destination')


class Failures(Base):
    """What QEMU or the host does wrong, at each point"""

    def expect(self, w, status, role, text=None, **opts):
        r = self.upgrade(w, **opts)
        self.assertEqual(r['status'], status, r)
        if text:
            self.assertIn(text, r['error'])
        if role:
            self.assert_on(w, role)
        return r

    def test_spawn_fails(self):
        w = World()
        w.spawn_fails = True
        self.expect(w, 'failed', 'source', 'setresuid')

    def test_migration_fails(self):
        w = World()
        w.migration_fails = True
        self.expect(w, 'failed', 'source', 'the destination refused')

    def test_destination_dies_in_migration(self):
        w = World()
        w.dest_dies_in = 'migration'
        self.expect(w, 'failed', 'source', 'the destination QEMU exited')

    def test_other_open_files(self):
        """kcmp says the destination's TAP fds are other files"""
        w = World()
        w.same_files = False
        self.expect(w, 'failed', 'source', 'kcmp')

    def test_no_kcmp(self):
        """No kcmp on this architecture: not compared, said so"""
        w = World()
        w.kcmp = False
        r = self.expect(w, 'upgraded', 'destination')
        self.assertIsNone(r['same_tap_kcmp'])

    def test_destination_refuses_cont(self):
        """cont fails and the destination stays paused: it never ran
        the guest, so the source takes it back"""
        w = World()
        w.dest_refuses_cont = True
        self.expect(w, 'failed', 'source', 'refused to run')

    def test_destination_dies_at_cont(self):
        w = World()
        w.fail_cmd[('destination', 'cont')] = 'die'
        self.expect(w, 'lost', None, 'must not run it')
        self.assertEqual(w.violations, [])
        self.assertNotEqual(w.source.status, 'running')

    def test_journal_says_commit_at_cont(self):
        """The destination gets its cont only once the journal on disk
        says 'commit': a run killed there is finished by --recover,
        never rolled back onto the source"""
        w = World()
        phases_at_cont = []
        cont = FakeQemu.cmd_cont

        def cmd_cont(qemu):
            if qemu.role == 'destination':
                (path,) = glob.glob(os.path.join(self.state, '*.json'))
                with open(path) as f:
                    phases_at_cont.append(json.load(f)['phase'])
            return cont(qemu)
        FakeQemu.cmd_cont = cmd_cont
        self.addCleanup(setattr, FakeQemu, 'cmd_cont', cont)
        r = self.upgrade(w)
        self.assertEqual(r['status'], 'upgraded', r.get('error'))
        self.assertEqual(phases_at_cont, ['commit'])

    def test_journal_fsyncs_names(self):
        """The record that names the temporary names is fsync'ed before
        the destination makes them (a crash of the host leaves only
        files to put right), and so is the journal's removal; the
        records between, which name processes, are not waited for"""
        w = World()
        synced = []
        fsync = journal_mod.os.fsync

        def counted(fd):
            synced.append(fd)
            fsync(fd)

        def hook(up, name):
            if name == 'destination':
                synced.append(('moves in the first record',
                               bool(up.journal['moves'])))
        journal_mod.os.fsync = counted
        self.addCleanup(setattr, journal_mod.os, 'fsync', fsync)
        r = self.upgrade(w, hook)
        self.assertEqual(r['status'], 'upgraded', r.get('error'))
        # the record's file and its directory before 'destination', the
        # directory after the removal
        self.assertEqual(len(synced), 4, synced)
        self.assertEqual(synced[2], ('moves in the first record', True))

    def test_destination_dies_after_cont(self):
        """After the point of no return the source is never resumed"""
        w = World()

        def hook(up, name):
            if name == 'running':
                w.dest.alive = False
        r = self.upgrade(w, hook)
        self.assertEqual(r['status'], 'lost', r)
        self.assertEqual(w.violations, [])
        self.assertNotEqual(w.source.status, 'running')

    def test_rename_fails(self):
        """Each rename is tried; the report says where the VM answers"""
        w = World()
        w.rename_fails.add(QMP)
        r = self.expect(w, 'unfinished', None, 'temporary names')
        self.assertTrue(r['answers_at'].startswith(QMP + '.tt-upgrade-'))
        self.assertIs(w.paths.get(PIDFILE), w.dest, 'the pidfile was not '
                      'renamed after the QMP socket failed')
        w.rename_fails.clear()
        self.assertEqual(self.recover(w)['status'], 'finished')
        self.assert_on(w, 'destination')

    def test_parameter_refused(self):
        w = World()
        w.fail_cmd[('source', 'migrate-set-parameters')] = 'no such parameter'
        self.expect(w, 'failed', 'source')

    def test_source_dies(self):
        w = World()

        def hook(up, name):
            if name == 'parameters':
                w.source.alive = False
        r = self.upgrade(w, hook)
        self.assertEqual(r['status'], 'failed', r)
        self.assertFalse(w.dest.alive)


if __name__ == '__main__':
    taptest.main(StateMachine, Failures)
