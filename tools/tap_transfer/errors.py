"""How an upgrade ends when it does not succeed.  Each is one line for
the operator; the class says where the VM is."""


class Refused(Exception):
    """The VM cannot be upgraded as it is; nothing was changed."""


class Busy(Refused):
    """Another run holds the VM, or left a journal behind."""


class Failed(Exception):
    """The upgrade failed before the point of no return: the VM runs
    on the source, as before."""


class Interrupted(Failed):
    """A signal, before the point of no return: the VM runs on the
    source, as before."""


class Lost(Exception):
    """After the point of no return the destination QEMU died: the VM
    is not running anywhere (the source must not run it again)."""


class Unknown(Exception):
    """The run could not tell where the VM is: see the journal."""
