#!/usr/bin/python3
"""The fleet test: ansible/upgrade.yml and rollback.yml, the role
tap_transfer and its module, on an inventory of four hosts on this
machine (ansible_connection=local), each with a network namespace, a
bridge and VMs of its own (ttlab's lab), the VMs on the packaged QEMU
10.0 that the role installs:

  hv1  db (a real guest writing fsync'ed records to a qcow2 disk, pinged
       at 500/s from the bridge while the playbooks run) and web;
       packages from an apt repository (a local file: one)
  hv2  a; packages from a directory of .deb files
  hv3  good, and legacy on a plain -netdev tap, which must be refused
  hv4  x

The runs, in order:
  install   --tags install: the packages on every host
  check     upgrade.yml --check: dry runs, hv3 fails on legacy, nothing
            changes anywhere
  upgrade   upgrade.yml: hv1 and hv2 upgraded (0 pings lost), hv3 fails
            (legacy refused, left on 10.0), the rollout stops: hv4's VM
            untouched
  resume    upgrade.yml with legacy excluded: only hv4 changes
  again     the same: changed=0 everywhere
  rollback  rollback.yml: every VM back on 10.0 (0 pings lost)
and after them every record the db guest acked is on its disk.  Prints
TAP; per-host times and lost pings as comments.  Packages that were not
installed before are purged at the end."""

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.join(HERE, '..', '..')
sys.path.insert(0, os.path.join(TOP, 'scripts', 'lab'))
import ttlab  # noqa: E402  pylint: disable=wrong-import-position

PREFIX = '/usr/lib/tap-transfer'
REPO_LIST = '/etc/apt/sources.list.d/tap-transfer-packages.list'
PPS = 500
# what the command makes of the plain -netdev tap VM: refused up front
NOT_MOVED = ('refused',)


def qemu(series):
    return f'{PREFIX}/qemu-{series}/bin/qemu-system-x86_64'


class Tap:
    """TAP lines; the plan at the end"""

    def __init__(self):
        self.n = 0
        self.failed = 0

    def ok(self, cond, text, details=()):
        self.n += 1
        if not cond:
            self.failed += 1
        print(f"{'ok' if cond else 'not ok'} {self.n} - {text}", flush=True)
        for line in details:
            print(f'# {line}', flush=True)
        return cond

    def note(self, text):
        for line in str(text).splitlines():
            print(f'# {line}', flush=True)

    def end(self):
        print(f'1..{self.n}', flush=True)
        return 0 if self.failed == 0 else 1


