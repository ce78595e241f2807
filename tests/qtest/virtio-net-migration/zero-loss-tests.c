/*
 * tap-transfer tests, zero loss: frames that wait in the TAP, or
 * that QEMU read but the guest did not get yet, reach the guest once, in
 * order
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <net/if.h>
#include <sys/ioctl.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <linux/sockios.h>
#include "qapi/error.h"
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "qemu/sockets.h"
#include "qobject/qdict.h"
#include "qobject/qlist.h"
#include "libqos/virtio.h"
#include "migration/migration-qmp.h"
#include "migration/migration-util.h"
#include "tap-transfer-compat.h"
#include "framework.h"

/*
 * Frames that arrive while neither QEMU reads the TAP wait in it and
 * reach the destination guest, all of them, in order.
 */
static void test_zero_loss(void)
{
    const char *netdev = "ifname=tt0,script=no,downscript=no";
    enum { FRAMES = 16 };
    uint64_t bufs[FRAMES];
    uint32_t heads[FRAMES];
    QTestState *to;
    Vm vm = { 0 };

    vm_start(&vm, netdev, 1, NULL);
    for (int i = 0; i < FRAMES; i++) {
        bufs[i] = nic_post_rx(&vm.nic, 0, &heads[i]);
    }

    /* -S: the destination stays paused after the migration */
    to = start_dest(netdev, 1, true, "-S");
    migrate_to(vm.qts, to, true);
    for (int i = 0; i < FRAMES; i++) {
        g_autofree char *payload = g_strdup_printf("gap-%d", i);

        host_send(vm.sock, payload);
    }
    qtest_qmp_assert_success(to, "{ 'execute': 'cont' }");

    qtest_quit(vm.qts);
    vm_migrated(&vm, to);
    for (int i = 0; i < FRAMES; i++) {
        g_autofree char *payload = g_strdup_printf("gap-%d", i);

        nic_expect_rx(&vm.nic, 0, bufs[i], heads[i], payload);
    }
    vm_release(&vm);
    qtest_quit(to);
}

/*
 * Frames QEMU read from the TAP but could not give the guest yet, for
 * want of receive buffers.  They wait in the NIC's queue when the source
 * stops, where QEMU's stop path would drop them: they must reach the
 * guest exactly once, in order, on the destination or, if the handover
 * fails, on the source.  Each frame is UDP in IPv4, one flow per frame
 * pair, so that a multiqueue TAP spreads them over its queues.
 */
enum { STRANDED_FLOWS = 8, STRANDED_FRAMES = 2 * STRANDED_FLOWS };

typedef struct RxBuf {
    uint64_t addr;
    uint32_t head;
} RxBuf;

/*
 * Post receive buffers on every queue pair, then collect
 * STRANDED_FRAMES frames from whichever pairs they arrive on: each
 * exactly once, and within a flow in order.  Returns how many queue
 * pairs delivered frames.
 */
static int nic_expect_stranded(Nic *n, int pairs)
{
    g_autofree RxBuf *bufs = g_new0(RxBuf, pairs * STRANDED_FRAMES);
    int last_seen[STRANDED_FLOWS];
    bool pair_used[64] = { false };
    gint64 deadline = g_get_monotonic_time() + TIMEOUT_US;
    int got = 0, npairs = 0;

    memset(last_seen, -1, sizeof(last_seen));
    for (int i = 0; i < pairs * STRANDED_FRAMES; i++) {
        bufs[i].addr = nic_post_rx(n, i % pairs, &bufs[i].head);
    }
    while (got < STRANDED_FRAMES) {
        bool idle = true;

        for (int pair = 0; pair < pairs; pair++) {
            uint8_t frame[ETH_FRAME_LEN];
            uint32_t head;
            int b, flow, seq;

            if (!qvirtqueue_get_buf(n->m->qts, n->vqs[pair * 2], &head,
                                    NULL)) {
                continue;
            }
            idle = false;
            for (b = 0; b < pairs * STRANDED_FRAMES; b++) {
                if (bufs[b].head == head && b % pairs == pair) {
                    break;
                }
            }
            g_assert_cmpint(b, <, pairs * STRANDED_FRAMES);
            qtest_memread(n->m->qts, bufs[b].addr + VNET_HDR_SIZE, frame,
                          sizeof(frame));
            g_assert_cmpint(sscanf((char *)frame + UDP_FRAME_HDR_LEN,
                                   "stranded-%d-%d", &flow, &seq), ==, 2);
            g_test_message("pair %d: stranded-%d-%d", pair, flow, seq);
            g_assert_cmpint(flow, <, STRANDED_FLOWS);
            /* Once each, and a flow's second frame after its first */
            g_assert_cmpint(seq, ==, last_seen[flow] + 1);
            last_seen[flow] = seq;
            npairs += !pair_used[pair];
            pair_used[pair] = true;
            got++;
        }
        if (idle) {
            g_assert_cmpint(g_get_monotonic_time(), <, deadline);
            g_usleep(1000);
        }
    }
    /* ...and no frame twice */
    g_usleep(200 * 1000);
    for (int pair = 0; pair < pairs; pair++) {
        g_assert_false(qvirtqueue_get_buf(n->m->qts, n->vqs[pair * 2], NULL,
                                          NULL));
    }
    return npairs;
}

