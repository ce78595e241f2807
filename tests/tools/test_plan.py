#!/usr/bin/env python3
"""The destination's command line as tap-transfer-upgrade derives it
from the source's, and the refusals, one argv shape per case.  The
source is a fake (its QMP answers and /proc facts given here); the
identity is this process's own, so the identity checks pass.  Prints
TAP."""

import os
import shutil
import tempfile
import unittest

import taptest
from tap_transfer.errors import Refused   # pylint: disable=C0411
from tap_transfer.identity import Identity
from tap_transfer.livestate import LiveState
from tap_transfer.plan import Options, Plan, Target
from tap_transfer.procfs import ProcessId
from tap_transfer.source import Source

QMP = '-qmp unix:/run/vm1/qmp.sock,server=on,wait=off'
TOKEN = 'abcd1234'
MACHINES = {'pc-i440fx-10.0', 'pc-q35-10.0', 'pc-i440fx-10.2'}


def memory(**backends):
    return {k: dict({'size': 128 << 20, 'share': False}, **v)
            for k, v in backends.items()}


def make_source(args, status='running', migration='none', chardevs=None,
                mem=None, cwd='/run/vm1', uid=None):
    ident = Identity.read(os.getpid())
    ident.cwd = cwd
    if uid is not None:
        ident.uids = (uid, uid, uid)
        ident.gids = (uid, uid, uid)
    live = LiveState(devices={}, anon=[], netdevs={},
                     chardevs=chardevs or {}, block={}, nodes={},
                     memory=mem or {}, ram=None)
    return Source(pid=ProcessId.of(os.getpid()),
                  argv=['/usr/bin/qemu-system-x86_64'] + args,
                  identity=ident, version=(10, 0, 13), status=status,
                  migration=migration, machine='pc-i440fx-10.0',
                  params={'backend-transfer': False}, caps={}, live=live,
                  fdsets={}, exe_stat=os.stat('/bin/sh'))


def plan(argv, qmp='/run/vm1/qmp.sock', options=None, **kw):
    if isinstance(argv, str):
        argv = argv.split()
    target = Target('/opt/new/qemu-system-x86_64', (10, 2, 2), MACHINES,
                    (0, 0))
    return Plan.make(make_source(argv, **kw), target, options or Options(),
                     qmp, token=TOKEN)


def dest(p):
    """The destination's options, without the binary, -S, -incoming and
    the -machine the plan adds when the source gave none"""
    argv = p.dest_argv([])[1:-1]
    return argv[2:] if argv[:2] == ['-machine', 'pc-i440fx-10.0'] else argv


def opts(p):
    """The destination's Opts, as dest()"""
    o = p.dest_opts
    return o[1:] if o[0].name == 'machine' else o


