/*
 * tap-transfer: a TAP netdev that local migration hands over
 *
 * Without migration this is -netdev tap.  With the migration parameter
 * backend-transfer on, the source passes the open file descriptors of
 * its TAP queues to the destination in the migration stream, so the
 * destination runs on the very same TAP device: the kernel allocates
 * nothing, management attaches nothing, and packets that arrive during
 * the switchover wait in the TAP's queue for the destination.
 *
 * The queue clients are tap.c's own, so vhost-net, multiqueue and the
 * offload callbacks behave exactly as with -netdev tap.  On a
 * destination (-incoming) they are created without file descriptor and
 * get one once the stream tells which way it goes: a new TAP of their
 * own, or the source's.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 */

#include "qemu/osdep.h"
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <net/if.h>
#include "qapi/error.h"
#include "qapi/clone-visitor.h"
#include "qapi/qapi-visit-net.h"
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qemu/module.h"
#include "monitor/monitor.h"
#include "qapi/qapi-types-migration.h"
#include "migration/client-options.h"
#include "migration/register.h"
#include "migration/vmstate.h"
#include "net/net.h"
#include "net/queue.h"
#include "net/tap.h"
#include "net/tap_int.h"
#include "net/tap-linux.h"
#include "net/vhost_net.h"
#include "system/runstate.h"
#include "trace.h"

#ifdef CONFIG_LIBCAP_NG
#include <cap-ng.h>
#endif

#define TAP_TRANSFER_MAX_QUEUES 1024
#define TAP_TRANSFER_MAX_PACKETS 65536
#define TUN_MISC_MAJOR 10
#define TUN_MISC_MINOR 200

/* One TAP queue as it travels in the migration stream */
typedef struct TapTransferQueue {
    int32_t fd;
    bool enabled;
    bool using_vnet_hdr;
    uint32_t host_vnet_hdr_len;
    bool has_ufo;
    bool has_uso;
} TapTransferQueue;

/* A packet read from the TAP that still waited in the NIC's queue */
typedef struct TapTransferPacket {
    uint32_t queue;
    uint32_t size;
    uint8_t *data;
} TapTransferPacket;

typedef struct TapTransferState {
    char *name;
    NetdevTapOptions *opts;
    uint32_t queues;
    /* Queue clients, all named @name; owned by net.c */
    NetClientState **ncs;
    /* Known when opened here, or from the options on a destination */
    char ifname[IFNAMSIZ];

    /* Destination: fds handed to us by management, not yet used */
    int *mgmt_fds;
    int *mgmt_vhostfds;
    bool attached;

    /* Source: reading stopped and downscript given up at handover */
    bool handed_over;
    /*
     * Destination: the TAP is adopted but not read until the VM runs
     * here, so that a load that fails after this section (a later
     * device's) takes no frame from the source, which then runs on
     */
    bool adopted_idle;
    bool owned_downscript;

    /* The migration stream */
    bool stream_transfer;
    uint32_t stream_id_len;
    uint8_t *stream_id;
    uint8_t stream_ifname[IFNAMSIZ];
    bool stream_owns_downscript;
    int32_t stream_queues;
    TapTransferQueue *stream_queue;
    /* UDP tunnel offloads in use (QEMU >= 10.2): subsection "tunnel" */
    bool stream_has_tunnel;
    /*
     * Frames read from the TAP that had not reached the guest when the
     * VM stopped, oldest first.  Held while it is stopped; they go to
     * the destination with the state, or back to the NIC if the VM
     * runs here again.
     */
    int32_t stream_npackets;
    TapTransferPacket *stream_packets;

    VMChangeStateEntry *vm_change;
    /* Runs when the clients go away: netdev_del, exit */
    Notifier cleanup;
} TapTransferState;

static void tap_transfer_close_fds(int *fds, uint32_t n)
{
    for (uint32_t i = 0; fds && i < n; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
    }
}

static void tap_transfer_close_stream_fds(TapTransferState *s)
{
    for (int32_t i = 0; s->stream_queue && i < s->stream_queues; i++) {
        if (s->stream_queue[i].fd >= 0) {
            close(s->stream_queue[i].fd);
        }
    }
    g_clear_pointer(&s->stream_queue, g_free);
    s->stream_queues = 0;
}

static void tap_transfer_free_packets(TapTransferState *s)
{
    for (int32_t i = 0; s->stream_packets && i < s->stream_npackets; i++) {
        g_free(s->stream_packets[i].data);
    }
    g_clear_pointer(&s->stream_packets, g_free);
    s->stream_npackets = 0;
}

/* Give the NIC what was read from the TAP before the switchover */
static void tap_transfer_send_packets(TapTransferState *s)
{
    if (s->stream_npackets > 0) {
        trace_tap_transfer_release(s->name, s->stream_npackets);
    }
    for (int32_t i = 0; s->stream_packets && i < s->stream_npackets; i++) {
        TapTransferPacket *p = &s->stream_packets[i];

        qemu_send_packet(s->ncs[p->queue], p->data, p->size);
    }
    tap_transfer_free_packets(s);
}