class Fleet:
    def __init__(self, args, tap, work):
        self.args = args
        self.tap = tap
        self.work = work
        self.hosts = {}         # name -> Lab
        self.vms = {}           # (host, vm) -> (DaemonVm, addr, ifname)
        self.inventory = os.path.join(work, 'inventory.json')
        self.runs = 0

    # the hosts and their VMs

    def make_hosts(self, stack):
        for h in ('hv1', 'hv2', 'hv3', 'hv4'):
            lab = ttlab.Lab(qemu('10.0'), self.args.guest,
                            python_dir=self.args.python_dir)
            lab.ns = f'tt-fleet-{os.getpid()}-{h}'
            self.hosts[h] = stack.enter_context(lab)

    def write_inventory(self, repo):
        hosts = {}
        for h, lab in self.hosts.items():
            hv = {'tap_transfer_qmp_glob': [os.path.join(lab.dir, '*',
                                                         'qmp.sock')]}
            if h == 'hv1':
                hv['tap_transfer_apt_repo'] = f'deb [trusted=yes] file:{repo} ./'
            else:
                hv['tap_transfer_packages_dir'] = self.args.debs
            hosts[h] = hv
        inv = {'all': {'children': {'hypervisors': {
            'hosts': hosts,
            'vars': {'ansible_connection': 'local',
                     'ansible_python_interpreter': '/usr/bin/python3',
                     'tap_transfer_stage_dir':
                         os.path.join(self.work, 'stage')}}}}}
        with open(self.inventory, 'w') as f:
            json.dump(inv, f, indent=1)

    def start_vms(self):
        layout = {'hv1': [('db', '10.0.0.2', 16), ('web', '10.0.0.3', 0)],
                  'hv2': [('a', '10.0.0.2', 0)],
                  'hv3': [('good', '10.0.0.2', 0), ('legacy', '10.0.0.3', 0)],
                  'hv4': [('x', '10.0.0.2', 0)]}
        for h, vms in layout.items():
            lab = self.hosts[h]
            for i, (name, addr, disk) in enumerate(vms):
                ifname = f'tt{i}'
                kind = 'tap' if name == 'legacy' else 'tap-transfer'
                netdev = f'{kind},ifname={ifname},script={lab.ifup},downscript=no'
                mac = ttlab.guest_mac(i)
                vm = lab.start_daemon(name, netdev, disk_mb=disk, addr=addr,
                                      mac=mac)
                self.vms[(h, name)] = (vm, addr, ifname)
            # a host's guests boot (TCG) before the next host's start:
            # two cores, shared with whatever else runs
            for name, addr, _ in vms:
                vm = self.vms[(h, name)][0]
                try:
                    vm.wait_serial('tap-transfer guest ready', timeout=300)
                except ttlab.LabError as e:
                    alive = ttlab.alive(vm.pid())
                    raise ttlab.LabError(
                        f'{h}/{name}: {e} (QEMU {vm.pid()} '
                        f"{'running' if alive else 'gone'}; console: "
                        f'{vm.console_text()[-300:]!r})') from e
                lab.wait_ping(addr, timeout=60)

    def state(self):
        """Per VM: pid, the series of the binary it runs, its TAP's
        ifindex"""
        out = {}
        for (h, name), (vm, _, ifname) in self.vms.items():
            pid = vm.pid()
            series = '?'
            st = os.stat(f'/proc/{pid}/exe')
            for s in ('10.0', '10.2'):
                t = os.stat(qemu(s))
                if (st.st_dev, st.st_ino) == (t.st_dev, t.st_ino):
                    series = s
            out[(h, name)] = (pid, series, self.hosts[h].ifindex(ifname))
        return out

    def all_answer(self):
        for (h, name), (_, addr, _) in self.vms.items():
            try:
                self.hosts[h].wait_ping(addr, timeout=20)
            except ttlab.LabError:
                return f'{h}/{name} ({addr}) does not answer'
        return None

    # the playbooks

    def playbook(self, name, *extra):
        self.runs += 1
        junit = os.path.join(self.work, f'junit-{self.runs}')
        env = dict(os.environ,
                   ANSIBLE_CONFIG=os.path.join(self.args.ansible, 'ansible.cfg'),
                   ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0',
                   ANSIBLE_HOME=os.path.join(self.work, 'ansible-home'),
                   ANSIBLE_LOCAL_TEMP=os.path.join(self.work, 'ansible-tmp'),
                   ANSIBLE_REMOTE_TMP=os.path.join(self.work, 'ansible-tmp'),
                   ANSIBLE_CALLBACKS_ENABLED='ansible.builtin.junit',
                   JUNIT_OUTPUT_DIR=junit,
                   ANSIBLE_LOG_PATH=os.path.join(self.work,
                                                 f'ansible-{self.runs}.log'))
        env.pop('TAP_TRANSFER_QEMU_PYTHON', None)
        argv = ['ansible-playbook', '-i', self.inventory,
                os.path.join(self.args.ansible, name), *extra]
        t0 = time.monotonic()
        r = subprocess.run(argv, capture_output=True, text=True, env=env)
        took = time.monotonic() - t0
        with open(os.path.join(self.work, f'run-{self.runs}.log'), 'w') as f:
            f.write(r.stdout + r.stderr)
        return Run(r.returncode, r.stdout + r.stderr, took, junit,
                   os.path.join(self.work, f'ansible-{self.runs}.log'))

    def repo(self):
        """The packages as an apt repository (a directory with a
        Packages index)"""
        repo = os.path.join(self.work, 'repo')
        os.makedirs(repo)
        for d in os.listdir(self.args.debs):
            if d.endswith('.deb'):
                shutil.copy(os.path.join(self.args.debs, d), repo)
        with open(os.path.join(repo, 'Packages'), 'w') as f:
            subprocess.run(['dpkg-scanpackages', '.'], cwd=repo, stdout=f,
                           stderr=subprocess.DEVNULL, check=True)
        for path in (self.work, repo):
            os.chmod(path, 0o755)
        return repo


