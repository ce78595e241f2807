#!/usr/bin/python
"""Ansible module tap_transfer_upgrade: move the VMs of one host to
another QEMU binary with tap-transfer-upgrade, only those that are not
on it already."""

import fnmatch
import glob
import json
import os
import socket
import struct
import time

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r'''
---
module: tap_transfer_upgrade
short_description: Move this host's VMs to another QEMU binary, TAPs handed over
description:
  - Finds the VMs by their QMP sockets, leaves alone those whose QEMU
    already runs the target binary (the same file, not only the same
    version), and moves the others with C(tap-transfer-upgrade --json),
    which hands their TAP devices over and leaves a VM it could not move
    on its old QEMU.
  - In check mode the command runs with C(--dry-run); nothing changes.
  - C(changed) only when a VM moved (or, in check mode, would move).
    The task fails when a VM was refused, failed, was lost or left
    unfinished, or was never tried after C(max_failures).
options:
  qmp:
    description: QMP socket paths or globs; the VMs of this host.
    type: list
    elements: str
    required: true
  exclude:
    description: Globs of QMP socket paths to leave alone.
    type: list
    elements: str
    default: []
  to:
    description: The QEMU binary to run the VMs on.
    type: path
    required: true
  command:
    description: The tap-transfer-upgrade command.
    type: path
    default: /usr/sbin/tap-transfer-upgrade
  parallel:
    description: VMs moved at a time (C(--parallel)).
    type: int
    default: 1
  max_failures:
    description: Start no more VMs after this many were not moved
      (C(--max-failures)); 0 tries every VM.
    type: int
    default: 1
  timeout:
    description: Give a migration up after this many seconds (C(--timeout)).
    type: float
    default: 300
  stale:
    description: A socket no QEMU answers on (a VM that is gone left
      it), C(skip) or C(fail).
    type: str
    choices: [skip, fail]
    default: skip
'''

EXAMPLES = r'''
- name: Move the VMs to QEMU 10.2
  tap_transfer_upgrade:
    qmp: ["/run/vms/*/qmp.sock"]
    to: /usr/lib/tap-transfer/qemu-10.2/bin/qemu-system-x86_64
  register: result
'''

RETURN = r'''
vms:
  description: One entry per VM found, in socket path order.
  returned: always
  type: list
  elements: dict
  contains:
    qmp: {description: its QMP socket, type: str}
    status:
      description: upgraded, current (already on the target binary),
        dry-run (check mode; would move), the command's refused, busy,
        failed, interrupted, lost or unfinished, never-tried, or stale.
      type: str
    ok: {description: nothing to fix on this VM, type: bool}
    pid_before: {description: its QEMU's pid before, type: int}
    pid_after: {description: the pid answering on the socket after, type: int}
    qemu_before: {description: the QEMU version (or binary) before, type: str}
    qemu_after: {description: the QEMU version (or binary) after, type: str}
    mode: {description: shared, copy or cpr-transfer, type: str}
    downtime_ms: {description: the guest's downtime, type: int}
    command_ms: {description: the command's time for this VM, type: float}
    error: {description: why it was not moved, type: str}
summary:
  description: counts by status, and the seconds the task took
  returned: always
  type: dict
table:
  description: the per-VM results as lines of a table
  returned: always
  type: list
  elements: str
'''

# A VM in one of these states needs the operator
BAD = ('refused', 'busy', 'failed', 'interrupted', 'lost', 'unfinished',
       'never-tried')
# The temporary names a run gives the sockets it moves
TEMPORARY = '.tt-upgrade-'


def find_sockets(patterns, exclude):
    """The QMP sockets @patterns name, less @exclude's, sorted, each once;
    never a run's temporary name"""
    found = []
    for pattern in patterns:
        paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) \
            else [pattern]
        for path in paths:
            if TEMPORARY in os.path.basename(path):
                continue
            if any(fnmatch.fnmatch(path, e) for e in exclude):
                continue
            if path not in found:
                found.append(path)
    return found


def peer_pid(path):
    """The pid of the process listening on UNIX socket @path (its
    SO_PEERCRED; QEMU need not accept the connection), or None if none
    listens there"""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                             struct.calcsize('3i'))
        return struct.unpack('3i', creds)[0]
    except OSError:
        return None
    finally:
        s.close()


