"""A small lab for tap-transfer with a real guest.

A private network namespace with a bridge (10.0.0.1/24), Linux guests
booted under QEMU on -netdev tap-transfer (or tap) attached to it, a ping
flood from the bridge, and local migration between QEMU processes.  All of
it is torn down on exit, Ctrl-C or failure.

QEMU is run and spoken to with QEMU's own Python tooling (qemu.machine's
QEMUMachine, qemu.qmp) from the tree that built the QEMU under test.  The
host side (the namespace and its bridge, the ping flood and what counts
as a lost ping, kcmp and /proc) is the functional tests' own,
tests/functional/tap_transfer_host.py, found there or beside this file.

Used by demo.py, demo-onboard.py, bench.py, soak.py, scale.py,
ram-copy-repro.py and tests/fleet/fleet_check.py.
"""

import calendar
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# tap_transfer_host: in this checkout's tests/functional, or (a copy of
# the lab elsewhere) beside this file, which is on sys.path already
FUNCTIONAL = os.path.join(HERE, '..', '..', 'tests', 'functional')
if os.path.isdir(FUNCTIONAL) and FUNCTIONAL not in sys.path:
    sys.path.append(FUNCTIONAL)
# pylint: disable=wrong-import-position
from tap_transfer_host import (  # noqa: E402
    GUEST_ADDR, GUEST_MAC, GUEST_READY, PingError, alive, bridge_setup,
    guest_mac, in_netns, link_names, netns_name, ping_command,
    ping_once_command, ping_result, same_open_file, tun_fds, write_ifup)

# this checkout's operator command
UPGRADE_TOOL = os.path.join(HERE, '..', '..', 'tools', 'tap-transfer-upgrade')


# the log trace backend with -msg timestamp=on: "tid@sec.usec:name args"
# up to QEMU 10.0, "YYYY-MM-DDThh:mm:ss.usecZ name args" from 10.1
TRACE_LINE = re.compile(r'^\d+@(\d+)\.(\d+):(\w+) ?(.*)$')
TRACE_LINE_ISO = re.compile(r'^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{6})Z '
                            r'(\w+) ?(.*)$')


def trace_event(line):
    """(wall-clock time, name, args) of a trace log line, or None"""
    m = TRACE_LINE.match(line)
    if m:
        sec = int(m.group(1))
    else:
        m = TRACE_LINE_ISO.match(line)
        if not m:
            return None
        sec = calendar.timegm(time.strptime(m.group(1), '%Y-%m-%dT%H:%M:%S'))
    return sec + int(m.group(2)) / 1e6, m.group(3), m.group(4)


class LabError(Exception):
    pass


def run_main(main, prog):
    """Exit with @main()'s status: what the lab scripts end with.  On
    Ctrl-C or SIGTERM (the lab has been torn down by then) with 130; on a
    LabError with 1, the error on stderr after @prog."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print('interrupted; everything was cleaned up')
        sys.exit(130)
    except LabError as e:
        print(f'{prog}: {e}', file=sys.stderr)
        sys.exit(1)


def run_upgrade(tool, env, vm, to, *extra):
    """Run the upgrade command @tool on DaemonVm @vm, to QEMU binary @to,
    with @extra options; its JSON report, which must say ok.  Its
    progress goes to our stderr."""
    r = subprocess.run([tool, '--qmp', vm.qmp_path, '--to', to, '--json',
                        *extra], stdout=subprocess.PIPE, text=True, env=env)
    try:
        report = json.loads(r.stdout)
    except ValueError as e:
        raise LabError(f'tap-transfer-upgrade printed no report '
                       f'(exit {r.returncode})') from e
    if r.returncode or not report.get('ok'):
        raise LabError(f"tap-transfer-upgrade failed: "
                       f"{report.get('error')}")
    return report


def qemu_python(qemu):
    """The python/ directory of the QEMU tree @qemu was built from: this
    project builds <build>/qemu-X.Y-build from <build>/qemu-X.Y-src."""
    build_dir = os.path.dirname(os.path.abspath(qemu))
    return os.path.join(re.sub(r'-build$', '-src', build_dir), 'python')


# QEMU's Python tooling, imported by import_qemu_python()
QEMUMachine = QMPError = AbnormalShutdown = QEMUMonitorProtocol = None


def import_qemu_python(path):
    """Import QEMU's own Python tooling (qemu.machine, qemu.qmp) from
    @path, a QEMU tree's python/ directory."""
    global QEMUMachine, QMPError, AbnormalShutdown, QEMUMonitorProtocol
    if not os.path.isdir(os.path.join(path, 'qemu', 'machine')):
        raise LabError(f'no QEMU Python tooling (qemu/machine) in {path}')
    if path not in sys.path:
        sys.path.insert(0, path)
    # pylint: disable=import-error,import-outside-toplevel
    from qemu.machine import QEMUMachine
    from qemu.machine.machine import AbnormalShutdown
    from qemu.qmp import QMPError
    from qemu.qmp.legacy import QEMUMonitorProtocol


