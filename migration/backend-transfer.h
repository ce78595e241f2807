/*
 * backend-transfer: checks for migrations that pass backend fds
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
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

/*
 * With backend-transfer on, refuse a snapshot (savevm, snapshot-save):
 * its state goes to a block device, which cannot hold file descriptors.
 */
bool backend_transfer_check_snapshot(Error **errp);

#endif
