"""The state a VM has now, not the one it booted with: devices,
netdevs, chardevs, the block graph and its limits, memory backends.

The upgrade reads it on the source, starts the destination (paused,
from the command line), reads it there and compares: a snapshot, a
mirror, a changed medium, a throttle limit, a chardev or device added
at run time would otherwise be silently lost.  Every difference is one
line naming the device and what differs."""

from .qmp import CommandError, qom_get, value

# query-block's throttling fields (BlockDeviceInfo)
THROTTLE = ('bps', 'bps_rd', 'bps_wr', 'iops', 'iops_rd', 'iops_wr',
            'bps_max', 'bps_rd_max', 'bps_wr_max', 'iops_max',
            'iops_rd_max', 'iops_wr_max', 'iops_size', 'group')


def _children(reply):
    """{name: type} of the children in a qom-list @reply ({} if it
    failed)"""
    if isinstance(reply, CommandError):
        return {}
    return {p['name']: p['type'][6:-1] for p in reply
            if p['type'].startswith('child<')}


def _memdev(reply):
    """{id: {size, share}} of the memory backends in a query-memdev
    @reply (the same QOM properties); {} if it failed"""
    if not isinstance(reply, list):
        return {}
    return {m['id']: {'size': m['size'], 'share': m['share']}
            for m in reply if isinstance(m, dict) and
            {'id', 'size', 'share'} <= m.keys()}


def _memory(mon, objects, memdev):
    """{id: {type, size, share[, mem-path]}} of the memory backends
    among @objects ({name: type}): what @memdev (from query-memdev)
    lacks read over QOM, at once"""
    backends = {name: qtype for name, qtype in objects.items()
                if qtype.startswith('memory-backend-')}
    memory = {name: {'type': qtype, **memdev.get(name, {})}
              for name, qtype in backends.items()}
    wanted = [(name, prop) for name, m in memory.items()
              for prop in ('size', 'share') if prop not in m]
    wanted += [(name, 'mem-path') for name, qtype in backends.items()
               if qtype == 'memory-backend-file']
    replies = mon.cmds(*(qom_get(f'/objects/{name}', prop)
                         for name, prop in wanted))
    for (name, prop), reply in zip(wanted, replies):
        memory[name][prop] = value(reply)
    return memory


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

    # what it is read from, sent at once (Monitor.cmds)
    QUERIES = (('query-block', {}),
               ('query-named-block-nodes', {'flat': True}),
               ('query-chardev', {}),
               ('query-memdev', {}),
               ('qom-list', {'path': '/objects'}),
               ('qom-list', {'path': '/machine/peripheral'}),
               ('qom-list', {'path': '/machine/peripheral-anon'}),
               ('qom-list', {'path': '/netdevs'}),
               qom_get('/machine', 'memory-backend'))

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
        return cls.of(mon, mon.cmds(*cls.QUERIES))

    @classmethod
    def of(cls, mon, replies):
        """From the @replies to QUERIES (and, for what query-memdev does
        not tell, more of @mon)"""
        (blk, nodes_r, chardevs, memdev, objects, peripheral, anon,
         netdevs, ram) = replies
        block = {}
        for info in value(blk):
            key = info.get('device') or info.get('qdev')
            block[key] = _block_backend(info)
        nodes = {}
        for n in value(nodes_r):
            if not n['node-name'].startswith('#'):
                nodes[n['node-name']] = (n.get('drv'), n.get('file'),
                                         n.get('ro'))
        ram = None if isinstance(ram, CommandError) else ram
        return cls(
            devices=_children(peripheral),
            anon=sorted(_children(anon).values()),
            netdevs=_children(netdevs),
            chardevs={c['label']: _chardev_name(c['filename'])
                      for c in value(chardevs)},
            block=block, nodes=nodes,
            memory=_memory(mon, _children(objects), _memdev(memdev)),
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
