"""Who a process is, in every respect that gives it rights, and how to
start another process exactly so.

The upgrade's new QEMU must have the rights of the QEMU it replaces,
never the command's (which runs as root):

    ident = Identity.read(pid)         # the VM's QEMU, from /proc
    launch = Launch(ident, ...)        # what the child takes of it
    pid = spawn(argv, launch, ...)     # the new QEMU, as the VM's
    run_as(launch, os.rename, a, b)    # a file step, as the VM's
    launch.changes_nothing()           # ... which needs no child

A child of spawn() joins the source's cgroups (every hierarchy),
takes its rlimits, CPU affinity, nice value and oom_score_adj, enters
its namespaces (cgroup, ipc, uts, network, mount), its root and working
directory, its umask, then its groups, gids and uids, and keeps no
capability the source does not have; its environment is the source's.
"""

import ctypes
import json
import os
import resource
import struct

from .procfs import ProcessId, namespace

_libc = ctypes.CDLL(None, use_errno=True)

PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
CAP_SYS_RESOURCE = 24
LINUX_CAPABILITY_VERSION_3 = 0x20080522

# joined when they differ from the command's, in this order (the
# cgroup namespace after the cgroups, the mount namespace last)
CARRIED_NAMESPACES = ('cgroup', 'ipc', 'uts', 'net', 'mnt')
# a child cannot be put into these: a source in another is refused
FOREIGN_NAMESPACES = ('user', 'pid', 'time')

RLIMITS = {name: getattr(resource, name) for name in dir(resource)
           if name.startswith('RLIMIT_')}

# cgroup v1 mount options that are not controllers
_V1_OPTIONS = {'rw', 'ro', 'noprefix', 'clone_children', 'xattr',
               'cpuset_v2_mode', 'nosuid', 'nodev', 'noexec', 'relatime',
               'favordynmods', 'nofavordynmods'}


class IdentityError(Exception):
    """A right of the source that cannot be given to the new process:
    one line."""


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f'{what}: {os.strerror(err)}')


def cap_last():
    with open('/proc/sys/kernel/cap_last_cap') as f:
        return int(f.read())


def read_status(pid):
    out = {}
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            k, _, v = line.partition(':')
            out[k] = v.strip()
    return out


def read_cgroups(pid):
    """[(controllers, path)] of /proc/PID/cgroup: controllers is a
    frozenset ('name=systemd' for a named v1 hierarchy), empty for the
    unified (v2) one."""
    out = []
    with open(f'/proc/{pid}/cgroup') as f:
        for line in f:
            _, ctrls, path = line.rstrip('\n').split(':', 2)
            out.append((frozenset(c for c in ctrls.split(',') if c), path))
    return out


def _unescape(field):
    return field.encode().decode('unicode_escape').encode(
        'latin-1').decode(errors='surrogateescape')


def cgroup_mounts():
    """{controllers: (mountpoint, root)} of this process's view of the
    cgroup hierarchies (/proc/self/mountinfo)"""
    out = {}
    with open('/proc/self/mountinfo') as f:
        for line in f:
            left, _, right = line.partition(' - ')
            fields, rfields = left.split(), right.split()
            fstype, superopts = rfields[0], rfields[2]
            if fstype == 'cgroup2':
                out.setdefault(frozenset(), (_unescape(fields[4]),
                                             fields[3]))
            elif fstype == 'cgroup':
                ctrls = frozenset(o for o in superopts.split(',')
                                  if o not in _V1_OPTIONS and
                                  not o.startswith('release_agent='))
                out.setdefault(ctrls, (_unescape(fields[4]), fields[3]))
    return out


def cgroup_dirs(cgroups):
    """The directories of @cgroups (read_cgroups()) in this process's
    view; IdentityError for a hierarchy it does not see."""
    mounts = cgroup_mounts()
    dirs = []
    for ctrls, path in cgroups:
        if ctrls not in mounts:
            what = ','.join(sorted(ctrls)) or 'the unified (v2) hierarchy'
            raise IdentityError(f'cgroup {what}:{path}: not mounted where '
                                'this command can join it')
        mnt, root = mounts[ctrls]
        if root != '/' and not (path + '/').startswith(root + '/'):
            raise IdentityError(f'cgroup {path}: outside the hierarchy this '
                                f'command sees (mounted from {root})')
        rel = path[len(root):] if root != '/' else path
        dirs.append(os.path.join(mnt, rel.lstrip('/')))
    return dirs


