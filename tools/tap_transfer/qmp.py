"""QMP connections, on QEMU's own QEMUMonitorProtocol (python/qemu/qmp,
from the QEMU tree the command was installed with).

A Monitor knows the pid at the other end of its socket (SO_PEERCRED,
before any QMP is spoken) and turns every way a QMP exchange can fail
into two exceptions: CommandError (QEMU answered with an error) and
MonitorGone (no answer: the peer is gone, hung up or too slow)."""

import asyncio
import json
import select
import socket

from qemu.qmp import ExecuteError, QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from .procfs import peer_pid


class MonitorGone(Exception):
    """The QMP peer did not answer"""


class CommandError(Exception):
    """QEMU answered a command with an error"""

    def __init__(self, command, desc):
        super().__init__(f'{command}: {desc}')
        self.command = command
        self.desc = desc


def qom_get(path, prop):
    """The qom-get of @prop of @path, as Monitor.cmds() takes it"""
    return ('qom-get', {'path': path, 'property': prop})


def value(reply):
    """One of Monitor.cmds()' replies: what the command returned, or its
    CommandError raised"""
    if isinstance(reply, CommandError):
        raise reply
    return reply


class _Protocol(QEMUMonitorProtocol):
    """QEMUMonitorProtocol that can also have several commands in
    flight at once"""

    def cmds(self, commands):
        """Send each (name, args) of @commands without waiting for the
        answer to the one before: QEMU answers them in order, and the
        caller waits once for them all.  What each returned, or the
        ExecuteError it failed with."""
        async def one(name, args):
            try:
                return await self._qmp.execute(name, args)
            except ExecuteError as e:
                return e
        return self._sync(asyncio.gather(*(one(n, a) for n, a in commands)),
                          self._timeout)


class Monitor:
    """One QMP connection."""

    def __init__(self, path, sock, qmp, pid, greeting):
        self.path = path
        self.sock = sock
        self.qmp = qmp
        self.pid = pid
        self.greeting = greeting

    @classmethod
    def connect(cls, path, timeout):
        """Connect to the QMP server socket at @path.  The greeting must
        come within @timeout: a monitor that has another client does
        not accept a second one."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
            pid = peer_pid(sock)
            if not select.select([sock], [], [], timeout)[0]:
                raise MonitorGone(f'{path}: no QMP greeting in {timeout} s '
                                  '(another client holds the monitor?)')
            qmp = _Protocol(sock)
            qmp.settimeout(timeout)
            greeting = qmp.connect()
        except (OSError, QMPError, asyncio.TimeoutError, EOFError) as e:
            sock.close()
            raise MonitorGone(f'{path}: {e}') from e
        except BaseException:
            sock.close()
            raise
        return cls(path, sock, qmp, pid, greeting)

    @classmethod
    def peer(cls, path, timeout):
        """The pid listening on @path, without speaking QMP"""
        sock, pid = _dial(path, timeout)
        sock.close()
        return pid

    @classmethod
    def greeting_at(cls, path, timeout):
        """(pid, greeting) of the QMP server at @path: proof that it
        answers, without a session (no qmp_capabilities), and so
        without one round trip more"""
        sock = None
        try:
            sock, pid = _dial(path, timeout)
            data = b''
            while not data.endswith(b'\n'):
                chunk = sock.recv(4096)
                if not chunk:
                    raise MonitorGone(f'{path}: hung up before its '
                                      'greeting')
                data += chunk
            return pid, json.loads(data)
        except (OSError, ValueError) as e:
            raise MonitorGone(f'{path}: {e}') from e
        finally:
            if sock:
                sock.close()

    def cmd(self, name, **args):
        try:
            return self.qmp.cmd(name, **args)
        except ExecuteError as e:
            raise CommandError(name, str(e)) from e
        except (QMPError, OSError, asyncio.TimeoutError, EOFError) as e:
            raise MonitorGone(f'{self.path}: {name}: '
                              f'{e or type(e).__name__}') from e

    def cmds(self, *commands):
        """Each (name, {args}) of @commands, all sent at once (a round
        trip for them all, not one each): a list of what each returned,
        or the CommandError it failed with; MonitorGone if the monitor
        did not answer them all"""
        if not commands:
            return []
        try:
            out = self.qmp.cmds(commands)
        except (QMPError, OSError, asyncio.TimeoutError, EOFError) as e:
            names = ', '.join(n for n, _ in commands)
            raise MonitorGone(f'{self.path}: {names}: '
                              f'{e or type(e).__name__}') from e
        return [CommandError(n, str(r)) if isinstance(r, ExecuteError)
                else r for (n, _), r in zip(commands, out)]

    def send_only(self, name):
        """Send command @name (no arguments), not waiting for its answer;
        nothing if the monitor is gone"""
        try:
            self.sock.sendall(json.dumps({'execute': name}).encode() +
                              b'\n')
        except OSError:
            pass

    def version(self):
        """query-version's 'qemu', which the greeting carries"""
        try:
            return self.greeting['QMP']['version']['qemu']
        except (KeyError, TypeError):
            return self.cmd('query-version')['qemu']

    def try_cmd(self, name, **args):
        """cmd(), or None when it fails in any way"""
        try:
            return self.cmd(name, **args)
        except (CommandError, MonitorGone):
            return None

    def send_fd(self, fd, name):
        """Give QEMU @fd under @name (SCM_RIGHTS, then getfd)"""
        try:
            self.qmp.send_fd_scm(fd)
        except (QMPError, OSError) as e:
            raise MonitorGone(f'{self.path}: passing an fd: {e}') from e
        self.cmd('getfd', fdname=name)

    def event(self, timeout):
        """The next event, or None after @timeout seconds"""
        try:
            return self.qmp.pull_event(wait=float(timeout))
        except asyncio.TimeoutError:
            return None
        except (QMPError, OSError, EOFError) as e:
            raise MonitorGone(f'{self.path}: {e}') from e

    def close(self):
        try:
            self.qmp.close()
        except Exception:       # pylint: disable=broad-except
            pass
        self.sock.close()


def _dial(path, timeout):
    """A socket connected to the UNIX server at @path, and the pid that
    listens there"""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        return sock, peer_pid(sock)
    except BaseException:
        sock.close()
        raise