class Argv(unittest.TestCase):
    """The destination's command line"""

    def test_basic(self):
        """Machine type pinned, -incoming/-S/-daemonize gone (the command
        detaches the destination itself), QMP socket and pidfile at
        temporary names"""
        p = plan('-M pc -m 128 -incoming defer -S -daemonize '
                 '-pidfile /run/vm1/qemu.pid ' + QMP)
        self.assertEqual(dest(p), [
            '-M', 'pc-i440fx-10.0', '-m', '128', '-pidfile',
            f'/run/vm1/qemu.pid.tt-upgrade-{TOKEN}', '-qmp',
            f'unix:/run/vm1/qmp.sock.tt-upgrade-{TOKEN},server=on,'
            'wait=off'])
        self.assertTrue(p.daemonize)
        self.assertEqual(p.qmp_temp, f'/run/vm1/qmp.sock.tt-upgrade-{TOKEN}')
        self.assertEqual([m[0] for m in p.moves], ['pidfile', 'qmp'])

    def test_every_machine_type_pinned(self):
        """QEMU takes the last -machine type: each one is pinned"""
        p = plan('-M pc -machine q35,accel=tcg ' + QMP)
        self.assertEqual(dest(p)[:4], ['-M', 'pc-i440fx-10.0', '-machine',
                                       'pc-i440fx-10.0,accel=tcg'])

    def test_double_comma_path(self):
        """",," in a socket path is a comma, and stays one"""
        p = plan(['-qmp', 'unix:/run/vm1/a,,b.sock,server=on,wait=off'],
                 qmp='/run/vm1/a,b.sock')
        self.assertEqual(opts(p)[-1].value,
                         f'unix:/run/vm1/a,,b.sock.tt-upgrade-{TOKEN},'
                         'server=on,wait=off')
        self.assertEqual(p.moves[0][1:], (
            '/run/vm1/a,b.sock', f'/run/vm1/a,b.sock.tt-upgrade-{TOKEN}'))

    def test_mon_chardev_control(self):
        """-mon CHARDEV,mode=control names the QMP socket (implied key)"""
        p = plan(['-chardev', 'socket,id=m0,path=/run/vm1/qmp.sock,server=on,'
                  'wait=on', '-mon', 'm0,mode=control'])
        self.assertEqual(opts(p)[0].value,
                         'socket,id=m0,path=/run/vm1/qmp.sock.tt-upgrade-'
                         f'{TOKEN},server=on,wait=off')
        self.assertEqual(p.qmp_temp, f'/run/vm1/qmp.sock.tt-upgrade-{TOKEN}')
        self.assertEqual(p.moves[0][0], 'qmp')

    def test_qmp_chardev(self):
        """-qmp chardev:ID"""
        p = plan(['-chardev', 'socket,id=m0,path=/run/vm1/qmp.sock,server=on',
                  '-qmp', 'chardev:m0'])
        self.assertEqual(p.qmp_temp, f'/run/vm1/qmp.sock.tt-upgrade-{TOKEN}')

    def test_not_a_qmp_socket(self):
        with self.assertRaisesRegex(Refused, 'no QMP server socket'):
            plan(['-serial', 'unix:/run/vm1/qmp.sock,server=on,wait=off',
                  '-qmp', 'unix:/run/vm1/other.sock,server=on,wait=off'])

    def test_serial_mon_unix(self):
        """-serial mon:unix:...,server=on: moved, mux kept"""
        p = plan(['-serial', 'mon:unix:/run/vm1/con.sock,server=on,wait=off'] +
                 QMP.split())
        self.assertEqual(opts(p)[0].value,
                         f'mon:unix:/run/vm1/con.sock.tt-upgrade-{TOKEN},'
                         'server=on,wait=off')

    def test_serial_file_appends(self):
        """-serial file: becomes a file chardev with append=on and the
        label QEMU gives it (serialN)"""
        p = plan(['-serial', 'null', '-serial', 'file:/run/vm1/con.log'] +
                 QMP.split())
        self.assertEqual(dest(p)[:6], [
            '-serial', 'null', '-chardev',
            'file,id=serial1,path=/run/vm1/con.log,append=on',
            '-serial', 'chardev:serial1'])

    def test_chardev_file_and_logfile(self):
        p = plan(['-chardev', 'file,id=f0,path=/run/vm1/f.log',
                  '-chardev', 'pty,id=p0,logfile=/run/vm1/p.log'] +
                 QMP.split())
        self.assertEqual(opts(p)[0].value,
                         'file,id=f0,path=/run/vm1/f.log,append=on')
        self.assertEqual(opts(p)[1].value,
                         'pty,id=p0,logfile=/run/vm1/p.log,logappend=on')

    def test_vnc_and_display_unix(self):
        p = plan(['-vnc', 'unix:/run/vm1/vnc.sock,password=on', '-display',
                  'vnc=unix:/run/vm1/v2.sock'] + QMP.split())
        self.assertEqual(opts(p)[0].value,
                         f'unix:/run/vm1/vnc.sock.tt-upgrade-{TOKEN},'
                         'password=on')
        self.assertEqual(opts(p)[1].value,
                         f'vnc=unix:/run/vm1/v2.sock.tt-upgrade-{TOKEN}')

    def test_spice_unix(self):
        """-spice unix=on,addr=PATH is a UNIX socket, moved"""
        p = plan(['-spice', 'unix=on,addr=/run/vm1/spice.sock,'
                  'disable-ticketing=on'] + QMP.split())
        self.assertEqual(opts(p)[0].value,
                         'unix=on,addr=/run/vm1/spice.sock.tt-upgrade-'
                         f'{TOKEN},disable-ticketing=on')

    def test_netdev_stream_server(self):
        p = plan(['-netdev', 'stream,id=s0,server=on,addr.type=unix,'
                  'addr.path=/run/vm1/net.sock'] + QMP.split())
        self.assertEqual(opts(p)[0].value,
                         'stream,id=s0,server=on,addr.type=unix,addr.path='
                         f'/run/vm1/net.sock.tt-upgrade-{TOKEN}')
        p = plan(['-netdev', '{"type": "stream", "id": "s0", "server": true,'
                  ' "addr": {"type": "unix", "path": "/run/vm1/n.sock"}}'] +
                 QMP.split())
        self.assertEqual(opts(p)[0].json['addr']['path'],
                         f'/run/vm1/n.sock.tt-upgrade-{TOKEN}')

    def test_tap_transfer_fds(self):
        """fds= go (the stream brings them); queues= from their number,
        a number in the JSON form"""
        p = plan(['-netdev', 'tap-transfer,id=n0,fds=3:4', '-add-fd',
                  'fd=5,set=1', '-netdev',
                  '{"type": "tap-transfer", "id": "n1", "fds": "6:7:8"}',
                  '-netdev', 'tap-transfer,id=n2,fd=/dev/fdset/1'] +
                 QMP.split())
        self.assertEqual(opts(p)[0].value, 'tap-transfer,id=n0,queues=2')
        self.assertEqual(opts(p)[1].json,
                         {'type': 'tap-transfer', 'id': 'n1', 'queues': 3})
        self.assertEqual(opts(p)[2].value, 'tap-transfer,id=n2')
        self.assertEqual(p.netdevs, ['n0', 'n1', 'n2'])
        self.assertNotIn('-add-fd', dest(p))

    def test_log_files(self):
        """-D and -trace file= are the source's open log (QEMU truncates
        the file it opens): dropped from the command line"""
        p = plan(['-D', 'qemu.log', '-trace', 'events=/run/vm1/ev,'
                  'file=/run/vm1/trace.log'] + QMP.split())
        self.assertEqual(dest(p)[:2], ['-trace', 'events=/run/vm1/ev'])
        self.assertEqual(p.log_path, '/run/vm1/trace.log')
        p = plan(['-D', 'qemu.log'] + QMP.split())
        self.assertEqual(p.log_path, '/run/vm1/qemu.log')

    def test_drive_if_virtio(self):
        """a device made by -drive if=virtio is no reason to refuse"""
        p = plan(['-drive', 'file=/run/vm1/d.qcow2,if=virtio'] + QMP.split())
        self.assertEqual(dest(p)[:2], ['-drive',
                                       'file=/run/vm1/d.qcow2,if=virtio'])

    def test_relative_paths(self):
        """resolved against the source's working directory"""
        p = plan(['-pidfile', 'qemu.pid', '-qmp',
                  'unix:qmp.sock,server=on,wait=off'])
        self.assertEqual(p.moves[0][1], '/run/vm1/qemu.pid')
        self.assertEqual(p.moves[1][1], '/run/vm1/qmp.sock')


