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
 * The netdev's state is a QOM object, /netdevs/ID, whose migration
 * section is named after the netdev id, so the two sides may create
 * their netdevs in any order.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <net/if.h>
#include <linux/filter.h>
#include <linux/major.h>
#include <poll.h>
#include "qapi/error.h"
#include "qapi/clone-visitor.h"
#include "qapi/qapi-visit-net.h"
#include "qapi/util.h"
#include "qapi/visitor.h"
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qemu/module.h"
#include "qemu/sockets.h"
#include "qemu/queue.h"
#include "qom/object.h"
#include "hw/vmstate-if.h"
#include "monitor/monitor.h"
#include "qapi/qapi-types-migration.h"
#include "migration/client-options.h"
#include "migration/misc.h"
#include "migration/register.h"
#include "migration/vmstate.h"
#include "migration/qemu-file.h"
#include "net/net.h"
#include "net/queue.h"
#include "net/tap.h"
#include "net/tap_int.h"
#include "net/tap-linux.h"
#include "net/tap-transfer-compat.h"
#include "net/vhost_net.h"
#include "system/qtest.h"
#include "system/runstate.h"
#include "trace.h"

#ifdef CONFIG_LIBCAP_NG
#include <cap-ng.h>
#endif

#define TYPE_TAP_TRANSFER "netdev-tap-transfer"
OBJECT_DECLARE_SIMPLE_TYPE(TapTransfer, TAP_TRANSFER)
module_obj(TYPE_TAP_TRANSFER);

/* The QOM container of the netdevs' objects, under the root */
#define TAP_TRANSFER_CONTAINER "netdevs"

#define TAP_TRANSFER_MAX_QUEUES 1024
/*
 * A NIC queues at most this many frames from one sender (net/queue.c):
 * more frames than that per queue cannot have been waiting at the stop.
 */
#define TAP_TRANSFER_MAX_FRAMES_PER_QUEUE 10000
/*
 * The longest netdev id whose migration sections QEMU can name: a
 * section's idstr is at most 255 characters, and the longest one is
 * "netdev/ID/tap-transfer-setup".
 */
#define TAP_TRANSFER_MAX_ID_LEN \
    (255 - (int)strlen("netdev//tap-transfer-setup"))

/* What a netdev does with its TAP, as qom-get reads it */
typedef enum TapTransferState {
    /* On an incoming QEMU, no TAP yet */
    TAP_TRANSFER_AWAITING,
    /* A TAP this QEMU opened, or was given by management */
    TAP_TRANSFER_OWN,
    /* The source's TAP, not read until the VM runs here */
    TAP_TRANSFER_IDLE,
    /* The source's TAP, read since the VM runs here */
    TAP_TRANSFER_ADOPTED,
    /* Passed to a destination; read again only if the VM runs here again */
    TAP_TRANSFER_HANDED_OVER,
    TAP_TRANSFER__MAX,
} TapTransferState;

static const char *const tap_transfer_state_names[TAP_TRANSFER__MAX] = {
    [TAP_TRANSFER_AWAITING] = "awaiting",
    [TAP_TRANSFER_OWN] = "own",
    [TAP_TRANSFER_IDLE] = "idle",
    [TAP_TRANSFER_ADOPTED] = "adopted",
    [TAP_TRANSFER_HANDED_OVER] = "handed-over",
};

static const QEnumLookup tap_transfer_state_lookup = {
    .array = tap_transfer_state_names,
    .size = TAP_TRANSFER__MAX,
};

/* One TAP queue as it travels in the migration stream */
typedef struct TapTransferQueue {
    int32_t fd;
    bool enabled;
    bool using_vnet_hdr;
    uint32_t host_vnet_hdr_len;
    bool has_ufo;
    bool has_uso;
} TapTransferQueue;

/* A frame read from the TAP that the guest has not got yet */
typedef struct TapTransferFrame {
    /* Its netdev, for the checks of a frame being loaded */
    TapTransfer *owner;
    uint32_t queue;
    uint32_t size;
    uint8_t *data;
} TapTransferFrame;

struct TapTransfer {
    Object parent_obj;

    char *name;
    NetdevTapOptions *opts;
    uint32_t queues;
    /* Queue clients, all named @name; owned by net.c */
    NetClientState **ncs;
    /* Known when opened here, or from the options on a destination */
    char ifname[IFNAMSIZ];
    TapTransferState state;
    /* Where a handed-over netdev goes back to if the VM runs here again */
    TapTransferState state_before_handover;
    /*
     * This QEMU runs the downscript when it ends up owning the TAP: it
     * opened the TAP, or adopted it from a source that would have.
     */
    bool owns_downscript;
    bool vm_running;

    /* Destination: fds handed to us by management, not used yet */
    int *mgmt_fds;
    uint32_t n_mgmt_fds;
    int *mgmt_vhostfds;
    uint32_t n_mgmt_vhostfds;

    /*
     * Per queue, the frames read from the TAP that had not reached the
     * guest when the VM stopped, oldest first.  They go to the
     * destination with the state, or to the NIC when the VM runs here;
     * while they do, that queue reads nothing from the TAP.
     */
    GQueue *held;
    bool *releasing;
    /* Frames dropped rather than held or given to the NIC */
    uint64_t frames_dropped;

    /* The migration stream */
    uint32_t stream_id_len;
    uint8_t *stream_id;
    bool stream_transfer;
    uint8_t stream_ifname[IFNAMSIZ];
    bool stream_owns_downscript;
    int32_t stream_queues;
    TapTransferQueue *stream_queue;
    /* UDP tunnel offloads in use (QEMU >= 10.2): subsection "tunnel" */
    bool stream_has_tunnel;
    int32_t stream_nframes;
    /* Loading, the array owns the frames' data; saving, the held queues do */
    TapTransferFrame *stream_frames;

    /*
     * backend-transfer as it was when the migration began: on the
     * source from its setup to its end, on the destination from the
     * start of the load.  Off for a snapshot.
     */
    bool save_transfer;
    bool load_transfer;

    VMChangeStateEntry *vm_change;
    /* Source: a failed or cancelled migration, in either local mode */
    NotifierWithReturn migration_normal;
    NotifierWithReturn migration_cpr;
    /* Runs when the clients go away: netdev_del, exit */
    Notifier cleanup;
    QTAILQ_ENTRY(TapTransfer) next;
};

static QTAILQ_HEAD(, TapTransfer) tap_transfers =
    QTAILQ_HEAD_INITIALIZER(tap_transfers);

static void tap_transfer_close_fds(int *fds, uint32_t n)
{
    for (uint32_t i = 0; fds && i < n; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
    }
}

static void tap_transfer_frame_free(gpointer data)
{
    TapTransferFrame *f = data;

    g_free(f->data);
    g_free(f);
}

static uint32_t tap_transfer_frames_held(TapTransfer *s)
{
    uint32_t n = 0;

    for (uint32_t i = 0; s->held && i < s->queues; i++) {
        n += g_queue_get_length(&s->held[i]);
    }
    return n;
}

static void tap_transfer_count_drops(TapTransfer *s, uint32_t queue,
                                     uint32_t frames, const char *why)
{
    if (frames) {
        s->frames_dropped += frames;
        trace_tap_transfer_drop(s->name, queue, frames, why);
    }
}

static void tap_transfer_drop_held(TapTransfer *s, uint32_t queue,
                                   const char *why)
{
    tap_transfer_count_drops(s, queue, g_queue_get_length(&s->held[queue]),
                             why);
    g_queue_clear_full(&s->held[queue], tap_transfer_frame_free);
}

/*
 * A queue holds no more frames than a destination takes for it: the
 * oldest are kept, the others dropped.
 */
