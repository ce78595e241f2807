#!/usr/bin/env python3
"""When the upgrade command's file steps (the renames and removals it
does as the VM's user) may skip the child that takes the VM's identity:
only when that child would have exactly the command's rights.  Prints
TAP."""

import copy
import os
import subprocess
import tempfile
import unittest

import taptest
from tap_transfer import system   # pylint: disable=C0411
from tap_transfer.identity import Identity, Launch


def launch_of(ident, **kw):
    return Launch(ident, **kw).open()


class ChangesNothing(unittest.TestCase):
    def setUp(self):
        self.ident = Identity.read(os.getpid())

    def changed(self, **fields):
        ident = copy.deepcopy(self.ident)
        for k, v in fields.items():
            setattr(ident, k, v)
        launch = launch_of(ident)
        self.addCleanup(launch.close)
        return launch.changes_nothing()

    def test_own_identity(self):
        launch = launch_of(self.ident)
        self.addCleanup(launch.close)
        self.assertTrue(launch.changes_nothing())

    def test_as_launched(self):
        launch = launch_of(self.ident, as_launched=True)
        self.addCleanup(launch.close)
        self.assertFalse(launch.changes_nothing())

    def test_other_user(self):
        self.assertFalse(self.changed(uids=(4244, 4244, 4244)))
        self.assertFalse(self.changed(gids=(4244, 4244, 4244)))
        self.assertFalse(self.changed(groups=self.ident.groups + [4244]))

    def test_fewer_capabilities(self):
        if not self.ident.caps['prm']:
            self.skipTest('this process has no capability to narrow')
        caps = dict(self.ident.caps)
        low = caps['prm'] & -caps['prm']
        caps['prm'] &= ~low
        self.assertFalse(self.changed(caps=caps))

    def test_other_root(self):
        self.assertFalse(self.changed(root='/srv/vm1'))

    def in_namespace(self, option, kind):
        """changes_nothing() for a process like us in a @kind namespace
        of its own (unshare @option)"""
        if os.geteuid():
            self.skipTest('namespaces of its own need root')
        with subprocess.Popen(['unshare', option, 'sleep', '30']) as p:
            try:
                ident = None
                for _ in range(100):
                    ident = Identity.read(p.pid)
                    if ident.exe.endswith('sleep'):
                        break
                    subprocess.run(['sleep', '0.02'], check=True)
                launch = launch_of(ident)
                self.addCleanup(launch.close)
                self.assertNotEqual(ident.namespaces[kind],
                                    self.ident.namespaces[kind])
                return launch.changes_nothing()
            finally:
                p.kill()

    def test_other_mount_namespace(self):
        self.assertFalse(self.in_namespace('--mount', 'mnt'))

    def test_other_network_namespace(self):
        """a path names the same file and the same rights apply: a VM
        in a network namespace of its own (the lab's) needs no child"""
        self.assertTrue(self.in_namespace('--net', 'net'))


class FileSteps(unittest.TestCase):
    """LocalSystem.rename/unlink: in this process or in a child, the
    same results"""

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(subprocess.run, ['rm', '-rf', self.dir], check=True)
        # the source's working directory: where a relative path goes
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.dir)
        self.launch = launch_of(Identity.read(os.getpid()))
        self.addCleanup(self.launch.close)
        self.children = []
        real = system.run_as

        def counted(*args):
            self.children.append(args[1].__name__)
            return real(*args)
        system.run_as = counted
        self.addCleanup(setattr, system, 'run_as', real)

    def touch(self, name):
        path = os.path.join(self.dir, name)
        with open(path, 'w'):
            pass
        return path

    def test_absolute_paths_here(self):
        a, b = self.touch('a'), os.path.join(self.dir, 'b')
        missing = os.path.join(self.dir, 'missing')
        errors = system.LocalSystem().rename(self.launch,
                                             [(a, b), (missing, a)])
        self.assertEqual(errors, {missing: os.strerror(2)})
        self.assertTrue(os.path.exists(b) and not os.path.exists(a))
        self.assertEqual(system.LocalSystem().unlink(self.launch,
                                                     [b, missing]), {})
        self.assertFalse(os.path.exists(b))
        self.assertEqual(self.children, [])

    def test_relative_path_in_a_child(self):
        a = self.touch('a')
        os.chdir('/')
        errors = system.LocalSystem().rename(self.launch, [(a, 'rel-b')])
        self.assertEqual(errors, {})
        self.assertEqual(self.children, ['_rename_all'])
        # in the source's working directory, not the command's
        self.assertTrue(os.path.exists(os.path.join(self.dir, 'rel-b')))

    def test_other_user_in_a_child(self):
        ident = copy.deepcopy(self.launch.ident)
        ident.uids = ident.gids = (4244, 4244, 4244)
        other = launch_of(ident)
        self.addCleanup(other.close)
        a = self.touch('a')
        if os.geteuid() == 0:
            os.chmod(self.dir, 0o755)
        errors = system.LocalSystem().rename(other, [(a, a + '.b')])
        self.assertEqual(self.children, ['_rename_all'])
        if os.geteuid() == 0:
            # user 4244 may not write in root's directory
            self.assertEqual(errors, {a: os.strerror(13)})


if __name__ == '__main__':
    taptest.main(ChangesNothing, FileSteps)
