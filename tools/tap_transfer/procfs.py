"""What /proc tells about a process: whether it runs, who it is (its
pid and start time, which no other process shares), its TAP file
descriptors and whether two processes hold the same open file."""

import ctypes
import os
import platform
import re
import socket
import struct

_libc = ctypes.CDLL(None, use_errno=True)

# kcmp(2) has no libc wrapper and its number depends on the architecture
SYS_KCMP = {'x86_64': 312, 'i686': 349, 'i386': 349, 'aarch64': 272,
            'riscv64': 272, 'loongarch64': 272, 'armv7l': 378,
            'ppc64le': 354, 'ppc64': 354, 's390x': 343}
KCMP_FILE = 0


class ProcessGone(Exception):
    pass


def stat_fields(pid):
    """/proc/PID/stat after the command name: [state, ppid, ...]"""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError) as e:
        raise ProcessGone(pid) from e


def alive(pid):
    """@pid runs (a zombie counts as gone)."""
    try:
        return stat_fields(pid)[0] not in ('Z', 'X')
    except ProcessGone:
        return False


def start_time(pid):
    """The start time of @pid in clock ticks since boot: with the pid,
    it names one process for good (pids are reused, start times not)."""
    return int(stat_fields(pid)[19])


class ProcessId:
    """A process named so that a reused pid is not mistaken for it."""

    def __init__(self, pid, start):
        self.pid = pid
        self.start = start

    @classmethod
    def of(cls, pid):
        return cls(pid, start_time(pid))

    def running(self):
        try:
            return start_time(self.pid) == self.start and alive(self.pid)
        except ProcessGone:
            return False

    def key(self):
        return f'{self.pid}-{self.start}'

    def as_dict(self):
        return {'pid': self.pid, 'start': self.start}

    @classmethod
    def from_dict(cls, d):
        return cls(d['pid'], d['start']) if d else None

    def __eq__(self, other):
        return isinstance(other, ProcessId) and \
            (self.pid, self.start) == (other.pid, other.start)

    def __hash__(self):
        return hash((self.pid, self.start))

    def __repr__(self):
        return f'ProcessId({self.pid}, {self.start})'


def read_cmdline(pid):
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
        raw = f.read()
    return [a.decode(errors='surrogateescape')
            for a in raw.split(b'\0')[:-1]]


def peer_pid(sock):
    """The pid of the process at the other end of a UNIX socket (for a
    listening socket, the process that listens)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                            struct.calcsize('3i'))
    return struct.unpack('3i', creds)[0]


def fd_ifname(pid, fd):
    """The TAP that fd @fd of @pid is attached to (fdinfo's iff:), or
    None for any other file."""
    try:
        with open(f'/proc/{pid}/fdinfo/{fd}') as f:
            m = re.search(r'^iff:\s*(\S+)', f.read(), re.M)
    except OSError:
        return None
    return m.group(1) if m else None


def tun_fds(pid):
    """The fds of @pid open on /dev/net/tun, sorted."""
    fds = []
    d = f'/proc/{pid}/fd'
    for fd in os.listdir(d):
        try:
            # inside a netns's mount namespace it reads /net/tun
            if os.readlink(f'{d}/{fd}').endswith('/net/tun'):
                fds.append(int(fd))
        except OSError:
            pass
    return sorted(fds)


def tap_fds(pid):
    """{ifname: [fd, ...]} of every fd of @pid attached to a TAP."""
    out = {}
    for fd in tun_fds(pid):
        name = fd_ifname(pid, fd)
        if name:
            out.setdefault(name, []).append(fd)
    return out


def kcmp_supported():
    return platform.machine() in SYS_KCMP


def same_file(pid1, fd1, pid2, fd2):
    """kcmp(2): fd1 of pid1 and fd2 of pid2 are the same open file
    description.  Only where kcmp_supported()."""
    nr = SYS_KCMP[platform.machine()]
    return _libc.syscall(nr, pid1, pid2, KCMP_FILE, fd1, fd2) == 0


def namespace(pid, kind):
    """The inode naming @pid's namespace of @kind ('net', 'mnt', ...)"""
    return os.stat(f'/proc/{pid}/ns/{kind}').st_ino


def meminfo(field):
    """A /proc/meminfo field, in bytes"""
    with open('/proc/meminfo') as f:
        for line in f:
            k, _, v = line.partition(':')
            if k == field:
                n, *unit = v.split()
                return int(n) * (1024 if unit == ['kB'] else 1)
    return None