# /proc/PID/limits names -> resource's
LIMIT_NAMES = {'Max cpu time': 'RLIMIT_CPU', 'Max file size': 'RLIMIT_FSIZE',
               'Max data size': 'RLIMIT_DATA',
               'Max stack size': 'RLIMIT_STACK',
               'Max core file size': 'RLIMIT_CORE',
               'Max resident set': 'RLIMIT_RSS',
               'Max processes': 'RLIMIT_NPROC',
               'Max open files': 'RLIMIT_NOFILE',
               'Max locked memory': 'RLIMIT_MEMLOCK',
               'Max address space': 'RLIMIT_AS',
               'Max file locks': 'RLIMIT_LOCKS',
               'Max pending signals': 'RLIMIT_SIGPENDING',
               'Max msgqueue size': 'RLIMIT_MSGQUEUE',
               'Max nice priority': 'RLIMIT_NICE',
               'Max realtime priority': 'RLIMIT_RTPRIO',
               'Max realtime timeout': 'RLIMIT_RTTIME'}


def read_limits(pid):
    """{RLIMIT_*: (soft, hard)} of @pid, from /proc/PID/limits (prlimit(2)
    on another user's process needs CAP_SYS_RESOURCE)"""
    out = {}
    with open(f'/proc/{pid}/limits') as f:
        for line in f.readlines()[1:]:
            name = line[:26].strip()
            fields = line[26:].split()
            if name not in LIMIT_NAMES or LIMIT_NAMES[name] not in RLIMITS:
                continue
            soft, hard = (resource.RLIM_INFINITY if v == 'unlimited'
                          else int(v) for v in fields[:2])
            out[LIMIT_NAMES[name]] = (soft, hard)
    return out


def lsm_label(pid):
    try:
        with open(f'/proc/{pid}/attr/current') as f:
            return f.read().strip('\0\n ') or None
    except OSError:
        return None


class Identity:
    """The rights of a running process, read from /proc."""

    def __init__(self, pid, uids, gids, groups, caps, no_new_privs,
                 seccomp, umask, cgroups, namespaces, rlimits, affinity,
                 oom_score_adj, nice, environ, root, cwd, exe, label):
        self.pid = pid
        self.uids = uids
        self.gids = gids
        self.groups = groups
        self.caps = caps
        self.no_new_privs = no_new_privs
        self.seccomp = seccomp
        self.umask = umask
        self.cgroups = cgroups
        self.namespaces = namespaces
        self.rlimits = rlimits
        self.affinity = affinity
        self.oom_score_adj = oom_score_adj
        self.nice = nice
        self.environ = environ
        self.root = root
        self.cwd = cwd
        self.exe = exe
        self.label = label

    @classmethod
    def read(cls, pid):
        st = read_status(pid)
        caps = {k: int(st[f'Cap{k.capitalize()}'], 16)
                for k in ('inh', 'prm', 'eff', 'bnd', 'amb')}
        with open(f'/proc/{pid}/environ', 'rb') as f:
            environ = [e for e in f.read().split(b'\0') if b'=' in e]
        with open(f'/proc/{pid}/oom_score_adj') as f:
            oom = int(f.read())
        return cls(
            pid=ProcessId.of(pid),
            uids=tuple(int(x) for x in st['Uid'].split()[:3]),
            gids=tuple(int(x) for x in st['Gid'].split()[:3]),
            groups=[int(g) for g in st.get('Groups', '').split()],
            caps=caps,
            no_new_privs=st.get('NoNewPrivs') == '1',
            seccomp=int(st.get('Seccomp', '0')),
            umask=int(st.get('Umask', '0022'), 8),
            cgroups=read_cgroups(pid),
            namespaces={k: namespace(pid, k) for k in
                        CARRIED_NAMESPACES + FOREIGN_NAMESPACES
                        if os.path.exists(f'/proc/{pid}/ns/{k}')},
            rlimits=read_limits(pid),
            affinity=os.sched_getaffinity(pid),
            oom_score_adj=oom,
            nice=os.getpriority(os.PRIO_PROCESS, pid),
            environ=environ,
            root=os.readlink(f'/proc/{pid}/root'),
            cwd=os.readlink(f'/proc/{pid}/cwd'),
            exe=os.readlink(f'/proc/{pid}/exe'),
            label=lsm_label(pid))

    @property
    def uid(self):
        return self.uids[1]

    def env(self):
        """The environment as a dict of bytes"""
        return dict(e.split(b'=', 1) for e in self.environ)

    def foreign_namespaces(self):
        """Namespaces of the source that a child of this command cannot
        enter"""
        mine = os.getpid()
        return [k for k in FOREIGN_NAMESPACES if k in self.namespaces and
                os.path.exists(f'/proc/{mine}/ns/{k}') and
                namespace(mine, k) != self.namespaces[k]]

    def limits_beyond(self, ours):
        """What of this identity a process with rights @ours cannot
        give a child: [one line each]"""
        out = []
        if ours.caps['eff'] >> CAP_SYS_RESOURCE & 1:
            return out
        for name, (_, hard) in self.rlimits.items():
            mine = ours.rlimits[name][1]
            if mine != resource.RLIM_INFINITY and \
                    (hard == resource.RLIM_INFINITY or hard > mine):
                out.append(f'{name} hard limit {hard} above this '
                           f'command\'s {mine}')
        if self.oom_score_adj < ours.oom_score_adj:
            out.append(f'oom_score_adj {self.oom_score_adj} below this '
                       f'command\'s {ours.oom_score_adj}')
        return [f'{x} (needs CAP_SYS_RESOURCE)' for x in out]