class Vm:
    """A guest: a qemu.machine.QEMUMachine run in the lab's namespace."""

    def __init__(self, lab, name, machine, console):
        self.lab = lab
        self.name = name
        self.machine = machine
        self.console = console
        self.pid = machine.get_pid()   # nsenter execs QEMU: QEMU's pid
        self.log = None
        self.trace_log = None

    def cmd(self, name, /, **args):
        """A QMP command, arguments as QMP spells them; its return value.
        A QMP error is a LabError naming the command."""
        # positional-only: a command may have an argument called "name"
        try:
            return self.machine.cmd(name, args_dict=args)
        except QMPError as e:
            raise LabError(f'{self.name}: {name}: {e}') from e

    def running(self):
        return self.machine.is_running()

    def wait_serial(self, text, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise LabError(f'{self.name} exited: '
                               f'{self.machine.exitcode()}')
            try:
                with open(self.console, errors='replace') as f:
                    if text in f.read():
                        return
            except FileNotFoundError:
                pass
            time.sleep(0.1)
        raise LabError(f'{self.name}: no "{text}" on the console')

    def tun_fds(self):
        return tun_fds(self.pid)

    def shares_tap_with(self, other):
        """Every TAP fd of @other is an fd of ours: the same open file."""
        mine, theirs = self.tun_fds(), other.tun_fds()
        return len(mine) == len(theirs) > 0 and all(
            any(same_open_file(self.pid, a, other.pid, b)
                for a in mine) for b in theirs)

    def trace(self, pattern, enable=True):
        """Switch trace events matching @pattern on or off, now."""
        self.cmd('trace-event-set-state', name=pattern, enable=enable)

    def read_trace(self):
        """The trace events logged so far: (wall-clock time, name, args)."""
        if not self.trace_log:
            return []
        with open(self.trace_log, errors='replace') as f:
            return [e for e in map(trace_event, f) if e]

    def wait_exit(self, timeout=30):
        """Wait for a QEMU that quits by itself (a failed incoming
        migration, say), and clean up after it."""
        self.machine.wait(timeout=timeout)

    def stop(self):
        """quit, or kill after 10 s; QEMUMachine cleans up either way."""
        try:
            self.machine.shutdown(timeout=10)
        except AbnormalShutdown:
            pass


RECORD_ACK = re.compile(r'^tt-record (\d+) acked', re.M)


class DaemonVm:
    """A VM as an operator runs it, in a directory of its own: QMP on a
    UNIX socket, a pidfile, the serial console logged to a file,
    -daemonize, and optionally a qcow2 disk that the guest writes
    numbered records to (acked on its console).  Whatever QEMU holds it
    (an upgrade replaces the process) is found through the pidfile."""

    def __init__(self, lab, name, directory):
        self.lab = lab
        self.name = name
        self.dir = directory
        self.qmp_path = os.path.join(directory, 'qmp.sock')
        self.pidfile = os.path.join(directory, 'qemu.pid')
        self.console = os.path.join(directory, 'console.log')
        self.disk = None
        self.pids = set()

    def pid(self):
        with open(self.pidfile) as f:
            pid = int(f.read().strip())
        self.pids.add(pid)
        return pid

    def cmd(self, name, /, **args):
        q = QEMUMonitorProtocol(self.qmp_path)
        q.connect()
        try:
            return q.cmd(name, **args)
        except QMPError as e:
            raise LabError(f'{self.name}: {name}: {e}') from e
        finally:
            q.close()

    def console_text(self):
        try:
            with open(self.console, errors='replace') as f:
                return f.read()
        except FileNotFoundError:
            return ''

    def wait_serial(self, text, timeout=90):
        deadline = time.monotonic() + timeout
        while text not in self.console_text():
            if time.monotonic() > deadline:
                raise LabError(f'{self.name}: no "{text}" on the console')
            time.sleep(0.1)

    def acked(self):
        """The record numbers the guest acked on its console."""
        return [int(n) for n in RECORD_ACK.findall(self.console_text())]

    def wait_acks(self, count, timeout=60):
        deadline = time.monotonic() + timeout
        while len(self.acked()) < count:
            if time.monotonic() > deadline:
                raise LabError(f'{self.name}: fewer than {count} records')
            time.sleep(0.1)

    def quit(self, timeout=30):
        pid = self.pid()
        try:
            self.cmd('quit')
        except Exception:           # pylint: disable=broad-except
            pass
        deadline = time.monotonic() + timeout
        while alive(pid):
            if time.monotonic() > deadline:
                raise LabError(f'{self.name}: QEMU {pid} did not quit')
            time.sleep(0.05)

    def kill(self):
        """Every QEMU that held this VM, and one the command started
        (its command line names this directory)."""
        try:
            self.pid()
        except (OSError, ValueError):
            pass
        for pid in os.listdir('/proc'):
            if pid.isdigit():
                try:
                    with open(f'/proc/{pid}/cmdline', 'rb') as f:
                        if self.qmp_path.encode() in f.read():
                            self.pids.add(int(pid))
                except OSError:
                    pass
        for pid in self.pids:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def check_disk(self, qemu_img):
        """After the VM quit: qemu-img check, and every acked record on
        the disk.  (acked, missing, check output)"""
        check = subprocess.run([qemu_img, 'check', self.disk],
                               capture_output=True, text=True)
        raw = self.disk + '.raw'
        subprocess.run([qemu_img, 'convert', '-f', 'qcow2', '-O', 'raw',
                        self.disk, raw], check=True)
        acked, missing = self.acked(), []
        with open(raw, 'rb') as f:
            for n in acked:
                f.seek(n * 512)
                if f.read(15) != f'TTREC {n:08d}\n'.encode():
                    missing.append(n)
        os.unlink(raw)
        return acked, missing, check


class Lab:
    def __init__(self, qemu, guest_dir, mem=128, shared_ram=False,
                 python_dir=None, machine='pc'):
        """@python_dir: the python/ directory of the QEMU tree @qemu was
        built from; by default qemu_python(@qemu), for a @qemu that was
        not moved from its build directory.  @machine: the machine type
        of every VM; a versioned one both QEMUs have, for handovers
        between versions."""
        self.qemu = os.path.abspath(qemu)
        self.machine_type = machine
        import_qemu_python(python_dir or qemu_python(self.qemu))
        self.guest_dir = guest_dir
        self.mem = mem
        self.shared_ram = shared_ram
        self.ns = netns_name('tt-lab')
        self.dir = None
        self.vms = []
        self.daemons = []
        self.pings = []
        self._pings_started = 0
        self._counter = 0

    # set-up and tear-down

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix='tap-transfer-lab-')
        signal.signal(signal.SIGTERM, self._terminate)
        signal.signal(signal.SIGINT, self._terminate)
        self.ip('netns', 'add', self.ns)
        for cmd in bridge_setup(self.ns):
            subprocess.run(cmd, check=True)
        self.ifup = os.path.join(self.dir, 'ifup')
        write_ifup(self.ifup)
        return self

    def _terminate(self, signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        for p in self.pings:
            if p.poll() is None:
                p.kill()
                p.wait()
        for vm in self.vms:
            try:
                vm.stop()
            except Exception:
                vm.machine.kill()
        for vm in self.daemons:
            vm.kill()
            shm = f'/dev/shm/tap-transfer-lab-{self.ns}-{vm.name}'
            if os.path.exists(shm):
                os.unlink(shm)
        subprocess.run(['ip', 'netns', 'del', self.ns],
                       stderr=subprocess.DEVNULL)
        if self.shared_ram:
            try:
                os.unlink(f'/dev/shm/tap-transfer-lab-{self.ns}')
            except FileNotFoundError:
                pass
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        return False

    def ip(self, *args):
        subprocess.run(['ip', *args], check=True)

    def nsrun(self, *args, check=True, capture=False):
        r = subprocess.run(in_netns(self.ns, *args), check=check,
                           text=True, capture_output=capture)
        return r.stdout if capture else r

    # the network

    def links(self):
        return link_names(self.nsrun('ip', '-o', 'link', 'show',
                                     capture=True))

    def ifindex(self, ifname):
        out = self.nsrun('cat', f'/sys/class/net/{ifname}/ifindex',
                         capture=True, check=False)
        return int(out) if out.strip() else None

    def wait_ping(self, addr=GUEST_ADDR, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = subprocess.run(ping_once_command(self.ns, addr),
                               capture_output=True)
            if r.returncode == 0:
                return
        raise LabError(f'guest {addr} does not answer')

    def start_ping(self, count, interval=0.002, preload=None, source=None):
        """A ping flood from the bridge; finish it with ping_result(), or
        stop it early with stop_ping().  @interval 0 is ping's flood
        pacing (a new ping per reply, or every 10 ms without one), with
        a line per reply; @preload pings are kept in flight; @source: an
        address of the bridge's to send from."""
        # numbered by start: stop_ping() takes finished ones off the list
        self._pings_started += 1
        out = open(os.path.join(self.dir, f'ping{self._pings_started}'),
                   'w+')
        p = subprocess.Popen(ping_command(self.ns, GUEST_ADDR, count,
                                          interval, preload, source),
                             stdout=out, stderr=subprocess.STDOUT, text=True)
        p.out = out
        self.pings.append(p)
        return p

    @staticmethod
    def ping_result(p, timeout=120, stopped=False):
        """What ping @p saw when it ends: tap_transfer_host.ping_result()
        (sent, received, the lost pings in missing and how many in lost,
        the longest reply gap, when the lost ones were sent...);
        @stopped: it was stopped early, see stop_ping()."""
        p.wait(timeout)
        p.out.seek(0)
        try:
            return ping_result(p.out.read(), stopped)
        except PingError as e:
            raise LabError(str(e)) from e

    def stop_ping(self, p, timeout=10):
        """End a ping started with start_ping() now, and forget it; its
        result.  The pings after the last one answered were still in
        flight when it stopped: not lost, counted in in_flight.  A guest
        that stopped answering loses nothing that way: look at 'last'
        or at the replies' times."""
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        result = self.ping_result(p, timeout, stopped=True)
        p.out.close()
        self.pings.remove(p)
        return result

    # guests

    def start_vm(self, netdev, name=None, incoming=False, nics=1,
                 device_opts='', extra_args=(), trace=(), qemu=None,
                 env=()):
        """@netdev: the -netdev value, with %d for the NIC index.
        @qemu: another QEMU binary than the lab's, e.g. a newer version.
        @extra_args: more QEMU options.  @trace: trace event patterns
        enabled from the start, logged with wall-clock timestamps to
        vm.trace_log (read it with read_trace()).  @env: NAME=value
        strings added to QEMU's environment."""
        self._counter += 1
        name = name or f'vm{self._counter}'
        console = os.path.join(self.dir, f'{name}.serial')
        args = ['-name', name, '-accel', 'tcg', '-m', str(self.mem),
                '-nodefaults',
                '-kernel', os.path.join(self.guest_dir, 'vmlinuz'),
                '-initrd', os.path.join(self.guest_dir, 'initrd.gz'),
                '-append', f'console=ttyS0 quiet tt.addr={GUEST_ADDR}/24']
        if self.shared_ram:
            args += ['-object', 'memory-backend-file,id=ram0,share=on,'
                     f'mem-path=/dev/shm/tap-transfer-lab-{self.ns},'
                     f'size={self.mem}M',
                     '-machine', 'memory-backend=ram0']
        for i in range(nics):
            nd = netdev % i if '%d' in netdev else netdev
            mac = guest_mac(i)
            args += ['-netdev', f'{nd},id=n{i}',
                     '-device', f'virtio-net-pci,netdev=n{i},mac={mac}'
                     f'{device_opts}']
        args += list(extra_args)
        trace_log = None
        if trace:
            trace_log = os.path.join(self.dir, f'{name}.trace')
            args += ['-msg', 'timestamp=on', '-D', trace_log]
            for pattern in trace:
                args += ['-trace', f'enable={pattern}']
        if incoming:
            args += ['-incoming', 'defer']
        # QEMUMachine adds the QMP monitor (a socketpair), -display none,
        # the serial console (drained to @console by a thread of its own)
        # and sends QEMU's output to <log_dir>/<name>.log.  env and nsenter
        # exec QEMU in the lab's namespace, so the pid is QEMU's.
        machine = QEMUMachine(os.path.abspath(qemu or self.qemu),
                              args=args, name=name,
                              wrapper=[*(['env', *env] if env else []),
                                       'nsenter',
                                       f'--net=/run/netns/{self.ns}'],
                              base_temp_dir=self.dir, log_dir=self.dir,
                              console_log=console)
        machine.set_machine(self.machine_type)
        machine.set_console()
        try:
            machine.launch()
        except Exception as e:
            # the launch failure carries QEMU's output
            raise LabError(f'{name} did not start: {e}') from e
        machine.console_socket      # pylint: disable=pointless-statement
        vm = Vm(self, name, machine, console)
        vm.log = os.path.join(self.dir, f'{name}.log')
        vm.trace_log = trace_log
        self.vms.append(vm)
        return vm

    def start_daemon(self, name, netdev, qemu=None, disk_mb=0,
                     shared_ram=True, addr=GUEST_ADDR, mac=GUEST_MAC,
                     extra_args=()):
        """A daemonized VM shaped like a production one (DaemonVm), in
        the lab's namespace, -M pc (the upgrade command pins it);
        @netdev: the -netdev value without its id; @disk_mb: a qcow2
        disk of that size that the guest writes records to."""
        vm = DaemonVm(self, name, os.path.join(self.dir, name))
        os.makedirs(vm.dir)
        records = ''
        args = ['-name', name, '-M', self.machine_type, '-accel', 'tcg',
                '-m', str(self.mem), '-nodefaults', '-display', 'none',
                '-kernel', os.path.join(self.guest_dir, 'vmlinuz'),
                '-initrd', os.path.join(self.guest_dir, 'initrd.gz'),
                '-serial', f'file:{vm.console}',
                '-qmp', f'unix:{vm.qmp_path},server=on,wait=off',
                '-pidfile', vm.pidfile, '-daemonize',
                '-netdev', f'{netdev},id=n0',
                '-device', f'virtio-net-pci,netdev=n0,id=nic0,mac={mac}']
        if shared_ram:
            args += ['-object', 'memory-backend-file,id=ram0,share=on,'
                     f'mem-path=/dev/shm/tap-transfer-lab-{self.ns}-{name},'
                     f'size={self.mem}M', '-machine', 'memory-backend=ram0']
        if disk_mb:
            vm.disk = os.path.join(vm.dir, 'disk.qcow2')
            subprocess.run([self.qemu_img(), 'create', '-q', '-f', 'qcow2',
                            vm.disk, f'{disk_mb}M'], check=True)
            args += ['-drive', f'file={vm.disk},if=none,id=disk0,'
                     'format=qcow2',
                     '-device', 'virtio-blk-pci,drive=disk0,id=vblk0']
            records = ' tt.records=1000000'
        args += ['-append', f'console=ttyS0 quiet tt.addr={addr}/24'
                 f'{records}', *extra_args]
        self.daemons.append(vm)
        r = subprocess.run(['nsenter', f'--net=/run/netns/{self.ns}',
                            os.path.abspath(qemu or self.qemu), *args],
                           capture_output=True, text=True)
        if r.returncode:
            raise LabError(f'{name} did not start: {r.stderr.strip()}')
        vm.pid()
        return vm

    @staticmethod
    def qemu_img():
        img = shutil.which('qemu-img')
        if not img:
            raise LabError('no qemu-img (Debian package qemu-utils)')
        return img

    def boot(self, netdev, timeout=60, **kw):
        vm = self.start_vm(netdev, **kw)
        vm.wait_serial(GUEST_READY, timeout)
        self.wait_ping()
        return vm

    def migrate(self, src, dst_netdev, transfer=True, before_switch=None,
                **kw):
        """Local migration of @src into a new QEMU; returns it and stats."""
        dst = self.start_vm(dst_netdev, incoming=True, **kw)
        uri = f'unix:{os.path.join(self.dir, "mig.sock")}'
        caps = []
        if self.shared_ram:
            caps = [{'capability': 'x-ignore-shared', 'state': True}]
        for vm in (src, dst):
            vm.cmd('migrate-set-parameters', **{'backend-transfer': transfer})
            if caps:
                vm.cmd('migrate-set-capabilities', capabilities=caps)
        dst.cmd('migrate-incoming', uri=uri)
        if before_switch:
            before_switch(dst)
        started_at = time.time()
        src.cmd('migrate', uri=uri)
        while True:
            info = src.cmd('query-migrate')
            if info['status'] == 'completed':
                break
            if info['status'] in ('failed', 'cancelled'):
                raise LabError(f"migration {info['status']}: "
                               f"{info.get('error-desc')}")
            time.sleep(0.01)
        while dst.cmd('query-status')['status'] != 'running':
            time.sleep(0.01)
        return dst, {'downtime_ms': info.get('downtime'),
                     'total_ms': info.get('total-time'),
                     'started_at': started_at}

    @staticmethod
    def version(vm):
        """The QEMU version @vm runs, as query-version tells it"""
        v = vm.cmd('query-version')
        q = v['qemu']
        package = v.get('package', '').strip()
        return (f"{q['major']}.{q['minor']}.{q['micro']}"
                f"{' (' + package + ')' if package else ''}")

    def retire(self, vm):
        vm.stop()
        self.vms.remove(vm)