static const char *tap_transfer_downscript(TapTransferState *s,
                                           char **to_free)
{
    if (s->opts->downscript) {
        return s->opts->downscript;
    }
    *to_free = get_relocated_path(DEFAULT_NETWORK_DOWN_SCRIPT);
    return *to_free;
}

static void tap_transfer_set_info(TapTransferState *s, const char *how)
{
    for (uint32_t i = 0; i < s->queues; i++) {
        qemu_set_info_str(s->ncs[i], "tap-transfer,ifname=%s,queue=%u/%u,%s",
                          s->ifname[0] ? s->ifname : "?", i, s->queues, how);
    }
}

/*
 * Opening a TAP by name needs CAP_NET_ADMIN; when that is what failed,
 * say so rather than leave "Operation not permitted" to be decoded.
 */
static void tap_transfer_explain_open_failure(Error **errp)
{
    ERRP_GUARD();
#ifdef CONFIG_LIBCAP_NG
    capng_get_caps_process();
    if (!capng_have_capability(CAPNG_EFFECTIVE, CAP_NET_ADMIN)) {
        error_prepend(errp, "this QEMU lacks CAP_NET_ADMIN, which opening "
                      "a TAP device needs: ");
    }
#endif
}

/* Source side */

/*
 * The VM runs here again: give the NIC the frames held since the stop.
 * A queue whose frame was held stopped reading the TAP, waiting for a
 * completion that never comes: it reads again now, after those frames.
 */
static void tap_transfer_release_held(TapTransferState *s)
{
    g_autofree bool *stalled = g_new0(bool, s->queues);

    for (int32_t i = 0; s->stream_packets && i < s->stream_npackets; i++) {
        stalled[s->stream_packets[i].queue] = true;
    }
    tap_transfer_send_packets(s);
    for (uint32_t i = 0; i < s->queues; i++) {
        /* With vhost, vhost_net_start/stop own the polling of the fd */
        if (stalled[i] && !get_vhost_net(s->ncs[i])) {
            s->ncs[i]->info->poll(s->ncs[i], true);
        }
    }
}

static void tap_transfer_resume(TapTransferState *s)
{
    g_autofree char *default_downscript = NULL;

    for (uint32_t i = 0; i < s->queues; i++) {
        /*
         * A destination that received the fds may have made the shared
         * file description blocking.
         */
        if (!g_unix_set_fd_nonblocking(tap_get_fd(s->ncs[i]), true, NULL)) {
            warn_report("netdev %s: cannot make queue %u non-blocking: %s",
                        s->name, i, strerror(errno));
        }
        tap_set_suspended(s->ncs[i], false);
    }
    if (s->owned_downscript) {
        tap_set_downscript(s->ncs[0],
                           tap_transfer_downscript(s, &default_downscript),
                           s->ifname);
    }
    s->handed_over = false;
    trace_tap_transfer_resume(s->name);
}

typedef struct TapTransferTake {
    TapTransferState *s;
    uint32_t queue;
} TapTransferTake;

static void tap_transfer_take_packet(const uint8_t *data, size_t size,
                                     void *opaque)
{
    TapTransferTake *take = opaque;
    TapTransferState *s = take->s;
    TapTransferPacket *p;

    s->stream_packets = g_renew(TapTransferPacket, s->stream_packets,
                                s->stream_npackets + 1);
    p = &s->stream_packets[s->stream_npackets++];
    p->queue = take->queue;
    p->size = size;
    p->data = g_memdup2(data, size);
}

/*
 * Hold the frames read from the TAP that still wait in the NIC's queues,
 * after those already held.  Left there they would be lost: when the VM
 * stops, net.c flushes these queues into a NIC that refuses everything
 * once stopped, and frees what it refused.
 */
static void tap_transfer_hold_queued(TapTransferState *s)
{
    int32_t before = s->stream_npackets;
    TapTransferTake take = { .s = s };

    for (take.queue = 0; take.queue < s->queues; take.queue++) {
        NetClientState *nc = s->ncs[take.queue];

        if (nc && nc->peer) {
            qemu_net_queue_take(nc->peer->incoming_queue, nc,
                                tap_transfer_take_packet, &take);
        }
    }
    if (s->stream_npackets > before) {
        trace_tap_transfer_hold(s->name, s->stream_npackets - before,
                                s->stream_npackets);
    }
}

/*
 * Guest frames the TAP could not take yet are flushed by net.c when the
 * VM stops, and dropped if the TAP still refuses them.  Only a full TAP
 * send buffer (sndbuf=, unlimited by default) refuses; say so when it
 * happens, since nothing else would.
 */