static void tap_transfer_bound_held(TapTransfer *s, uint32_t queue)
{
    uint32_t excess = 0;

    while (g_queue_get_length(&s->held[queue]) >
           TAP_TRANSFER_MAX_FRAMES_PER_QUEUE) {
        tap_transfer_frame_free(g_queue_pop_tail(&s->held[queue]));
        excess++;
    }
    tap_transfer_count_drops(s, queue, excess, "more than a queue holds");
}

/*
 * Forget what a stream brought and was not adopted: the received fds
 * are closed, the frames freed.
 */
static void tap_transfer_discard_stream(TapTransfer *s)
{
    for (int32_t i = 0; s->stream_queue && i < s->queues; i++) {
        if (s->stream_queue[i].fd >= 0) {
            close(s->stream_queue[i].fd);
        }
    }
    g_clear_pointer(&s->stream_queue, g_free);
    s->stream_queues = 0;
    for (int32_t i = 0; s->stream_frames && i < s->stream_nframes; i++) {
        g_free(s->stream_frames[i].data);
    }
    g_clear_pointer(&s->stream_frames, g_free);
    s->stream_nframes = 0;
    g_clear_pointer(&s->stream_id, g_free);
    s->stream_id_len = 0;
}

/* A name received in the stream, fit to be printed */
static char *tap_transfer_printable(const uint8_t *name, size_t len)
{
    g_autofree char *copy = g_strndup((const char *)name, len);

    return g_strescape(copy, NULL);
}

static const char *tap_transfer_downscript(TapTransfer *s, char **to_free)
{
    if (s->opts->downscript) {
        return s->opts->downscript;
    }
    *to_free = get_relocated_path(DEFAULT_NETWORK_DOWN_SCRIPT);
    return *to_free;
}

/* The downscript runs when this QEMU's clients go away, or not */
static void tap_transfer_arm_downscript(TapTransfer *s, bool armed)
{
    g_autofree char *default_downscript = NULL;

    if (armed && s->owns_downscript) {
        tap_set_downscript(s->ncs[0],
                           tap_transfer_downscript(s, &default_downscript),
                           s->ifname);
    } else {
        tap_set_downscript(s->ncs[0], NULL, NULL);
    }
}

/* What "info network" shows of each queue */
static void tap_transfer_update_info(TapTransfer *s)
{
    static const char *const how[TAP_TRANSFER__MAX] = {
        [TAP_TRANSFER_AWAITING] = "awaiting migration",
        [TAP_TRANSFER_OWN] = "own",
        [TAP_TRANSFER_IDLE] = "adopted, idle until the VM runs",
        [TAP_TRANSFER_ADOPTED] = "adopted",
        [TAP_TRANSFER_HANDED_OVER] = "handed over",
    };

    for (uint32_t i = 0; i < s->queues; i++) {
        qemu_set_info_str(s->ncs[i], "tap-transfer,ifname=%s,queue=%u/%u,%s",
                          s->ifname[0] ? s->ifname : "?", i, s->queues,
                          how[s->state]);
    }
}

static void tap_transfer_set_state(TapTransfer *s, TapTransferState state)
{
    s->state = state;
    tap_transfer_update_info(s);
    trace_tap_transfer_state(s->name, tap_transfer_state_names[state]);
}

/*
 * The TAP may have been renamed since this QEMU opened or adopted it
 * (management keeping a name across a hop): what goes into the stream
 * and what management reads is the name the kernel has now.
 */
