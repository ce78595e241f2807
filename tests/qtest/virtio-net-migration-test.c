/*
 * QTest testcase for tap-transfer: virtio-net on a real TAP device, and
 * local migration that hands the TAP over to the destination QEMU
 *
 * The test moves into a network namespace of its own, so the TAP
 * devices the QEMUs create vanish with it, also when a test fails.
 * Frames are injected and captured on the host side of the TAP with an
 * AF_PACKET socket; the guest side is driven with libqos virtqueues.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 */

#include "qemu/osdep.h"
#include <net/if.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <linux/if_packet.h>
#include <linux/if_ether.h>
#include <linux/kcmp.h>
#include "libqtest.h"
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "qobject/qdict.h"
#include "qobject/qstring.h"
#include "standard-headers/linux/virtio_net.h"
#include "libqos/libqos-malloc.h"
#include "libqos/malloc-pc.h"
#include "libqos/pci-pc.h"
#include "libqos/virtio-pci.h"
#include "libqos/virtio.h"
#include "migration/migration-qmp.h"
#include "migration/migration-util.h"

#define TIMEOUT_US (30 * 1000 * 1000)
#define VNET_HDR_SIZE sizeof(struct virtio_net_hdr_mrg_rxbuf)
#define TEST_ETHERTYPE 0x88b5
#define GUEST_MAC "52:54:00:12:34:56"
#define NIC_DEVFN QPCI_DEVFN(4, 0)
#define RX_BUF_SIZE 2048

static const uint8_t guest_mac[ETH_ALEN] = { 0x52, 0x54, 0, 0x12, 0x34, 0x56 };
static const uint8_t host_mac[ETH_ALEN] = { 0x02, 0, 0, 0, 0, 0x01 };

static const char *skip_reason;
static char *tmpdir;

/* Host side of a TAP device */

static int host_tap_attach(const char *ifname)
{
    struct ifreq ifr = { 0 };
    struct sockaddr_ll sll = { 0 };
    unsigned ifindex = 0;
    int ctl, sock;

    for (int i = 0; i < 1000 && !ifindex; i++) {
        ifindex = if_nametoindex(ifname);
        if (!ifindex) {
            g_usleep(10 * 1000);
        }
    }
    g_assert_cmpuint(ifindex, !=, 0);

    ctl = socket(AF_INET, SOCK_DGRAM, 0);
    g_assert_cmpint(ctl, >=, 0);
    pstrcpy(ifr.ifr_name, IFNAMSIZ, ifname);
    g_assert_cmpint(ioctl(ctl, SIOCGIFFLAGS, &ifr), ==, 0);
    ifr.ifr_flags |= IFF_UP;
    g_assert_cmpint(ioctl(ctl, SIOCSIFFLAGS, &ifr), ==, 0);
    close(ctl);

    sock = socket(AF_PACKET, SOCK_RAW, htons(TEST_ETHERTYPE));
    g_assert_cmpint(sock, >=, 0);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(TEST_ETHERTYPE);
    sll.sll_ifindex = ifindex;
    g_assert_cmpint(bind(sock, (struct sockaddr *)&sll, sizeof(sll)), ==, 0);
    return sock;
}

static size_t make_frame(uint8_t *frame, const uint8_t *dst,
                         const uint8_t *src, const char *payload)
{
    size_t len = strlen(payload) + 1;

    memcpy(frame, dst, ETH_ALEN);
    memcpy(frame + ETH_ALEN, src, ETH_ALEN);
    stw_be_p(frame + 2 * ETH_ALEN, TEST_ETHERTYPE);
    memcpy(frame + ETH_HLEN, payload, len);
    return MAX(ETH_HLEN + len, ETH_ZLEN);
}

static void host_send(int sock, const char *payload)
{
    uint8_t frame[ETH_FRAME_LEN] = { 0 };
    size_t len = make_frame(frame, guest_mac, host_mac, payload);

    g_assert_cmpint(send(sock, frame, len, 0), ==, len);
}

/* Wait for a frame from the guest and check its payload */
static void host_expect(int sock, const char *payload)
{
    uint8_t frame[ETH_FRAME_LEN];
    struct pollfd pfd = { .fd = sock, .events = POLLIN };
    ssize_t len;

    g_assert_cmpint(poll(&pfd, 1, 30 * 1000), ==, 1);
    len = recv(sock, frame, sizeof(frame), 0);
    g_assert_cmpint(len, >, ETH_HLEN);
    g_assert_cmpuint(lduw_be_p(frame + 2 * ETH_ALEN), ==, TEST_ETHERTYPE);
    g_assert_cmpstr((char *)frame + ETH_HLEN, ==, payload);
}