static void tap_transfer_flush_tx(TapTransferState *s)
{
    for (uint32_t i = 0; i < s->queues; i++) {
        NetClientState *nc = s->ncs[i];

        if (nc && !qemu_net_queue_flush(nc->incoming_queue)) {
            trace_tap_transfer_tx_unsent(s->name, i);
        }
    }
}

/*
 * When the VM stops, handlers run in descending priority: above net.c's
 * (0), so that the frames are held before net.c flushes them into a NIC
 * that is stopped already.
 */
#define TAP_TRANSFER_VM_CHANGE_PRIO 1

static void tap_transfer_vm_change(void *opaque, bool running,
                                   RunState state)
{
    TapTransferState *s = opaque;

    if (!s->attached) {
        return;
    }
    if (!running) {
        tap_transfer_hold_queued(s);
        tap_transfer_flush_tx(s);
        return;
    }
    /* The source runs again: the handover failed or was abandoned */
    if (s->handed_over) {
        tap_transfer_resume(s);
    }
    /* The destination runs: the handover held */
    if (s->adopted_idle) {
        for (uint32_t i = 0; i < s->queues; i++) {
            tap_set_suspended(s->ncs[i], false);
        }
        s->adopted_idle = false;
    }
    tap_transfer_release_held(s);
}

static int tap_transfer_pre_save(void *opaque)
{
    TapTransferState *s = opaque;

    g_free(s->stream_id);
    s->stream_id = (uint8_t *)g_strdup(s->name);
    s->stream_id_len = strlen(s->name);
    s->stream_transfer = migrate_backend_transfer();
    if (!s->stream_transfer) {
        return 0;
    }

    g_free(s->stream_queue);
    s->stream_queues = s->queues;
    s->stream_queue = g_new0(TapTransferQueue, s->queues);
    s->stream_has_tunnel = false;
    for (uint32_t i = 0; i < s->queues; i++) {
        TapQueueState qs;

        tap_get_queue_state(s->ncs[i], &qs);
        s->stream_queue[i] = (TapTransferQueue) {
            .fd = tap_get_fd(s->ncs[i]),
            .enabled = qs.enabled,
            .using_vnet_hdr = qs.using_vnet_hdr,
            .host_vnet_hdr_len = qs.host_vnet_hdr_len,
            .has_ufo = qs.has_ufo,
            .has_uso = qs.has_uso,
        };
        s->stream_has_tunnel |= qs.has_tunnel;
        /*
         * The VM is stopped and we hold the BQL until the state is sent:
         * from here on, packets stay in the TAP for the destination.
         */
        tap_set_suspended(s->ncs[i], true);
    }
    /*
     * ...and the frames read but not delivered go with the state: held
     * at the stop, or read since if the VM was stopped before migrating
     */
    tap_transfer_hold_queued(s);
    pstrcpy((char *)s->stream_ifname, sizeof(s->stream_ifname), s->ifname);
    s->owned_downscript = tap_has_downscript(s->ncs[0]);
    s->stream_owns_downscript = s->owned_downscript;
    /* The destination owns the TAP now, downscript included */
    tap_set_downscript(s->ncs[0], NULL, NULL);
    s->handed_over = true;
    trace_tap_transfer_handover(s->name, s->queues, s->ifname,
                                s->stream_npackets);
    return 0;
}

static int tap_transfer_post_save(void *opaque)
{
    TapTransferState *s = opaque;

    /* The fds are in the stream now; these are only copies of ours */
    g_clear_pointer(&s->stream_queue, g_free);
    s->stream_queues = 0;
    return 0;
}

/* Destination side */

static bool tap_transfer_check_fd(TapTransferState *s, uint32_t index,
                                  const TapTransferQueue *q, Error **errp)
{
    struct ifreq ifr = { 0 };
    struct stat st;

    if (q->fd < 0) {
        error_setg(errp, "netdev %s: no file descriptor received for "
                   "queue %u; is the migration channel a UNIX socket?",
                   s->name, index);
        return false;
    }
    if (fstat(q->fd, &st) < 0 || !S_ISCHR(st.st_mode) ||
        major(st.st_rdev) != TUN_MISC_MAJOR ||
        minor(st.st_rdev) != TUN_MISC_MINOR) {
        error_setg(errp, "netdev %s: queue %u: received file descriptor is "
                   "not /dev/net/tun", s->name, index);
        return false;
    }
    if (ioctl(q->fd, TUNGETIFF, &ifr) < 0) {
        /* A queue the guest disabled is detached from its device */
        if (errno == EBADFD && !q->enabled) {
            return true;
        }
        error_setg_errno(errp, errno, "netdev %s: queue %u: received file "
                         "descriptor is not attached to a TAP device",
                         s->name, index);
        return false;
    }
    if (!(ifr.ifr_flags & IFF_TAP)) {
        error_setg(errp, "netdev %s: queue %u: received device %s is a TUN, "
                   "not a TAP device", s->name, index, ifr.ifr_name);
        return false;
    }
    if (strncmp(ifr.ifr_name, (char *)s->stream_ifname, IFNAMSIZ)) {
        error_setg(errp, "netdev %s: queue %u: received TAP device is %s, "
                   "expected %s", s->name, index, ifr.ifr_name,
                   (char *)s->stream_ifname);
        return false;
    }
    if (!!(ifr.ifr_flags & IFF_VNET_HDR) != !!q->host_vnet_hdr_len) {
        error_setg(errp, "netdev %s: queue %u: vnet header of TAP device %s "
                   "does not match the source's state", s->name, index,
                   ifr.ifr_name);
        return false;
    }
    return true;
}