static void tap_transfer_refresh_ifname(TapTransfer *s)
{
    char ifname[IFNAMSIZ];

    if (!s->queues || tap_get_fd(s->ncs[0]) < 0 ||
        tap_fd_get_ifname(tap_get_fd(s->ncs[0]), ifname) ||
        !strcmp(ifname, s->ifname)) {
        return;
    }
    trace_tap_transfer_renamed(s->name, s->ifname, ifname);
    pstrcpy(s->ifname, sizeof(s->ifname), ifname);
    tap_transfer_update_info(s);
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

/* Reading the TAP, and giving the NIC what was held */

/*
 * A queue reads its TAP while the VM runs, unless held frames still go
 * to the NIC ahead of what the TAP has.  A stopped VM has nothing read:
 * the frames wait in the TAP, where nothing drops them.
 */
static void tap_transfer_update_reading(TapTransfer *s, uint32_t queue)
{
    tap_set_suspended(s->ncs[queue],
                      !s->vm_running || s->releasing[queue] ||
                      s->state == TAP_TRANSFER_HANDED_OVER);
}

static TapTransfer *tap_transfer_find_client(NetClientState *nc,
                                             uint32_t *queue)
{
    TapTransfer *s;

    QTAILQ_FOREACH(s, &tap_transfers, next) {
        for (uint32_t i = 0; i < s->queues; i++) {
            if (s->ncs[i] == nc) {
                *queue = i;
                return s;
            }
        }
    }
    return NULL;
}

static void tap_transfer_release_queue(TapTransfer *s, uint32_t queue);

static void tap_transfer_frame_sent(NetClientState *nc, ssize_t len)
{
    uint32_t queue;
    TapTransfer *s = tap_transfer_find_client(nc, &queue);

    if (s && s->releasing[queue]) {
        tap_transfer_release_queue(s, queue);
    }
}

/*
 * Give the NIC the frames held for @queue, one at a time, each after
 * the one before was taken, then read the TAP again.
 */
static void tap_transfer_release_queue(TapTransfer *s, uint32_t queue)
{
    NetClientState *nc = s->ncs[queue];
    bool had_frames = !g_queue_is_empty(&s->held[queue]) ||
                      s->releasing[queue];
    TapTransferFrame *f;

    /* vhost owns the guest's receive ring: QEMU cannot fill it */
    if (get_vhost_net(nc)) {
        tap_transfer_drop_held(s, queue, "vhost-net owns the receive queue");
        had_frames = false;
    }
    while ((f = g_queue_pop_head(&s->held[queue]))) {
        ssize_t ret;

        trace_tap_transfer_release(s->name, queue, f->size);
        ret = qemu_send_packet_async(nc, f->data, f->size,
                                     tap_transfer_frame_sent);
        tap_transfer_frame_free(f);
        if (ret == 0) {
            /* Queued in the NIC, which calls back once it took it */
            s->releasing[queue] = true;
            tap_transfer_update_reading(s, queue);
            return;
        }
    }
    s->releasing[queue] = false;
    /*
     * A frame tap.c read was among them: tap.c stopped reading for its
     * completion, which never comes for a frame taken back.
     */
    if (had_frames && !get_vhost_net(nc)) {
        nc->info->poll(nc, true);
    }
    tap_transfer_update_reading(s, queue);
}

typedef struct TapTransferTake {
    TapTransfer *s;
    uint32_t queue;
    GQueue taken;
    uint32_t dropped;
} TapTransferTake;

/*
 * tap.c is not the only sender on behalf of a TAP client: a filter on
 * the netdev (filter-redirector with queue=tx) injects whatever its
 * chardev says, a frame of 0 bytes included.  A frame that no
 * destination would take is not held.
 */
static void tap_transfer_take_frame(const uint8_t *data, size_t size,
                                    void *opaque)
{
    TapTransferTake *take = opaque;
    TapTransferFrame *f;

    if (!size || size > NET_BUFSIZE) {
        take->dropped++;
        return;
    }
    f = g_new0(TapTransferFrame, 1);
    f->owner = take->s;
    f->queue = take->queue;
    f->size = size;
    f->data = g_memdup2(data, size);
    g_queue_push_tail(&take->taken, f);
}

/*
 * Hold the frames read from the TAP that still wait in the NIC's
 * queues.  Left there they would be lost: when the VM stops, net.c
 * flushes these queues into a NIC that refuses everything once stopped,
 * and frees what it refused.  They are older than the frames still
 * held for their queue, if any: those were waiting behind them.
 */
static void tap_transfer_hold_queued(TapTransfer *s)
{
    uint32_t before = tap_transfer_frames_held(s);
    TapTransferTake take = { .s = s };

    for (take.queue = 0; take.queue < s->queues; take.queue++) {
        NetClientState *nc = s->ncs[take.queue];
        TapTransferFrame *f;

        if (!nc->peer) {
            continue;
        }
        g_queue_init(&take.taken);
        take.dropped = 0;
        qemu_net_queue_take(nc->peer->incoming_queue, nc,
                            tap_transfer_take_frame, &take);
        tap_transfer_count_drops(s, take.queue, take.dropped,
                                 "a frame no destination takes");
        while ((f = g_queue_pop_tail(&take.taken))) {
            g_queue_push_head(&s->held[take.queue], f);
        }
        tap_transfer_bound_held(s, take.queue);
        /* Its completion was taken with it */
        s->releasing[take.queue] = false;
    }
    if (tap_transfer_frames_held(s) != before) {
        trace_tap_transfer_hold(s->name, before, tap_transfer_frames_held(s));
    }
}

/*
 * Guest frames the TAP could not take yet are flushed by net.c when the
 * VM stops, and dropped if the TAP still refuses them.  Only a full TAP
 * send buffer (sndbuf=, unlimited by default) refuses; say so when it
 * happens, since nothing else would.
 */
static void tap_transfer_flush_tx(TapTransfer *s)
{
    for (uint32_t i = 0; i < s->queues; i++) {
        if (!qemu_net_queue_flush(s->ncs[i]->incoming_queue)) {
            trace_tap_transfer_tx_unsent(s->name, i);
        }
    }
}

/* Who owns the TAP */

/*
 * The source's handover did not hold: it failed, was cancelled, or the
 * VM runs here again.  The TAP is this QEMU's again, downscript and all.
 */
static void tap_transfer_take_back(TapTransfer *s)
{
    for (uint32_t i = 0; i < s->queues; i++) {
        /*
         * QEMU 10.0's socket channel makes the fds it receives blocking,
         * and a destination shares the file description with us.
         */
        if (!g_unix_set_fd_nonblocking(tap_get_fd(s->ncs[i]), true, NULL)) {
            warn_report("netdev %s: cannot make queue %u non-blocking: %s",
                        s->name, i, strerror(errno));
        }
    }
    tap_transfer_set_state(s, s->state_before_handover);
    /*
     * A destination that has not run the VM goes back to idle, where
     * the TAP and its downscript are not its own yet: they become so if
     * the VM runs here.
     */
    tap_transfer_arm_downscript(s, s->state == TAP_TRANSFER_OWN ||
                                   s->state == TAP_TRANSFER_ADOPTED);
    for (uint32_t i = 0; i < s->queues; i++) {
        tap_transfer_update_reading(s, i);
    }
    trace_tap_transfer_take_back(s->name);
}

/*
 * The source's migration: whether it hands the TAP over is decided as
 * it begins, and a netdev with no TAP refuses it then, before the VM
 * stops.
 */
static int tap_transfer_migration_event(TapTransfer *s, MigrationEvent *e,
                                        Error **errp)
{
    switch (e->type) {
    case MIG_EVENT_PRECOPY_SETUP:
        s->save_transfer = migrate_backend_transfer();
        if (s->save_transfer && s->state == TAP_TRANSFER_AWAITING) {
            error_setg(errp, "netdev %s has no TAP device to hand over: "
                       "no incoming migration brought one", s->name);
            s->save_transfer = false;
            return -EINVAL;
        }
        break;
    case MIG_EVENT_PRECOPY_FAILED:
        if (s->state == TAP_TRANSFER_HANDED_OVER) {
            tap_transfer_take_back(s);
        }
        s->save_transfer = false;
        break;
    case MIG_EVENT_PRECOPY_DONE:
        s->save_transfer = false;
        break;
    default:
        break;
    }
    return 0;
}

static int tap_transfer_migration_normal(NotifierWithReturn *notifier,
                                         MigrationEvent *e, Error **errp)
{
    return tap_transfer_migration_event(container_of(notifier, TapTransfer,
                                                     migration_normal),
                                        e, errp);
}

static int tap_transfer_migration_cpr(NotifierWithReturn *notifier,
                                      MigrationEvent *e, Error **errp)
{
    return tap_transfer_migration_event(container_of(notifier, TapTransfer,
                                                     migration_cpr),
                                        e, errp);
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
    TapTransfer *s = opaque;

    s->vm_running = running;
    if (s->state == TAP_TRANSFER_AWAITING) {
        if (running) {
            error_report("netdev %s: the VM runs, but the incoming migration "
                         "brought no state for this netdev, which has no "
                         "TAP device; is it missing on the source?", s->name);
        }
        return;
    }
    if (!running) {
        for (uint32_t i = 0; i < s->queues; i++) {
            tap_transfer_update_reading(s, i);
        }
        tap_transfer_hold_queued(s);
        tap_transfer_flush_tx(s);
        return;
    }
    if (s->state == TAP_TRANSFER_HANDED_OVER) {
        /* The handover was abandoned: the VM runs here again */
        tap_transfer_take_back(s);
    } else if (s->state == TAP_TRANSFER_IDLE) {
        /* The handover held: the TAP is this QEMU's now */
        tap_transfer_set_state(s, TAP_TRANSFER_ADOPTED);
        tap_transfer_arm_downscript(s, true);
    }
    for (uint32_t i = 0; i < s->queues; i++) {
        tap_transfer_release_queue(s, i);
    }
}

/* Source side */

static int tap_transfer_pre_save(void *opaque)
{
    TapTransfer *s = opaque;
    int32_t n = 0;

    g_free(s->stream_id);
    s->stream_id = (uint8_t *)g_strdup(s->name);
    s->stream_id_len = strlen(s->name);
    s->stream_transfer = s->save_transfer;
    if (!s->stream_transfer) {
        return 0;
    }
    if (s->state == TAP_TRANSFER_AWAITING) {
        /* The migration's setup refused this already */
        error_report("netdev %s has no TAP device to hand over", s->name);
        return -EINVAL;
    }

    /*
     * The VM is stopped and we hold the BQL until the state is sent:
     * from here on, frames stay in the TAP for the destination, and
     * those read but not delivered go with the state.
     */
    if (s->state != TAP_TRANSFER_HANDED_OVER) {
        s->state_before_handover = s->state;
        tap_transfer_set_state(s, TAP_TRANSFER_HANDED_OVER);
    }
    for (uint32_t i = 0; i < s->queues; i++) {
        tap_transfer_update_reading(s, i);
    }
    tap_transfer_hold_queued(s);

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
    }

    /* The held queues keep the frames, in case the VM runs here again */
    g_free(s->stream_frames);
    s->stream_nframes = tap_transfer_frames_held(s);
    s->stream_frames = g_new0(TapTransferFrame, s->stream_nframes);
    for (uint32_t i = 0; i < s->queues; i++) {
        for (GList *l = s->held[i].head; l; l = l->next) {
            s->stream_frames[n++] = *(TapTransferFrame *)l->data;
        }
    }

    tap_transfer_refresh_ifname(s);
    pstrcpy((char *)s->stream_ifname, sizeof(s->stream_ifname), s->ifname);
    /* The destination owns the TAP once the VM runs there */
    s->stream_owns_downscript = s->owns_downscript;
    tap_transfer_arm_downscript(s, false);
    trace_tap_transfer_handover(s->name, s->queues, s->ifname,
                                s->stream_nframes);
    return 0;
}

static int tap_transfer_post_save(void *opaque)
{
    TapTransfer *s = opaque;

    /* The fds are in the stream now; these are only copies of ours */
    g_clear_pointer(&s->stream_queue, g_free);
    s->stream_queues = 0;
    g_clear_pointer(&s->stream_frames, g_free);
    s->stream_nframes = 0;
    return 0;
}

