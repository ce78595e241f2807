"""The host as the upgrade acts on it: QMP connections, processes, the
TAPs' open files, file steps as the VM's user.  Upgrade and recovery
reach the host only through a System, so that their state machines can
be driven against a fake one (tests/unit)."""

import ctypes
import fcntl
import json
import os
import select
import signal
import socket
import stat
import struct

from . import journal
from .identity import Identity, Launch, SpawnError, run_as, run_here, spawn
from .plan import Target, check_binary
from .procfs import ProcessGone, ProcessId, alive, fd_ifname, \
    kcmp_supported, read_cmdline, same_file, tun_fds
from .qmp import Monitor
from .source import Source

_libc = ctypes.CDLL(None, use_errno=True)
SYS_PIDFD_GETFD = 438       # the same on every architecture
SIOCGIFINDEX = 0x8933
CLONE_NEWNET = 0x40000000


def pidfd_getfd(pid, fd):
    """A duplicate of fd @fd of process @pid: the same open file"""
    pidfd = os.pidfd_open(pid)
    try:
        new = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if new < 0:
            err = ctypes.get_errno()
            raise OSError(err, f'pidfd_getfd {pid}/{fd}: {os.strerror(err)}')
        os.set_inheritable(new, False)
        return new
    finally:
        os.close(pidfd)


