"""What the destination runs and how the VM gets there, derived from the
source (read only): the destination's command line, the paths that
move, the mode, and every refusal, in one line naming the option.

    target = Target.probe('/opt/new/qemu-system-x86_64')
    plan = Plan.make(source, target, options)

The destination runs the source's command line on the new binary, with
the machine type pinned to the versioned one the VM runs, -S and
-incoming, tap-transfer netdevs without their fds (they come in the
migration stream), and every socket and the pidfile at a temporary name
beside the real one (QEMU unlinks a socket path before it binds it and
again at exit, and locks its pidfile)."""

import os
import pwd
import re
import secrets
import shlex
import stat
import string
import subprocess

from .cmdline import LegacyChardev, Opt, is_on, opts_join, opts_split, \
    parse_argv
from .errors import Refused
from .identity import Identity
from .procfs import meminfo

TEMP_SUFFIX = re.compile(r'\.tt-upgrade-[0-9a-z]{8}$')
UNIX_PATH_MAX = 107

# keys of QemuOpts values that name a file, and options whose whole
# value does: a relative one resolves against the source's cwd
PATH_KEYS = {'file', 'path', 'mem-path', 'filename', 'file.filename',
             'logfile', 'addr.path', 'script', 'downscript'}
PATH_OPTIONS = {'pidfile', 'kernel', 'initrd', 'dtb', 'bios', 'D',
                'readconfig', 'hda', 'hdb', 'hdc', 'hdd', 'cdrom', 'fda',
                'fdb', 'mtdblock', 'sd', 'pflash', 'L'}
FD_KEYS = ('fd', 'fds', 'vhostfd', 'vhostfds', 'sock_fd')
REFUSED_DEVICES = (('vhost-user', 'vhost-user devices'),
                   ('vfio', 'VFIO devices'),
                   ('vhost-vsock', 'vhost-vsock devices (their CID is '
                    'bound by the running QEMU)'),
                   ('vhost-scsi', 'vhost-scsi devices'))


def vstr(v):
    return '.'.join(str(x) for x in v)


class Target:
    """The QEMU binary the VM moves to."""

    def __init__(self, path, version, machines, st):
        self.path = path
        self.version = version
        self.machines = machines
        self.stat = st

    @classmethod
    def probe(cls, path):
        """Its version and machine types; refuses a binary a VM's user
        could have planted"""
        return cls.start_probe(path).result()

    @classmethod
    def start_probe(cls, path):
        """probe(), as two short runs of the binary that go on while the
        caller does something else: .result() waits for them"""
        return TargetProbe(path).start()


class TargetProbe:
    """Target.start_probe()'s runs of the binary"""

    def __init__(self, path):
        self.path = path
        self.procs = []
        self.error = None
        self.stat = None

    def start(self):
        try:
            self.stat = os.stat(self.path)
            check_binary(self.path, self.stat, '--to')
            self.procs = [subprocess.Popen(
                [self.path, *a], stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                text=True) for a in (['--version'], ['-machine', 'help'])]
        except OSError as e:
            self.error = Refused(f'--to {self.path}: {e.strerror}')
        except Refused as e:
            self.error = e
        return self

    def result(self):
        if self.error:
            raise self.error
        outs = []
        for p in self.procs:
            try:
                outs.append(p.communicate(timeout=30)[0])
            except subprocess.TimeoutExpired:
                p.kill()
                outs.append(p.communicate()[0])
        m = re.search(r'version (\d+)\.(\d+)\.(\d+)', outs[0])
        if not m:
            raise Refused(f'--to {self.path}: not a QEMU binary (--version '
                          f'said {outs[0].strip()[:80]!r})')
        machines = {line.split()[0] for line in outs[1].splitlines()[1:]
                    if line.split()}
        return Target(self.path, tuple(int(x) for x in m.groups()), machines,
                      (self.stat.st_dev, self.stat.st_ino))


def check_binary(path, st, what):
    """A QEMU binary the command may run: root's, writable by root
    only, no set-id bit, no file capabilities."""
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Refused(f'{what} {path}: not a root-owned binary that only '
                      'root can write')
    if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        raise Refused(f'{what} {path}: set-user-ID or set-group-ID')
    try:
        if os.getxattr(path, 'security.capability'):
            raise Refused(f'{what} {path}: has file capabilities')
    except OSError:
        pass