static bool tap_transfer_check_stream(TapTransferState *s, Error **errp)
{
    if ((uint32_t)s->stream_queues != s->queues) {
        error_setg(errp, "netdev %s: the source has %d queues, this QEMU "
                   "was configured with %u", s->name, s->stream_queues,
                   s->queues);
        return false;
    }
    if (s->stream_ifname[IFNAMSIZ - 1]) {
        error_setg(errp, "netdev %s: invalid TAP device name received",
                   s->name);
        return false;
    }
    if (s->opts->ifname &&
        strcmp(s->opts->ifname, (char *)s->stream_ifname)) {
        error_setg(errp, "netdev %s: the source's TAP device is %s, this "
                   "QEMU was configured with ifname=%s", s->name,
                   (char *)s->stream_ifname, s->opts->ifname);
        return false;
    }
    for (int32_t i = 0; i < s->stream_queues; i++) {
        if (!tap_transfer_check_fd(s, i, &s->stream_queue[i], errp)) {
            return false;
        }
    }
    for (int32_t i = 0; s->stream_packets && i < s->stream_npackets; i++) {
        if (s->stream_packets[i].queue >= s->queues) {
            error_setg(errp, "netdev %s: received a packet for queue %u "
                       "of %u", s->name, s->stream_packets[i].queue,
                       s->queues);
            return false;
        }
    }
    return true;
}

static bool tap_transfer_adopt(TapTransferState *s, Error **errp)
{
    ERRP_GUARD();
    g_autofree char *default_downscript = NULL;

    for (uint32_t i = 0; i < s->queues; i++) {
        TapTransferQueue *q = &s->stream_queue[i];
        TapQueueState qs = {
            .enabled = q->enabled,
            .using_vnet_hdr = q->using_vnet_hdr,
            .host_vnet_hdr_len = q->host_vnet_hdr_len,
            .has_ufo = q->has_ufo,
            .has_uso = q->has_uso,
            .has_tunnel = s->stream_has_tunnel,
        };
        g_autofree char *vhostfd = NULL;

        /* SCM_RIGHTS reception leaves it blocking */
        if (!g_unix_set_fd_nonblocking(q->fd, true, NULL)) {
            error_setg_errno(errp, errno, "netdev %s: queue %u: cannot make "
                             "the received file descriptor non-blocking",
                             s->name, i);
            return false;
        }
        if (s->mgmt_vhostfds) {
            vhostfd = g_strdup_printf("%d", s->mgmt_vhostfds[i]);
            s->mgmt_vhostfds[i] = -1;
        }
        if (!tap_adopt_fd(s->ncs[i], q->fd, &qs, s->opts, vhostfd, errp)) {
            error_prepend(errp, "netdev %s: ", s->name);
            return false;
        }
        /* The client owns it now */
        q->fd = -1;
        tap_set_suspended(s->ncs[i], true);
    }
    s->adopted_idle = true;
    pstrcpy(s->ifname, sizeof(s->ifname), (char *)s->stream_ifname);
    if (s->stream_owns_downscript) {
        tap_set_downscript(s->ncs[0],
                           tap_transfer_downscript(s, &default_downscript),
                           s->ifname);
    }
    s->attached = true;
    tap_transfer_set_info(s, "adopted");
    trace_tap_transfer_adopted(s->name, s->queues, s->ifname);
    return true;
}

static int tap_transfer_post_load(void *opaque, int version_id)
{
    TapTransferState *s = opaque;
    Error *local_err = NULL;
    bool transfer = migrate_backend_transfer();

    if (s->stream_id_len != strlen(s->name) ||
        memcmp(s->stream_id, s->name, s->stream_id_len)) {
        error_report("netdev %s: the source sent the state of netdev %.*s; "
                     "tap-transfer netdevs must be created in the same order "
                     "on both sides", s->name, (int)s->stream_id_len,
                     (char *)s->stream_id);
        goto fail;
    }
    if (s->stream_transfer != transfer) {
        error_report("netdev %s: backend-transfer is %s on the source and "
                     "%s here; set it the same on both sides", s->name,
                     s->stream_transfer ? "on" : "off",
                     transfer ? "on" : "off");
        goto fail;
    }
    if (!transfer) {
        return 0;
    }
    if (s->attached) {
        error_report("netdev %s: already has a TAP device, cannot adopt the "
                     "source's", s->name);
        goto fail;
    }
    if (!tap_transfer_check_stream(s, &local_err) ||
        !tap_transfer_adopt(s, &local_err)) {
        error_report_err(local_err);
        goto fail;
    }
    /* Older than anything in the TAP, so ahead of it in the NIC's queue */
    tap_transfer_send_packets(s);
    g_clear_pointer(&s->stream_queue, g_free);
    s->stream_queues = 0;
    return 0;

fail:
    tap_transfer_close_stream_fds(s);
    tap_transfer_free_packets(s);
    return -EINVAL;
}