/* Traffic goes on; with one queue no buffer is left, so RX too */
static void stranded_after(Vm *vm, int pairs, const char *tag)
{
    if (pairs == 1) {
        check_traffic(&vm->nic, vm->sock, 0, tag);
    } else {
        nic_tx(&vm->nic, 0, tag);
        host_expect(vm->sock, tag);
    }
}

/*
 * The source reads frames it cannot deliver yet; the handover runs,
 * completed or refused by a destination given @dst_netdev; the guest
 * then posts buffers where it runs: every frame arrives, once.
 */
static void do_stranded(const char *netdev, int pairs,
                        const char *dst_netdev)
{
    DestOptions dest = { .keep_on_error = true };
    QTestState *to;
    uint64_t read_before;
    unsigned ifindex;
    int sock, npairs;
    Vm vm = { 0 };

    vm_start(&vm, netdev, pairs, NULL);
    if (pairs > 1) {
        nic_set_pairs(&vm.nic, pairs);
    }
    ifindex = if_nametoindex("tt0");
    sock = socket(AF_PACKET, SOCK_RAW, 0);
    g_assert_cmpint(sock, >=, 0);

    read_before = tap_frames_read("tt0");
    for (int seq = 0; seq < 2; seq++) {
        for (int flow = 0; flow < STRANDED_FLOWS; flow++) {
            g_autofree char *payload = g_strdup_printf("stranded-%d-%d",
                                                       flow, seq);

            host_send_udp(sock, ifindex, flow, payload);
        }
    }
    /* QEMU took at least the first frame of some queue off the TAP */
    for (int i = 0; tap_frames_read("tt0") == read_before; i++) {
        g_assert_cmpint(i, <, 3000);
        g_usleep(10 * 1000);
    }
    g_usleep(100 * 1000);
    g_test_message("frames QEMU read before the handover: %" PRIu64,
                   tap_frames_read("tt0") - read_before);

    if (dst_netdev) {
        dest.binary_var = logged_qemu();
        to = start_dest_opts(dst_netdev, pairs, true, &dest);
        migrate_refused(vm.qts, to, true, 0);
        npairs = nic_expect_stranded(&vm.nic, pairs);
        stranded_after(&vm, pairs, "source");
        qtest_quit(vm.qts);
    } else {
        to = start_dest_opts(netdev, pairs, true, &dest);
        migrate_to(vm.qts, to, true);
        qtest_qmp_eventwait(to, "RESUME");
        qtest_quit(vm.qts);
        vm_migrated(&vm, to);
        npairs = nic_expect_stranded(&vm.nic, pairs);
        stranded_after(&vm, pairs, "destination");
        qtest_quit(to);
    }
    /* Eight flows over four queues, hashed: more than one queue */
    g_assert_cmpint(npairs, >=, MIN(pairs, 2));
    vm_release(&vm);
    close(sock);
}

typedef struct StrandedCase {
    const char *path;
    const char *netdev;
    int pairs;
    /* The destination's options, when it is to refuse the state */
    const char *refusing_netdev;
} StrandedCase;

static const StrandedCase stranded_cases[] = {
    { "/tap-transfer/migration/stranded",
      "ifname=tt0,script=no,downscript=no", 1, NULL },
    { "/tap-transfer/migration/stranded-refused",
      "ifname=tt0,script=no,downscript=no", 1,
      "ifname=tt7,script=no,downscript=no" },
    { "/tap-transfer/migration/stranded-multiqueue",
      "ifname=tt0,queues=4,script=no,downscript=no", 4, NULL },
    { "/tap-transfer/migration/stranded-multiqueue-refused",
      "ifname=tt0,queues=4,script=no,downscript=no", 4,
      "ifname=tt7,queues=4,script=no,downscript=no" },
};

static void test_stranded(const void *opaque)
{
    const StrandedCase *c = opaque;

    do_stranded(c->netdev, c->pairs, c->refusing_netdev);
}

/*
 * tap.c is not the only sender on behalf of the TAP: a filter-redirector
 * with queue=tx injects the frames its chardev brings, records of a
 * big-endian length and the bytes, and those wait in the NIC and are
 * held at the stop like the others.  Only what a destination takes is
 * held: before, a frame of 0 bytes or more frames than a queue holds
 * made the source abort as it saved the state ("Output state
 * validation failed").
 */
#define REDIRECTOR_NETDEV "ifname=tt0,script=no,downscript=no"

static char *redirector_args(void)
{
    TapTransferTestEnv *env = tap_transfer_get_env();

    return g_strdup_printf("-chardev socket,id=c0,path=%s/redirector.sock,"
                           "server=on,wait=off -object filter-redirector,"
                           "id=r0,netdev=n0,queue=tx,indev=c0", env->tmpdir);
}