class Run:
    """One ansible-playbook run: exit status, output, the recap per host,
    the module's results (from the junit report) and each host's time
    (serial: 1 makes a play per host; from its PLAY line to the next, in
    the timestamped log)"""

    def __init__(self, rc, out, took, junit, log):
        self.rc = rc
        self.out = out
        self.took = took
        self.recap = {}
        for m in re.finditer(r'^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+'
                             r'unreachable=(\d+)\s+failed=(\d+)', out, re.M):
            self.recap[m.group(1)] = {'ok': int(m.group(2)),
                                      'changed': int(m.group(3)),
                                      'failed': int(m.group(5))}
        self.host_s = {}
        self.results = {}
        self.times_from(log)
        for f in sorted(os.listdir(junit)) if os.path.isdir(junit) else []:
            for case in ET.parse(os.path.join(junit, f)).iter('testcase'):
                m = re.match(r'\[(\S+)\] (.*)', case.get('name', ''))
                if not m:
                    continue
                host = m.group(1)
                if 'tap_transfer_upgrade' in m.group(2) or \
                        'Move this host' in m.group(2):
                    text = ''.join(e.text or '' for e in case
                                   if e.tag in ('system-out', 'failure'))
                    try:
                        self.results[host] = json.loads(
                            text[text.index('{'):text.rindex('}') + 1])
                    except ValueError:
                        pass

    def times_from(self, log):
        stamp = re.compile(r'^(\d+-\d+-\d+ \d+:\d+:\d+),(\d+) .*?\| (.*)$')
        start = host = None
        try:
            with open(log) as f:
                lines = f.read().splitlines()
        except OSError:
            return
        for line in lines:
            m = stamp.match(line)
            if not m:
                continue
            t = time.mktime(time.strptime(m.group(1), '%Y-%m-%d %H:%M:%S')) \
                + int(m.group(2)) / 1000
            text = m.group(3)
            if text.startswith('PLAY ['):
                if host and start is not None:
                    self.host_s[host] = t - start
                start, host = t, None
            elif text.startswith('PLAY RECAP'):
                if host and start is not None:
                    self.host_s[host] = t - start
                break
            elif host is None:
                h = re.search(r'\[(hv\d+)\]', text)
                host = h.group(1) if h else None

    def vm_status(self, host, name):
        for vm in self.results.get(host, {}).get('vms', []):
            if f'/{name}/' in vm['qmp']:
                return vm['status'], vm.get('error')
        return None, None

    def changed(self):
        return {h: r['changed'] for h, r in self.recap.items()}

    def failed_hosts(self):
        return sorted(h for h, r in self.recap.items() if r['failed'])

    def tables(self):
        out = []
        for h in sorted(self.results):
            res = self.results[h]
            out.append(f'{h}: {res.get("msg", "")}')
            out += [f'  {line}' for line in res.get('table', [])]
        return out

    def times(self):
        return ', '.join(f'{h} {s:.1f} s' for h, s in sorted(self.host_s.items()))

    def tail(self, n=40):
        return self.out.splitlines()[-n:]


def lost_pings(result):
    """The lost pings of a stopped flood (those in flight at the stop do
    not count) and the last one answered; None if none was"""
    if not result['replies']:
        return None, 0
    return result['missing'], result['last']