static bool tap_transfer_fds_needed(void *opaque)
{
    TapTransferState *s = opaque;

    return s->stream_transfer;
}

static const VMStateDescription vmstate_tap_transfer_queue = {
    .name = "tap-transfer/queue",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = (const VMStateField[]) {
        VMSTATE_FD(fd, TapTransferQueue),
        VMSTATE_BOOL(enabled, TapTransferQueue),
        VMSTATE_BOOL(using_vnet_hdr, TapTransferQueue),
        VMSTATE_UINT32(host_vnet_hdr_len, TapTransferQueue),
        VMSTATE_BOOL(has_ufo, TapTransferQueue),
        VMSTATE_BOOL(has_uso, TapTransferQueue),
        VMSTATE_END_OF_LIST()
    },
};

static int tap_transfer_fds_pre_load(void *opaque)
{
    TapTransferState *s = opaque;

    /* Nothing may be left from an earlier, failed load */
    tap_transfer_close_stream_fds(s);
    s->stream_has_tunnel = false;
    return 0;
}

static bool tap_transfer_queue_count_valid(void *opaque, int version_id)
{
    TapTransferState *s = opaque;

    return s->stream_queues > 0 && s->stream_queues <= TAP_TRANSFER_MAX_QUEUES;
}

static bool tap_transfer_tunnel_needed(void *opaque)
{
    TapTransferState *s = opaque;

    return s->stream_has_tunnel;
}

/*
 * State that only newer QEMU versions have, sent only while in use so
 * that the section stays loadable by older ones: UDP tunnel offloads.
 * An older destination that has none refuses to adopt the TAP.
 */
static const VMStateDescription vmstate_tap_transfer_tunnel = {
    .name = "tap-transfer/fds/tunnel",
    .version_id = 1,
    .minimum_version_id = 1,
    .needed = tap_transfer_tunnel_needed,
    .fields = (const VMStateField[]) {
        VMSTATE_BOOL(stream_has_tunnel, TapTransferState),
        VMSTATE_END_OF_LIST()
    },
};

static const VMStateDescription vmstate_tap_transfer_fds = {
    .name = "tap-transfer/fds",
    .version_id = 1,
    .minimum_version_id = 1,
    .needed = tap_transfer_fds_needed,
    .pre_load = tap_transfer_fds_pre_load,
    .fields = (const VMStateField[]) {
        VMSTATE_BUFFER(stream_ifname, TapTransferState),
        VMSTATE_BOOL(stream_owns_downscript, TapTransferState),
        VMSTATE_INT32(stream_queues, TapTransferState),
        VMSTATE_VALIDATE("queue count", tap_transfer_queue_count_valid),
        VMSTATE_STRUCT_VARRAY_ALLOC(stream_queue, TapTransferState,
                                    stream_queues, 1,
                                    vmstate_tap_transfer_queue,
                                    TapTransferQueue),
        VMSTATE_END_OF_LIST()
    },
    .subsections = (const VMStateDescription * const []) {
        &vmstate_tap_transfer_tunnel,
        NULL
    },
};

static bool tap_transfer_packet_size_valid(void *opaque, int version_id)
{
    TapTransferPacket *p = opaque;

    return p->size > 0 && p->size <= NET_BUFSIZE;
}

static const VMStateDescription vmstate_tap_transfer_packet = {
    .name = "tap-transfer/packet",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = (const VMStateField[]) {
        VMSTATE_UINT32(queue, TapTransferPacket),
        VMSTATE_UINT32(size, TapTransferPacket),
        VMSTATE_VALIDATE("packet size", tap_transfer_packet_size_valid),
        VMSTATE_VBUFFER_ALLOC_UINT32(data, TapTransferPacket, 0, NULL, size),
        VMSTATE_END_OF_LIST()
    },
};

static bool tap_transfer_packets_needed(void *opaque)
{
    TapTransferState *s = opaque;

    return s->stream_transfer && s->stream_npackets > 0;
}

static int tap_transfer_packets_pre_load(void *opaque)
{
    tap_transfer_free_packets(opaque);
    return 0;
}

static bool tap_transfer_packet_count_valid(void *opaque, int version_id)
{
    TapTransferState *s = opaque;

    return s->stream_npackets > 0 &&
           s->stream_npackets <= TAP_TRANSFER_MAX_PACKETS;
}

