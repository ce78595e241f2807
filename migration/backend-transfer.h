/*
 * backend-transfer: checks for migrations that pass backend fds
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 */

#ifndef MIGRATION_BACKEND_TRANSFER_H
#define MIGRATION_BACKEND_TRANSFER_H

#include "io/channel.h"
#include "qapi/qapi-types-migration.h"

/*
 * With backend-transfer on, refuse a channel that cannot carry file
 * descriptors before anything is sent.
 */
bool backend_transfer_check_channel(MigrationAddress *addr, Error **errp);

/*
 * The same for an fd: channel, once its fd is known (a pipe or a socket
 * of another family cannot carry them), before anything is sent.
 */
bool backend_transfer_check_fd_channel(QIOChannel *ioc, const char *fdname,
                                       Error **errp);

#endif