class Destination:
    """The new QEMU as started: its pid, a pidfd on it, and where its
    early messages went."""

    def __init__(self, pid, pidfd, errpipe, errfile):
        self.pid = pid
        self.pidfd = pidfd
        self.errpipe = errpipe        # read end, while it starts
        self.errfile = errfile        # (path, offset) of a log file
        self.messages = b''

    def drain(self):
        """Read what it wrote to its stderr pipe so far"""
        while self.errpipe is not None:
            r = select.select([self.errpipe], [], [], 0)[0]
            if not r:
                return
            b = os.read(self.errpipe, 65536)
            if not b:
                self.close_pipe()
                return
            self.messages += b

    def close_pipe(self):
        if self.errpipe is not None:
            os.close(self.errpipe)
            self.errpipe = None

    def tail(self):
        """Its last lines, for an error message"""
        self.drain()
        text = self.messages
        if self.errfile:
            path, offset = self.errfile
            try:
                with open(path, 'rb') as f:
                    f.seek(offset)
                    text += f.read(65536)
            except OSError:
                pass
        lines = [line.strip() for line in
                 text.decode(errors='replace').splitlines() if line.strip()]
        return ' / '.join(lines[-3:])

    def reap(self):
        """Its exit status if it exited, without waiting"""
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return None
        return os.waitstatus_to_exitcode(status) if pid else None

    def close(self):
        self.close_pipe()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class LocalSystem:
    """This host."""

    connect_timeout = 10.0

    def connect(self, path, timeout):
        return Monitor.connect(path, timeout)

    def peer(self, path, timeout):
        return Monitor.peer(path, timeout)

    def greeting_at(self, path, timeout):
        return Monitor.greeting_at(path, timeout)

    def read_source(self, mon):
        return Source.read(mon)

    def probe(self, path):
        """The target binary's probe, started: .result() is the Target.
        A binary probed before (the same file: inode, size, times) is
        not run again: its answers are kept in the state directory."""
        return CachedProbe(path, journal.state_dir()).start()

    def exists(self, path):
        return os.path.exists(path)

    def wait(self, monitors, dest, timeout):
        """Until one of @monitors or @dest's stderr has something to
        read, or @timeout seconds"""
        fds = [m.sock for m in monitors]
        if dest.errpipe is not None:
            fds.append(dest.errpipe)
        select.select(fds, [], [], timeout)

    # processes

    def running(self, proc):
        return proc is not None and proc.running()

    def identify(self, pid):
        try:
            return ProcessId.of(pid)
        except ProcessGone:
            return None

    def kill(self, proc, sig=signal.SIGKILL):
        """Signal @proc (a ProcessId) if it is still that process"""
        try:
            fd = os.pidfd_open(proc.pid)
        except OSError:
            return
        try:
            if proc.running():
                signal.pidfd_send_signal(fd, sig)
        except OSError:
            pass
        finally:
            os.close(fd)

    def wait_gone(self, proc, timeout):
        """Until @proc has exited (its pidfd becomes readable then)"""
        try:
            fd = os.pidfd_open(proc.pid)
        except OSError:
            return True
        try:
            if not proc.running():
                return True
            select.select([fd], [], [], timeout)
            return not proc.running()
        finally:
            os.close(fd)

    def leftovers(self, token, keep=()):
        """QEMUs started for run @token and left behind: their command
        line names its temporary paths"""
        mark = f'.tt-upgrade-{token}'
        out = []
        for d in os.listdir('/proc'):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                if any(mark in a for a in read_cmdline(int(d))) and \
                        alive(int(d)):
                    p = ProcessId.of(int(d))
                    if p not in keep:
                        out.append(p)
            except (OSError, ProcessGone):
                pass
        return out

    # the destination

    def spawn(self, argv, plan, pass_fds):
        """Start the destination as the source runs (identity.Launch).
        Its stdout and stderr are the source's own open files, so the
        VM's output goes on where it went; a -D log is the source's
        open log file (QEMU would truncate it); when the source's
        stderr is /dev/null (a daemonized QEMU), a pipe to this command
        catches what it says while it starts."""
        src = plan.source
        pid = src.pid.pid
        launch = Launch(src.identity, as_launched=plan.as_launched,
                        carry_root=plan.chroot is None).open()
        fds = []
        try:
            devnull = os.open('/dev/null', os.O_RDWR | os.O_CLOEXEC)
            fds.append(devnull)
            out = devnull if plan.daemonize else self._dup(pid, 1, fds)
            err, errpipe, errfile = None, None, None
            if plan.log_path:
                err = self._log_fd(pid, plan, fds)
            if err is None and not plan.daemonize:
                err = self._dup(pid, 2, fds)
            if err is None or _is_devnull(err):
                errpipe, err = os.pipe2(os.O_CLOEXEC)
                fds.append(err)
            else:
                st = os.fstat(err)
                if stat.S_ISREG(st.st_mode):
                    errfile = (os.readlink(f'/proc/self/fd/{err}'),
                               st.st_size)
            try:
                child = spawn(argv, launch, src.identity.env(), devnull, out,
                              err, pass_fds, check_exe=plan.target.stat)
            except SpawnError:
                if errpipe is not None:
                    os.close(errpipe)
                raise
            return Destination(child, os.pidfd_open(child), errpipe, errfile)
        finally:
            for fd in fds:
                os.close(fd)
            launch.close()

    def _dup(self, pid, fd, fds):
        try:
            new = pidfd_getfd(pid, fd)
        except OSError:
            return None
        fds.append(new)
        return new

    def _log_fd(self, pid, plan, fds):
        """The source's open file on its -D log"""
        want = os.path.realpath(plan.log_path)
        candidates = [2] if plan.daemonize else []
        candidates += [int(f) for f in os.listdir(f'/proc/{pid}/fd')]
        for fd in candidates:
            try:
                if os.path.realpath(f'/proc/{pid}/fd/{fd}') == want:
                    return self._dup(pid, fd, fds)
            except OSError:
                continue
        return None

    # the TAPs

    def tun_fds(self, proc):
        return tun_fds(proc.pid)

    def fd_ifname(self, proc, fd):
        return fd_ifname(proc.pid, fd)

    def kcmp_supported(self):
        return kcmp_supported()

    def same_file(self, p1, fd1, p2, fd2):
        return same_file(p1.pid, fd1, p2.pid, fd2)

    def netns_socket(self, proc):
        """A socket in @proc's network namespace, for ifindex()"""
        home = os.open('/proc/thread-self/ns/net', os.O_RDONLY)
        there = os.open(f'/proc/{proc.pid}/ns/net', os.O_RDONLY)
        try:
            if _libc.setns(there, CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), 'setns')
            try:
                return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            finally:
                _libc.setns(home, CLONE_NEWNET)
        finally:
            os.close(there)
            os.close(home)

    def ifindex(self, sock, ifname):
        ifr = struct.pack('16si20x', ifname.encode()[:15], 0)
        try:
            return struct.unpack_from('16si', fcntl.ioctl(
                sock.fileno(), SIOCGIFINDEX, ifr))[1]
        except OSError:
            return None

    # files, as the VM's user

    def file_launch(self, plan):
        return Launch(plan.source.identity, as_launched=False,
                      carry_root=plan.chroot is None).open()

    def launch_of(self, proc):
        """File steps as running process @proc is (recovery: the VM's
        QEMU that is left)"""
        return Launch(Identity.read(proc.pid), as_launched=False,
                      carry_root=True).open()

    @staticmethod
    def _file_steps(launch, fn, arg, paths):
        # a fork costs 10 to 25 ms here: none when the child would have
        # the command's own rights and the paths do not depend on its
        # working directory
        if launch.changes_nothing() and all(map(os.path.isabs, paths)):
            return run_here(fn, arg)
        return run_as(launch, fn, arg)

    def rename(self, launch, pairs):
        """Rename each (temporary, real) of @pairs, as @launch says, in
        one child; {temporary: error} of those that failed"""
        if not pairs:
            return {}
        done, err = self._file_steps(launch, _rename_all, pairs,
                                     [p for pair in pairs for p in pair])
        return done if err is None else {t: err for t, _ in pairs}

    def unlink(self, launch, paths):
        """Remove @paths (gone already is fine), as @launch says, in one
        child; {path: error} of those that failed"""
        if not paths:
            return {}
        done, err = self._file_steps(launch, _unlink_all, paths, paths)
        return done if err is None else {p: err for p in paths}