static const VMStateDescription vmstate_tap_transfer_packets = {
    .name = "tap-transfer/packets",
    .version_id = 1,
    .minimum_version_id = 1,
    .needed = tap_transfer_packets_needed,
    .pre_load = tap_transfer_packets_pre_load,
    .fields = (const VMStateField[]) {
        VMSTATE_INT32(stream_npackets, TapTransferState),
        VMSTATE_VALIDATE("packet count", tap_transfer_packet_count_valid),
        VMSTATE_STRUCT_VARRAY_ALLOC(stream_packets, TapTransferState,
                                    stream_npackets, 1,
                                    vmstate_tap_transfer_packet,
                                    TapTransferPacket),
        VMSTATE_END_OF_LIST()
    },
};

static const VMStateDescription vmstate_tap_transfer = {
    .name = "tap-transfer",
    .version_id = 1,
    .minimum_version_id = 1,
    .pre_save = tap_transfer_pre_save,
    .post_save = tap_transfer_post_save,
    .post_load = tap_transfer_post_load,
    .fields = (const VMStateField[]) {
        VMSTATE_UINT32(stream_id_len, TapTransferState),
        VMSTATE_VBUFFER_ALLOC_UINT32(stream_id, TapTransferState, 0, NULL,
                                     stream_id_len),
        VMSTATE_BOOL(stream_transfer, TapTransferState),
        VMSTATE_END_OF_LIST()
    },
    .subsections = (const VMStateDescription * const []) {
        &vmstate_tap_transfer_fds,
        &vmstate_tap_transfer_packets,
        NULL
    },
};

/* Attaching a TAP of our own: at start-up, or on a destination */

static bool tap_transfer_attach_own(TapTransferState *s, Error **errp)
{
    ERRP_GUARD();
    const NetdevTapOptions *opts = s->opts;
    g_autofree char *default_script = NULL;
    const char *script = opts->script;
    char ifname[128] = "";

    if (!script) {
        script = default_script = get_relocated_path(DEFAULT_NETWORK_SCRIPT);
    }
    if (opts->ifname) {
        pstrcpy(ifname, sizeof(ifname), opts->ifname);
    }

    for (uint32_t i = 0; i < s->queues; i++) {
        g_autofree char *vhostfd = NULL;
        int vnet_hdr = 1;
        int fd;

        if (s->mgmt_fds) {
            fd = s->mgmt_fds[i];
            s->mgmt_fds[i] = -1;
            vnet_hdr = tap_probe_vnet_hdr(fd, errp);
            if (vnet_hdr < 0) {
                close(fd);
                return false;
            }
        } else {
            fd = net_tap_init(opts, &vnet_hdr, i ? "no" : script, ifname,
                              sizeof(ifname), s->queues > 1, errp);
            if (fd < 0) {
                tap_transfer_explain_open_failure(errp);
                return false;
            }
        }
        if (s->mgmt_vhostfds) {
            vhostfd = g_strdup_printf("%d", s->mgmt_vhostfds[i]);
            s->mgmt_vhostfds[i] = -1;
        }
        if (!tap_attach_fd(s->ncs[i], opts, vhostfd, fd, vnet_hdr, errp)) {
            return false;
        }
        if (i == 0 && tap_fd_get_ifname(fd, ifname) == 0 && !s->mgmt_fds) {
            g_autofree char *default_downscript = NULL;

            tap_set_downscript(s->ncs[0],
                               tap_transfer_downscript(s, &default_downscript),
                               ifname);
        }
    }
    pstrcpy(s->ifname, sizeof(s->ifname), ifname);
    s->attached = true;
    tap_transfer_set_info(s, "own");
    trace_tap_transfer_attached(s->name, s->queues, s->ifname);
    return true;
}

/*
 * The stream begins: with backend-transfer off this is an ordinary
 * migration and the destination needs a TAP of its own, opened now,
 * before the source stops.
 */
static int tap_transfer_load_setup(QEMUFile *f, void *opaque, Error **errp)
{
    ERRP_GUARD();
    TapTransferState *s = opaque;

    trace_tap_transfer_load_setup(s->name, migrate_backend_transfer());
    if (s->attached || migrate_backend_transfer()) {
        /* Management's fds are for a new TAP, which we do not want */
        tap_transfer_close_fds(s->mgmt_fds, s->queues);
        return 0;
    }
    if (!tap_transfer_attach_own(s, errp)) {
        error_prepend(errp, "netdev %s: ", s->name);
        return -EINVAL;
    }
    return 0;
}

static const SaveVMHandlers savevm_tap_transfer_handlers = {
    .load_setup = tap_transfer_load_setup,
};

/* Creation */