def binary(pid):
    """(device, inode) of the file process @pid runs -- also when it was
    replaced since (a package update), and its path"""
    try:
        st = os.stat(f'/proc/{pid}/exe')
        return (st.st_dev, st.st_ino), os.readlink(f'/proc/{pid}/exe')
    except OSError:
        return None, None


class Host:
    """The VMs of this host and what became of them"""

    def __init__(self, module):
        self.module = module
        self.p = module.params
        self.vms = []
        self.argv = None
        self.rc = None
        self.stderr = ''

    def survey(self, target):
        """Each VM: stale, current, or to move"""
        for path in find_sockets(self.p['qmp'], self.p['exclude']):
            vm = {'qmp': path, 'status': None, 'ok': True,
                  'pid_before': None, 'pid_after': None,
                  'qemu_before': None, 'qemu_after': None, 'mode': None,
                  'downtime_ms': None, 'command_ms': None, 'error': None}
            pid = peer_pid(path)
            if pid is None:
                vm.update(status='stale', ok=self.p['stale'] == 'skip',
                          error='no QEMU answers on this socket')
            else:
                ident, exe = binary(pid)
                vm.update(pid_before=pid, qemu_before=exe)
                if ident is not None and ident == target:
                    vm.update(status='current', pid_after=pid,
                              qemu_after=exe)
            self.vms.append(vm)

    def move(self, to):
        todo = [vm for vm in self.vms if vm['status'] is None]
        if not todo:
            return
        argv = [self.p['command']]
        for vm in todo:
            argv += ['--qmp', vm['qmp']]
        argv += ['--to', to, '--json', '--quiet',
                 '--parallel', str(self.p['parallel']),
                 '--timeout', str(self.p['timeout'])]
        if self.p['max_failures']:
            argv += ['--max-failures', str(self.p['max_failures'])]
        if self.module.check_mode:
            argv.append('--dry-run')
        self.argv = argv
        self.rc, out, self.stderr = self.module.run_command(argv)
        try:
            data = json.loads(out)
        except ValueError:
            data = {}
        reports = data.get('reports', [data] if data.get('qmp') else [])
        by_path = {r.get('qmp'): r for r in reports}
        never = set(data.get('summary', {}).get('never_tried', []))
        for vm in todo:
            r = by_path.get(vm['qmp'])
            if r is None:
                why = ('never tried: the command stopped after '
                       f"{self.p['max_failures']} VM(s) were not moved"
                       if vm['qmp'] in never else
                       'the command gave no report (exit '
                       f'{self.rc}): {self.stderr.strip()[-300:]}')
                vm.update(status='never-tried' if vm['qmp'] in never
                          else 'failed', ok=False, error=why)
                continue
            vm.update(status=r.get('status'), ok=bool(r.get('ok')),
                      error=r.get('error'), mode=r.get('mode'),
                      downtime_ms=r.get('downtime_ms'),
                      command_ms=r.get('command_ms'))
            if r.get('old_version'):
                vm['qemu_before'] = r['old_version']
            if r.get('new_version'):
                vm['qemu_after'] = r['new_version']
            if vm['status'] not in BAD + ('upgraded', 'dry-run'):
                vm.update(ok=False, error=vm['error'] or
                          f"unknown status {vm['status']!r}")

    def verify(self, target):
        """Who answers on each socket now: the new QEMU on the target for
        a VM that moved, the same QEMU for one that did not"""
        for vm in self.vms:
            if vm['status'] in ('stale', 'current'):
                continue
            pid = peer_pid(vm['qmp'])
            vm['pid_after'] = pid
            ident = binary(pid)[0] if pid else None
            if vm['status'] == 'upgraded' and ident != target:
                vm.update(ok=False, status='unfinished',
                          error='reported upgraded, but the socket answers '
                          f'from pid {pid}, not on the target binary')
            elif vm['status'] != 'upgraded' and pid != vm['pid_before'] \
                    and vm['status'] not in ('lost', 'unfinished'):
                vm.update(ok=False, error=(vm['error'] or '') +
                          f' (its QMP socket now answers from pid {pid})')