/* Guest side: a virtio-net-pci NIC driven through libqos */

typedef struct Guest {
    QTestState *qts;
    QGuestAllocator alloc;
    QPCIBus *bus;
    QVirtioPCIDevice *dev;
    int nqueues;
    QVirtQueue **vqs;
} Guest;

static void guest_attach(Guest *g, QTestState *qts)
{
    QPCIAddress addr = { .devfn = NIC_DEVFN };

    g->qts = qts;
    g->bus = qpci_new_pc(qts, NULL);
    g->dev = virtio_pci_new(g->bus, &addr);
    g_assert_nonnull(g->dev);
    qvirtio_pci_device_enable(g->dev);
}

/* Reset the NIC and set up @pairs queue pairs with features as a driver */
static void guest_start(Guest *g, QTestState *qts, int pairs)
{
    QVirtioDevice *vdev;
    uint64_t features;

    pc_alloc_init(&g->alloc, qts, ALLOC_NO_FLAGS);
    guest_attach(g, qts);
    vdev = &g->dev->vdev;
    qvirtio_start_device(vdev);
    features = qvirtio_get_features(vdev);
    features &= ~(QVIRTIO_F_BAD_FEATURE |
                  (1ull << VIRTIO_RING_F_INDIRECT_DESC) |
                  (1ull << VIRTIO_RING_F_EVENT_IDX));
    if (pairs == 1) {
        features &= ~(1ull << VIRTIO_NET_F_MQ);
    }
    qvirtio_set_features(vdev, features);
    g->nqueues = pairs * 2 + !!(features & (1ull << VIRTIO_NET_F_CTRL_VQ));
    g->vqs = g_new0(QVirtQueue *, g->nqueues);
    for (int i = 0; i < g->nqueues; i++) {
        g->vqs[i] = qvirtqueue_setup(vdev, &g->alloc, i);
    }
    qvirtio_set_driver_ok(vdev);
}

/* The NIC was migrated: drive it in its new process, keeping its rings */
static void guest_migrated(Guest *g, QTestState *qts)
{
    g_free(g->dev->pdev);
    g_free(g->dev);
    qpci_free_pc(g->bus);
    guest_attach(g, qts);
}

static void guest_release(Guest *g)
{
    for (int i = 0; i < g->nqueues; i++) {
        qvirtqueue_cleanup(g->dev->vdev.bus, g->vqs[i], &g->alloc);
    }
    g_free(g->vqs);
    g_free(g->dev->pdev);
    g_free(g->dev);
    qpci_free_pc(g->bus);
    alloc_destroy(&g->alloc);
}

/*
 * Poll the used ring rather than wait for an interrupt: one interrupt
 * can stand for many buffers.
 */
static void guest_wait_used(Guest *g, QVirtQueue *vq, uint32_t head)
{
    gint64 deadline = g_get_monotonic_time() + TIMEOUT_US;
    uint32_t got;

    while (!qvirtqueue_get_buf(g->qts, vq, &got, NULL)) {
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(1000);
    }
    g_assert_cmpuint(got, ==, head);
}

static uint64_t guest_post_rx(Guest *g, int pair, uint32_t *head)
{
    uint64_t buf = guest_alloc(&g->alloc, RX_BUF_SIZE);

    *head = qvirtqueue_add(g->qts, g->vqs[pair * 2], buf, RX_BUF_SIZE,
                           true, false);
    qvirtqueue_kick(g->qts, &g->dev->vdev, g->vqs[pair * 2], *head);
    return buf;
}

static void guest_expect_rx(Guest *g, int pair, uint64_t buf, uint32_t head,
                            const char *payload)
{
    uint8_t frame[ETH_FRAME_LEN];

    guest_wait_used(g, g->vqs[pair * 2], head);
    qtest_memread(g->qts, buf + VNET_HDR_SIZE, frame, sizeof(frame));
    g_assert_cmpuint(lduw_be_p(frame + 2 * ETH_ALEN), ==, TEST_ETHERTYPE);
    g_assert_cmpstr((char *)frame + ETH_HLEN, ==, payload);
}

