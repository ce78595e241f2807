"""What a run has changed, on disk before it changes it, and one run
per VM.

The journal of a run is a root-only JSON file per VM in the state
directory (/run/tap-transfer, or $TAP_TRANSFER_STATE_DIR), written
before each step that changes something: the phase, the two QEMUs (pid
and start time), the temporary names, the migration parameters to put
back, the onboarding's new TAPs.  Each record is renamed over the last,
so a run killed at any point leaves one whole record.  Only the records
that name the temporary names are also fsync'ed: a crash of the host
takes both QEMUs, their migration and the TAPs with it, and what is
left to put right after it is files that the run renamed.  An fsync
waits on the disk (0.6 ms on an idle one, 12 ms while other jobs write,
measured here; nothing where /run is a tmpfs, as on a host).  A later
record, not fsync'ed, replaces the first: on a file system that does
not write a file's data before a rename over another (ext4 does) a
crash can leave it empty.  A run that ends, whichever way, removes it;
one that is killed leaves it for `--recover`.

The lock is an flock on a file named by the source QEMU's pid and
start time: two runs reaching one VM through two of its monitors take
the same lock.  The stop token is an flock on one file for the host:
the run that holds it is the only one whose guest is stopped between
its migration and its `cont`.  The kernel drops either when its run
dies."""

import errno
import fcntl
import glob
import json
import os
import time

from .errors import Busy

DEFAULT_STATE_DIR = '/run/tap-transfer'


def state_dir():
    d = os.environ.get('TAP_TRANSFER_STATE_DIR') or DEFAULT_STATE_DIR
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.stat(d)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise Busy(f'{d}: the state directory must be owned by '
                   f'uid {os.geteuid()} and not open to others')
    return d


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """The journal of one run on one VM."""

    def __init__(self, path, data):
        self.path = path
        self.data = data

    @classmethod
    def create(cls, directory, source_key, **data):
        path = os.path.join(directory, f'{source_key}.json')
        j = cls(path, dict(data, version=1, tool_pid=os.getpid(),
                           created=time.time()))
        j.write(durable=True)
        return j

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls(path, json.load(f))

    def __getitem__(self, key):
        return self.data.get(key)

    def write(self, durable=False, **changes):
        """Record @changes.  When this returns, the record is what a
        reader finds, also after this process dies; with @durable it is
        on disk too (fsync'ed), also after the host crashes."""
        self.data.update(changes)
        tmp = self.path + '.tmp'
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC |
                     os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(self.data, indent=1).encode())
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.path)
        if durable:
            _fsync_dir(os.path.dirname(self.path))

    def remove(self):
        try:
            os.unlink(self.path)
            _fsync_dir(os.path.dirname(self.path))
        except FileNotFoundError:
            pass

    def names(self):
        """Every path that reaches this run's VM: the operator's, the
        real and temporary names of its QMP sockets"""
        out = {self['qmp'], self['qmp_real']}
        for kind, real, temp in self['moves'] or []:
            if kind == 'socket':
                out |= {real, temp}
        return {os.path.realpath(p) for p in out if p}

    def pids(self):
        return {p['pid'] for p in (self['source'], self['destination'])
                if p}


def find(directory, path=None, pid=None):
    """Journals left in @directory that name QMP path @path, or QEMU
    process @pid (as source or destination)"""
    out = []
    real = os.path.realpath(path) if path else None
    for f in sorted(glob.glob(os.path.join(directory, '*.json'))):
        try:
            j = Journal.load(f)
        except (OSError, ValueError):
            continue
        if (real and real in j.names()) or (pid and pid in j.pids()):
            out.append(j)
    return out


class Lock:
    """An exclusive lock on one VM for one run."""

    def __init__(self, path, fd):
        self.path = path
        self.fd = fd

    @classmethod
    def take(cls, directory, source_key):
        path = os.path.join(directory, f'{source_key}.lock')
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.pread(fd, 64, 0).decode(errors='replace').strip()
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise Busy('another tap-transfer-upgrade run (pid '
                               f'{holder or "?"}) is upgrading this '
                               'VM') from e
                raise
            # the holder before us may have removed the file meanwhile:
            # the lock counts only on the file that the path names
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f'{os.getpid()}\n'.encode(), 0)
        return cls(path, fd)

    def release(self):
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


class StopToken:
    """The host's one token for the stop window (the migration to the
    `cont`): runs side by side (--parallel, or several commands) would
    otherwise stop their guests at once and share the CPUs while they
    are stopped.  A run waits for it with its guest still running."""

    NAME = 'stop-window.lock'

    def __init__(self, fd):
        self.fd = fd

    @classmethod
    def take(cls, directory, check):
        """Wait for the token, calling @check (which may raise) every
        millisecond meanwhile"""
        fd = os.open(os.path.join(directory, cls.NAME),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return cls(fd)
                except BlockingIOError:
                    check()
                    time.sleep(0.001)
        except BaseException:
            os.close(fd)
            raise

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
