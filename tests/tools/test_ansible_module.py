#!/usr/bin/env python3
"""The Ansible role's module, tap_transfer_upgrade, run as Ansible runs
it (its arguments in a JSON file, its result on stdout) against fake
VMs -- processes listening on UNIX sockets, each running a copy of the
Python binary that stands for a QEMU binary -- and a fake
tap-transfer-upgrade that answers with the command's JSON reports and,
for a VM it moves, replaces the fake VM by one on the target binary.
What is checked: which VMs it leaves alone (the same file as the
target, not the same path), what it runs, changed and failed, check
mode.  Prints TAP."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import taptest

MODULE = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..',
                      'ansible', 'roles', 'tap_transfer', 'library',
                      'tap_transfer_upgrade.py')
PYTHON = os.path.realpath('/usr/bin/python3')

# A fake VM: listens on argv[1], writes its pid to 'pid' beside it
FAKE_VM = r'''
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    os.unlink(sys.argv[1])
except FileNotFoundError:
    pass
s.bind(sys.argv[1])
s.listen(8)
with open(os.path.join(os.path.dirname(sys.argv[1]), 'pid'), 'w') as f:
    f.write(str(os.getpid()))
while True:
    c, _ = s.accept()
    c.close()
'''

# The fake command: its argv logged; per VM the status the test set in
# STATUS_DIR/<basename of the socket's directory>; an upgraded VM gets a
# new fake VM on --to's binary, the old one killed
FAKE_COMMAND = r'''#!PYTHON
import json, os, signal, subprocess, sys, time
d = os.environ['FAKE_DIR']
with open(os.path.join(d, 'argv.log'), 'a') as f:
    f.write(json.dumps(sys.argv[1:]) + '\n')
args, qmps = sys.argv[1:], []
while '--qmp' in args:
    i = args.index('--qmp')
    qmps.append(args[i + 1])
    del args[i:i + 2]
to = args[args.index('--to') + 1]
dry = '--dry-run' in args
reports, never = [], []
for q in qmps:
    name = os.path.basename(os.path.dirname(q))
    try:
        status = open(os.path.join(d, 'status', name)).read().strip()
    except FileNotFoundError:
        status = 'upgraded'
    if status == 'never':
        never.append(q)
        continue
    r = {'qmp': q, 'ok': status in ('upgraded', 'dry-run'),
         'old_version': '10.0.13', 'mode': 'shared', 'downtime_ms': 7,
         'command_ms': 812.5}
    if dry and status == 'upgraded':
        status = 'dry-run'
        r['ok'] = True
    r['status'] = status
    if status == 'upgraded':
        old = int(open(os.path.join(os.path.dirname(q), 'pid')).read())
        os.kill(old, signal.SIGKILL)
        subprocess.Popen([to, os.path.join(d, 'fakevm.py'), q],
                         start_new_session=True)
        pidfile = os.path.join(os.path.dirname(q), 'pid')
        while not os.path.exists(pidfile) or \
                int(open(pidfile).read() or 0) == old:
            time.sleep(0.01)
        r.update(new_version='10.2.2', new_pid=int(open(pidfile).read()))
    elif status != 'dry-run':
        r['error'] = f'{status} by the fake command'
    reports.append(r)
if len(qmps) == 1 and reports:
    print(json.dumps(reports[0]))
else:
    print(json.dumps({'reports': reports, 'summary': {'never_tried': never}}))
sys.exit(0 if all(r['ok'] for r in reports) and not never else 1)
'''


class ModuleTest(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='tt-module-')
        os.mkdir(os.path.join(self.dir, 'status'))
        with open(os.path.join(self.dir, 'fakevm.py'), 'w') as f:
            f.write(FAKE_VM)
        self.command = os.path.join(self.dir, 'tap-transfer-upgrade')
        with open(self.command, 'w') as f:
            f.write(FAKE_COMMAND.replace('PYTHON', PYTHON))
        os.chmod(self.command, 0o755)
        # two "QEMU binaries": copies of the Python interpreter
        self.old = self.binary('qemu-10.0')
        self.new = self.binary('qemu-10.2')
        self.procs = []

    def tearDown(self):
        for name in os.listdir(self.dir):
            pidfile = os.path.join(self.dir, name, 'pid')
            if os.path.exists(pidfile):
                try:
                    os.kill(int(open(pidfile).read()), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for p in self.procs:
            p.wait()
        shutil.rmtree(self.dir)

    def binary(self, name):
        path = os.path.join(self.dir, name)
        shutil.copy(PYTHON, path)
        return path

    def vm(self, name, binary, status=None):
        """A fake VM on @binary at DIR/@name/qmp.sock; @status: what the
        fake command says of it"""
        os.makedirs(os.path.join(self.dir, name))
        sock = os.path.join(self.dir, name, 'qmp.sock')
        self.procs.append(subprocess.Popen(
            [binary, os.path.join(self.dir, 'fakevm.py'), sock]))
        while not os.path.exists(os.path.join(os.path.dirname(sock), 'pid')):
            time.sleep(0.01)
        if status:
            with open(os.path.join(self.dir, 'status', name), 'w') as f:
                f.write(status)
        return sock

    def pid(self, sock):
        with open(os.path.join(os.path.dirname(sock), 'pid')) as f:
            return int(f.read())

    def run_module(self, check=False, **args):
        args = dict({'qmp': [os.path.join(self.dir, '*', 'qmp.sock')],
                     'to': self.new, 'command': self.command}, **args)
        path = os.path.join(self.dir, 'args.json')
        with open(path, 'w') as f:
            json.dump({'ANSIBLE_MODULE_ARGS':
                       dict(args, _ansible_check_mode=check)}, f)
        r = subprocess.run(['/usr/bin/python3', MODULE, path],
                           capture_output=True, text=True,
                           env=dict(os.environ, FAKE_DIR=self.dir))
        try:
            return json.loads(r.stdout)
        except ValueError:
            self.fail(f'no JSON from the module: {r.stdout} {r.stderr}')

    def commands(self):
        try:
            with open(os.path.join(self.dir, 'argv.log')) as f:
                return [json.loads(line) for line in f]
        except FileNotFoundError:
            return []

    def statuses(self, result):
        return {os.path.basename(os.path.dirname(vm['qmp'])): vm['status']
                for vm in result['vms']}

    def test_moves_only_what_is_not_on_the_target(self):
        a = self.vm('a', self.old)
        self.vm('b', self.new)
        before = self.pid(a)
        r = self.run_module()
        self.assertFalse(r.get('failed'), r.get('msg'))
        self.assertTrue(r['changed'])
        self.assertEqual(self.statuses(r), {'a': 'upgraded', 'b': 'current'})
        self.assertEqual(len(self.commands()), 1)
        argv = self.commands()[0]
        self.assertEqual(argv[argv.index('--qmp') + 1], a)
        self.assertEqual(argv.count('--qmp'), 1)
        self.assertIn('--json', argv)
        vm = r['vms'][0]
        self.assertEqual((vm['pid_before'], vm['pid_after']),
                         (before, self.pid(a)))
        self.assertNotEqual(before, self.pid(a))
        self.assertEqual(r['summary']['upgraded'], 1)
        self.assertEqual(r['summary']['current'], 1)
        self.assertIn('already on the target binary', '\n'.join(r['table']))

    def test_second_run_changes_nothing(self):
        self.vm('a', self.old)
        self.vm('b', self.old)
        self.assertTrue(self.run_module()['changed'])
        r = self.run_module()
        self.assertFalse(r['changed'])
        self.assertFalse(r.get('failed'))
        self.assertEqual(self.statuses(r), {'a': 'current', 'b': 'current'})
        self.assertEqual(len(self.commands()), 1)

    def test_same_path_new_file_moves(self):
        # a package update replaced the binary the VM runs: same path,
        # another file; the VM is not on the target until it moves
        a = self.vm('a', self.new)
        os.unlink(self.new)
        shutil.copy(PYTHON, self.new)
        r = self.run_module()
        self.assertEqual(self.statuses(r), {'a': 'upgraded'})
        self.assertTrue(r['changed'])
        self.assertEqual(self.run_module()['vms'][0]['status'], 'current')
        del a

    def test_refused_fails_and_leaves_the_vm(self):
        a = self.vm('a', self.old)
        b = self.vm('b', self.old, status='refused')
        pb = self.pid(b)
        r = self.run_module(max_failures=0)
        self.assertTrue(r['failed'])
        self.assertTrue(r['changed'])
        self.assertEqual(self.statuses(r), {'a': 'upgraded', 'b': 'refused'})
        self.assertEqual(self.pid(b), pb)
        vm = r['vms'][1]
        self.assertEqual(vm['pid_after'], pb)
        self.assertIn('refused by the fake command', r['msg'])
        self.assertIn(b, r['msg'])
        argv = self.commands()[0]
        self.assertNotIn('--max-failures', argv)
        del a

    def test_never_tried_fails(self):
        self.vm('a', self.old, status='failed')
        self.vm('b', self.old, status='never')
        r = self.run_module()
        self.assertTrue(r['failed'])
        self.assertFalse(r['changed'])
        self.assertEqual(self.statuses(r), {'a': 'failed',
                                            'b': 'never-tried'})
        argv = self.commands()[0]
        self.assertEqual(argv[argv.index('--max-failures') + 1], '1')

    def test_check_mode_is_a_dry_run(self):
        a = self.vm('a', self.old)
        self.vm('b', self.new)
        pa = self.pid(a)
        r = self.run_module(check=True)
        self.assertTrue(r['changed'])
        self.assertFalse(r.get('failed'))
        self.assertEqual(self.statuses(r), {'a': 'dry-run', 'b': 'current'})
        self.assertIn('--dry-run', self.commands()[0])
        self.assertEqual(self.pid(a), pa)

    def test_check_mode_refusal_fails(self):
        # the command's dry run refuses what a run would refuse
        a = self.vm('a', self.old, status='refused')
        pa = self.pid(a)
        r = self.run_module(check=True)
        self.assertIn('--dry-run', self.commands()[0])
        self.assertTrue(r['failed'])
        self.assertFalse(r['changed'])
        self.assertEqual(self.pid(a), pa)

    def test_stale_exclude_and_temporary_names(self):
        self.vm('a', self.old)
        os.makedirs(os.path.join(self.dir, 'gone'))
        stale = os.path.join(self.dir, 'gone', 'qmp.sock')
        s = socket.socket(socket.AF_UNIX)
        s.bind(stale)
        s.close()
        self.vm('skip', self.old)
        tmp = self.vm('c', self.old)
        os.rename(tmp, tmp + '.tt-upgrade-abcd1234')
        r = self.run_module(qmp=[os.path.join(self.dir, '*', 'qmp.sock'),
                                 os.path.join(self.dir, 'c', 'qmp.sock.*')],
                            exclude=['*/skip/*'])
        self.assertEqual(self.statuses(r), {'a': 'upgraded', 'gone': 'stale'})
        self.assertFalse(r.get('failed'))
        r = self.run_module(qmp=[stale], stale='fail')
        self.assertTrue(r['failed'])

    def test_no_vms(self):
        r = self.run_module()
        self.assertFalse(r['changed'])
        self.assertFalse(r.get('failed'))
        self.assertEqual(r['vms'], [])
        self.assertEqual(self.commands(), [])

    def test_missing_target(self):
        self.vm('a', self.old)
        r = self.run_module(to=os.path.join(self.dir, 'nope'))
        self.assertTrue(r['failed'])
        self.assertIn('nope', r['msg'])
        self.assertEqual(self.commands(), [])


if __name__ == '__main__':
    try:
        subprocess.run(['/usr/bin/python3', '-c', 'import ansible'],
                       check=True, capture_output=True)
    except subprocess.CalledProcessError:
        print('1..0 # SKIP no ansible-core for /usr/bin/python3 (make deps)')
        sys.exit(0)
    taptest.main(ModuleTest)