def counts(vms):
    out = {'vms': len(vms)}
    for s in ('upgraded', 'current', 'dry-run', 'stale') + BAD:
        out[s.replace('-', '_')] = sum(1 for vm in vms if vm['status'] == s)
    return out


def table(vms, summary):
    """The results as aligned lines"""
    def arrow(a, b):
        if a is None and b is None:
            return '-'
        return str(a) if b in (None, a) else f'{a} -> {b}'

    rows = [('VM (QMP socket)', 'status', 'QEMU', 'pid', 'downtime',
             'command', 'note')]
    for vm in vms:
        note = vm['error'] or ''
        if vm['status'] == 'current':
            note = 'already on the target binary'
        elif vm['status'] == 'dry-run':
            note = 'would move (check mode)'
        elif vm['status'] == 'upgraded':
            note = f"{vm['mode']} RAM" if vm['mode'] != 'copy' else \
                'RAM copied'
        rows.append((
            vm['qmp'], vm['status'] or '?',
            arrow(vm['qemu_before'], vm['qemu_after']),
            arrow(vm['pid_before'], vm['pid_after']),
            '-' if vm['downtime_ms'] is None else f"{vm['downtime_ms']} ms",
            '-' if vm['command_ms'] is None
            else f"{vm['command_ms'] / 1000:.1f} s",
            note))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)) + '  ' + r[6]
             for r in rows]
    done = ', '.join(f"{n} {s.replace('_', ' ')}"
                     for s, n in summary.items()
                     if s not in ('vms', 'seconds') and n)
    lines.append(f"{summary['vms']} VM(s): {done or 'none found'}; "
                 f"{summary['seconds']} s")
    return [line.rstrip() for line in lines]


def main():
    module = AnsibleModule(
        argument_spec={
            'qmp': {'type': 'list', 'elements': 'str', 'required': True},
            'exclude': {'type': 'list', 'elements': 'str', 'default': []},
            'to': {'type': 'path', 'required': True},
            'command': {'type': 'path',
                        'default': '/usr/sbin/tap-transfer-upgrade'},
            'parallel': {'type': 'int', 'default': 1},
            'max_failures': {'type': 'int', 'default': 1},
            'timeout': {'type': 'float', 'default': 300},
            'stale': {'type': 'str', 'choices': ['skip', 'fail'],
                      'default': 'skip'},
        },
        supports_check_mode=True)
    t0 = time.monotonic()
    to = module.params['to']
    try:
        st = os.stat(to)
    except OSError as e:
        module.fail_json(msg=f'the target QEMU {to}: {e.strerror}', vms=[],
                         table=[])
    if not os.access(to, os.X_OK):
        module.fail_json(msg=f'the target QEMU {to} is not executable',
                         vms=[], table=[])
    if not os.access(module.params['command'], os.X_OK):
        module.fail_json(msg=f"no {module.params['command']} on this host "
                         '(package tap-transfer-tools)', vms=[], table=[])
    target = (st.st_dev, st.st_ino)

    host = Host(module)
    host.survey(target)
    host.move(to)
    if not module.check_mode:
        host.verify(target)
    vms = host.vms
    summary = counts(vms)
    summary['seconds'] = round(time.monotonic() - t0, 1)
    moved = summary['upgraded'] + summary['dry_run']
    bad = [vm for vm in vms if not vm['ok']]
    result = {
        'changed': moved > 0,
        'vms': vms,
        'summary': summary,
        'table': table(vms, summary),
        'command': host.argv,
        # not 'rc': Ansible fails a task whose result has an rc not 0
        'command_rc': host.rc,
        'target': to,
    }
    if bad:
        module.fail_json(
            msg=f'{len(bad)} of {len(vms)} VM(s) not moved to {to}: ' +
            '; '.join(f"{vm['qmp']}: {vm['status']}: {vm['error']}"
                      for vm in bad),
            **result)
    verb = 'would move' if module.check_mode else 'moved'
    module.exit_json(msg=f'{moved} of {len(vms)} VM(s) {verb} to {to}, '
                     f"{summary['current']} already there", **result)


if __name__ == '__main__':
    main()