/* Destination side */

/* Linux's TUN_MINOR, from include/linux/miscdevice.h, not a uapi header */
#define TAP_TRANSFER_TUN_MINOR 200

/* From linux/if_tun.h; net/tap-linux.h has not these */
#define TAP_TRANSFER_TUNATTACHFILTER _IOW('T', 213, struct sock_fprog)
#define TAP_TRANSFER_TUNDETACHFILTER _IOW('T', 214, struct sock_fprog)
#define TAP_TRANSFER_TUNGETFILTER _IOR('T', 219, struct sock_fprog)

/*
 * Whether a TAP device prefixes its frames with packet information,
 * that is whether it lacks IFF_NO_PI.  TUNGETIFF alone cannot tell: on
 * a queue with no socket filter it sets IFF_NOFILTER, IFF_NO_PI's bit,
 * so only a clear bit answers.  A device without a filter gets one that
 * passes every frame for the time of the question, and is left as it
 * was.  One that has a filter, or had one that someone else detached
 * (the kernel keeps its length, and TUNGETFILTER cannot say whether it
 * is still attached), is left alone: then a set bit tells nothing, and
 * *known is false.
 *
 * The kernel attaches the filter to every queue of the device, some
 * 50 us each: this is for the fds management passes, at -netdev or
 * netdev_add, never for the downtime.
 */
static bool tap_transfer_probe_pi(int fd, bool *has_pi, bool *known,
                                  Error **errp)
{
    struct sock_filter pass_all = BPF_STMT(BPF_RET | BPF_K, UINT32_MAX);
    struct sock_fprog probe = { .len = 1, .filter = &pass_all };
    struct sock_fprog current = { 0 };
    struct ifreq ifr = { 0 };
    bool attached = false;
    int ret;

    if (ioctl(fd, TAP_TRANSFER_TUNGETFILTER, &current) < 0) {
        error_setg_errno(errp, errno, "cannot read the socket filter");
        return false;
    }
    if (!current.len) {
        if (ioctl(fd, TAP_TRANSFER_TUNATTACHFILTER, &probe) < 0) {
            error_setg_errno(errp, errno, "cannot attach a socket filter");
            return false;
        }
        attached = true;
    }
    ret = ioctl(fd, TUNGETIFF, &ifr);
    if (attached) {
        struct sock_fprog none = { 0 };

        if (ioctl(fd, TAP_TRANSFER_TUNDETACHFILTER, &probe) < 0) {
            error_setg_errno(errp, errno, "cannot detach the socket filter");
            return false;
        }
        /*
         * Forget the detached filter's length, which would hide the
         * device from the next probe: the kernel records an empty
         * program before it refuses it (EINVAL), attaching nothing.
         */
        ioctl(fd, TAP_TRANSFER_TUNATTACHFILTER, &none);
    }
    if (ret < 0) {
        error_setg_errno(errp, errno, "cannot read the device's flags");
        return false;
    }
    *has_pi = !(ifr.ifr_flags & IFF_NO_PI);
    /* The kernel attaches filters to the queues in use only */
    *known = *has_pi || (attached && !(ifr.ifr_flags & IFF_DETACH_QUEUE));
    return true;
}

/*
 * The fds management passes are queues of one device, which, if it is
 * a TAP, must have no packet information, as tap.c reads and writes
 * frames.  A clear bit on any queue refuses; queue 0 is probed for the
 * device.  A TUN is tap.c's to take, and a handover's to refuse.
 */
static bool tap_transfer_check_mgmt_fds(const char *name, const int *fds,
                                        uint32_t n, Error **errp)
{
    ERRP_GUARD();
    struct ifreq ifr0 = { 0 };
    bool has_pi = false;
    bool known = true;

    for (uint32_t i = 0; i < n; i++) {
        struct ifreq ifr = { 0 };

        if (ioctl(fds[i], TUNGETIFF, &ifr) < 0) {
            error_setg_errno(errp, errno, "netdev %s: queue %u: file "
                             "descriptor is not a TAP device's", name, i);
            return false;
        }
        if (i == 0) {
            ifr0 = ifr;
        } else if (strncmp(ifr.ifr_name, ifr0.ifr_name, IFNAMSIZ)) {
            error_setg(errp, "netdev %s: queue %u is TAP device %s, queue 0 "
                       "%s: the queues of a netdev are one device", name, i,
                       ifr.ifr_name, ifr0.ifr_name);
            return false;
        }
        has_pi = !(ifr.ifr_flags & IFF_NO_PI);
        if ((ifr.ifr_flags & IFF_TAP) && has_pi) {
            break;
        }
    }
    if (!(ifr0.ifr_flags & IFF_TAP)) {
        return true;
    }
    if (!has_pi &&
        !tap_transfer_probe_pi(fds[0], &has_pi, &known, errp)) {
        error_prepend(errp, "netdev %s: queue 0: ", name);
        return false;
    }
    if (has_pi) {
        error_setg(errp, "netdev %s: TAP device %s prefixes its frames with "
                   "packet information (no IFF_NO_PI)", name,
                   ifr0.ifr_name);
        return false;
    }
    if (!known) {
        trace_tap_transfer_pi_unknown(name, ifr0.ifr_name);
    }
    return true;
}

static bool tap_transfer_check_fd(TapTransfer *s, uint32_t index,
                                  const TapTransferQueue *q, Error **errp)
{
    ERRP_GUARD();
    struct ifreq ifr = { 0 };
    struct stat st;
    int hdr_len;

    if (q->fd < 0) {
        error_setg(errp, "netdev %s: no file descriptor received for "
                   "queue %u; is the migration channel a UNIX socket?",
                   s->name, index);
        return false;
    }
    if (fstat(q->fd, &st) < 0 || !S_ISCHR(st.st_mode) ||
        major(st.st_rdev) != MISC_MAJOR ||
        minor(st.st_rdev) != TAP_TRANSFER_TUN_MINOR) {
        error_setg(errp, "netdev %s: queue %u: received file descriptor is "
                   "not /dev/net/tun", s->name, index);
        return false;
    }
    /* A queue the guest disabled still names the device it belongs to */
    if (ioctl(q->fd, TUNGETIFF, &ifr) < 0) {
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
        g_autofree char *ifname = tap_transfer_printable(s->stream_ifname,
                                                         IFNAMSIZ);

        error_setg(errp, "netdev %s: queue %u: received TAP device is %s, "
                   "expected %s", s->name, index, ifr.ifr_name, ifname);
        return false;
    }
    /*
     * tap.c reads and writes frames without the packet information.  A
     * clear bit says so for sure; see tap_transfer_probe_pi(), which
     * the source ran on fds that management gave it, and which costs
     * too much for the downtime.
     */
    if (!(ifr.ifr_flags & IFF_NO_PI)) {
        error_setg(errp, "netdev %s: queue %u: received TAP device %s "
                   "prefixes its frames with packet information "
                   "(no IFF_NO_PI)", s->name, index, ifr.ifr_name);
        return false;
    }
    if (s->queues > 1 && !(ifr.ifr_flags & IFF_MULTI_QUEUE)) {
        error_setg(errp, "netdev %s: queue %u: received TAP device %s has "
                   "one queue, this QEMU was configured with %u", s->name,
                   index, ifr.ifr_name, s->queues);
        return false;
    }
    if (!(ifr.ifr_flags & IFF_VNET_HDR)) {
        hdr_len = 0;
    } else if (ioctl(q->fd, TUNGETVNETHDRSZ, &hdr_len) < 0) {
        error_setg_errno(errp, errno, "netdev %s: queue %u: cannot read the "
                         "vnet header length of TAP device %s", s->name,
                         index, ifr.ifr_name);
        return false;
    }
    if (hdr_len != q->host_vnet_hdr_len) {
        error_setg(errp, "netdev %s: queue %u: the source's state has a "
                   "vnet header of %u bytes, TAP device %s one of %d",
                   s->name, index, q->host_vnet_hdr_len, ifr.ifr_name,
                   hdr_len);
        return false;
    }
    return true;
}

