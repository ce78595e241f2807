"""`--recover`: finish or undo a run that died, from its journal.

Before the point of no return (the journal's phase is before `commit`,
or `rolling-back`) the destination never ran the guest: recovery kills
it (and any QEMU started for the run that the journal did not get to
name), cancels the run's migration, puts the source's migration
settings back, resumes the source if the run had stopped it, and
removes the temporary names and the onboarding's new TAPs.

From `commit` on it goes forward: the destination gets `cont` if it is
still paused, the source quits, the temporary names are renamed to the
real ones.  A destination that is gone by then is reported as the VM
lost: the source is left stopped.

Either way it ends with one line saying which, and removes the
journal."""

import signal
import time

from . import journal
from .errors import Busy, Lost, Refused
from .handover import ACTIVE, NO_RETURN, PHASES, Log
from .procfs import ProcessId
from .migsettings import MigrationSettings
from .qmp import CommandError, MonitorGone


class Recovery:
    """The recovery of the run whose journal names @qmp_path."""

    def __init__(self, qmp_path, settings, system):
        self.qmp_path = qmp_path
        self.settings = settings
        self.system = system
        self.log = Log(qmp_path, settings.quiet)
        self.report = {'qmp': qmp_path, 'ok': False, 'recover': True}
        self.j = None
        self.lock = None

    def run(self):
        try:
            self.recover()
            self.report['ok'] = True
        except Busy as e:
            self.report.update(status='busy', error=str(e))
        except Refused as e:
            self.report.update(status='refused', error=str(e))
        except Lost as e:
            self.report.update(status='lost', error=str(e))
        finally:
            if self.lock:
                self.lock.release()
        return self.report

    def recover(self):
        state = journal.state_dir()
        left = journal.find(state, path=self.qmp_path)
        if not left:
            self.report['status'] = 'nothing'
            self.report['message'] = ('no interrupted run names this path: '
                                      'nothing to recover')
            return
        j = self.j = left[0]
        src = ProcessId.from_dict(j['source'])
        self.lock = journal.Lock.take(state, src.key())
        # the journal may have changed while the run still held the lock
        j = self.j = journal.Journal.load(j.path)
        self.src = src
        self.dst = ProcessId.from_dict(j['destination']) \
            if j['destination'] and j['destination'].get('start') else None
        self.report.update(phase=j['phase'], old_pid=src.pid,
                           new_pid=self.dst.pid if self.dst else None)
        self.log(f'a run (pid {j["tool_pid"]}) died in phase {j["phase"]}')
        if j['phase'] in PHASES and PHASES.index(j['phase']) >= NO_RETURN:
            self.finish()
        else:
            self.undo()
        j.remove()

    # before the point of no return

    def undo(self):
        sysm, j = self.system, self.j
        keep = [self.src]
        procs = [self.dst] if self.dst else []
        procs += sysm.leftovers(j['token'], keep + procs)
        for p in procs:
            sysm.kill(p)
        for p in procs:
            sysm.wait_gone(p, 10)
        if not sysm.running(self.src):
            self.remove_temporaries(None)
            raise Lost(f'the source QEMU (pid {self.src.pid}) is gone: the '
                       'VM is not running (the destination never ran it)')
        mon = self.source_monitor()
        try:
            self.restore_source(mon)
        finally:
            mon.close()
        self.remove_temporaries(self.src)
        self.undo_onboarding()
        self.report['status'] = 'undone'
        self.report['message'] = (f'undone: the VM runs on its QEMU (pid '
                                  f'{self.src.pid}) as before')

    def source_monitor(self):
        try:
            mon = self.system.connect(self.j['qmp'], self.settings.qmp_timeout)
        except MonitorGone as e:
            raise Refused(f'the source QEMU does not answer on '
                          f'{self.j["qmp"]}: {e}') from e
        if mon.pid != self.src.pid:
            mon.close()
            raise Refused(f'{self.j["qmp"]} answers from pid {mon.pid}, not '
                          f'the source {self.src.pid}')
        return mon

    def restore_source(self, mon):
        j = self.j
        if j['migrating']:
            st = mon.cmd('query-migrate').get('status')
            if st in ACTIVE:
                mon.cmd('migrate_cancel')
                deadline = time.monotonic() + 30
                while mon.cmd('query-migrate').get('status') in ACTIVE and \
                        time.monotonic() < deadline:
                    time.sleep(0.01)
        MigrationSettings.from_dict(j['restore']).restore(mon)
        status = mon.cmd('query-status')['status']
        if j['migrating'] and j['source_status'] == 'running' and \
                status != 'running':
            mon.cmd('cont')
            self.log(f'source was {status}: cont')

    def remove_temporaries(self, proc):
        launch = self.file_launch(proc)
        if not launch:
            return
        try:
            errors = self.system.unlink(launch, [t for _, _, t in
                                                 self.j['moves'] or []])
            for temp, err in errors.items():
                self.log(f'{temp}: {err}')
        finally:
            launch.close()

    def file_launch(self, proc):
        """File steps as the VM's user: from the running QEMU of the VM
        (source or destination), which has the VM's identity"""
        if proc is None or not self.system.running(proc):
            return None
        return self.system.launch_of(proc)

    def undo_onboarding(self):
        ob = self.j['onboard']
        if not ob:
            return
        from . import onboard   # pylint: disable=import-outside-toplevel
        onboard.undo_from_journal(self.src.pid, ob, self.log)

    # after the point of no return

    def finish(self):
        sysm, j = self.system, self.j
        if self.dst is None or not sysm.running(self.dst):
            raise Lost(f'the destination QEMU is gone after the point of no '
                       f'return (phase {j["phase"]}): the VM is not running; '
                       f'the source (pid {self.src.pid}) must not run it')
        temp_qmp = next((t for k, _, t in j['moves'] if k == 'qmp'), None)
        real_qmp = next((r for k, r, _ in j['moves'] if k == 'qmp'), None)
        path = temp_qmp if sysm.exists(temp_qmp) else real_qmp
        mon = sysm.connect(path, self.settings.qmp_timeout)
        try:
            if mon.pid != self.dst.pid:
                raise Refused(f'{path} answers from pid {mon.pid}, not the '
                              f'destination {self.dst.pid}')
            st = mon.cmd('query-status')['status']
            if j['source_status'] == 'running' and st == 'paused':
                try:
                    mon.cmd('cont')
                except CommandError as e:
                    raise Refused(f'the destination does not run: {e}') \
                        from e
                self.log('destination paused at the point of no return: cont')
        finally:
            mon.close()
        if sysm.running(self.src):
            self.quit_source()
        launch = self.file_launch(self.dst)
        moves = [m for m in j['moves'] if sysm.exists(m[2])]
        try:
            errors = sysm.unlink(launch, [t for k, _, t in moves
                                          if k == 'cpr'])
            errors.update(sysm.rename(launch, [(t, r) for k, r, t in moves
                                               if k != 'cpr']))
        finally:
            launch.close()
        left = [f'{t}: {e}' for t, e in errors.items()]
        self.report['status'] = 'finished'
        self.report['message'] = (f'finished: the VM runs on the new QEMU '
                                  f'(pid {self.dst.pid})'
                                  + (f'; left: {"; ".join(left)}' if left
                                     else ''))

    def quit_source(self):
        """The source, stopped after the handover, quits: by QMP if its
        socket still answers from it, else by SIGTERM"""
        sysm = self.system
        try:
            mon = sysm.connect(self.j['qmp'], 2)
            if mon.pid == self.src.pid:
                mon.try_cmd('quit')
            mon.close()
        except MonitorGone:
            sysm.kill(self.src, signal.SIGTERM)
        if not sysm.wait_gone(self.src, 10):
            sysm.kill(self.src)
            sysm.wait_gone(self.src, 10)
        self.log(f'source QEMU {self.src.pid} quit')