static void guest_tx(Guest *g, int pair, const char *payload)
{
    uint8_t pkt[VNET_HDR_SIZE + ETH_FRAME_LEN] = { 0 };
    size_t len = make_frame(pkt + VNET_HDR_SIZE, host_mac, guest_mac, payload);
    uint64_t buf = guest_alloc(&g->alloc, sizeof(pkt));
    QVirtQueue *vq = g->vqs[pair * 2 + 1];
    uint32_t head;

    qtest_memwrite(g->qts, buf, pkt, VNET_HDR_SIZE + len);
    head = qvirtqueue_add(g->qts, vq, buf, VNET_HDR_SIZE + len, false, false);
    qvirtqueue_kick(g->qts, &g->dev->vdev, vq, head);
    guest_wait_used(g, vq, head);
    guest_free(&g->alloc, buf);
}

/* One frame each way on queue pair @pair */
static void check_traffic(Guest *g, int sock, int pair, const char *tag)
{
    g_autofree char *rx = g_strdup_printf("rx-%s-%d", tag, pair);
    g_autofree char *tx = g_strdup_printf("tx-%s-%d", tag, pair);
    uint32_t head;
    uint64_t buf = guest_post_rx(g, pair, &head);

    host_send(sock, rx);
    guest_expect_rx(g, pair, buf, head, rx);
    guest_free(&g->alloc, buf);

    guest_tx(g, pair, tx);
    host_expect(sock, tx);
}

/* Processes */

static QTestState *start_qemu(const char *netdev, int pairs,
                              const char *extra)
{
    g_autofree char *mq = pairs > 1 ?
        g_strdup_printf(",mq=on,vectors=%d", 2 * pairs + 2) : g_strdup("");

    return qtest_initf("-M pc -m 64 -nodefaults "
                       "-netdev tap-transfer,id=n0,%s "
                       "-device virtio-net-pci,netdev=n0,addr=04.0,"
                       "mac=" GUEST_MAC "%s %s",
                       netdev, mq, extra ?: "");
}

static char *migration_uri(void)
{
    return g_strdup_printf("unix:%s/migsock", tmpdir);
}

static QTestState *start_dest(const char *netdev, int pairs, bool transfer,
                              const char *extra)
{
    g_autofree char *args = g_strdup_printf("-incoming defer %s",
                                            extra ?: "");
    g_autofree char *uri = migration_uri();
    QTestState *to = start_qemu(netdev, pairs, args);

    migrate_set_parameter_bool(to, "backend-transfer", transfer);
    migrate_incoming_qmp(to, uri, NULL, "{}");
    return to;
}

static void migrate_to(QTestState *from, QTestState *to, bool transfer)
{
    g_autofree char *uri = migration_uri();

    migrate_set_parameter_bool(from, "backend-transfer", transfer);
    migrate_qmp(from, to, uri, NULL, "{}");
    wait_for_migration_complete(from);
}

/* The /dev/net/tun fds of process @pid */
static GArray *tun_fds(pid_t pid)
{
    g_autofree char *dirname = g_strdup_printf("/proc/%d/fd", pid);
    g_autoptr(GDir) dir = g_dir_open(dirname, 0, NULL);
    GArray *fds = g_array_new(false, false, sizeof(int));
    const char *name;

    g_assert_nonnull(dir);
    while ((name = g_dir_read_name(dir))) {
        g_autofree char *path = g_strdup_printf("%s/%s", dirname, name);
        g_autofree char *target = g_file_read_link(path, NULL);
        int fd = atoi(name);

        if (target && !strcmp(target, "/dev/net/tun")) {
            g_array_append_val(fds, fd);
        }
    }
    return fds;
}

static bool same_file(pid_t pid1, int fd1, pid_t pid2, int fd2)
{
    return syscall(SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) == 0;
}

static unsigned count_links(void)
{
    struct if_nameindex *ifs = if_nameindex();
    unsigned n = 0;

    g_assert_nonnull(ifs);
    while (ifs[n].if_index) {
        n++;
    }
    if_freenameindex(ifs);
    return n;
}

static bool need_tap(void)
{
    if (skip_reason) {
        g_test_skip(skip_reason);
        return false;
    }
    return true;
}

/* Tests */