static int *tap_transfer_take_fds(const char *names, uint32_t *count,
                                  Error **errp)
{
    g_auto(GStrv) fdnames = g_strsplit(names, ":", TAP_TRANSFER_MAX_QUEUES);
    uint32_t n = g_strv_length(fdnames);
    g_autofree int *fds = g_new(int, n);

    for (uint32_t i = 0; i < n; i++) {
        fds[i] = monitor_fd_param(monitor_cur(), fdnames[i], errp);
        if (fds[i] < 0 ||
            !g_unix_set_fd_nonblocking(fds[i], true, NULL)) {
            if (fds[i] >= 0) {
                error_setg_errno(errp, errno, "cannot use file descriptor %s",
                                 fdnames[i]);
            }
            tap_transfer_close_fds(fds, i + 1);
            return NULL;
        }
    }
    *count = n;
    return g_steal_pointer(&fds);
}

/*
 * tap.c takes fd= and fds= by monitor name or number.  Management may
 * also pass TAP fds in a file descriptor set (add-fd) and name them
 * /dev/fdset/N: replace those by the number of a duplicate of our own,
 * which tap.c, or the migration, then owns.
 */
static bool tap_transfer_resolve_fdsets(NetdevTapOptions *opts,
                                        Error **errp)
{
    char **field = opts->fd ? &opts->fd : &opts->fds;
    g_auto(GStrv) names = NULL;
    g_autofree int *dups = NULL;
    uint32_t n;

    if (!*field || !strstr(*field, "/dev/fdset/")) {
        return true;
    }
    names = g_strsplit(*field, ":", TAP_TRANSFER_MAX_QUEUES);
    n = g_strv_length(names);
    dups = g_new(int, n);
    for (uint32_t i = 0; i < n; i++) {
        dups[i] = -1;
        if (!g_str_has_prefix(names[i], "/dev/fdset/")) {
            continue;
        }
        dups[i] = qemu_open(names[i], O_RDWR, errp);
        if (dups[i] < 0) {
            error_prepend(errp, "cannot take a TAP file descriptor from %s: ",
                          names[i]);
            tap_transfer_close_fds(dups, i);
            return false;
        }
        /* Ours alone: the set may go away without it */
        monitor_fdset_dup_fd_remove(dups[i]);
        g_free(names[i]);
        names[i] = g_strdup_printf("%d", dups[i]);
    }
    g_free(*field);
    *field = g_strjoinv(":", names);
    return true;
}

static bool tap_transfer_check_options(const NetdevTapOptions *opts,
                                       NetClientState *peer, Error **errp)
{
    if (opts->helper || opts->br) {
        error_setg(errp, "helper= and br= are not supported by tap-transfer, "
                   "whose TAP must be handed between QEMU processes");
        return false;
    }
    if (peer) {
        error_setg(errp, "tap-transfer cannot be used with hubs (-net); "
                   "use -netdev");
        return false;
    }
    if (opts->fd && (opts->fds || opts->has_queues)) {
        error_setg(errp, "fds= and queues= are invalid with fd=");
        return false;
    }
    if (opts->fds && opts->has_queues) {
        error_setg(errp, "queues= is invalid with fds=");
        return false;
    }
    if ((opts->fd || opts->fds) &&
        (opts->ifname || opts->script || opts->downscript ||
         opts->has_vnet_hdr)) {
        error_setg(errp, "ifname=, script=, downscript= and vnet_hdr= are "
                   "invalid with fd= or fds=");
        return false;
    }
    if (opts->has_queues &&
        (opts->queues < 1 || opts->queues > TAP_TRANSFER_MAX_QUEUES)) {
        error_setg(errp, "queues= must be between 1 and %d",
                   TAP_TRANSFER_MAX_QUEUES);
        return false;
    }
    if (opts->vhostfds && !opts->fds) {
        error_setg(errp, "vhostfds= is invalid if fds= wasn't specified");
        return false;
    }
    return true;
}

/*
 * On an incoming QEMU the queue clients exist from the start, since the
 * NIC is realized against them, but stay without fd until the stream
 * says whether the source's arrive.  fds that management passed are
 * taken now, while the monitor that passed them is current.
 */
static bool tap_transfer_init_incoming(TapTransferState *s, Error **errp)
{
    const NetdevTapOptions *opts = s->opts;
    int vnet_hdr = opts->has_vnet_hdr ? opts->vnet_hdr : 1;
    uint32_t nvhostfds;

    if (opts->fd || opts->fds) {
        uint32_t nfds;

        s->mgmt_fds = tap_transfer_take_fds(opts->fd ?: opts->fds, &nfds,
                                            errp);
        if (!s->mgmt_fds) {
            return false;
        }
        s->queues = nfds;
        vnet_hdr = tap_probe_vnet_hdr(s->mgmt_fds[0], errp);
        if (vnet_hdr < 0) {
            return false;
        }
    }
    if (opts->vhostfd || opts->vhostfds) {
        const char *names = opts->vhostfd ?: opts->vhostfds;

        s->mgmt_vhostfds = tap_transfer_take_fds(names, &nvhostfds, errp);
        if (!s->mgmt_vhostfds) {
            return false;
        }
        if (nvhostfds != s->queues) {
            error_setg(errp, "the number of vhostfds passed does not match "
                       "the number of queues");
            return false;
        }
    }

    s->ncs = g_new0(NetClientState *, s->queues);
    for (uint32_t i = 0; i < s->queues; i++) {
        s->ncs[i] = tap_new_unattached(NULL, "tap-transfer", s->name, vnet_hdr);
    }
    if (opts->ifname) {
        pstrcpy(s->ifname, sizeof(s->ifname), opts->ifname);
    }
    tap_transfer_set_info(s, "awaiting migration");
    return true;
}