def flood(fleet, fn):
    """@fn() under a 500/s flood of hv1's db: (fn's value, lost pings,
    pings sent, longest gap ms)"""
    lab = fleet.hosts['hv1']
    p = lab.start_ping(PPS * 1200, 1 / PPS)
    time.sleep(1)
    try:
        value = fn()
    finally:
        time.sleep(1)
        result = lab.stop_ping(p)
    lost, last = lost_pings(result)
    return value, lost, last, result['max_gap_ms']


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--debs', required=True)
    ap.add_argument('--guest', required=True)
    ap.add_argument('--python-dir', required=True,
                    help="QEMU's python/ tree, for the lab")
    ap.add_argument('--ansible', default=os.path.join(TOP, 'ansible'))
    ap.add_argument('--no-lint', action='store_true')
    args = ap.parse_args()
    args.debs = os.path.abspath(args.debs)
    args.ansible = os.path.abspath(args.ansible)
    tap = Tap()

    if not args.no_lint:
        if shutil.which('ansible-lint'):
            t0 = time.monotonic()
            r = subprocess.run(['ansible-lint', '--offline', '--nocolor'],
                               cwd=args.ansible, capture_output=True,
                               text=True,
                               env=dict(os.environ, NO_COLOR='1',
                                        HOME=tempfile.gettempdir()))
            last = (r.stdout + r.stderr).strip().splitlines()[-1:]
            tap.ok(r.returncode == 0, f'ansible-lint: {" ".join(last)} '
                   f'({time.monotonic() - t0:.0f} s)',
                   [] if r.returncode == 0 else
                   (r.stdout + r.stderr).splitlines()[-40:])
        else:
            tap.ok(True, 'ansible-lint # SKIP not installed (make deps)')

    before = subprocess.run(['dpkg-query', '-W', '-f', '${Package} ${Status}\n',
                             'tap-transfer-*'], capture_output=True,
                            text=True).stdout
    preinstalled = {line.split()[0] for line in before.splitlines()
                    if 'installed' in line.split()[-1:]}
    had_list = os.path.exists(REPO_LIST)
    work = tempfile.mkdtemp(prefix='tap-transfer-fleet-')
    try:
        with contextlib.ExitStack() as stack:
            fleet = Fleet(args, tap, work)
            fleet.make_hosts(stack)
            fleet.write_inventory(fleet.repo())
            scenario(fleet, tap)
    except ttlab.LabError as e:
        tap.ok(False, f'the lab: {e}')
    finally:
        if not had_list and os.path.exists(REPO_LIST):
            os.unlink(REPO_LIST)
        ours = [p for p in ('tap-transfer-tools', 'tap-transfer-qemu-10.0',
                            'tap-transfer-qemu-10.2') if p not in preinstalled]
        subprocess.run(['apt-get', 'purge', '-y', '-q', *ours],
                       capture_output=True,
                       env=dict(os.environ, DEBIAN_FRONTEND='noninteractive'))
        if preinstalled:
            tap.note(f'left installed as found: {" ".join(sorted(preinstalled))}')
        shutil.rmtree(work, ignore_errors=True)
    return tap.end()