static bool tap_transfer_check_stream(TapTransfer *s, Error **errp)
{
    if (!memchr(s->stream_ifname, '\0', IFNAMSIZ) || !s->stream_ifname[0]) {
        error_setg(errp, "netdev %s: invalid TAP device name received",
                   s->name);
        return false;
    }
    if (s->opts->ifname &&
        strcmp(s->opts->ifname, (char *)s->stream_ifname)) {
        g_autofree char *ifname = tap_transfer_printable(s->stream_ifname,
                                                         IFNAMSIZ);

        error_setg(errp, "netdev %s: the source's TAP device is %s, this "
                   "QEMU was configured with ifname=%s", s->name, ifname,
                   s->opts->ifname);
        return false;
    }
    for (uint32_t i = 0; i < s->queues; i++) {
        if (!tap_transfer_check_fd(s, i, &s->stream_queue[i], errp)) {
            return false;
        }
    }
    return true;
}

/*
 * Give every queue client its received fd, or none at all: a queue that
 * cannot be set up undoes those before it.  Nothing is read before the
 * VM runs here.
 */
static bool tap_transfer_adopt(TapTransfer *s, Error **errp)
{
    ERRP_GUARD();
    uint32_t i;

    pstrcpy(s->ifname, sizeof(s->ifname), (char *)s->stream_ifname);
    for (i = 0; i < s->queues; i++) {
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

        /* The source's may have been made blocking by QEMU 10.0's channel */
        if (!g_unix_set_fd_nonblocking(q->fd, true, NULL)) {
            error_setg_errno(errp, errno, "cannot make the received file "
                             "descriptor non-blocking");
            goto fail;
        }
        if (s->mgmt_vhostfds) {
            /* tap.c's from here on, whatever happens */
            vhostfd = g_strdup_printf("%d", s->mgmt_vhostfds[i]);
            s->mgmt_vhostfds[i] = -1;
        }
        tap_transfer_update_reading(s, i);
        if (!tap_adopt_fd(s->ncs[i], q->fd, &qs, s->opts, vhostfd, errp)) {
            goto fail;
        }
        q->fd = -1;
    }
    s->owns_downscript = s->stream_owns_downscript;
    tap_transfer_set_state(s, TAP_TRANSFER_IDLE);
    trace_tap_transfer_adopted(s->name, s->queues, s->ifname);
    return true;

fail:
    error_prepend(errp, "netdev %s: queue %u: ", s->name, i);
    while (i-- > 0) {
        s->stream_queue[i].fd = tap_detach_fd(s->ncs[i]);
    }
    return false;
}

static int tap_transfer_post_load(void *opaque, int version_id)
{
    TapTransfer *s = opaque;
    Error *local_err = NULL;

    if (memcmp(s->stream_id, s->name, s->stream_id_len)) {
        g_autofree char *id = tap_transfer_printable(s->stream_id,
                                                     s->stream_id_len);

        error_report("netdev %s: the migration stream holds the state of "
                     "netdev %s", s->name, id);
        goto fail;
    }
    if (!s->stream_transfer) {
        if (s->load_transfer) {
            error_report("netdev %s: backend-transfer is off on the source "
                         "and on here; set it the same on both sides",
                         s->name);
            goto fail;
        }
        tap_transfer_discard_stream(s);
        return 0;
    }
    if (!s->stream_queue) {
        error_report("netdev %s: the source hands its TAP over but sent no "
                     "file descriptors", s->name);
        goto fail;
    }
    if (!tap_transfer_check_stream(s, &local_err) ||
        !tap_transfer_adopt(s, &local_err)) {
        error_report_err(local_err);
        goto fail;
    }
    /* Older than anything in the TAP: the NIC gets them first */
    for (int32_t i = 0; s->stream_frames && i < s->stream_nframes; i++) {
        TapTransferFrame *f = &s->stream_frames[i];

        g_queue_push_tail(&s->held[f->queue], g_memdup2(f, sizeof(*f)));
        f->data = NULL;
    }
    /* Their count was bounded for all queues together */
    for (uint32_t i = 0; i < s->queues; i++) {
        tap_transfer_bound_held(s, i);
    }
    tap_transfer_discard_stream(s);
    return 0;

fail:
    tap_transfer_discard_stream(s);
    return -EINVAL;
}

/*
 * Tests only: pause points in the section's save.
 *
 * A test that plays the destination must be able to hang up, or refuse
 * on the return path, at a given place inside this section: before,
 * between and after the fds.  Under qtest, with TAP_TRANSFER_TEST_PAUSE
 * naming a UNIX socket, the save stops at each pause point: it flushes
 * what it has written, so that the peer has all of it, writes the
 * point's name and a newline on a new connection to that socket, and
 * goes on when it reads a byte back (or after a minute without one).
 * The points are fields of no size that exist only then: the stream is
 * the same, byte for byte, and a destination has them never.
 */
#define TAP_TRANSFER_PAUSE_TIMEOUT_MS (60 * 1000)

static const char *tap_transfer_pause_socket(void)
{
    return qtest_enabled() ? g_getenv("TAP_TRANSFER_TEST_PAUSE") : NULL;
}

static bool tap_transfer_pausing(void *opaque, int version_id)
{
    return tap_transfer_pause_socket() != NULL;
}

static int tap_transfer_pause_put(QEMUFile *f, void *pv, size_t size,
                                  const VMStateField *field,
                                  JSONWriter *vmdesc)
{
    g_autofree char *line = g_strdup_printf("%s\n", field->name);
    struct pollfd pfd = { .events = POLLIN };
    Error *err = NULL;
    char go;

    /* A failed stream stays failed: the flush is then a no-op */
    qemu_fflush(f);
    pfd.fd = unix_connect(tap_transfer_pause_socket(), &err);
    if (pfd.fd < 0) {
        warn_report_err(err);
        return 0;
    }
    trace_tap_transfer_test_pause(field->name);
    if (qemu_write_full(pfd.fd, line, strlen(line)) != strlen(line) ||
        poll(&pfd, 1, TAP_TRANSFER_PAUSE_TIMEOUT_MS) != 1 ||
        read(pfd.fd, &go, 1) != 1) {
        warn_report("tap-transfer test pause %s: no answer", field->name);
    }
    close(pfd.fd);
    trace_tap_transfer_test_resume(field->name);
    return 0;
}

static int tap_transfer_pause_get(QEMUFile *f, void *pv, size_t size,
                                  const VMStateField *field)
{
    return 0;
}

static const VMStateInfo tap_transfer_pause_info = {
    .name = "tap-transfer-test-pause",
    .get = tap_transfer_pause_get,
    .put = tap_transfer_pause_put,
};

#define VMSTATE_TAP_TRANSFER_PAUSE(_point) {                         \
    .name = (_point),                                                \
    .field_exists = tap_transfer_pausing,                            \
    .info = &tap_transfer_pause_info,                                \
    .flags = VMS_SINGLE,                                             \
}

/*
 * fds and frames come only in a handover that both sides agreed on:
 * in any other stream they are refused before they are read.
 */
static bool tap_transfer_handover_agreed(TapTransfer *s, const char *what)
{
    if (!s->stream_transfer) {
        error_report("netdev %s: the stream carries %s, but backend-transfer "
                     "is off on the source", s->name, what);
        return false;
    }
    if (!s->load_transfer) {
        error_report("netdev %s: backend-transfer is on on the source and "
                     "off here; set it the same on both sides", s->name);
        return false;
    }
    return true;
}

