"""The running VM as the upgrade sees it: what its QEMU says over QMP
and what /proc says of the process.  Read only; a Source is read once,
before anything changes, and compared with the destination later
(livestate)."""

import os
import re

from .cmdline import parse_argv
from .identity import Identity
from .livestate import LiveState
from .procfs import ProcessId, read_cmdline, tun_fds
from .qmp import CommandError, qom_get, value


class Source:
    """What the source QEMU runs, and as whom."""

    def __init__(self, pid, argv, identity, version, status, migration,
                 machine, params, caps, live, fdsets, exe_stat):
        self.pid = pid                # ProcessId
        self.argv = argv
        self.opts = parse_argv(argv[1:])
        self.identity = identity
        self.version = version        # (major, minor, micro)
        self.status = status          # query-status
        self.migration = migration    # query-migrate status
        self.machine = machine        # versioned machine type
        self.params = params
        self.caps = caps
        self.live = live              # LiveState
        self.fdsets = fdsets          # {set id: [fd, ...]}
        self.exe_stat = exe_stat

    # what it is read from, with LiveState.QUERIES, at once
    QUERIES = (qom_get('/machine', 'type'),
               ('query-status', {}),
               ('query-migrate', {}),
               ('query-migrate-parameters', {}),
               ('query-migrate-capabilities', {}),
               ('query-fdsets', {}))

    @classmethod
    def read(cls, mon):
        pid = mon.pid
        v = mon.version()
        replies = mon.cmds(*cls.QUERIES, *LiveState.QUERIES)
        mtype, status, migration, params, caps, fdsets = \
            replies[:len(cls.QUERIES)]
        if isinstance(fdsets, CommandError):
            fdsets = []
        return cls(
            pid=ProcessId.of(pid),
            argv=read_cmdline(pid),
            identity=Identity.read(pid),
            version=(v['major'], v['minor'], v['micro']),
            status=value(status)['status'],
            migration=value(migration).get('status'),
            machine=re.sub(r'-machine$', '', value(mtype)),
            params=value(params),
            caps={c['capability']: c['state'] for c in value(caps)},
            live=LiveState.of(mon, replies[len(cls.QUERIES):]),
            fdsets={fs['fdset-id']: [f['fd'] for f in fs.get('fds', [])]
                    for fs in fdsets},
            exe_stat=os.stat(f'/proc/{pid}/exe'))

    @property
    def binary(self):
        return self.argv[0]

    def tun_fds(self):
        return tun_fds(self.pid.pid)