class Launch:
    """How a child takes @ident's rights.

    @as_launched: the source dropped its privileges itself (-runas,
    -run-with user=, -chroot): the child starts as root with the
    source's capability bounding set, as the source was started, and
    QEMU drops them again from the same options.  Otherwise the child
    has the source's uids, gids and groups and at most its
    capabilities.  @carry_root: the child takes the source's root
    directory (not for -chroot, which QEMU applies itself)."""

    def __init__(self, ident, as_launched=False, carry_root=True):
        self.ident = ident
        self.as_launched = as_launched
        self.carry_root = carry_root
        self._ns_fds = {}
        self._root_fd = None
        self._cwd_fd = None
        self._cap_last = None

    def open(self):
        """In the parent: handles on the source's namespaces and
        directories, valid even after the source exits."""
        pid = self.ident.pid.pid
        mine = os.getpid()
        self._cap_last = cap_last()
        for k in CARRIED_NAMESPACES:
            if k in self.ident.namespaces and \
                    namespace(mine, k) != self.ident.namespaces[k]:
                self._ns_fds[k] = os.open(f'/proc/{pid}/ns/{k}',
                                          os.O_RDONLY | os.O_CLOEXEC)
        if self.carry_root and self.ident.root != '/':
            self._root_fd = os.open(f'/proc/{pid}/root',
                                    os.O_RDONLY | os.O_DIRECTORY |
                                    os.O_CLOEXEC)
        if not self.as_launched or self.ident.cwd != '/':
            self._cwd_fd = os.open(f'/proc/{pid}/cwd',
                                   os.O_RDONLY | os.O_DIRECTORY |
                                   os.O_CLOEXEC)
        return self

    def close(self):
        for fd in list(self._ns_fds.values()) + [self._root_fd,
                                                 self._cwd_fd]:
            if fd is not None:
                os.close(fd)
        self._ns_fds, self._root_fd, self._cwd_fd = {}, None, None

    def other_mount_namespace(self):
        return 'mnt' in self._ns_fds

    def changes_nothing(self):
        """Whether file steps (rename, unlink) done by a child after
        become(cgroups=False) would do what the command does itself: the
        source runs with our uids, gids and groups, in our mount
        namespace and root (its network, IPC, UTS and cgroup namespaces
        do not change what a path names or who may touch it), and may
        use every capability we may.  Then file steps with absolute
        paths need no child.  Never for as_launched (the child would be
        root)."""
        ident, caps = self.ident, self.ident.caps
        if self.as_launched or self.other_mount_namespace() or \
                self._root_fd is not None:
            return False
        if (os.getresuid(), os.getresgid()) != (ident.uids, ident.gids) or \
                sorted(os.getgroups()) != sorted(ident.groups):
            return False
        allowed = caps['bnd'] & caps['prm'] if ident.uid == 0 \
            else caps['amb']
        ours = read_status('self')
        mine = int(ours['CapEff'], 16) | int(ours['CapPrm'], 16)
        return mine & ~allowed == 0

    # in the child

    def enter_places(self):
        """Namespaces, root, working directory: where the source is."""
        for k in CARRIED_NAMESPACES:
            if k in self._ns_fds:
                _check(_libc.setns(self._ns_fds[k], 0), f'setns {k}')
        if self._root_fd is not None:
            os.fchdir(self._root_fd)
            os.chroot('.')
        if self._cwd_fd is not None:
            os.fchdir(self._cwd_fd)
        else:
            os.chdir('/')

    def enter_cgroups(self):
        for d in cgroup_dirs(self.ident.cgroups):
            with open(os.path.join(d, 'cgroup.procs'), 'w') as f:
                f.write('0\n')

    def take_limits(self):
        ident = self.ident
        with open('/proc/self/oom_score_adj', 'w') as f:
            f.write(f'{ident.oom_score_adj}\n')
        for name, lim in ident.rlimits.items():
            resource.setrlimit(RLIMITS[name], lim)
        os.setpriority(os.PRIO_PROCESS, 0, ident.nice)
        os.sched_setaffinity(0, ident.affinity)
        os.umask(ident.umask)

    def take_credentials(self):
        ident, caps = self.ident, self.ident.caps
        if self.as_launched:
            allowed = caps['bnd']
        elif ident.uid == 0:
            allowed = caps['bnd'] & caps['prm']
        else:
            allowed = caps['bnd']
        for c in range(self._cap_last + 1):
            if not allowed >> c & 1:
                _check(_libc.prctl(PR_CAPBSET_DROP, c, 0, 0, 0),
                       'dropping a capability from the bounding set')
        if ident.no_new_privs:
            _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
                   'no_new_privs')
        if self.as_launched:
            os.setgroups([])
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            inh, prm, amb = caps['inh'] & allowed, allowed, 0
        else:
            os.setgroups(ident.groups)
            os.setresgid(*ident.gids)
            _check(_libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), 'keepcaps')
            os.setresuid(*ident.uids)
            # a root process gets its bounding set back at exec; any
            # other gets its ambient capabilities
            amb = 0 if ident.uid == 0 else caps['amb']
            inh = caps['inh'] | amb
            prm = allowed if ident.uid == 0 else amb
        _capset(prm, prm, inh)
        for c in range(self._cap_last + 1):
            if not amb >> c & 1:
                continue
            _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0,
                               0), f'raising ambient capability {c}')

    def become(self, cgroups=True):
        """Everything, in the order the rights allow it: what needs
        root in the command's own namespaces first."""
        if cgroups:
            self.enter_cgroups()
            self.take_limits()
        self.enter_places()
        self.take_credentials()