static const VMStateDescription vmstate_tap_transfer_queue = {
    .name = "tap-transfer/queue",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = (const VMStateField[]) {
        VMSTATE_TAP_TRANSFER_PAUSE("fd-before"),
        VMSTATE_FD(fd, TapTransferQueue),
        VMSTATE_TAP_TRANSFER_PAUSE("fd-after"),
        VMSTATE_BOOL(enabled, TapTransferQueue),
        VMSTATE_BOOL(using_vnet_hdr, TapTransferQueue),
        VMSTATE_UINT32(host_vnet_hdr_len, TapTransferQueue),
        VMSTATE_BOOL(has_ufo, TapTransferQueue),
        VMSTATE_BOOL(has_uso, TapTransferQueue),
        VMSTATE_END_OF_LIST()
    },
};

static bool tap_transfer_fds_needed(void *opaque)
{
    TapTransfer *s = opaque;

    return s->stream_transfer;
}

static int tap_transfer_fds_pre_load(void *opaque)
{
    TapTransfer *s = opaque;

    if (!tap_transfer_handover_agreed(s, "TAP file descriptors")) {
        return -EINVAL;
    }
    /*
     * In a mode that sends fd numbers (cpr-exec), what the stream has
     * are numbers of the source's, which mean other files here: refuse
     * before they are read, so that no refusal closes them.
     */
    if (!migrate_passes_fds()) {
        error_report("netdev %s: migration mode %s sends file descriptor "
                     "numbers, not file descriptors; cannot adopt the "
                     "source's TAP", s->name, MigMode_str(migrate_mode()));
        return -EINVAL;
    }
    if (s->state != TAP_TRANSFER_AWAITING || s->stream_queue) {
        error_report("netdev %s: already has a TAP device, cannot adopt the "
                     "source's", s->name);
        return -EINVAL;
    }
    /* Loaded in place once their count is known to match */
    s->stream_queue = g_new0(TapTransferQueue, s->queues);
    for (uint32_t i = 0; i < s->queues; i++) {
        s->stream_queue[i].fd = -1;
    }
    s->stream_has_tunnel = false;
    return 0;
}

static bool tap_transfer_queue_count_valid(void *opaque, int version_id)
{
    TapTransfer *s = opaque;

    if (s->stream_queues != s->queues) {
        error_report("netdev %s: the source has %d queues, this QEMU was "
                     "configured with %u", s->name, s->stream_queues,
                     s->queues);
        return false;
    }
    return true;
}

static bool tap_transfer_tunnel_needed(void *opaque)
{
    TapTransfer *s = opaque;

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
        VMSTATE_BOOL(stream_has_tunnel, TapTransfer),
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
        VMSTATE_TAP_TRANSFER_PAUSE("fds"),
        VMSTATE_BUFFER(stream_ifname, TapTransfer),
        VMSTATE_BOOL(stream_owns_downscript, TapTransfer),
        VMSTATE_INT32(stream_queues, TapTransfer),
        VMSTATE_VALIDATE("queue count", tap_transfer_queue_count_valid),
        VMSTATE_STRUCT_VARRAY_POINTER_INT32(stream_queue, TapTransfer,
                                            stream_queues,
                                            vmstate_tap_transfer_queue,
                                            TapTransferQueue),
        VMSTATE_TAP_TRANSFER_PAUSE("fds-end"),
        VMSTATE_END_OF_LIST()
    },
    .subsections = (const VMStateDescription * const []) {
        &vmstate_tap_transfer_tunnel,
        NULL
    },
};

/*
 * The validators of the frames run when the state is saved too, where
 * a false result aborts QEMU (a VMSTATE_VALIDATE field must exist): the
 * frames a source holds must pass them.  It holds none of 0 bytes or
 * of more than NET_BUFSIZE, nor more than a queue's worth per queue
 * (tap_transfer_take_frame(), tap_transfer_bound_held()).
 */
static bool tap_transfer_frame_queue_valid(void *opaque, int version_id)
{
    TapTransferFrame *f = opaque;

    if (f->queue >= f->owner->queues) {
        error_report("netdev %s: received a frame for queue %u of %u",
                     f->owner->name, f->queue, f->owner->queues);
        return false;
    }
    return true;
}

static bool tap_transfer_frame_size_valid(void *opaque, int version_id)
{
    TapTransferFrame *f = opaque;

    if (!f->size || f->size > NET_BUFSIZE) {
        error_report("netdev %s: received a frame of %u bytes, not 1 to %d",
                     f->owner->name, f->size, NET_BUFSIZE);
        return false;
    }
    return true;
}

static const VMStateDescription vmstate_tap_transfer_frame = {
    .name = "tap-transfer/packet",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = (const VMStateField[]) {
        VMSTATE_UINT32(queue, TapTransferFrame),
        VMSTATE_VALIDATE("frame queue", tap_transfer_frame_queue_valid),
        VMSTATE_UINT32(size, TapTransferFrame),
        VMSTATE_VALIDATE("frame size", tap_transfer_frame_size_valid),
        VMSTATE_VBUFFER_ALLOC_UINT32(data, TapTransferFrame, 0, NULL, size),
        VMSTATE_END_OF_LIST()
    },
};

static bool tap_transfer_frames_needed(void *opaque)
{
    TapTransfer *s = opaque;

    return s->stream_transfer && s->stream_nframes > 0;
}

static int tap_transfer_frames_pre_load(void *opaque)
{
    TapTransfer *s = opaque;

    if (!tap_transfer_handover_agreed(s, "held frames")) {
        return -EINVAL;
    }
    if (!s->stream_queue || s->stream_frames) {
        error_report("netdev %s: the stream carries held frames without "
                     "the TAP they were read from", s->name);
        return -EINVAL;
    }
    return 0;
}

/*
 * Loading, this sizes the array of frames once their count is known to
 * be possible; saving, pre_save made it.
 */
static bool tap_transfer_frame_count_valid(void *opaque, int version_id)
{
    TapTransfer *s = opaque;
    int64_t max = (int64_t)s->queues * TAP_TRANSFER_MAX_FRAMES_PER_QUEUE;

    if (s->stream_nframes <= 0 || s->stream_nframes > max) {
        error_report("netdev %s: the source holds %d frames, not 1 to %"
                     PRId64, s->name, s->stream_nframes, max);
        return false;
    }
    if (s->stream_frames) {
        return true;
    }
    s->stream_frames = g_new0(TapTransferFrame, s->stream_nframes);
    for (int32_t i = 0; i < s->stream_nframes; i++) {
        s->stream_frames[i].owner = s;
    }
    return true;
}

static const VMStateDescription vmstate_tap_transfer_frames = {
    .name = "tap-transfer/packets",
    .version_id = 1,
    .minimum_version_id = 1,
    .needed = tap_transfer_frames_needed,
    .pre_load = tap_transfer_frames_pre_load,
    .fields = (const VMStateField[]) {
        VMSTATE_INT32(stream_nframes, TapTransfer),
        VMSTATE_VALIDATE("frame count", tap_transfer_frame_count_valid),
        VMSTATE_STRUCT_VARRAY_POINTER_INT32(stream_frames, TapTransfer,
                                            stream_nframes,
                                            vmstate_tap_transfer_frame,
                                            TapTransferFrame),
        VMSTATE_END_OF_LIST()
    },
};

static int tap_transfer_pre_load(void *opaque)
{
    /* Nothing may be left from an earlier, failed load */
    tap_transfer_discard_stream(opaque);
    return 0;
}

static bool tap_transfer_id_len_valid(void *opaque, int version_id)
{
    TapTransfer *s = opaque;

    if (s->stream_id_len != strlen(s->name)) {
        error_report("netdev %s: the migration stream holds the state of "
                     "another netdev", s->name);
        return false;
    }
    return true;
}

