/*
 * backend-transfer: checks for migrations that pass backend fds
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-types-migration.h"
#include "qapi/qapi-types-sockets.h"
#include "io/channel-file.h"
#include "io/channel-socket.h"
#include "migration/client-options.h"
#include "backend-transfer.h"
#include "options.h"
#include "trace.h"

static const char *transport_name(MigrationAddress *addr)
{
    if (addr->transport == MIGRATION_ADDRESS_TYPE_SOCKET) {
        return SocketAddressType_str(addr->u.socket.type);
    }
    return MigrationAddressType_str(addr->transport);
}

static bool transport_supports_fd_passing(MigrationAddress *addr)
{
    if (addr->transport != MIGRATION_ADDRESS_TYPE_SOCKET) {
        return false;
    }
    /* An fd: channel is checked once its fd is known */
    return addr->u.socket.type == SOCKET_ADDRESS_TYPE_UNIX ||
           addr->u.socket.type == SOCKET_ADDRESS_TYPE_FD;
}

bool backend_transfer_check_channel(MigrationAddress *addr, Error **errp)
{
    if (!migrate_backend_transfer()) {
        return true;
    }
    trace_backend_transfer_check_channel(transport_name(addr));

    if (!migrate_passes_fds()) {
        error_setg(errp, "backend-transfer cannot pass file descriptors in "
                   "migration mode %s, which sends only their numbers; use "
                   "mode normal", MigMode_str(migrate_mode()));
        return false;
    }
    if (!transport_supports_fd_passing(addr)) {
        error_setg(errp, "backend-transfer passes file descriptors and needs "
                   "a UNIX socket migration channel (unix: or fd:), not %s",
                   transport_name(addr));
        return false;
    }
    if (migrate_tls()) {
        error_setg(errp, "backend-transfer cannot pass file descriptors "
                   "over TLS; disable TLS for this local migration");
        return false;
    }
    if (migrate_postcopy_ram()) {
        error_setg(errp, "backend-transfer cannot pass file descriptors in "
                   "postcopy's device state; disable postcopy-ram");
        return false;
    }
    return true;
}

/* What an fd: channel that cannot pass fds is, for the error message */
static const char *fd_channel_kind(QIOChannel *ioc)
{
    struct stat st;

    if (object_dynamic_cast(OBJECT(ioc), TYPE_QIO_CHANNEL_SOCKET)) {
        switch (QIO_CHANNEL_SOCKET(ioc)->localAddr.ss_family) {
        case AF_INET:
            return "an IPv4 socket";
        case AF_INET6:
            return "an IPv6 socket";
        default:
            return "a socket that is not a UNIX socket";
        }
    }
    if (object_dynamic_cast(OBJECT(ioc), TYPE_QIO_CHANNEL_FILE) &&
        fstat(QIO_CHANNEL_FILE(ioc)->fd, &st) == 0) {
        if (S_ISFIFO(st.st_mode)) {
            return "a pipe";
        }
        if (S_ISREG(st.st_mode)) {
            return "a regular file";
        }
    }
    return "not a socket";
}

bool backend_transfer_check_fd_channel(QIOChannel *ioc, const char *fdname,
                                       Error **errp)
{
    if (!migrate_backend_transfer()) {
        return true;
    }
    trace_backend_transfer_check_fd_channel(fdname);

    if (!qio_channel_has_feature(ioc, QIO_CHANNEL_FEATURE_FD_PASS)) {
        error_setg(errp, "backend-transfer passes file descriptors and needs "
                   "a UNIX socket migration channel; fd:%s is %s", fdname,
                   fd_channel_kind(ioc));
        return false;
    }
    return true;
}

bool backend_transfer_check_snapshot(Error **errp)
{
    if (!migrate_backend_transfer()) {
        return true;
    }
    error_setg(errp, "backend-transfer is on: a snapshot cannot hold the "
               "file descriptors it passes; turn it off to take one");
    return false;
}