static void test_rx_tx(void)
{
    QTestState *qts;
    Guest g = { 0 };
    int sock;

    if (!need_tap()) {
        return;
    }
    qts = start_qemu("ifname=tt0,script=no,downscript=no", 1, NULL);
    sock = host_tap_attach("tt0");
    guest_start(&g, qts, 1);

    check_traffic(&g, sock, 0, "plain");

    guest_release(&g);
    close(sock);
    qtest_quit(qts);
}

static void test_multiqueue(void)
{
    g_autoptr(GArray) fds = NULL;
    QTestState *qts;
    Guest g = { 0 };
    int sock;

    if (!need_tap()) {
        return;
    }
    qts = start_qemu("ifname=tt0,queues=4,script=no,downscript=no", 4, NULL);
    sock = host_tap_attach("tt0");
    guest_start(&g, qts, 4);
    fds = tun_fds(qtest_pid(qts));
    g_assert_cmpuint(fds->len, ==, 4);

    /*
     * The kernel steers host-to-guest frames by flow; with one flow they
     * all take one queue.  Guest-to-host works per queue.
     */
    for (int pair = 0; pair < 4; pair++) {
        g_autofree char *tx = g_strdup_printf("mq-tx-%d", pair);

        guest_tx(&g, pair, tx);
        host_expect(sock, tx);
    }

    guest_release(&g);
    close(sock);
    qtest_quit(qts);
}

