# The upgrade command's tests share this: VMs shaped like production
# ones (a virtio-blk qcow2 disk the guest writes numbered, fsync'ed
# records to, acknowledged on its console; a serial console logged to a
# file; QMP on a UNIX socket; a pidfile; -daemonize; shared RAM; a
# tap-transfer NIC), run as root or as a user of their own, in a cgroup
# of their own; and the command run on them, to the end or stopped at
# one of its phases.  The command is TAP_TRANSFER_UPGRADE (set by
# tap-transfer's scripts/pipeline/run-functional.sh), the guest
# TAP_TRANSFER_GUEST, the other QEMU TAP_TRANSFER_QEMU_NEW.
#
# This work is licensed under the terms of the GNU GPL, version 2 or
# later.  See the COPYING file in the top-level directory.

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from qemu.qmp.legacy import QEMUMonitorProtocol
from tap_transfer_host import alive, tun_fds
from tap_transfer_lab import TapLabTest

ACK = re.compile(r'^tt-record (\d+) acked', re.M)
RECORDS = 100000


def qemu_processes(mark):
    """Live processes whose command line contains @mark"""
    found = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                cmd = f.read()
        except OSError:
            continue
        if mark.encode() in cmd and alive(int(pid)) and \
                int(pid) != os.getpid():
            found.append(int(pid))
    return found


def upgrade_processes(base, vms=()):
    """QEMUs the command started for VMs under directory @base and left
    over: their command lines name its temporary paths there, and no
    pidfile of @vms names them (a VM the command upgraded runs with such
    a command line)."""
    keep = set()
    for vm in vms:
        try:
            keep.add(vm.read_pid())
        except (OSError, ValueError):
            pass
    return [p for p in qemu_processes('.tt-upgrade-')
            if p not in keep and base.encode() in _cmdline(p)]


def _cmdline(pid):
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            return f.read()
    except OSError:
        return b''


def describe(pids):
    out = []
    for pid in pids:
        try:
            with open(f'/proc/{pid}/stat') as f:
                stat = f.read().split()
            cmd = _cmdline(pid).replace(b'\0', b' ').decode(errors='replace')
            out.append(f'{pid} (state {stat[2]}, parent {stat[3]}): '
                       f'{cmd[:300]}')
        except OSError:
            out.append(f'{pid} (gone)')
    return '; '.join(out)


def status_ids(pid):
    """(uids, gids, groups) of @pid, as /proc/PID/status says"""
    with open(f'/proc/{pid}/status') as f:
        st = dict(line.rstrip('\n').split(':\t', 1) for line in f
                  if ':\t' in line)
    return st['Uid'], st['Gid'], st.get('Groups', '')