class Refusals(unittest.TestCase):
    """What cannot be carried is refused in one line naming it"""

    def refused(self, argv, pattern, **kw):
        with self.assertRaisesRegex(Refused, pattern) as cm:
            plan(argv if isinstance(argv, list) else
                 argv.split() + QMP.split(), **kw)
        self.assertNotIn('\n', str(cm.exception))

    def test_options(self):
        self.refused('-snapshot', '-snapshot')
        self.refused('-drive file=/d.qcow2,snapshot=on', 'snapshot=on')
        self.refused('-loadvm s1', '-loadvm')
        self.refused('-netdev tap,id=t0', 'use --onboard')
        self.refused('-nic tap', 'use --onboard')
        self.refused('-netdev vhost-user,id=v0,chardev=c0', 'vhost-user')
        self.refused('-device vhost-vsock-pci,guest-cid=3', 'vhost-vsock')
        self.refused('-device vhost-scsi-pci,wwpn=x', 'vhost-scsi')
        self.refused('-device vfio-pci,host=01:00.0', 'VFIO')
        self.refused('-nic tap-transfer', 'give tap-transfer as -netdev')

    def test_tcp(self):
        self.refused('-chardev socket,id=c,host=0.0.0.0,port=4444,server=on',
                     'TCP server')
        self.refused('-serial tcp::4444,server=on,wait=off', 'TCP server')
        self.refused('-vnc :1', 'TCP port')
        self.refused('-display vnc=:1', 'TCP port')
        self.refused('-spice port=5900', 'TCP port')

    def test_fds(self):
        self.refused('-drive file=/dev/fdset/2,if=none', 'fdset')
        self.refused('-chardev socket,id=c,fd=9', r'fd=\)')
        self.refused('-add-fd fd=5,set=3 -drive file=/dev/fdset/3',
                     'fdset')

    def test_migration_states(self):
        for st in ('active', 'cancelling', 'postcopy-active', 'colo',
                   'pre-switchover'):
            self.refused('-m 1', f'a migration is {st}', migration=st)
        self.refused('-m 1', 'the VM is shutdown', status='shutdown')

    def test_machine_type(self):
        with self.assertRaisesRegex(Refused, 'machine type pc-q35-9.2'):
            src = make_source(QMP.split())
            src.machine = 'pc-q35-9.2'
            Plan.make(src, Target('/x', (10, 2, 2), MACHINES, (0, 0)),
                      Options(), '/run/vm1/qmp.sock', token=TOKEN)

    def test_relative_path_daemonized(self):
        self.refused('-daemonize -pidfile qemu.pid', 'relative path',
                     cwd='/')
        self.refused('-daemonize -drive file=disk.qcow2,if=none',
                     'relative path', cwd='/')
        self.refused('-daemonize -blockdev {"driver":"qcow2","node-name":'
                     '"d0","file":{"driver":"file","filename":"disk.qcow2"}}',
                     'relative path', cwd='/')
        # a string "file" of -blockdev names a node, not a file
        plan('-daemonize -blockdev {"driver":"qcow2","node-name":"d0",'
             '"file":"f0"} ' + QMP, cwd='/')

    def test_runas_changed(self):
        """a -runas that is not the user the VM runs as: its command line
        was changed after it started"""
        self.refused('-runas 4242:4242', 'not as the user', uid=1000)
        self.refused('-run-with user=4242:4242', 'not as the user', uid=1000)
        p = plan('-run-with user=4242:4242 ' + QMP, uid=4242)
        self.assertTrue(p.as_launched)

    def test_launched_moves(self):
        """A QEMU that drops to a user itself made its pidfile as root,
        and the new one will: only in a directory that user can write"""
        d = tempfile.mkdtemp(prefix='tt-plan-')
        self.addCleanup(shutil.rmtree, d)
        os.chmod(d, 0o755)
        argv = f'-run-with user=4242:4242 -pidfile {d}/vm.pid'
        if os.getuid() != 0:
            self.skipTest('not root: the directory cannot be given away')
        self.refused(argv, 'drops to uid 4242, who cannot write', uid=4242)
        os.chown(d, 4242, 4242)
        p = plan(argv + ' ' + QMP, uid=4242)
        self.assertIn(('pidfile', f'{d}/vm.pid',
                       f'{d}/vm.pid.tt-upgrade-{TOKEN}'), p.moves)

    def test_copy_shared_file(self):
        mem = memory(ram0={'type': 'memory-backend-file', 'share': True,
                           'mem-path': '/dev/shm/vm1'})
        self.refused('-m 1', 'mode copy: memory backend', mem=mem,
                     options=Options(mode='copy'))
        p = plan('-m 1 ' + QMP, mem=mem)
        self.assertEqual(p.mode, 'shared')
        # every backend is looked at, not only the first
        mem = memory(a={'type': 'memory-backend-ram'},
                     b={'type': 'memory-backend-file', 'share': True,
                        'mem-path': '/dev/shm/b'})
        self.assertEqual(plan('-m 1 ' + QMP, mem=mem).mode, 'shared')

    def test_memory_available(self):
        mem = memory(ram0={'type': 'memory-backend-ram', 'size': 1 << 60})
        self.refused('-m 1', 'needs .* MiB, the host has', mem=mem)

    def test_unmoved_server_socket(self):
        """a UNIX server chardev from -readconfig or chardev-add"""
        chardevs = {'c9': 'unix:/run/vm1/x.sock,server=on'}
        self.refused('-m 1', 'chardev c9 listens on /run/vm1/x.sock',
                     chardevs=chardevs)

    def test_long_socket_name(self):
        self.refused(['-qmp', f'unix:/run/{"x" * 90}.sock,server=on'],
                     'too long', qmp=f'/run/{"x" * 90}.sock')


if __name__ == '__main__':
    taptest.main(Argv, Refusals)