static const VMStateDescription vmstate_tap_transfer = {
    .name = "tap-transfer",
    .version_id = 1,
    .minimum_version_id = 1,
    .pre_save = tap_transfer_pre_save,
    .post_save = tap_transfer_post_save,
    .pre_load = tap_transfer_pre_load,
    .post_load = tap_transfer_post_load,
    .fields = (const VMStateField[]) {
        VMSTATE_TAP_TRANSFER_PAUSE("section"),
        VMSTATE_UINT32(stream_id_len, TapTransfer),
        VMSTATE_VALIDATE("netdev id", tap_transfer_id_len_valid),
        VMSTATE_VBUFFER_ALLOC_UINT32(stream_id, TapTransfer, 0, NULL,
                                     stream_id_len),
        VMSTATE_BOOL(stream_transfer, TapTransfer),
        VMSTATE_END_OF_LIST()
    },
    .subsections = (const VMStateDescription * const []) {
        &vmstate_tap_transfer_fds,
        &vmstate_tap_transfer_frames,
        NULL
    },
};

/* Attaching a TAP of our own: at start-up, or on a destination */

static bool tap_transfer_attach_own(TapTransfer *s, Error **errp)
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
        if (i == 0 && tap_fd_get_ifname(fd, ifname)) {
            ifname[0] = '\0';
        }
    }
    pstrcpy(s->ifname, sizeof(s->ifname), ifname);
    /* As -netdev tap: a TAP that management passed is management's */
    s->owns_downscript = !s->mgmt_fds && s->ifname[0];
    tap_transfer_arm_downscript(s, true);
    tap_transfer_set_state(s, TAP_TRANSFER_OWN);
    for (uint32_t i = 0; i < s->queues; i++) {
        tap_transfer_update_reading(s, i);
    }
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
    TapTransfer *s = opaque;

    s->load_transfer = migrate_backend_transfer();
    trace_tap_transfer_load_setup(s->name, s->load_transfer);
    if (s->state != TAP_TRANSFER_AWAITING || s->load_transfer) {
        /* Management's fds are for a new TAP, which we do not want */
        tap_transfer_close_fds(s->mgmt_fds, s->n_mgmt_fds);
        return 0;
    }
    if (!tap_transfer_attach_own(s, errp)) {
        error_prepend(errp, "netdev %s: ", s->name);
        return -EINVAL;
    }
    return 0;
}

/*
 * The incoming migration is over.  If the load failed, the VM has no
 * run state yet: a TAP adopted before it failed is the source's alone
 * again, as are the frames that came with it.
 */
static int tap_transfer_load_cleanup(void *opaque)
{
    TapTransfer *s = opaque;

    tap_transfer_discard_stream(s);
    if (!runstate_check(RUN_STATE_INMIGRATE) ||
        s->state != TAP_TRANSFER_IDLE) {
        return 0;
    }
    for (uint32_t i = 0; i < s->queues; i++) {
        close(tap_detach_fd(s->ncs[i]));
        g_queue_clear_full(&s->held[i], tap_transfer_frame_free);
    }
    s->owns_downscript = false;
    tap_transfer_set_state(s, TAP_TRANSFER_AWAITING);
    trace_tap_transfer_give_back(s->name);
    return 0;
}