class CachedProbe:
    """Target.start_probe(), unless the same file was probed before"""

    def __init__(self, path, directory):
        self.path = path
        self.cache = os.path.join(directory, 'targets.json')
        self.key = None
        self.known = None
        self.probe = None

    def start(self):
        try:
            st = os.stat(self.path)
            self.key = (f'{self.path}:{st.st_dev}:{st.st_ino}:{st.st_size}:'
                        f'{st.st_mtime_ns}:{st.st_ctime_ns}')
            with open(self.cache) as f:
                self.known = json.load(f).get(self.key)
        except (OSError, ValueError):
            pass
        if self.known:
            self.known = Target(self.path, tuple(self.known['version']),
                                set(self.known['machines']),
                                (st.st_dev, st.st_ino))
            check_binary(self.path, st, '--to')
        else:
            self.probe = Target.start_probe(self.path)
        return self

    def result(self):
        if self.known:
            return self.known
        target = self.probe.result()
        try:
            with open(self.cache) as f:
                known = json.load(f)
        except (OSError, ValueError):
            known = {}
        known[self.key] = {'version': target.version,
                           'machines': sorted(target.machines)}
        tmp = f'{self.cache}.{os.getpid()}'
        with open(tmp, 'w') as f:
            json.dump(known, f)
        os.rename(tmp, self.cache)
        return target


def _rename_all(pairs):
    errors = {}
    for temp, real in pairs:
        try:
            os.rename(temp, real)
        except OSError as e:
            errors[temp] = e.strerror
    return errors


def _unlink_all(paths):
    errors = {}
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            errors[path] = e.strerror
    return errors


def _is_devnull(fd):
    st = os.fstat(fd)
    dn = os.stat('/dev/null')
    return (st.st_rdev, stat.S_ISCHR(st.st_mode)) == (dn.st_rdev, True)
