"""QEMU's command line as the upgrade command reads and rewrites it.

An argv is a list of Opt, one per option.  An Opt whose value is a
QemuOpts string ("type,key=value,..." with ",," for a literal comma) or
a JSON object (for the options that take one) is read and changed by
key; everything else keeps its text as it was.
"""

import json
import shlex

# options that take no argument (qemu-options.hx, DEF(..., 0, ...))
NOARG = {'h', 'help', 'version', 'mem-prealloc', 'snapshot', 'usb',
         'nographic', 'full-screen', 'win2k-hack', 'no-fd-bootchk',
         'preconfig', 'S', 's', 'enable-kvm', 'xen-attach',
         'xen-domid-restrict', 'no-reboot', 'no-shutdown', 'daemonize',
         'only-migratable', 'nodefaults', 'semihosting', 'old-param',
         'no-user-config', 'enable-sync-profile', 'perfmap', 'jitdump',
         'nodefconfig', 'no-hpet', 'no-acpi', 'no-quit', 'alt-grab',
         'ctrl-grab', 'sdl', 'curses', 'portrait', 'singlestep'}

# the options whose first item, without a key, is this key (QemuOpts'
# implied key)
IMPLIED = {'netdev': 'type', 'chardev': 'backend', 'machine': 'type',
           'M': 'type', 'device': 'driver', 'object': 'qom-type',
           'nic': 'type', 'net': 'type', 'accel': 'accel',
           'mon': 'chardev', 'display': 'type', 'run-with': None,
           'drive': None, 'blockdev': None, 'spice': None}

ON = ('on', 'yes', 'true', 'y')


def opts_split(text):
    """QemuOpts items of @text; ",," is a literal comma."""
    items, cur, i = [], '', 0
    while i < len(text):
        if text[i] == ',':
            if text[i + 1:i + 2] == ',':
                cur += ','
                i += 2
                continue
            items.append(cur)
            cur = ''
        else:
            cur += text[i]
        i += 1
    items.append(cur)
    return items


def opts_join(items):
    return ','.join(x.replace(',', ',,') for x in items)


def is_on(value):
    """A QemuOpts boolean as given, or as a bare "server" item reads."""
    return value is not None and str(value).lower() in ON + ('',)


class Opt:
    """One option of QEMU's command line: -NAME [VALUE]."""

    def __init__(self, name, value):
        self.name = name
        self.value = value
        self.json = None
        if value is not None and value.lstrip().startswith('{') and \
                name in IMPLIED:
            try:
                self.json = json.loads(value)
            except ValueError:
                pass

    def items(self):
        return opts_split(self.value) if self.value is not None else []

    def _implied(self, n, item, sep):
        return not sep and n == 0 and IMPLIED.get(self.name) is not None \
            and '=' not in item

    def get(self, key):
        """The value of @key as a string (the implied key for the first
        item; "server" reads as server=on, "nowait" as wait=off)."""
        if self.json is not None:
            v = self.json.get(key)
            if isinstance(v, bool):
                return 'on' if v else 'off'
            return None if v is None else str(v)
        for n, item in enumerate(self.items()):
            k, sep, v = item.partition('=')
            if sep and k == key:
                return v
            if self._implied(n, item, sep) and IMPLIED[self.name] == key:
                return item
            if not sep and item == key:
                return 'on'
            if not sep and item == 'no' + key:
                return 'off'
        return None

    def keys(self):
        if self.json is not None:
            return list(self.json)
        out = []
        for n, item in enumerate(self.items()):
            k, sep, _ = item.partition('=')
            if self._implied(n, item, sep):
                out.append(IMPLIED[self.name])
            elif not sep and item.startswith('no') and \
                    item not in ('nodelay',):
                out.append(item[2:])
            else:
                out.append(k)
        return out

    def set(self, key, value):
        """Replace or add @key; None removes it.  In the JSON form,
        @value keeps its type (a count stays a number)."""
        if self.json is not None:
            if value is None:
                self.json.pop(key, None)
            else:
                self.json[key] = value
            self.value = json.dumps(self.json)
            return
        items, done = [], False
        for n, item in enumerate(self.items()):
            k, sep, _ = item.partition('=')
            implied = self._implied(n, item, sep) and \
                IMPLIED[self.name] == key
            bare = not sep and item in (key, 'no' + key)
            if (sep and k == key) or implied or bare:
                if value is not None and not done:
                    items.append(str(value) if implied
                                 else f'{key}={value}')
                done = True
                continue
            items.append(item)
        if not done and value is not None:
            items.append(f'{key}={value}')
        self.value = opts_join(items)

    def argv(self):
        return [f'-{self.name}'] + ([] if self.value is None else
                                    [self.value])

    def __str__(self):
        return shlex.join(self.argv())


def parse_argv(argv):
    """[Opt] from QEMU's argv (without the binary)."""
    opts, i = [], 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith('-'):
            # QEMU takes a lone word as the disk image (-hda)
            opts.append(Opt('hda', a))
            i += 1
            continue
        name = a.lstrip('-')
        if name in NOARG or i + 1 >= len(argv):
            opts.append(Opt(name, None))
            i += 1
        else:
            opts.append(Opt(name, argv[i + 1]))
            i += 2
    return opts


class LegacyChardev:
    """A chardev as -serial, -parallel, -monitor and -qmp take it:
    BACKEND:ARGS (unix:PATH[,server=on,...], file:PATH, tcp:..., or
    chardev:ID), behind "mon:" for a muxed monitor."""

    def __init__(self, text):
        self.mux = text.startswith('mon:')
        rest = text[4:] if self.mux else text
        self.backend, sep, args = rest.partition(':')
        self.items = opts_split(args) if sep else []

    @property
    def path(self):
        """unix: and file: path, or chardev: id"""
        return self.items[0] if self.items else None

    @property
    def server(self):
        return any(i.split('=', 1)[0] == 'server' and
                   (i == 'server' or is_on(i.split('=', 1)[1]))
                   for i in self.items[1:])

    def get(self, key):
        for i in self.items[1:]:
            k, sep, v = i.partition('=')
            if k == key:
                return v if sep else 'on'
            if not sep and i == 'no' + key:
                return 'off'
        return None

    def with_path(self, path, **changes):
        """The same spec on another path, @changes applied to its
        options (None removes one)."""
        items = [path]
        seen = set()
        for i in self.items[1:]:
            k = i.partition('=')[0]
            if k.startswith('no') and '=' not in i:
                k = k[2:]
            if k in changes:
                seen.add(k)
                if changes[k] is not None:
                    items.append(f'{k}={changes[k]}')
                continue
            items.append(i)
        items += [f'{k}={v}' for k, v in changes.items()
                  if k not in seen and v is not None]
        text = f'{self.backend}:{opts_join(items)}'
        return 'mon:' + text if self.mux else text