def _capset(eff, prm, inh):
    header = struct.pack('Ii', LINUX_CAPABILITY_VERSION_3, 0)
    data = struct.pack('6I', eff & 0xffffffff, prm & 0xffffffff,
                       inh & 0xffffffff, eff >> 32, prm >> 32, inh >> 32)
    hbuf = ctypes.create_string_buffer(header)
    dbuf = ctypes.create_string_buffer(data)
    _check(_libc.capset(hbuf, dbuf), 'capset')


class SpawnError(Exception):
    """The child failed before it became the program: one line."""


def _child_report(wfd, e):
    msg = f'{e}' if isinstance(e, (IdentityError, OSError)) \
        else f'{type(e).__name__}: {e}'
    try:
        os.write(wfd, msg.encode(errors='replace')[:4000])
    finally:
        os._exit(127)


def _read_report(rfd):
    chunks = []
    while True:
        b = os.read(rfd, 4096)
        if not b:
            break
        chunks.append(b)
    os.close(rfd)
    return b''.join(chunks).decode(errors='replace')


def spawn(argv, launch, env, stdin, stdout, stderr, pass_fds=(),
          check_exe=None):
    """Start @argv as @launch says, in a session of its own, with
    @stdin/@stdout/@stderr (fds) and @pass_fds kept at their numbers.
    @check_exe: (st_dev, st_ino) the binary must have where the child
    finds it.  Returns the pid, or raises SpawnError with what failed
    in the child."""
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            os.setsid()
            for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
                os.dup2(fd, target, inheritable=True)
            for fd in pass_fds:
                os.set_inheritable(fd, True)
            launch.become()
            if check_exe:
                st = os.stat(argv[0])
                if (st.st_dev, st.st_ino) != check_exe:
                    raise IdentityError(
                        f'{argv[0]} is another file (or none) in the VM\'s '
                        'mount namespace')
            os.execve(argv[0], argv, env)
        except BaseException as e:   # pylint: disable=broad-except
            _child_report(wfd, e)
    os.close(wfd)
    err = _read_report(rfd)
    if err:
        os.waitpid(pid, 0)
        raise SpawnError(err)
    return pid


def run_here(fn, *args):
    """fn(*args) in this process, returned as run_as() returns it: for
    a @launch whose changes_nothing() is true"""
    try:
        return json.loads(json.dumps(fn(*args))), None
    except Exception as e:   # pylint: disable=broad-except
        return None, f'{type(e).__name__}: {e}'


def run_as(launch, fn, *args):
    """Run fn(*args) in a child process that has @launch's identity
    (not its cgroups or limits: it does file steps and exits).  Returns
    (what fn returned, as JSON carries it; None), or (None, the error as
    one line)."""
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            launch.become(cgroups=False)
            os.write(wfd, json.dumps({'result': fn(*args)}).encode())
            os._exit(0)
        except BaseException as e:   # pylint: disable=broad-except
            _child_report(wfd, e)
    os.close(wfd)
    out = _read_report(rfd)
    os.waitpid(pid, 0)
    try:
        return json.loads(out)['result'], None
    except (ValueError, KeyError, TypeError):
        return None, out or "the child said nothing"
