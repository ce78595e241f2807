"""What the upgrade command's unit tests share: the package on the
path (tools/, and QEMU's python/ from $TAP_TRANSFER_QEMU_PYTHON) and a
unittest runner that prints TAP for meson."""

import os
import sys
import unittest

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..',
                     'tools')
sys.path.insert(0, TOOLS)
if os.environ.get('TAP_TRANSFER_QEMU_PYTHON'):
    sys.path.insert(0, os.environ['TAP_TRANSFER_QEMU_PYTHON'])


class TapResult(unittest.TextTestResult):
    """unittest's result, printed as TAP"""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.n = 0
        self.subtests_failed = set()

    def addSuccess(self, test):
        self.n += 1
        print(f'ok {self.n} {test.id()}', flush=True)

    def addSkip(self, test, reason):
        self.n += 1
        print(f'ok {self.n} {test.id()} # SKIP {reason}', flush=True)

    def _fail(self, test, err):
        self.n += 1
        print(f'not ok {self.n} {test.id()}', flush=True)
        for line in self._exc_info_to_string(err, test).splitlines():
            print(f'# {line}')

    addFailure = addError = _fail

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self.subtests_failed.add(test.id())
            for line in self._exc_info_to_string(err, test).splitlines():
                print(f'# {subtest.id()}: {line}')

    def stopTest(self, test):
        super().stopTest(test)
        if test.id() in self.subtests_failed:
            self.n += 1
            print(f'not ok {self.n} {test.id()}', flush=True)


def main(*cases):
    suite = unittest.TestSuite(
        unittest.defaultTestLoader.loadTestsFromTestCase(c) for c in cases)
    print(f'1..{suite.countTestCases()}', flush=True)
    with open(os.devnull, 'w') as devnull:
        result = unittest.TextTestRunner(stream=devnull,
                                         resultclass=TapResult).run(suite)
    sys.exit(0 if result.wasSuccessful() else 1)