class Vm:
    """A daemonized VM as an operator runs it: QMP socket, pidfile and
    console log in its own directory, optionally a qcow2 disk.

    @user: (uid, gid) it runs as (setpriv), its directory and files its;
    @run_with_user: started as root with -run-with user=UID:GID;
    @cgroups: directories of cgroups to start it in; @wrapper: argv put
    before QEMU's (e.g. env LD_PRELOAD=...); @monitors: more QMP sockets
    (as -chardev + -mon)."""

    def __init__(self, test, name, qemu, index, queues=1, disk=False,
                 shared_ram=True, tap_fds=None, boot=True, extra=(),
                 daemonize=True, memfd=False, user=None, run_with_user=None,
                 cgroups=(), wrapper=(), monitors=()):
        self.test = test
        self.name = name
        self.dir = os.path.join(test.base, name)
        os.makedirs(self.dir)
        owner = user or run_with_user
        if owner:
            os.chown(self.dir, *owner)
        self.qmp_path = os.path.join(self.dir, 'qmp.sock')
        self.monitors = [os.path.join(self.dir, m) for m in monitors]
        self.pidfile = os.path.join(self.dir, 'qemu.pid')
        self.console = os.path.join(self.dir, 'console.log')
        self.disk = os.path.join(self.dir, 'disk.qcow2') if disk else None
        self.addr = f'10.0.0.{index + 1}'
        self.mac = f'52:54:00:12:34:{index + 0x55:02x}'
        self.ifname = f'ttu{index}'
        self.queues = queues
        self.proc = None
        args = ['-name', name, '-M', 'pc', '-accel', 'tcg', '-m', '128',
                '-nodefaults', '-display', 'none',
                '-serial', f'file:{self.console}',
                '-qmp', f'unix:{self.qmp_path},server=on,wait=off',
                '-pidfile', self.pidfile]
        for i, m in enumerate(self.monitors):
            args += ['-chardev', f'socket,id=mon{i},path={m},server=on,'
                     'wait=off', '-mon', f'mon{i},mode=control']
        if daemonize:
            args.append('-daemonize')
        if run_with_user:
            args += ['-run-with', f'user={run_with_user[0]}:'
                     f'{run_with_user[1]}']
        if boot:
            records = f' tt.records={RECORDS}' if disk else ''
            args += ['-kernel', os.path.join(test.guest, 'vmlinuz'),
                     '-initrd', os.path.join(test.guest, 'initrd.gz'),
                     '-append', f'console=ttyS0 quiet tt.addr={self.addr}/24'
                     f'{records}']
        if shared_ram:
            self.shm = f'/dev/shm/tap-transfer-upgrade-{test.ns}-{name}'
            test.addCleanup(lambda: os.path.exists(self.shm) and
                            os.unlink(self.shm))
            args += ['-object', 'memory-backend-file,id=ram0,share=on,'
                     f'mem-path={self.shm},size=128M',
                     '-machine', 'memory-backend=ram0']
        if memfd:
            args += ['-object', 'memory-backend-memfd,id=ram0,size=128M',
                     '-machine', 'memory-backend=ram0,aux-ram-share=on']
        if disk:
            subprocess.run([test.qemu_img, 'create', '-q', '-f', 'qcow2',
                            self.disk, '16M'], check=True)
            if owner:
                os.chown(self.disk, *owner)
            args += ['-drive', f'file={self.disk},if=none,id=disk0,'
                     'format=qcow2',
                     '-device', 'virtio-blk-pci,drive=disk0,id=vblk0']
        device = f'virtio-net-pci,netdev=n0,id=nic0,mac={self.mac}'
        if queues > 1:
            device += f',mq=on,vectors={2 * queues + 2}'
            args += ['-smp', str(queues)]
        if tap_fds:
            netdev = f'tap-transfer,id=n0,fds={":".join(map(str, tap_fds))}'
        else:
            netdev = (f'tap-transfer,id=n0,ifname={self.ifname},'
                      f'script={test.ifup},downscript=no')
        args += ['-netdev', netdev, '-device', device, *extra]
        cmd = ['nsenter', f'--net=/run/netns/{test.ns}']
        if user:
            cmd += ['setpriv', f'--reuid={user[0]}', f'--regid={user[1]}',
                    '--clear-groups', '--inh-caps=-all', '--']
        cmd += [*wrapper, qemu, *args]
        if cgroups:
            joins = ' '.join(f'echo $$ > {d}/cgroup.procs;' for d in cgroups)
            cmd = ['sh', '-c', f'{joins} exec "$@"', 'sh', *cmd]
        self.start(cmd, daemonize, tap_fds)

    def start(self, cmd, daemonize, tap_fds):
        test = self.test
        log = os.path.join(test.base, f'{self.name}-start.log')
        with open(log, 'w') as out:
            if daemonize:
                r = subprocess.run(cmd, stdout=out, stderr=out,
                                   pass_fds=tap_fds or (), timeout=120,
                                   check=False)
                rc = r.returncode
            else:
                # run by a supervisor of its own, as a process that
                # does not daemonize is (nsenter execs QEMU)
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=out,
                                             stdin=subprocess.DEVNULL,
                                             pass_fds=tap_fds or (),
                                             start_new_session=True)
                deadline = time.monotonic() + 60
                while not os.path.exists(self.pidfile) and \
                        self.proc.poll() is None and \
                        time.monotonic() < deadline:
                    time.sleep(0.05)
                rc = self.proc.poll() or 0
        with open(log) as f:
            test.assertEqual(rc, 0, f'{self.name} did not start: {f.read()}')
        self.pid = self.read_pid()
        test.addCleanup(self.kill)

    def read_pid(self):
        with open(self.pidfile) as f:
            return int(f.read().strip())

    def processes(self):
        """Every live QEMU of this VM: its command line names its QMP
        socket (at the real or at a temporary name)"""
        return qemu_processes(self.qmp_path)

    def kill(self):
        """At the end: whatever QEMU holds the VM now goes, and any the
        command started for it."""
        pids = set(self.processes()) | {self.pid}
        try:
            pids.add(self.read_pid())
        except (OSError, ValueError):
            pass
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    def qmp(self, cmd, path=None, **args):
        q = QEMUMonitorProtocol(path or self.qmp_path)
        q.connect()
        try:
            return q.cmd(cmd, **args)
        finally:
            q.close()

    def console_text(self):
        with open(self.console, errors='replace') as f:
            return f.read()

    def acked(self):
        return [int(n) for n in ACK.findall(self.console_text())]

    def wait_console(self, text, timeout=90):
        deadline = time.monotonic() + timeout
        while text not in self.console_text():
            self.test.assertTrue(alive(self.pid), f'{self.name} exited')
            self.test.assertLess(time.monotonic(), deadline,
                                 f'{self.name}: no "{text}" on the console')
            time.sleep(0.1)

    def wait_acks(self, count, timeout=60):
        deadline = time.monotonic() + timeout
        while len(self.acked()) < count:
            self.test.assertLess(time.monotonic(), deadline,
                                 f'{self.name}: fewer than {count} records '
                                 'acked')
            time.sleep(0.1)

    def quit(self):
        try:
            self.qmp('quit')
        except Exception:       # pylint: disable=broad-except
            pass
        deadline = time.monotonic() + 30
        while alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.test.assertFalse(alive(self.pid), f'{self.name} did not quit')

    def snapshot(self):
        """What must not change when an upgrade fails."""
        st = os.stat(self.qmp_path)
        return {'pid': self.read_pid(), 'files': sorted(os.listdir(self.dir)),
                'qmp_inode': st.st_ino,
                'tun_fds': tun_fds(self.pid)}