static int redirector_connect(void)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    g_autofree char *path = g_build_filename(env->tmpdir, "redirector.sock",
                                             NULL);

    return unix_connect(path, &error_abort);
}

/* A frame for the guest behind its vnet header, or 0 bytes */
static void redirector_send(int sock, const char *payload)
{
    static const uint8_t guest[ETH_ALEN] = { 0x52, 0x54, 0, 0x12, 0x34, 0x56 };
    static const uint8_t host[ETH_ALEN] = { 0x02, 0, 0, 0, 0, 0x02 };
    uint8_t record[4 + VNET_HDR_SIZE + ETH_FRAME_LEN] = { 0 };
    size_t len = 0;

    if (payload) {
        len = VNET_HDR_SIZE + make_frame(record + 4 + VNET_HDR_SIZE, guest,
                                         host, payload);
    }
    stl_be_p(record, len);
    g_assert_cmpint(send(sock, record, 4 + len, 0), ==, 4 + len);
}

/* Until QEMU read everything: nothing left in the socket */
static void redirector_flush(int sock)
{
    gint64 deadline = g_get_monotonic_time() + TIMEOUT_US;
    int unread;

    for (;;) {
        g_assert_cmpint(ioctl(sock, SIOCOUTQ, &unread), ==, 0);
        if (!unread) {
            return;
        }
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(1000);
    }
}

static void test_held_zero_length(void)
{
    g_autofree char *extra = redirector_args();
    uint64_t buf;
    uint32_t head;
    QTestState *to;
    int sock;
    Vm vm = { 0 };

    vm_start(&vm, REDIRECTOR_NETDEV, 1, extra);
    sock = redirector_connect();
    qtest_qmp_assert_success(vm.qts, "{ 'execute': 'stop' }");
    /* The next record ends the empty one */
    redirector_send(sock, NULL);
    redirector_send(sock, "redirected");
    redirector_flush(sock);

    to = start_dest(REDIRECTOR_NETDEV, 1, true, "-S");
    migrate_to(vm.qts, to, true);
    g_assert_cmpint(qom_get_int(vm.qts, "n0", "frames-dropped"), ==, 1);
    g_assert_cmpint(qom_get_int(to, "n0", "frames-held"), ==, 1);
    qtest_qmp_assert_success(to, "{ 'execute': 'cont' }");
    wait_running(to);
    qtest_quit(vm.qts);
    vm_migrated(&vm, to);
    buf = nic_post_rx(&vm.nic, 0, &head);
    nic_expect_rx(&vm.nic, 0, buf, head, "redirected");
    check_traffic(&vm.nic, vm.sock, 0, "after");
    vm_release(&vm);
    qtest_quit(to);
    close(sock);
}

static void test_held_over_the_cap(void)
{
    /* What a NIC queues from one sender (net/queue.c) */
    enum { NIC_QUEUE_MAX = 10000 };
    g_autofree char *extra = redirector_args();
    QTestState *to;
    int sock;
    Vm vm = { 0 };

    /* The guest posts no receive buffers: the NIC queues what comes */
    vm_start(&vm, REDIRECTOR_NETDEV, 1, extra);
    sock = redirector_connect();
    for (int i = 0; i < NIC_QUEUE_MAX; i++) {
        redirector_send(sock, "before-the-stop");
    }
    redirector_flush(sock);
    /* Held at the stop, and the NIC's queue takes as many again */
    qtest_qmp_assert_success(vm.qts, "{ 'execute': 'stop' }");
    g_assert_cmpint(qom_get_int(vm.qts, "n0", "frames-held"), ==,
                    NIC_QUEUE_MAX);
    for (int i = 0; i < NIC_QUEUE_MAX; i++) {
        redirector_send(sock, "after-the-stop");
    }
    redirector_flush(sock);

    to = start_dest(REDIRECTOR_NETDEV, 1, true, "-S");
    migrate_to(vm.qts, to, true);
    g_assert_cmpint(qom_get_int(vm.qts, "n0", "frames-dropped"), ==,
                    NIC_QUEUE_MAX);
    g_assert_cmpint(qom_get_int(to, "n0", "frames-held"), ==,
                    NIC_QUEUE_MAX);
    vm_release(&vm);
    qtest_quit(vm.qts);
    qtest_quit(to);
    close(sock);
}

void tap_transfer_add_zero_loss_tests(TapTransferTestEnv *env)
{
    tap_transfer_test_add("/tap-transfer/migration/zero-loss", test_zero_loss);
    for (int i = 0; i < ARRAY_SIZE(stranded_cases); i++) {
        tap_transfer_test_add_data(stranded_cases[i].path, &stranded_cases[i],
                                   test_stranded);
    }
    tap_transfer_test_add("/tap-transfer/held/zero-length-frame",
                          test_held_zero_length);
    tap_transfer_test_add("/tap-transfer/held/over-the-cap",
                          test_held_over_the_cap);
}
