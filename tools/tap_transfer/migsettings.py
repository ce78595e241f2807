"""The migration capabilities and parameters an upgrade sets, in one
object: what the source had (saved in the journal), what the handover
sets on each side, and how both are put back."""

from .qmp import value

# what a run may change, and so must put back
CAPS = ('x-ignore-shared', 'events', 'pause-before-switchover')
PARAMS = ('backend-transfer', 'max-bandwidth', 'mode')


class MigrationSettings:
    """The source's migration settings, as they were before the run."""

    def __init__(self, caps, params):
        self.caps = caps          # {capability: bool}
        self.params = params      # {parameter: value}

    @classmethod
    def of(cls, caps, params):
        """From query-migrate-capabilities (as a dict) and
        query-migrate-parameters: what the run may change"""
        return cls({k: bool(caps[k]) for k in CAPS if k in caps},
                   {k: params[k] for k in PARAMS if k in params})

    def as_dict(self):
        return {'caps': self.caps, 'params': self.params}

    @classmethod
    def from_dict(cls, d):
        return cls(dict(d['caps']), dict(d['params']))

    @staticmethod
    def apply_source(mon, mode, onboarding, max_bandwidth):
        """The handover's settings on the source"""
        caps = [{'capability': 'x-ignore-shared',
                 'state': mode == 'shared'}]
        if onboarding:
            caps += [{'capability': 'pause-before-switchover',
                      'state': True},
                     {'capability': 'events', 'state': True}]
        params = {}
        if not onboarding:
            params['backend-transfer'] = True
        if mode == 'cpr-transfer':
            params['mode'] = 'cpr-transfer'
        if max_bandwidth:
            params['max-bandwidth'] = int(max_bandwidth * 2**20)
        _set(mon, caps, params)

    @staticmethod
    def apply_destination(mon, mode, onboarding):
        """The handover's settings on the destination: events, so that
        the run learns of the completion at once"""
        _set(mon, [{'capability': 'x-ignore-shared',
                    'state': mode == 'shared'},
                   {'capability': 'events', 'state': True}],
             {'backend-transfer': not onboarding})

    def restore(self, mon):
        """Put them back on @mon (the source after a rollback)"""
        _set(mon, [{'capability': k, 'state': v}
                   for k, v in self.caps.items()], self.params)

    def copy_commands(self):
        """The commands that give the destination the source's settings,
        for whatever migrates it next (the mode is the source's own
        business, and a stock QEMU's settings may not all exist here)"""
        caps = [{'capability': k, 'state': v} for k, v in self.caps.items()
                if k != 'pause-before-switchover']
        params = {k: v for k, v in self.params.items() if k != 'mode'}
        return _commands(caps, params)


def _commands(caps, params):
    """migrate-set-capabilities @caps and migrate-set-parameters @params,
    each if any"""
    cmds = []
    if caps:
        cmds.append(('migrate-set-capabilities', {'capabilities': caps}))
    if params:
        cmds.append(('migrate-set-parameters', dict(params)))
    return cmds


def _set(mon, caps, params):
    """_commands(@caps, @params), sent together; CommandError for the
    first refused"""
    for reply in mon.cmds(*_commands(caps, params)):
        value(reply)