def scenario(fleet, tap):
    # install
    run = fleet.playbook('upgrade.yml', '--tags', 'install')
    installed = all(os.access(qemu(s), os.X_OK) for s in ('10.0', '10.2'))
    if not tap.ok(run.rc == 0 and installed,
                  f'install: the packages on every host (hv1 from an apt '
                  f'repository, the others from a directory), {run.took:.0f} s',
                  run.tail() if run.rc else []):
        return
    tap.note(subprocess.run(['dpkg-query', '-W', 'tap-transfer-*'],
                            capture_output=True, text=True).stdout)

    t0 = time.monotonic()
    fleet.start_vms()
    db = fleet.vms[('hv1', 'db')][0]
    db.wait_acks(5)
    tap.ok(True, f'{len(fleet.vms)} VMs booted on the installed QEMU 10.0 '
           f'in 4 network namespaces ({time.monotonic() - t0:.0f} s)')
    start = fleet.state()

    def dirs():
        return {k: sorted(os.listdir(vm.dir))
                for k, (vm, _, _) in fleet.vms.items()}

    # check
    files = dirs()
    run = fleet.playbook('upgrade.yml', '--check')
    same = fleet.state() == start and dirs() == files
    legacy = run.vm_status('hv3', 'legacy')
    tap.ok(run.rc != 0 and same and run.failed_hosts() == ['hv3'] and
           'hv4' not in run.recap and legacy[0] in NOT_MOVED,
           f'--check: dry runs; hv3 fails (legacy: {legacy[0]}), the rollout '
           f'stops before hv4; nothing changed ({run.took:.0f} s)',
           run.tables() + ([] if same else [f'state: {fleet.state()}']) +
           ([] if run.rc else run.tail()))

    # upgrade, stopped by hv3
    run, lost, sent, gap = flood(fleet, lambda: fleet.playbook('upgrade.yml'))
    legacy = run.vm_status('hv3', 'legacy')
    now = fleet.state()
    moved = {k for k in now if now[k][0] != start[k][0]}
    on = {k: now[k][1] for k in now}
    expect_moved = {('hv1', 'db'), ('hv1', 'web'), ('hv2', 'a'), ('hv3', 'good')}
    tap.ok(run.rc != 0 and moved == expect_moved and
           all(on[k] == '10.2' for k in expect_moved) and
           on[('hv3', 'legacy')] == '10.0' and on[('hv4', 'x')] == '10.0' and
           all(now[k][2] == start[k][2] for k in now) and
           run.failed_hosts() == ['hv3'] and 'hv4' not in run.recap and
           legacy[0] in NOT_MOVED,
           'upgrade: hv1, hv2 upgraded host by host; hv3 fails on legacy '
           f'({legacy[0]}, still on 10.0, same pid), the rollout stops: hv4 '
           f'untouched; every TAP the same ({run.took:.0f} s)',
           [f'per host: {run.times()}'] + run.tables() +
           ([] if legacy[0] == 'refused' else
            ['legacy should be refused ("use --onboard"): the command failed '
             'instead, its QMP error handling broke (AttributeError)']) +
           [f'moved: {sorted(moved)}', f'series: {on}'])
    tap.ok(lost == [], f'upgrade: hv1/db pinged at {PPS}/s throughout: '
           f'{len(lost or [])} of {sent} lost, longest reply gap {gap:.0f} ms',
           [f'lost: {lost[:20]}'] if lost else [])
    why = fleet.all_answer()
    tap.ok(why is None, f'every VM answers, legacy on its old QEMU too'
           f'{": " + why if why else ""}')

    # resume with legacy excluded, then again
    excl = ['-e', json.dumps({'tap_transfer_exclude': ['*/legacy/qmp.sock']})]
    before = fleet.state()
    run = fleet.playbook('upgrade.yml', *excl)
    now = fleet.state()
    moved = {k for k in now if now[k][0] != before[k][0]}
    tap.ok(run.rc == 0 and moved == {('hv4', 'x')} and now[('hv4', 'x')][1] == '10.2'
           and run.changed() == {'hv1': 0, 'hv2': 0, 'hv3': 0, 'hv4': 1},
           f'resume, legacy excluded: only hv4 changes ({run.took:.0f} s; '
           f'changed {run.changed()})',
           [f'per host: {run.times()}'] + run.tables() + ([] if run.rc == 0 else run.tail()))
    before = now
    run = fleet.playbook('upgrade.yml', *excl)
    tap.ok(run.rc == 0 and fleet.state() == before and
           set(run.changed().values()) == {0} and len(run.changed()) == 4,
           f'upgrade again: nothing to do, changed=0 on every host '
           f'({run.took:.0f} s)', run.tables() if run.rc == 0 else run.tail())

    # rollback
    before = fleet.state()
    run, lost, sent, gap = flood(fleet, lambda: fleet.playbook('rollback.yml', *excl))
    now = fleet.state()
    moved = {k for k in now if now[k][0] != before[k][0]}
    tap.ok(run.rc == 0 and moved == set(now) - {('hv3', 'legacy')} and
           all(s == '10.0' for _, s, _ in now.values()) and
           all(now[k][2] == start[k][2] for k in now),
           f'rollback: every VM back on 10.0, host by host, same TAPs '
           f'({run.took:.0f} s)',
           [f'per host: {run.times()}'] + run.tables() + ([] if run.rc == 0 else run.tail()))
    tap.ok(lost == [], f'rollback: hv1/db pinged at {PPS}/s throughout: '
           f'{len(lost or [])} of {sent} lost, longest reply gap {gap:.0f} ms',
           [f'lost: {lost[:20]}'] if lost else [])

    # the disk
    acked_n = len(db.acked())
    db.wait_acks(acked_n + 5)
    db.quit()
    acked, missing, check = db.check_disk(db.lab.qemu_img())
    tap.ok(not missing and check.returncode == 0 and len(acked) > acked_n - 1,
           f'hv1/db: {len(acked)} records acked over two hops, '
           f'{len(acked) - len(missing)} on the disk after the final quit, '
           f"qemu-img check {'clean' if check.returncode == 0 else 'NOT clean'}")


if __name__ == '__main__':
    sys.exit(main())
