/*
 * backend-transfer: checks for migrations that pass backend fds
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 */

#ifndef MIGRATION_BACKEND_TRANSFER_H
#define MIGRATION_BACKEND_TRANSFER_H

#include "qapi/qapi-types-migration.h"

/*
 * With backend-transfer on, refuse a channel that cannot carry file
 * descriptors before anything is sent.
 */
bool backend_transfer_check_channel(MigrationAddress *addr, Error **errp);

#endif