static bool tap_transfer_init_running(TapTransferState *s, Error **errp)
{
    ERRP_GUARD();
    NetClientState *ncs[TAP_TRANSFER_MAX_QUEUES];
    int n;

    if (net_init_tap_model(s->opts, "tap-transfer", s->name, NULL, errp) < 0) {
        if (!s->opts->fd && !s->opts->fds) {
            tap_transfer_explain_open_failure(errp);
        }
        error_prepend(errp, "netdev %s: ", s->name);
        return false;
    }
    n = qemu_find_net_clients_except(s->name, ncs, NET_CLIENT_DRIVER_NIC,
                                     TAP_TRANSFER_MAX_QUEUES);
    s->queues = n;
    s->ncs = g_memdup2(ncs, n * sizeof(ncs[0]));
    if (tap_fd_get_ifname(tap_get_fd(ncs[0]), s->ifname)) {
        s->ifname[0] = '\0';
    }
    s->owned_downscript = tap_has_downscript(ncs[0]);
    s->attached = true;
    tap_transfer_set_info(s, "own");
    return true;
}

static void tap_transfer_free(TapTransferState *s)
{
    tap_transfer_close_fds(s->mgmt_fds, s->queues);
    tap_transfer_close_fds(s->mgmt_vhostfds, s->queues);
    g_free(s->mgmt_fds);
    g_free(s->mgmt_vhostfds);
    qapi_free_NetdevTapOptions(s->opts);
    g_free(s->ncs);
    g_free(s->name);
    g_free(s);
}

static void tap_transfer_cleanup(Notifier *notifier, void *data)
{
    TapTransferState *s = container_of(notifier, TapTransferState, cleanup);

    vmstate_unregister(NULL, &vmstate_tap_transfer, s);
    unregister_savevm(NULL, "tap-transfer-setup", s);
    qemu_del_vm_change_state_handler(s->vm_change);
    tap_transfer_close_stream_fds(s);
    tap_transfer_free_packets(s);
    g_free(s->stream_id);
    tap_transfer_free(s);
}

static int net_init_tap_transfer(const Netdev *netdev, const char *name,
                                 NetClientState *peer, Error **errp)
{
    const NetdevTapOptions *opts = &netdev->u.tap_transfer;
    TapTransferState *s;
    bool ok;

    assert(netdev->type == NET_CLIENT_DRIVER_TAP_TRANSFER);
    if (!tap_transfer_check_options(opts, peer, errp)) {
        return -1;
    }

    s = g_new0(TapTransferState, 1);
    s->name = g_strdup(name);
    s->opts = QAPI_CLONE(NetdevTapOptions, opts);
    s->queues = opts->has_queues ? opts->queues : 1;
    if (!tap_transfer_resolve_fdsets(s->opts, errp)) {
        tap_transfer_free(s);
        return -1;
    }

    if (runstate_check(RUN_STATE_INMIGRATE)) {
        ok = tap_transfer_init_incoming(s, errp);
    } else {
        ok = tap_transfer_init_running(s, errp);
    }
    if (!ok) {
        for (uint32_t i = 0; s->ncs && i < s->queues; i++) {
            if (s->ncs[i]) {
                qemu_del_net_client(s->ncs[i]);
                break;
            }
        }
        tap_transfer_free(s);
        return -1;
    }

    /*
     * Registered now, before any -device, so that the section loads
     * before the NIC's and the NIC finds its backend complete.
     */
    vmstate_register(NULL, VMSTATE_INSTANCE_ID_ANY, &vmstate_tap_transfer, s);
    register_savevm_live("tap-transfer-setup", VMSTATE_INSTANCE_ID_ANY, 1,
                         &savevm_tap_transfer_handlers, s);
    s->vm_change = qemu_add_vm_change_state_handler_prio(
        tap_transfer_vm_change, s, TAP_TRANSFER_VM_CHANGE_PRIO);
    s->cleanup.notify = tap_transfer_cleanup;
    tap_add_cleanup_notifier(s->ncs[0], &s->cleanup);
    trace_tap_transfer_init(name, s->queues,
                            runstate_check(RUN_STATE_INMIGRATE));
    return 0;
}

static void tap_transfer_register(void)
{
    net_client_driver_register(NET_CLIENT_DRIVER_TAP_TRANSFER,
                               net_init_tap_transfer);
}

type_init(tap_transfer_register);