class UpgradeLabTest(TapLabTest):
    """A lab (TapLabTest) for the upgrade command: self.tool, self.old
    and self.new (the two QEMUs), self.qemu_img, self.base (the VMs'
    directories), self.tmp (the command's TMPDIR) and self.state (its
    journal directory)."""

    def setUp(self):
        super().setUp()
        self.require_lab('ip', 'nsenter', 'ping')
        self.tool = os.environ.get('TAP_TRANSFER_UPGRADE')
        if not self.tool or not os.access(self.tool, os.X_OK):
            self.skipTest('TAP_TRANSFER_UPGRADE does not name the '
                          'tap-transfer-upgrade command')
        self.qemu_img = None
        for img in (os.environ.get('QEMU_TEST_QEMU_IMG'),
                    shutil.which('qemu-img')):
            if img and os.access(img, os.X_OK):
                self.qemu_img = img
                break
        if not self.qemu_img:
            self.skipTest('no qemu-img (QEMU_TEST_QEMU_IMG, or on PATH)')
        self.require_accelerator('tcg')
        self.require_netdev('tap-transfer')
        self.old = self.qemu_bin
        self.new = os.environ.get('TAP_TRANSFER_QEMU_NEW') or self.qemu_bin
        if not os.access(self.new, os.X_OK):
            why = f'{self.new} is not built'
            unavailable = os.path.dirname(self.new) + '.unavailable'
            if os.path.exists(unavailable):
                with open(unavailable) as f:
                    why = f.read().strip()
            self.skipTest(f'no QEMU to upgrade to: {why}')
        # short: the command adds .tt-upgrade-XXXXXXXX to socket paths;
        # searchable by any user: some VMs run as users of their own
        self.base = tempfile.mkdtemp(prefix='ttu-')
        os.chmod(self.base, 0o755)
        self.addCleanup(shutil.rmtree, self.base, True)
        self.make_lab('tt-upg', self.base)
        self.tmp = os.path.join(self.base, 'tmp')
        os.mkdir(self.tmp)
        self.state = os.path.join(self.base, 'state')

    # the command

    def tool_env(self, **extra):
        # the command runs on the qemu.qmp this test imports, with a
        # journal directory of the test's own
        env = dict(os.environ, TMPDIR=self.tmp,
                   TAP_TRANSFER_STATE_DIR=self.state, **extra)
        env.setdefault('TAP_TRANSFER_QEMU_PYTHON', os.path.dirname(
            os.path.dirname(os.path.dirname(os.path.abspath(
                sys.modules['qemu.qmp'].__file__)))))
        return env

    def upgrade(self, qmp, to, *extra, expect_ok=True, env=None):
        """Run the command; its JSON report, with its returncode."""
        args = [self.tool, '--qmp', qmp, '--json', *extra]
        if to:
            args += ['--to', to]
        r = subprocess.run(args, capture_output=True, text=True,
                           env=self.tool_env(**(env or {})), timeout=600,
                           check=False)
        for line in r.stderr.splitlines():
            self.log.info(line)
        try:
            report = json.loads(r.stdout)
        except ValueError:
            self.fail(f'no JSON report (exit {r.returncode}): '
                      f'{r.stdout[-500:]} {r.stderr[-1500:]}')
        if expect_ok:
            self.assertEqual(r.returncode, 0,
                             f'the command failed: {report.get("error")}'
                             f'\n{r.stderr[-2000:]}')
        report['returncode'] = r.returncode
        return report

    def recover(self, vm):
        return self.upgrade(vm.qmp_path, None, '--recover', expect_ok=False)

    def start_stopped(self, qmp, to, phase, *extra):
        """The command, stopped at @phase (its test hook): the process,
        once it says it has stopped, and its stderr so far"""
        proc = subprocess.Popen([self.tool, '--qmp', qmp, '--to', to,
                                 '--json', *extra], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=self.tool_env(
                                    TAP_TRANSFER_UPGRADE_STOP=phase))
        proc.lines = []
        stopped = threading.Event()

        def read_stderr():
            for line in proc.stderr:
                proc.lines.append(line)
                if f'stopped at phase {phase}' in line:
                    stopped.set()
        proc.reader = threading.Thread(target=read_stderr, daemon=True)
        proc.reader.start()
        if not stopped.wait(120):
            proc.kill()
            self.fail(f'the command did not stop at {phase}: '
                      f"{''.join(proc.lines)[-2000:]}")
        return proc

    def finish(self, proc):
        """The report of a command started by start_stopped()"""
        # stdout only: stderr is the reader thread's
        out = proc.stdout.read()
        proc.wait(300)
        proc.reader.join(10)
        self.log.info(''.join(proc.lines))
        if not out.strip():
            return {'returncode': proc.returncode}
        report = json.loads(out)
        report['returncode'] = proc.returncode
        return report

    def version_of(self, qemu):
        out = subprocess.run([qemu, '--version'], capture_output=True,
                             text=True, check=True).stdout
        return re.search(r'version (\d+\.\d+\.\d+)', out).group(1)

    def other(self, qemu):
        return self.new if qemu == self.old else self.old

    # what must hold

    def assert_one_qemu(self, vm):
        """Exactly one QEMU runs the guest, at the real QMP path and
        pidfile; returns its binary"""
        deadline = time.monotonic() + 10
        while len(vm.processes()) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        procs = vm.processes()
        self.assertEqual(len(procs), 1, f'QEMUs of {vm.name}: '
                         f'{describe(procs)}')
        pid = procs[0]
        self.assertEqual(vm.read_pid(), pid, 'the pidfile names another pid')
        self.assertEqual(vm.qmp('query-status')['status'], 'running')
        q = QEMUMonitorProtocol(vm.qmp_path)
        q.connect()
        q.close()
        vm.pid = pid
        return os.readlink(f'/proc/{pid}/exe')

    def assert_records(self, vm, image=None):
        """No record acked twice (two QEMUs that ran one guest ack the
        same numbers again), each acked record on the disk (@image: the
        top of its chain, by default the VM's disk), and qemu-img check
        clean (-U: the VM runs)"""
        image = image or vm.disk
        # a guest that writes on extends the image meanwhile: stopped
        # (and so flushed), the VM's image reads consistent
        vm.qmp('stop')
        try:
            return self.assert_records_at_rest(vm, image)
        finally:
            vm.qmp('cont')

    def assert_records_at_rest(self, vm, image):
        """assert_records() of a VM that is stopped or has quit; the
        number of records acked"""
        acked = vm.acked()
        self.assertEqual(acked, list(range(len(acked))),
                         'acks are not 0, 1, 2, ... once each')
        check = subprocess.run([self.qemu_img, 'check', '-U', image],
                               capture_output=True, text=True, check=False)
        self.assertEqual(check.returncode, 0,
                         f'qemu-img check: {check.stdout} {check.stderr}')
        raw = os.path.join(self.base, 'disk.raw')
        subprocess.run([self.qemu_img, 'convert', '-U', '-O', 'raw', image,
                        raw], check=True)
        bad = []
        with open(raw, 'rb') as f:
            for n in acked:
                f.seek(n * 512)
                if f.read(15) != f'TTREC {n:08d}\n'.encode():
                    bad.append(n)
        os.unlink(raw)
        self.assertEqual(bad, [], 'acked records missing on the disk')
        return len(acked)

    def assert_answers(self, vm, count=50):
        r = self.ping_result(self.start_ping(count, 100, addr=vm.addr))
        self.assertEqual(r['lost'], 0, f'{vm.name} does not answer pings: '
                         f"{r['missing'][:20]}")

    def assert_no_leftover(self, vms):
        deadline = time.monotonic() + 10
        while upgrade_processes(self.base, vms) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        left = upgrade_processes(self.base, vms)
        self.assertEqual(left, [], f'QEMUs left over: {describe(left)}')
        journals = os.listdir(self.state) if os.path.isdir(self.state) \
            else []
        # targets.json: what the command knows of the QEMU binaries;
        # stop-window.lock: the host's stop token, which no run holds
        kept = ('targets.json', 'stop-window.lock')
        self.assertEqual([j for j in journals if j not in kept], [],
                         'a journal or lock was left')
        if 'stop-window.lock' in journals:
            fd = os.open(os.path.join(self.state, 'stop-window.lock'),
                         os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.fail('the stop token is still held')
            finally:
                os.close(fd)