static const SaveVMHandlers savevm_tap_transfer_handlers = {
    .load_setup = tap_transfer_load_setup,
    .load_cleanup = tap_transfer_load_cleanup,
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
    ERRP_GUARD();
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

/* What -netdev tap refuses, refused the same way on either path */
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
    if (opts->fd && (opts->fds || opts->has_queues || opts->vhostfds)) {
        error_setg(errp, "fds=, queues= and vhostfds= are invalid with fd=");
        return false;
    }
    if (opts->fds && (opts->has_queues || opts->vhostfd)) {
        error_setg(errp, "queues= and vhostfd= are invalid with fds=");
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
    if (opts->vhostfd && opts->has_queues && opts->queues > 1) {
        error_setg(errp, "vhostfd= is invalid with more than one queue; "
                   "use fds= and vhostfds=");
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
static bool tap_transfer_init_incoming(TapTransfer *s, Error **errp)
{
    const NetdevTapOptions *opts = s->opts;
    int vnet_hdr = opts->has_vnet_hdr ? opts->vnet_hdr : 1;

    if (opts->fd || opts->fds) {
        s->mgmt_fds = tap_transfer_take_fds(opts->fd ?: opts->fds,
                                            &s->n_mgmt_fds, errp);
        if (!s->mgmt_fds) {
            return false;
        }
        s->queues = s->n_mgmt_fds;
        if (!tap_transfer_check_mgmt_fds(s->name, s->mgmt_fds, s->queues,
                                         errp)) {
            return false;
        }
        vnet_hdr = tap_probe_vnet_hdr(s->mgmt_fds[0], errp);
        if (vnet_hdr < 0) {
            return false;
        }
    }
    if (opts->vhostfd || opts->vhostfds) {
        s->mgmt_vhostfds = tap_transfer_take_fds(opts->vhostfd ?:
                                                 opts->vhostfds,
                                                 &s->n_mgmt_vhostfds, errp);
        if (!s->mgmt_vhostfds) {
            return false;
        }
        if (s->n_mgmt_vhostfds != s->queues) {
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
    tap_transfer_set_state(s, TAP_TRANSFER_AWAITING);
    return true;
}

static bool tap_transfer_init_running(TapTransfer *s, Error **errp)
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
    /* tap.c opens its own TAPs with IFF_NO_PI, not management's */
    if (s->opts->fd || s->opts->fds) {
        int fds[TAP_TRANSFER_MAX_QUEUES];

        for (int i = 0; i < n; i++) {
            fds[i] = tap_get_fd(ncs[i]);
        }
        if (!tap_transfer_check_mgmt_fds(s->name, fds, n, errp)) {
            return false;
        }
    }
    if (tap_fd_get_ifname(tap_get_fd(ncs[0]), s->ifname)) {
        s->ifname[0] = '\0';
    }
    /* tap.c armed it if it is to run: a TAP passed as fd= has none */
    s->owns_downscript = tap_has_downscript(ncs[0]);
    tap_transfer_set_state(s, TAP_TRANSFER_OWN);
    return true;
}

static char *tap_transfer_setup_idstr(TapTransfer *s)
{
    return g_strdup_printf("netdev/%s/tap-transfer-setup", s->name);
}

/*
 * The section is named after the netdev id, so that it finds its netdev
 * whatever order either side created them in.  Registered before any
 * -device, it loads before the NIC's, and the NIC finds its backend
 * complete.
 */
static bool tap_transfer_register_state(TapTransfer *s, Error **errp)
{
    g_autofree char *setup_idstr = tap_transfer_setup_idstr(s);

    if (vmstate_register_with_alias_id(VMSTATE_IF(s), VMSTATE_INSTANCE_ID_ANY,
                                       &vmstate_tap_transfer, s, -1, 0,
                                       errp) < 0) {
        return false;
    }
    register_savevm_live(setup_idstr, VMSTATE_INSTANCE_ID_ANY, 1,
                         &savevm_tap_transfer_handlers, s);
    s->vm_change = qemu_add_vm_change_state_handler_prio(
        tap_transfer_vm_change, s, TAP_TRANSFER_VM_CHANGE_PRIO);
    migration_add_notifier_mode(&s->migration_normal,
                                tap_transfer_migration_normal,
                                MIG_MODE_NORMAL);
    migration_add_notifier_mode(&s->migration_cpr,
                                tap_transfer_migration_cpr,
                                MIG_MODE_CPR_TRANSFER);
    QTAILQ_INSERT_TAIL(&tap_transfers, s, next);
    return true;
}

static Object *tap_transfer_container(void)
{
    Object *root = object_get_root();
    Object *container = object_resolve_path_component(root,
                                                      TAP_TRANSFER_CONTAINER);

    return container ?:
           object_property_add_new_container(root, TAP_TRANSFER_CONTAINER);
}

/* The clients go away, by netdev_del or at exit: so does the state */
static void tap_transfer_cleanup(Notifier *notifier, void *data)
{
    TapTransfer *s = container_of(notifier, TapTransfer, cleanup);

    object_unparent(OBJECT(s));
}

static int net_init_tap_transfer(const Netdev *netdev, const char *name,
                                 NetClientState *peer, Error **errp)
{
    const NetdevTapOptions *opts = &netdev->u.tap_transfer;
    TapTransfer *s;
    bool ok;

    assert(netdev->type == NET_CLIENT_DRIVER_TAP_TRANSFER);
    /* Its sections would be missing from the stream, or added to it */
    if (migration_is_running() || migration_incoming_is_running()) {
        error_setg(errp, "netdev %s: a tap-transfer netdev cannot be added "
                   "while migrating", name);
        return -1;
    }
    if (strlen(name) > TAP_TRANSFER_MAX_ID_LEN) {
        error_setg(errp, "the id of a tap-transfer netdev names its "
                   "migration sections: at most %d characters, not %zu",
                   TAP_TRANSFER_MAX_ID_LEN, strlen(name));
        return -1;
    }
    if (!tap_transfer_check_options(opts, peer, errp)) {
        return -1;
    }

    s = TAP_TRANSFER(object_new(TYPE_TAP_TRANSFER));
    s->name = g_strdup(name);
    s->opts = QAPI_CLONE(NetdevTapOptions, opts);
    s->queues = opts->has_queues ? opts->queues : 1;
    s->vm_running = runstate_is_running();

    if (!tap_transfer_resolve_fdsets(s->opts, errp)) {
        ok = false;
    } else if (runstate_check(RUN_STATE_INMIGRATE)) {
        ok = tap_transfer_init_incoming(s, errp);
    } else {
        ok = tap_transfer_init_running(s, errp);
    }
    if (ok) {
        s->held = g_new0(GQueue, s->queues);
        s->releasing = g_new0(bool, s->queues);
        ok = object_property_try_add_child(tap_transfer_container(), name,
                                           OBJECT(s), errp) &&
             tap_transfer_register_state(s, errp);
    }
    if (!ok) {
        for (uint32_t i = 0; s->ncs && i < s->queues; i++) {
            if (s->ncs[i]) {
                /* Every queue of the netdev goes with it */
                qemu_del_net_client(s->ncs[i]);
                break;
            }
        }
        object_unparent(OBJECT(s));
        object_unref(OBJECT(s));
        return -1;
    }
    object_unref(OBJECT(s));

    /* netdev_del waits for the end of a migration, which has our state */
    for (uint32_t i = 0; i < s->queues; i++) {
        s->ncs[i]->has_migration_state = true;
    }
    s->cleanup.notify = tap_transfer_cleanup;
    tap_add_cleanup_notifier(s->ncs[0], &s->cleanup);
    trace_tap_transfer_init(name, s->queues,
                            runstate_check(RUN_STATE_INMIGRATE));
    return 0;
}

/* QOM */

static char *tap_transfer_get_ifname(Object *obj, Error **errp)
{
    TapTransfer *s = TAP_TRANSFER(obj);

    tap_transfer_refresh_ifname(s);
    return g_strdup(s->ifname);
}

static int tap_transfer_get_state(Object *obj, Error **errp)
{
    return TAP_TRANSFER(obj)->state;
}

static void tap_transfer_get_queues(Object *obj, Visitor *v,
                                    const char *name, void *opaque,
                                    Error **errp)
{
    uint32_t queues = TAP_TRANSFER(obj)->queues;

    visit_type_uint32(v, name, &queues, errp);
}

static void tap_transfer_get_frames_held(Object *obj, Visitor *v,
                                         const char *name, void *opaque,
                                         Error **errp)
{
    uint32_t held = tap_transfer_frames_held(TAP_TRANSFER(obj));

    visit_type_uint32(v, name, &held, errp);
}

static void tap_transfer_get_frames_dropped(Object *obj, Visitor *v,
                                            const char *name, void *opaque,
                                            Error **errp)
{
    uint64_t dropped = TAP_TRANSFER(obj)->frames_dropped;

    visit_type_uint64(v, name, &dropped, errp);
}

static char *tap_transfer_get_id(VMStateIf *obj)
{
    return g_strdup_printf("netdev/%s", TAP_TRANSFER(obj)->name);
}

static void tap_transfer_finalize(Object *obj)
{
    TapTransfer *s = TAP_TRANSFER(obj);

    if (s->cleanup.notify) {
        notifier_remove(&s->cleanup);
    }
    if (s->vm_change) {
        g_autofree char *setup_idstr = tap_transfer_setup_idstr(s);

        vmstate_unregister(VMSTATE_IF(s), &vmstate_tap_transfer, s);
        unregister_savevm(NULL, setup_idstr, s);
        qemu_del_vm_change_state_handler(s->vm_change);
        migration_remove_notifier(&s->migration_normal);
        migration_remove_notifier(&s->migration_cpr);
        QTAILQ_REMOVE(&tap_transfers, s, next);
    }
    tap_transfer_discard_stream(s);
    for (uint32_t i = 0; s->held && i < s->queues; i++) {
        g_queue_clear_full(&s->held[i], tap_transfer_frame_free);
    }
    g_free(s->held);
    g_free(s->releasing);
    tap_transfer_close_fds(s->mgmt_fds, s->n_mgmt_fds);
    tap_transfer_close_fds(s->mgmt_vhostfds, s->n_mgmt_vhostfds);
    g_free(s->mgmt_fds);
    g_free(s->mgmt_vhostfds);
    qapi_free_NetdevTapOptions(s->opts);
    g_free(s->ncs);
    g_free(s->name);
}

static void tap_transfer_class_init(ObjectClass *oc,
                                    TapTransferClassData *data)
{
    VMStateIfClass *vc = VMSTATE_IF_CLASS(oc);

    vc->get_id = tap_transfer_get_id;
    object_class_property_add_str(oc, "ifname", tap_transfer_get_ifname,
                                  NULL);
    object_class_property_set_description(oc, "ifname",
        "the TAP device");
    object_class_property_add(oc, "queues", "uint32",
                              tap_transfer_get_queues, NULL, NULL, NULL);
    object_class_property_set_description(oc, "queues",
        "the TAP device's queues this netdev uses");
    object_class_property_add_enum(oc, "state", "TapTransferState",
                                   &tap_transfer_state_lookup,
                                   tap_transfer_get_state, NULL);
    object_class_property_set_description(oc, "state",
        "awaiting (incoming, no TAP yet), own, idle (adopted, not read "
        "until the VM runs), adopted or handed-over");
    object_class_property_add(oc, "frames-held", "uint32",
                              tap_transfer_get_frames_held, NULL, NULL, NULL);
    object_class_property_set_description(oc, "frames-held",
        "frames read from the TAP that wait for the guest");
    object_class_property_add(oc, "frames-dropped", "uint64",
                              tap_transfer_get_frames_dropped, NULL, NULL,
                              NULL);
    object_class_property_set_description(oc, "frames-dropped",
        "frames this netdev dropped rather than hold or give to the NIC");
}

static const TypeInfo tap_transfer_info = {
    .name = TYPE_TAP_TRANSFER,
    .parent = TYPE_OBJECT,
    .instance_size = sizeof(TapTransfer),
    .instance_finalize = tap_transfer_finalize,
    .class_init = tap_transfer_class_init,
    .interfaces = (InterfaceInfo[]) {
        { TYPE_VMSTATE_IF },
        { }
    },
};

static void tap_transfer_register(void)
{
    type_register_static(&tap_transfer_info);
    net_client_driver_register(NET_CLIENT_DRIVER_TAP_TRANSFER,
                               net_init_tap_transfer);
}

type_init(tap_transfer_register);
