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

    @classmethod
    def read(cls, mon):
        pid = mon.pid
        v = mon.version()
        mtype = mon.cmd('qom-get', path='/machine', property='type')
        fdsets = {}
        for fs in mon.try_cmd('query-fdsets') or []:
            fdsets[fs['fdset-id']] = [f['fd'] for f in fs.get('fds', [])]
        return cls(
            pid=ProcessId.of(pid),
            argv=read_cmdline(pid),
            identity=Identity.read(pid),
            version=(v['major'], v['minor'], v['micro']),
            status=mon.cmd('query-status')['status'],
            migration=mon.cmd('query-migrate').get('status'),
            machine=re.sub(r'-machine$', '', mtype),
            params=mon.cmd('query-migrate-parameters'),
            caps={c['capability']: c['state'] for c in
                  mon.cmd('query-migrate-capabilities')},
            live=LiveState.read(mon),
            fdsets=fdsets,
            exe_stat=os.stat(f'/proc/{pid}/exe'))

    @property
    def binary(self):
        return self.argv[0]

    def tun_fds(self):
        return tun_fds(self.pid.pid)
