"""The state a VM has now, not the one it booted with: devices,
netdevs, chardevs, the block graph and its limits, memory backends.

The upgrade reads it on the source, starts the destination (paused,
from the command line), reads it there and compares: a snapshot, a
mirror, a changed medium, a throttle limit, a chardev or device added
at run time would otherwise be silently lost.  Every difference is one
line naming the device and what differs."""

from .qmp import CommandError

# query-block's throttling fields (BlockDeviceInfo)
THROTTLE = ('bps', 'bps_rd', 'bps_wr', 'iops', 'iops_rd', 'iops_wr',
            'bps_max', 'bps_rd_max', 'bps_wr_max', 'iops_max',
            'iops_rd_max', 'iops_wr_max', 'iops_size', 'group')


def _children(mon, path):
    """{name: type} of QOM @path's children"""
    try:
        return {p['name']: p['type'][6:-1] for p in
                mon.cmd('qom-list', path=path)
                if p['type'].startswith('child<')}
    except CommandError:
        return {}


def _memdev(mon):
    """{id: {size, share}} of the memory backends under /objects, as
    query-memdev reads them (the same QOM properties); {} if it fails"""
    try:
        out = mon.cmd('query-memdev')
    except CommandError:
        return {}
    if not isinstance(out, list):
        return {}
    return {m['id']: {'size': m['size'], 'share': m['share']}
            for m in out if isinstance(m, dict) and
            {'id', 'size', 'share'} <= m.keys()}


def _chain(image):
    """[(filename, format)] of an image and its backing images"""
    out = []
    while image:
        out.append((image.get('filename'), image.get('format')))
        image = image.get('backing-image')
    return out


def _block_backend(info):
    ins = info.get('inserted')
    if not ins:
        return {'medium': None}
    return {'medium': ins.get('file'),
            'format': ins.get('drv'),
            'read-only': ins.get('ro'),
            'chain': _chain(ins.get('image')),
            'throttle': {k: ins.get(k) for k in THROTTLE if ins.get(k)}}


def _chardev_name(filename):
    """A chardev's filename without its connection state"""
    if filename.startswith('disconnected:'):
        filename = filename[len('disconnected:'):]
    return filename.split(' <-> ')[0]


class LiveState:
    """What a QEMU runs now, as QMP and QOM tell it."""

    def __init__(self, devices, anon, netdevs, chardevs, block, nodes,
                 memory, ram):
        self.devices = devices      # {id: type}, /machine/peripheral
        self.anon = anon            # sorted [type], peripheral-anon
        self.netdevs = netdevs      # {id: type}, /netdevs
        self.chardevs = chardevs    # {label: filename}
        self.block = block          # {backend: {...}}
        self.nodes = nodes          # {node-name: (drv, file, ro)}
        self.memory = memory        # {id: {type, size, share, mem-path}}
        self.ram = ram              # the machine's memory backend id

    @classmethod
    def read(cls, mon):
        block = {}
        for info in mon.cmd('query-block'):
            key = info.get('device') or info.get('qdev')
            block[key] = _block_backend(info)
        nodes = {}
        for n in mon.cmd('query-named-block-nodes', flat=True):
            if not n['node-name'].startswith('#'):
                nodes[n['node-name']] = (n.get('drv'), n.get('file'),
                                         n.get('ro'))
        memory = {}
        backends = {name: qtype for name, qtype in
                    _children(mon, '/objects').items()
                    if qtype.startswith('memory-backend-')}
        # every backend's size and share in one round trip
        memdev = _memdev(mon) if backends else {}
        for name, qtype in backends.items():
            path = f'/objects/{name}'
            m = {'type': qtype}
            for prop in ('size', 'share'):
                m[prop] = memdev[name][prop] if name in memdev else \
                    mon.cmd('qom-get', path=path, property=prop)
            if qtype == 'memory-backend-file':
                m['mem-path'] = mon.cmd('qom-get', path=path,
                                        property='mem-path')
            memory[name] = m
        ram = mon.try_cmd('qom-get', path='/machine',
                          property='memory-backend')
        return cls(
            devices=_children(mon, '/machine/peripheral'),
            anon=sorted(_children(mon, '/machine/peripheral-anon')
                        .values()),
            netdevs=_children(mon, '/netdevs'),
            chardevs={c['label']: _chardev_name(c['filename'])
                      for c in mon.cmd('query-chardev')},
            block=block, nodes=nodes, memory=memory,
            ram=ram.rsplit('/', 1)[-1] if ram else None)

    def ram_backend(self):
        """The machine's main RAM backend, {type, share, ...} or None"""
        if self.ram and self.ram in self.memory:
            return self.memory[self.ram]
        return next(iter(self.memory.values()), None)

    def shared_files(self):
        """Memory backends that are files mapped shared"""
        return [n for n, m in self.memory.items()
                if m['type'] == 'memory-backend-file' and m['share']]

    def private_bytes(self):
        """RAM a destination allocates anew when RAM is copied"""
        return sum(m['size'] for m in self.memory.values()
                   if not (m['type'] == 'memory-backend-file' and
                           m['share']))

    def differences(self, dest, real_name=lambda s: s):
        """How @dest (the destination, paused) differs from this state
        (the source's): [one line each].  @real_name maps temporary
        names (this run's, or an earlier upgrade's that the source still
        lists) to the real ones."""
        out = []
        out += _dict_diff('device', self.devices, dest.devices)
        if self.anon != dest.anon:
            out.append(f'devices without an id: {", ".join(self.anon)} on '
                       f'the VM, {", ".join(dest.anon) or "none"} on the '
                       'new QEMU')
        out += _dict_diff('netdev', self.netdevs, dest.netdevs)
        src_chr = {k: real_name(v) for k, v in self.chardevs.items()}
        dest_chr = {k: real_name(v) for k, v in dest.chardevs.items()}
        out += _dict_diff('chardev', src_chr, dest_chr)
        for key, src in self.block.items():
            if key not in dest.block:
                out.append(f'block device {key}: not on the new QEMU')
                continue
            for field, v in src.items():
                w = dest.block[key].get(field)
                if v != w:
                    out.append(f'block device {key}: {field} is {v} on the '
                               f'VM, {w} on the new QEMU')
        out += [f'block device {k}: not on the VM'
                for k in dest.block if k not in self.block]
        out += _dict_diff('block node', self.nodes, dest.nodes)
        out += _dict_diff('memory backend', self.memory, dest.memory)
        return out


def _dict_diff(what, src, dst):
    out = []
    for k, v in src.items():
        if k not in dst:
            out.append(f'{what} {k}: on the VM (added at run time?), not '
                       'on the new QEMU')
        elif dst[k] != v:
            out.append(f'{what} {k}: {v} on the VM, {dst[k]} on the new '
                       'QEMU')
    out += [f'{what} {k}: on the new QEMU, not on the VM'
            for k in dst if k not in src]
    return out