class Options:
    """What the operator asked for, of one VM's upgrade."""

    def __init__(self, mode='auto', extra_args='', onboard=False,
                 keep_name=False, force=False, max_bandwidth=None,
                 no_steer=False):
        self.mode = mode
        self.extra_args = extra_args or ''
        self.onboard = onboard
        self.keep_name = keep_name
        self.force = force
        self.max_bandwidth = max_bandwidth
        self.no_steer = no_steer


def writable_by(st, uid, gids):
    """Whether a directory of stat @st lets @uid (in groups @gids) make
    files in it, by its mode bits"""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IWOTH)


def json_paths(value):
    """The paths in a JSON option (-blockdev '{"file": {"filename":
    ...}}'), at any depth; a string "file" there names a node"""
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, str) and k in PATH_KEYS - {'file'}:
                out.append(v)
            else:
                out += json_paths(v)
    elif isinstance(value, list):
        for v in value:
            out += json_paths(v)
    return out


class Plan:
    """The destination's command line and the moves, for one VM."""

    def __init__(self, source, target, options, qmp_path, token):
        self.source = source
        self.target = target
        self.options = options
        self.qmp_path = qmp_path
        self.token = token
        self.dest_opts = []
        self.moves = []             # (kind, real path, temporary path)
        self.netdevs = []           # tap-transfer netdev ids
        self.onboard_ids = []       # -netdev tap ids (--onboard)
        self.onboard_opts = {}      # id -> the destination's Opt
        self.onboarding = None      # onboard.Onboarding
        self.daemonize = False
        self.as_launched = False    # -runas/-run-with user=/-chroot
        self.chroot = None
        self.sandbox = False
        self.log_path = None        # -D (or -trace file=)
        self.qmp_temp = None
        self.mode = None
        self.fdsets_ok = set()
        self._add_fds = []
        self._sockets = {}          # chardev id -> (real, temp)
        self._qmp_chardevs = []     # ids of chardevs that are QMP
        self._qmp_sockets = []      # (real, temp) of QMP sockets
        self._serial = {'serial': 0, 'parallel': 0}

    @classmethod
    def make(cls, source, target, options, qmp_path, token=None):
        token = token or ''.join(secrets.choice(string.ascii_lowercase +
                                                string.digits)
                                 for _ in range(8))
        plan = cls(source, target, options, qmp_path, token)
        plan.derive()
        return plan

    # paths

    @property
    def cwd(self):
        return self.source.identity.cwd

    def real(self, path):
        """A previous upgrade's temporary name stands for the real one"""
        return TEMP_SUFFIX.sub('', path)

    def abspath(self, path):
        return path if os.path.isabs(path) else \
            os.path.normpath(os.path.join(self.cwd, path))

    def temp_for(self, kind, path):
        real = self.abspath(self.real(path))
        temp = f'{real}.tt-upgrade-{self.token}'
        if kind in ('socket', 'qmp', 'cpr') and \
                len(temp.encode()) > UNIX_PATH_MAX:
            raise Refused(f'{path}: the temporary name {temp} is too long '
                          'for a UNIX socket')
        self.moves.append((kind, real, temp))
        return temp

    # the derivation

    def derive(self):
        src = self.source
        self.check_source()
        extra = parse_argv(shlex.split(self.options.extra_args))
        out, machine_done = [], False
        for o in src.opts + extra:
            o = Opt(o.name, o.value)      # the source's stay as they are
            if o.name in ('machine', 'M') and o.get('type') is not None:
                # QEMU takes the last type given: pin every one
                o.set('type', src.machine)
                machine_done = True
            out += self.translate(o)
        if not machine_done:
            out.insert(0, Opt('machine', src.machine))
        self.dest_opts = out
        self.check_add_fds()
        self.check_identity()
        self.find_qmp()
        self.check_unmoved_sockets()
        self.check_relative_paths()
        self.check_launched_moves()
        self.mode = self.choose_mode()
        if self.options.onboard:
            self.check_onboard()
        elif self.options.keep_name:
            raise Refused('--keep-name goes with --onboard')

    def check_source(self):
        src, tgt = self.source, self.target
        if src.status not in ('running', 'paused'):
            raise Refused(f'the VM is {src.status}, not running or paused')
        if src.migration not in (None, 'none', 'completed', 'failed',
                                 'cancelled'):
            raise Refused(f'a migration is {src.migration} on the VM')
        check_binary(f'/proc/{src.pid.pid}/exe', src.exe_stat,
                     'the VM\'s QEMU')
        if src.machine not in tgt.machines:
            raise Refused(f'machine type {src.machine} (the VM\'s, from '
                          f'QOM) is not in {tgt.path} (QEMU '
                          f'{vstr(tgt.version)}): roll back to a QEMU that '
                          'has it, or start VMs with a versioned machine '
                          'type both have')

    def translate(self, o):
        """The destination's options for the source's option @o (none,
        it, or it rewritten); refuses what cannot be carried."""
        n = o.name
        handler = getattr(self, '_opt_' + n.replace('-', '_'), None)
        if n in ('incoming', 'S'):
            return []
        if handler:
            result = handler(o)
            if result is not None:
                return result
        self.refuse_fds(o)
        return [o]

    def refuse_fds(self, o):
        if o.value is None:
            return
        for k in o.keys():
            if k in FD_KEYS:
                raise Refused(f'{o}: a file given to QEMU as an fd ({k}=) '
                              'cannot be reopened by a new QEMU')
        if '/dev/fdset/' in o.value:
            raise Refused(f'{o}: a file given to QEMU as an fd '
                          '(/dev/fdset) cannot be reopened by a new QEMU')

    def _fdsets_of(self, o, keys):
        for key in keys:
            for f in (o.get(key) or '').split(':'):
                if f.startswith('/dev/fdset/'):
                    self.fdsets_ok.add(f[len('/dev/fdset/'):])

    # option handlers: None means "checked as any other option"

    def _opt_daemonize(self, _o):
        # the command starts the destination detached itself
        self.daemonize = True
        return []

    def _opt_global(self, o):
        if o.value == 'migration.backend-transfer=on':
            return []           # a cpr-transfer upgrade's, set again
        return None

    def _opt_add_fd(self, o):
        self._add_fds.append(o)
        return []

    def _opt_snapshot(self, _o):
        raise Refused('-snapshot: its temporary overlay belongs to the '
                      'source QEMU')

    def _opt_loadvm(self, o):
        raise Refused(f'{o}: the new QEMU would load the snapshot over the '
                      'running VM\'s state')

    def _opt_drive(self, o):
        if is_on(o.get('snapshot')):
            raise Refused(f'{o}: snapshot=on: its temporary overlay belongs '
                          'to the source QEMU')
        return None

    def _opt_device(self, o):
        drv = o.get('driver') or ''
        for prefix, what in REFUSED_DEVICES:
            if drv.startswith(prefix):
                raise Refused(f'{o}: {what} cannot be handed over')
        return None

    def _opt_netdev(self, o):
        t = o.get('type')
        if t == 'tap' and self.options.onboard:
            self.onboard_ids.append(o.get('id'))
            self._fdsets_of(o, ('fd', 'fds'))
            return self.onboard_placeholder(o)
        if t == 'tap-transfer':
            self.netdevs.append(o.get('id'))
            self._fdsets_of(o, FD_KEYS[:4])
            fds = o.get('fds')
            for key in FD_KEYS[:4]:
                o.set(key, None)
            if fds and o.get('queues') is None:
                n = len(fds.split(':'))
                o.set('queues', n if o.json is not None else str(n))
            return [o]
        if t == 'stream' and is_on(o.get('server')):
            return [self.move_stream(o)]
        return self._net_type(o, t)

    def _opt_nic(self, o):
        return self._net_type(o, o.get('type'))

    def _opt_net(self, o):
        return self._net_type(o, o.get('type'))

    def _net_type(self, o, t):
        if t in ('tap', 'bridge'):
            raise Refused(f'{o}: a plain -{o.name} {t} cannot be handed '
                          'over; use --onboard')
        if t in ('vhost-user', 'vhost-vdpa'):
            raise Refused(f'{o}: {t} netdevs cannot be handed over')
        if t == 'tap-transfer':
            raise Refused(f'{o}: give tap-transfer as -netdev')
        return None

    def move_stream(self, o):
        """-netdev stream,server=on on a UNIX socket"""
        if o.json is not None:
            addr = o.json.get('addr', {})
            if addr.get('type') == 'unix':
                addr['path'] = self.temp_for('socket', addr['path'])
                o.set('addr', addr)
                return o
        elif o.get('addr.type') == 'unix':
            o.set('addr.path', self.temp_for('socket', o.get('addr.path')))
            return o
        raise Refused(f'{o}: a TCP server socket cannot be bound by two '
                      'QEMUs')

    def _opt_pidfile(self, o):
        o.value = self.temp_for('pidfile', o.value)
        return [o]

    def _legacy(self, o, qmp):
        spec = LegacyChardev(o.value)
        if spec.backend in ('tcp', 'telnet', 'websocket') and spec.server:
            raise Refused(f'{o}: a TCP server socket cannot be bound by two '
                          'QEMUs')
        if spec.backend == 'unix' and spec.server:
            temp = self.temp_for('qmp' if qmp else 'socket', spec.path)
            if qmp:
                self._qmp_sockets.append(self.moves[-1][1:])
            wait = 'off' if spec.get('wait') is not None else None
            o.value = spec.with_path(temp, wait=wait)
            return [o]
        if spec.backend == 'chardev' and qmp:
            self._qmp_chardevs.append(spec.path)
        if spec.backend == 'file' and o.name in ('serial', 'parallel') and \
                not spec.mux:
            # the log goes on: append, not truncate; the same label
            label = f'{o.name}{self._serial[o.name]}'
            self._serial[o.name] += 1
            return [Opt('chardev', opts_join(['file', f'id={label}',
                                              f'path={spec.path}',
                                              'append=on'])),
                    Opt(o.name, f'chardev:{label}')]
        if o.name in ('serial', 'parallel'):
            self._serial[o.name] += 1
        return [o]

    def _opt_qmp(self, o):
        return self._legacy(o, True)

    def _opt_qmp_pretty(self, o):
        return self._legacy(o, True)

    def _opt_monitor(self, o):
        return self._legacy(o, False)

    def _opt_serial(self, o):
        return self._legacy(o, False)

    def _opt_parallel(self, o):
        return self._legacy(o, False)

    def _opt_chardev(self, o):
        be = o.get('backend')
        if be == 'socket' and is_on(o.get('server')):
            if o.get('host') is not None or o.get('path') is None:
                raise Refused(f'{o}: a TCP server socket cannot be bound by '
                              'two QEMUs')
            o.set('path', self.temp_for('socket', o.get('path')))
            self._sockets[o.get('id')] = self.moves[-1][1:]
            if o.get('wait') is not None:
                o.set('wait', 'off' if o.json is None else False)
        elif be == 'file':
            o.set('append', 'on' if o.json is None else True)
        if o.get('logfile') is not None:
            o.set('logappend', 'on' if o.json is None else True)
        self.refuse_fds(o)
        return [o]

    def _opt_mon(self, o):
        if o.get('mode') == 'control':
            self._qmp_chardevs.append(o.get('chardev'))
        return None

    def _opt_vnc(self, o):
        items = opts_split(o.value)
        if items[0].startswith('unix:'):
            items[0] = 'unix:' + self.temp_for('socket', items[0][5:])
            o.value = opts_join(items)
            return [o]
        if items[0] != 'none':
            raise Refused(f'{o}: a display on a TCP port cannot be bound by '
                          'two QEMUs')
        return [o]

    def _opt_display(self, o):
        vnc = o.get('vnc')
        if vnc is None:
            return None
        if vnc.startswith('unix:'):
            o.set('vnc', 'unix:' + self.temp_for('socket', vnc[5:]))
            return [o]
        raise Refused(f'{o}: a display on a TCP port cannot be bound by '
                      'two QEMUs')

    def _opt_spice(self, o):
        if is_on(o.get('unix')) and o.get('addr'):
            o.set('addr', self.temp_for('socket', o.get('addr')))
            return [o]
        raise Refused(f'{o}: a display on a TCP port cannot be bound by two '
                      'QEMUs')

    def _opt_D(self, o):
        # QEMU truncates its log file at start: the destination writes
        # on the source's open log file instead (see handover)
        self.log_path = self.abspath(o.value)
        return []

    def _opt_trace(self, o):
        if o.get('file') is None:
            return None
        self.log_path = self.abspath(o.get('file'))
        o.set('file', None)
        return [o] if o.value else []

    def _opt_runas(self, o):
        self.check_runas(o.value, o)
        return [o]

    def _opt_chroot(self, o):
        self.check_chroot(o.value, o)
        return [o]

    def _opt_run_with(self, o):
        if o.get('user') is not None:
            self.check_runas(o.get('user'), o)
        if o.get('chroot') is not None:
            self.check_chroot(o.get('chroot'), o)
        return None

    def _opt_sandbox(self, o):
        self.sandbox = is_on(opts_split(o.value)[0])
        return None

    def onboard_placeholder(self, o):
        q = o.get('queues') or '1'
        new = Opt('netdev', f'tap-transfer,id={o.get("id")},' +
                  ('fds=<the new TAP\'s fds>' if q != '1' else
                   'fd=<the new TAP\'s fd>'))
        self.onboard_opts[o.get('id')] = new
        return [new]

    # the checks after the pass

    def check_runas(self, user, o):
        """The VM dropped its privileges itself: it must run as that
        user now (else its command line was changed after it started)"""
        ident = self.source.identity
        try:
            pw = pwd.getpwnam(user)
            uid, gid = pw.pw_uid, pw.pw_gid
        except KeyError:
            m = re.fullmatch(r'(\d+):(\d+)', user)
            if not m:
                raise Refused(f'{o}: no such user') from None
            uid, gid = int(m.group(1)), int(m.group(2))
        if (uid, gid) != (ident.uids[1], ident.gids[1]):
            raise Refused(f'{o}: the VM runs as {ident.uids[1]}:'
                          f'{ident.gids[1]}, not as the user its command line '
                          'names: it was changed after QEMU started')
        self.as_launched = True

    def check_launched_moves(self):
        """A QEMU that drops to a user itself (-runas, -run-with user=)
        makes its sockets and pidfile as root first, and so will the new
        one: only where that user could make them, so that a command
        line changed after the start cannot have root make a file in a
        directory of root's"""
        if not self.as_launched:
            return
        ident = self.source.identity
        uid = ident.uids[1]
        gids = {ident.gids[1], *ident.groups}
        for _, real, temp in self.moves:
            d = os.path.dirname(temp)
            try:
                st = os.stat(d)
            except OSError:
                continue        # nobody makes it there: QEMU fails to start
            if not writable_by(st, uid, gids):
                raise Refused(f'{real}: the VM\'s QEMU makes it as root '
                              f'before it drops to uid {uid}, who cannot '
                              f'write {d}: its command line may have been '
                              'changed after it started')

    def check_chroot(self, path, o):
        ident = self.source.identity
        if os.path.normpath(path) != ident.root:
            raise Refused(f'{o}: the VM\'s root is {ident.root}, not the '
                          'directory its command line names')
        self.as_launched = True
        self.chroot = path

    def check_add_fds(self):
        for o in self._add_fds:
            if o.get('set') not in self.fdsets_ok:
                raise Refused(f'{o}: a file given to QEMU as an fd cannot be '
                              'reopened by a new QEMU')

    def check_identity(self):
        ident = self.source.identity
        foreign = ident.foreign_namespaces()
        if foreign:
            raise Refused(f'the VM\'s QEMU is in {", ".join(foreign)} '
                          'namespace(s) of its own: a new process cannot be '
                          'started there')
        if ident.seccomp and not self.sandbox:
            raise Refused('the VM\'s QEMU runs under a seccomp filter that '
                          'its command line does not set (-sandbox): it '
                          'cannot be given to the new QEMU')
        mine = Identity.read(os.getpid())
        if ident.label != mine.label:
            raise Refused(f'the VM\'s QEMU runs with security label '
                          f'{ident.label}, this command with {mine.label}: '
                          'the command cannot set it')
        beyond = ident.limits_beyond(mine)
        if beyond:
            raise Refused(f'the VM\'s {beyond[0]}: this command cannot give '
                          'it to the new QEMU')
        if self.chroot and 'mnt' in ident.namespaces and \
                os.stat('/proc/self/ns/mnt').st_ino != \
                ident.namespaces['mnt']:
            raise Refused('-chroot in a mount namespace of its own: not '
                          'supported')

    def find_qmp(self):
        """The temporary name of the operator's QMP socket"""
        want = os.path.realpath(self.real(self.abspath(self.qmp_path)))
        qmp = list(self._qmp_sockets)
        qmp += [self._sockets[c] for c in self._qmp_chardevs
                if c in self._sockets]
        for real, temp in qmp:
            if os.path.realpath(real) == want:
                self.qmp_temp = temp
                for i, (_, r, t) in enumerate(self.moves):
                    if t == temp:
                        self.moves[i] = ('qmp', r, t)
                return
        raise Refused(f'--qmp {self.qmp_path}: no QMP server socket with '
                      'this path on the VM\'s command line')

    def check_unmoved_sockets(self):
        """Every UNIX server chardev of the VM is moved: one from
        -readconfig or chardev-add is not on the command line"""
        moved = {os.path.realpath(r) for _, r, _ in self.moves}
        for label, name in self.source.live.chardevs.items():
            if not name.startswith('unix:') or ',server=on' not in name:
                continue
            path = name[5:].split(',server=on')[0]
            if os.path.realpath(self.real(path)) not in moved:
                raise Refused(f'chardev {label} listens on {path} but is not '
                              'on the command line (-readconfig or '
                              'chardev-add): it cannot be moved')

    def check_relative_paths(self):
        """A QEMU that daemonized or chrooted runs in /: its relative
        paths resolved against a directory nobody knows now"""
        if not (self.daemonize or self.chroot):
            return
        for o in self.source.opts:
            values = []
            if o.name in PATH_OPTIONS and o.value:
                values.append(o.value)
            elif o.json is not None:
                values += json_paths(o.json)
            elif o.value:
                values += [o.get(k) for k in PATH_KEYS if o.get(k)]
            if o.name in ('serial', 'parallel', 'monitor', 'qmp') and \
                    o.value:
                spec = LegacyChardev(o.value)
                if spec.backend in ('unix', 'file'):
                    values.append(spec.path)
            for v in values:
                if v and not os.path.isabs(v) and ':' not in v.split('/')[0] \
                        and v not in ('no', 'none'):
                    how = 'daemonized' if self.daemonize else 'chrooted'
                    raise Refused(f'{o}: a relative path in a QEMU that '
                                  f'{how}: the directory it resolved '
                                  'against is not known')

    def choose_mode(self):
        live, opt = self.source.live, self.options
        shared = live.shared_files()
        if opt.mode == 'copy' and shared:
            raise Refused(f'--mode copy: memory backend(s) '
                          f'{", ".join(shared)} are files mapped shared: '
                          'the copy would be written into the running VM\'s '
                          'RAM; use --mode shared')
        if opt.mode != 'auto':
            mode = opt.mode
        elif shared:
            mode = 'shared'
        elif (live.ram_backend() or {}).get('type') == \
                'memory-backend-memfd' and not opt.onboard and \
                self.cpr_possible():
            mode = 'cpr-transfer'
        else:
            mode = 'copy'
        if mode in ('copy', 'shared'):
            need, avail = live.private_bytes(), meminfo('MemAvailable')
            if avail is not None and need > avail:
                raise Refused(f'copying the VM\'s RAM needs {need >> 20} MiB, '
                              f'the host has {avail >> 20} MiB available')
        return mode

    def cpr_possible(self):
        """cpr-transfer, where both QEMUs have it and the newer one
        loads the older's state (10.0 cannot load 10.2's), and no RAM
        is private anonymous memory"""
        src = self.source
        if src.version[:2] < (10, 0) or \
                self.target.version[:2] < src.version[:2]:
            return False
        if any(m['type'] == 'memory-backend-ram'
               for m in src.live.memory.values()):
            return False
        return bool(src.live.memory) and src.live.ram is not None

    def check_onboard(self):
        """--onboard: every TAP of the VM is a -netdev tap, and each can
        be made again (tap_transfer.onboard refuses the rest)."""
        from . import onboard   # pylint: disable=import-outside-toplevel
        if not self.onboard_ids:
            raise Refused('--onboard: the VM has no -netdev tap (a VM on '
                          'tap-transfer needs no onboarding)')
        if self.netdevs:
            raise Refused(f'--onboard: the VM has tap-transfer netdevs '
                          f'({", ".join(self.netdevs)}) as well as -netdev '
                          'tap: onboard it on a QEMU without them')
        if self.mode == 'cpr-transfer':
            raise Refused('--onboard --mode cpr-transfer: the onboarding '
                          'hop is an ordinary migration (copy or shared)')
        try:
            self.onboarding = onboard.Onboarding(
                self.source.pid.pid, self.source.argv, self.source.fdsets,
                force=self.options.force)
        except onboard.OnboardError as e:
            raise Refused(f'--onboard: {e}') from e
        found = set(self.onboarding.ids())
        if found != set(self.onboard_ids):
            missing = sorted(set(self.onboard_ids) - found)
            raise Refused('--onboard: cannot tell the TAP of netdev(s) '
                          f'{", ".join(missing)}')

    def onboard_netdevs(self):
        """--onboard: the destination's -netdev on the new TAPs' fds"""
        for nd, o in self.onboard_opts.items():
            o.value = self.onboarding.netdev_value(nd)

    # what the destination runs

    def dest_argv(self, incoming):
        """The destination's argv; @incoming: its -incoming options"""
        argv = [self.target.path]
        for o in self.dest_opts:
            argv += o.argv()
        return argv + ['-S'] + incoming

    def steps(self):
        if self.onboarding:
            return self.onboard_steps()
        caps = ' x-ignore-shared,' if self.mode == 'shared' else ''
        s = ['start the destination paused (-S), detached, as the VM\'s '
             'QEMU runs (user, groups, capabilities, cgroups, namespaces, '
             'limits, environment)',
             'compare the live state (devices, netdevs, chardevs, block '
             'graph, memory backends) of both QEMUs',
             f'set{caps} backend-transfer on both sides'
             + (', mode cpr-transfer on the source'
                if self.mode == 'cpr-transfer' else ''),
             'migrate over a UNIX socket pair passed to both QEMUs',
             'with both QEMUs stopped, check that the destination adopted '
             f'the TAP of {", ".join(self.netdevs) or "(no netdev)"} (QOM '
             'state, kcmp, ifindex)',
             'cont the destination (the point of no return)'
             if self.source.status == 'running' else
             'leave the destination paused, as the VM was',
             'quit the source']
        s += [f'rename {t} -> {r}' for _, r, t in self.moves]
        return s

    def onboard_steps(self):
        ob = self.onboarding
        s = [f'netdev {t.id}: create a TAP like {t.ifname} '
             f'({t.attrs.queues} queue(s), vnet_hdr '
             f"{'on' if t.attrs.vnet_hdr else 'off'}, MTU {t.attrs.mtu}, "
             f'txqueuelen {t.attrs.txqlen}), attach it to {t.attrs.master}'
             f"{', VLANs copied' if t.attrs.vlans is not None else ''}, up"
             for t in ob.taps]
        s += ['start the destination paused (-S), detached, as the VM\'s '
              'QEMU runs, -netdev tap-transfer on the new TAP\'s fds',
              'migrate over a UNIX socket pair, backend-transfer off (an '
              'ordinary migration: the lossy hop), the source paused '
              'before switchover',
              'at the switchover, point the bridge\'s entries for the '
              'guest at the new TAP',
              'check that the destination\'s netdevs own the new TAPs',
              'cont the destination (the point of no return)',
              'quit the source (its TAP goes with it)']
        if self.options.keep_name:
            s += [f'rename the new TAP to {t.ifname} (link down for the '
                  'rename)' for t in ob.taps]
        s += [f'rename {t} -> {r}' for _, r, t in self.moves]
        return s