static void test_module_missing(void)
{
    const char *qemu = g_getenv("QTEST_QEMU_BINARY");
    g_autofree char *lonely = g_build_filename(tmpdir, "qemu-no-modules",
                                               NULL);
    g_autofree char *err = NULL;
    const char *argv[] = {
        lonely, "-M", "none", "-display", "none",
        "-netdev", "tap-transfer,id=n0,ifname=tt9", NULL
    };
    g_auto(GStrv) envp = g_environ_unsetenv(g_get_environ(),
                                            "QEMU_MODULE_DIR");
    int status;

    g_assert_nonnull(qemu);
    /* Same binary, in a directory with no modules next to it */
    if (link(qemu, lonely) < 0) {
        g_autofree char *contents = NULL;
        gsize len;

        g_assert_true(g_file_get_contents(qemu, &contents, &len, NULL));
        g_assert_true(g_file_set_contents(lonely, contents, len, NULL));
        g_assert_cmpint(chmod(lonely, 0755), ==, 0);
    }
    g_assert_true(g_spawn_sync(NULL, (char **)argv, envp, 0, NULL, NULL,
                               NULL, &err, &status, NULL));
    unlink(lonely);

    g_assert_false(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    g_assert_nonnull(strstr(err, "network backend 'tap-transfer' is not "
                            "available: module 'net-tap-transfer' not found"));
    /* One line */
    g_assert_cmpint(strchr(err, '\n') - err, ==, strlen(err) - 1);
}

/* Every source fd has a twin in the destination: the same open file */
static void assert_same_files(pid_t src, GArray *src_fds, pid_t dst,
                              GArray *dst_fds)
{
    g_assert_cmpuint(src_fds->len, ==, dst_fds->len);
    for (guint i = 0; i < src_fds->len; i++) {
        bool found = false;

        for (guint j = 0; j < dst_fds->len && !found; j++) {
            found = same_file(src, g_array_index(src_fds, int, i),
                              dst, g_array_index(dst_fds, int, j));
        }
        g_assert_true(found);
    }
}

static void do_handover(const char *netdev, int pairs)
{
    QTestState *from, *to;
    Guest g = { 0 };
    g_autoptr(GArray) src_fds = NULL;
    g_autoptr(GArray) dst_fds = NULL;
    unsigned ifindex, links;
    uint64_t features;
    int sock;

    from = start_qemu(netdev, pairs, NULL);
    sock = host_tap_attach("tt0");
    ifindex = if_nametoindex("tt0");
    links = count_links();
    guest_start(&g, from, pairs);
    features = qvirtio_get_features(&g.dev->vdev);
    check_traffic(&g, sock, 0, "before");
    src_fds = tun_fds(qtest_pid(from));
    g_assert_cmpuint(src_fds->len, ==, pairs);

    /*
     * tt0 is a TAP that the source keeps open: had the destination
     * opened it, a single-queue one would have failed with EBUSY, and
     * a multiqueue one would show more queues.
     */
    to = start_dest(netdev, pairs, true, NULL);
    dst_fds = tun_fds(qtest_pid(to));
    g_assert_cmpuint(dst_fds->len, ==, 0);
    g_array_free(dst_fds, true);
    migrate_to(from, to, true);
    qtest_qmp_eventwait(to, "RESUME");

    dst_fds = tun_fds(qtest_pid(to));
    assert_same_files(qtest_pid(from), src_fds, qtest_pid(to), dst_fds);
    g_assert_cmpuint(if_nametoindex("tt0"), ==, ifindex);
    g_assert_cmpuint(count_links(), ==, links);

    guest_migrated(&g, to);
    /* What the guest negotiated is still offered */
    g_assert_cmphex(qvirtio_get_features(&g.dev->vdev), ==, features);
    check_traffic(&g, sock, 0, "after");
    for (int pair = 1; pair < pairs; pair++) {
        g_autofree char *tx = g_strdup_printf("after-tx-%d", pair);

        guest_tx(&g, pair, tx);
        host_expect(sock, tx);
    }

    /* The source's exit leaves the TAP to the destination */
    qtest_quit(from);
    g_assert_cmpuint(if_nametoindex("tt0"), ==, ifindex);
    check_traffic(&g, sock, 0, "alone");

    guest_release(&g);
    close(sock);
    qtest_quit(to);
}

static void test_handover(void)
{
    if (need_tap()) {
        do_handover("ifname=tt0,script=no,downscript=no", 1);
    }
}

static void test_handover_multiqueue(void)
{
    if (need_tap()) {
        do_handover("ifname=tt0,queues=4,script=no,downscript=no", 4);
    }
}

static void test_handover_vhost(void)
{
    if (!need_tap()) {
        return;
    }
    if (access("/dev/vhost-net", R_OK | W_OK) < 0) {
        g_test_skip("no /dev/vhost-net on this host");
        return;
    }
    do_handover("ifname=tt0,script=no,downscript=no,vhost=on", 1);
}

/*
 * Frames that arrive while neither QEMU reads the TAP wait in it and
 * reach the destination guest, all of them, in order.
 */
static void test_zero_loss(void)
{
    const char *netdev = "ifname=tt0,script=no,downscript=no";
    enum { FRAMES = 16 };
    QTestState *from, *to;
    Guest g = { 0 };
    uint64_t bufs[FRAMES];
    uint32_t heads[FRAMES];
    int sock;

    if (!need_tap()) {
        return;
    }
    from = start_qemu(netdev, 1, NULL);
    sock = host_tap_attach("tt0");
    guest_start(&g, from, 1);
    for (int i = 0; i < FRAMES; i++) {
        bufs[i] = guest_post_rx(&g, 0, &heads[i]);
    }

    /* -S: the destination stays paused after the migration */
    to = start_dest(netdev, 1, true, "-S");
    migrate_to(from, to, true);
    for (int i = 0; i < FRAMES; i++) {
        g_autofree char *payload = g_strdup_printf("gap-%d", i);

        host_send(sock, payload);
    }
    qtest_qmp_assert_success(to, "{ 'execute': 'cont' }");

    guest_migrated(&g, to);
    for (int i = 0; i < FRAMES; i++) {
        g_autofree char *payload = g_strdup_printf("gap-%d", i);

        guest_expect_rx(&g, 0, bufs[i], heads[i], payload);
    }

    guest_release(&g);
    close(sock);
    qtest_quit(from);
    qtest_quit(to);
}

/* backend-transfer off: an ordinary migration onto a TAP of its own */
static void test_transfer_off(void)
{
    QTestState *from, *to;
    Guest g = { 0 };
    int sock0, sock1;

    if (!need_tap()) {
        return;
    }
    from = start_qemu("ifname=tt0,script=no,downscript=no", 1, NULL);
    sock0 = host_tap_attach("tt0");
    guest_start(&g, from, 1);
    check_traffic(&g, sock0, 0, "src");

    to = start_dest("ifname=tt1,script=no,downscript=no", 1, false, NULL);
    migrate_to(from, to, false);
    qtest_qmp_eventwait(to, "RESUME");
    sock1 = host_tap_attach("tt1");

    guest_migrated(&g, to);
    check_traffic(&g, sock1, 0, "dst");

    guest_release(&g);
    close(sock0);
    close(sock1);
    qtest_quit(from);
    qtest_quit(to);
}

static void test_refuse_tcp(void)
{
    QTestState *from;
    Guest g = { 0 };
    QDict *rsp;
    int sock;

    if (!need_tap()) {
        return;
    }
    from = start_qemu("ifname=tt0,script=no,downscript=no", 1, NULL);
    sock = host_tap_attach("tt0");
    guest_start(&g, from, 1);

    migrate_set_parameter_bool(from, "backend-transfer", true);
    rsp = qtest_qmp(from, "{ 'execute': 'migrate', 'arguments': "
                    "{ 'uri': 'tcp:127.0.0.1:1' } }");
    g_assert_true(qdict_haskey(rsp, "error"));
    g_assert_nonnull(strstr(qdict_get_str(qdict_get_qdict(rsp, "error"),
                                          "desc"),
                            "needs a UNIX socket migration channel"));
    qobject_unref(rsp);

    /* Nothing was sent; the source still runs on its TAP */
    check_traffic(&g, sock, 0, "refused");

    guest_release(&g);
    close(sock);
    qtest_quit(from);
}

/* On at the source, off at the destination: the load fails, the source runs */
static void test_mismatch(void)
{
    QTestState *from, *to;
    Guest g = { 0 };
    int sock;

    if (!need_tap()) {
        return;
    }
    from = start_qemu("ifname=tt0,script=no,downscript=no", 1, NULL);
    sock = host_tap_attach("tt0");
    guest_start(&g, from, 1);

    to = start_dest("ifname=tt1,script=no,downscript=no", 1, false, NULL);
    qtest_set_expected_status(to, EXIT_FAILURE);
    {
        g_autofree char *uri = migration_uri();
        g_autofree char *status = NULL;

        migrate_set_parameter_bool(from, "backend-transfer", true);
        migrate_qmp(from, to, uri, NULL, "{}");
        /*
         * Without a return path the source may finish sending before the
         * destination refuses the state; management then resumes it.
         */
        do {
            g_free(status);
            g_usleep(10 * 1000);
            status = migrate_query_status(from);
        } while (strcmp(status, "failed") && strcmp(status, "completed"));
        qtest_wait_qemu(to);
        if (!strcmp(status, "completed")) {
            qtest_qmp_assert_success(from, "{ 'execute': 'cont' }");
        }
    }
    /* The source VM runs again on its TAP */
    qtest_qmp_eventwait(from, "RESUME");
    check_traffic(&g, sock, 0, "kept");

    guest_release(&g);
    close(sock);
    qtest_quit(to);
    qtest_quit(from);
}

static void setup_namespace(void)
{
    int fd;

    if (geteuid() != 0) {
        skip_reason = "needs root for TAP devices and a network namespace";
        return;
    }
    if (access("/dev/net/tun", R_OK | W_OK) < 0) {
        skip_reason = "needs /dev/net/tun";
        return;
    }
    if (unshare(CLONE_NEWNET) < 0) {
        skip_reason = "cannot create a network namespace";
        return;
    }
    /* Keep the kernel's own IPv6 chatter off the test TAPs */
    fd = open("/proc/sys/net/ipv6/conf/default/disable_ipv6", O_WRONLY);
    if (fd >= 0) {
        g_assert_cmpint(write(fd, "1", 1), ==, 1);
        close(fd);
    }
}

int main(int argc, char **argv)
{
    int ret;

    g_test_init(&argc, &argv, NULL);
    setup_namespace();
    tmpdir = g_dir_make_tmp("tap-transfer-test-XXXXXX", NULL);
    g_assert_nonnull(tmpdir);

    qtest_add_func("/tap-transfer/module-missing", test_module_missing);
    qtest_add_func("/tap-transfer/rx-tx", test_rx_tx);
    qtest_add_func("/tap-transfer/multiqueue", test_multiqueue);
    qtest_add_func("/tap-transfer/migration/handover", test_handover);
    qtest_add_func("/tap-transfer/migration/handover-multiqueue",
                   test_handover_multiqueue);
    qtest_add_func("/tap-transfer/migration/handover-vhost",
                   test_handover_vhost);
    qtest_add_func("/tap-transfer/migration/zero-loss", test_zero_loss);
    qtest_add_func("/tap-transfer/migration/transfer-off", test_transfer_off);
    qtest_add_func("/tap-transfer/migration/refuse-tcp", test_refuse_tcp);
    qtest_add_func("/tap-transfer/migration/mismatch", test_mismatch);

    ret = g_test_run();
    rmdir(tmpdir);
    g_free(tmpdir);
    return ret;
}
