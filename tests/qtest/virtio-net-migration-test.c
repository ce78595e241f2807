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
#include <sys/un.h>
#include <linux/if_packet.h>
#include <linux/if_ether.h>
#include <linux/kcmp.h>
#include <linux/if_tun.h>
#include "libqtest.h"
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "qobject/qdict.h"
#include "qobject/qlist.h"
#include "qobject/qstring.h"
#include "standard-headers/linux/virtio_net.h"
#include "standard-headers/linux/virtio_pci.h"
#include "libqos/libqos-malloc.h"
#include "libqos/malloc-pc.h"
#include "libqos/pci-pc.h"
#include "libqos/virtio-pci.h"
#include "libqos/virtio.h"
#include "migration/migration-qmp.h"
#include "migration/migration-util.h"
#include "tap-transfer-compat.h"

#define TIMEOUT_US (30 * 1000 * 1000)
#define VNET_HDR_SIZE sizeof(struct virtio_net_hdr_mrg_rxbuf)
#define TEST_ETHERTYPE 0x88b5
#define GUEST_MAC "52:54:00:12:34:56"
#define NIC_DEVFN QPCI_DEVFN(4, 0)
#define RX_BUF_SIZE 2048
/* The RSS key size virtio-net takes */
#define RSS_KEY_SIZE 40

static const uint8_t guest_mac[ETH_ALEN] = { 0x52, 0x54, 0, 0x12, 0x34, 0x56 };
static const uint8_t host_mac[ETH_ALEN] = { 0x02, 0, 0, 0, 0, 0x01 };

static const char *skip_reason;
static char *tmpdir;
/* Why the destination of the last migrate_refused() failed, per QMP */
static char *dest_error;
/* Cross-version runs: a machine type both QEMUs have, the source's QEMU */
static const char *machine_type = "pc";
static const char *src_binary_var;
/* Feature bits 64..95 that nic_start() negotiates too, if offered */
static uint32_t nic_want_features_hi;

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
/* Guest side: virtio-net-pci NICs driven through libqos */

typedef struct Machine {
    QTestState *qts;
    QGuestAllocator alloc;
    QPCIBus *bus;
} Machine;

typedef struct Nic {
    Machine *m;
    int devfn;
    QVirtioPCIDevice *dev;
    int nqueues;
    QVirtQueue **vqs;
} Nic;

static void machine_init(Machine *m, QTestState *qts)
{
    m->qts = qts;
    pc_alloc_init(&m->alloc, qts, ALLOC_NO_FLAGS);
    m->bus = qpci_new_pc(qts, NULL);
}

static void nic_find(Nic *n)
{
    QPCIAddress addr = { .devfn = n->devfn };

    n->dev = virtio_pci_new(n->m->bus, &addr);
    g_assert_nonnull(n->dev);
    qvirtio_pci_device_enable(n->dev);
}

/* Feature bits 64..95 that the device offers (virtio 1.0 transport) */
static uint32_t nic_features_hi(Nic *n)
{
    uint32_t base = n->dev->common_cfg_offset;

    qpci_io_writel(n->dev->pdev, n->dev->bar, base +
                   offsetof(struct virtio_pci_common_cfg,
                            device_feature_select), 2);
    return qpci_io_readl(n->dev->pdev, n->dev->bar, base +
                         offsetof(struct virtio_pci_common_cfg,
                                  device_feature));
}

/* Before the low ones, which libqos sets and then FEATURES_OK */
static void nic_set_features_hi(Nic *n, uint32_t features)
{
    uint32_t base = n->dev->common_cfg_offset;

    qpci_io_writel(n->dev->pdev, n->dev->bar, base +
                   offsetof(struct virtio_pci_common_cfg, guest_feature_select),
                   2);
    qpci_io_writel(n->dev->pdev, n->dev->bar, base +
                   offsetof(struct virtio_pci_common_cfg, guest_feature),
                   features);
}

/* Reset the NIC in @slot and set up @pairs queue pairs as a driver does */
static void nic_start(Nic *n, Machine *m, int slot, int pairs)
{
    QVirtioDevice *vdev;
    uint64_t features;

    n->m = m;
    n->devfn = QPCI_DEVFN(4 + slot, 0);
    nic_find(n);
    vdev = &n->dev->vdev;
    qvirtio_start_device(vdev);
    features = qvirtio_get_features(vdev);
    features &= ~(QVIRTIO_F_BAD_FEATURE |
                  (1ull << VIRTIO_RING_F_INDIRECT_DESC) |
                  (1ull << VIRTIO_RING_F_EVENT_IDX));
    if (pairs == 1) {
        features &= ~(1ull << VIRTIO_NET_F_MQ);
    }
    if (nic_want_features_hi) {
        nic_set_features_hi(n, nic_features_hi(n) &
                               nic_want_features_hi);
    }
    qvirtio_set_features(vdev, features);
    n->nqueues = pairs * 2 + !!(features & (1ull << VIRTIO_NET_F_CTRL_VQ));
    n->vqs = g_new0(QVirtQueue *, n->nqueues);
    for (int i = 0; i < n->nqueues; i++) {
        n->vqs[i] = qvirtqueue_setup(vdev, &m->alloc, i);
    }
    qvirtio_set_driver_ok(vdev);
}

static void nic_forget_device(Nic *n)
{
    g_free(n->dev->pdev);
    g_free(n->dev);
    n->dev = NULL;
}

/*
 * The machine was migrated: drive its NICs, in the order they were
 * started, in the new process; their rings live on in guest memory.
 */
static void machine_migrated(Machine *m, QTestState *qts, Nic *nics, int n)
{
    for (int i = 0; i < n; i++) {
        nic_forget_device(&nics[i]);
    }
    qpci_free_pc(m->bus);
    m->qts = qts;
    m->bus = qpci_new_pc(qts, NULL);
    for (int i = 0; i < n; i++) {
        nic_find(&nics[i]);
        /* The rings stay; they point at the device handle they use */
        for (int q = 0; q < nics[i].nqueues; q++) {
            nics[i].vqs[q]->vdev = &nics[i].dev->vdev;
        }
    }
}

static void nic_release(Nic *n)
{
    for (int i = 0; i < n->nqueues; i++) {
        qvirtqueue_cleanup(n->dev->vdev.bus, n->vqs[i], &n->m->alloc);
    }
    g_free(n->vqs);
    nic_forget_device(n);
}

static void machine_release(Machine *m)
{
    qpci_free_pc(m->bus);
    alloc_destroy(&m->alloc);
}

/*
 * Poll the used ring rather than wait for an interrupt: one interrupt
 * can stand for many buffers.
 */
static void nic_wait_used(Nic *n, QVirtQueue *vq, uint32_t head)
{
    gint64 deadline = g_get_monotonic_time() + TIMEOUT_US;
    uint32_t got;

    while (!qvirtqueue_get_buf(n->m->qts, vq, &got, NULL)) {
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(1000);
    }
    g_assert_cmpuint(got, ==, head);
}

static uint64_t nic_post_rx(Nic *n, int pair, uint32_t *head)
{
    uint64_t buf = guest_alloc(&n->m->alloc, RX_BUF_SIZE);

    *head = qvirtqueue_add(n->m->qts, n->vqs[pair * 2], buf, RX_BUF_SIZE,
                           true, false);
    qvirtqueue_kick(n->m->qts, &n->dev->vdev, n->vqs[pair * 2], *head);
    return buf;
}

static void nic_expect_rx(Nic *n, int pair, uint64_t buf, uint32_t head,
                          const char *payload)
{
    uint8_t frame[ETH_FRAME_LEN];

    nic_wait_used(n, n->vqs[pair * 2], head);
    qtest_memread(n->m->qts, buf + VNET_HDR_SIZE, frame, sizeof(frame));
    g_assert_cmpuint(lduw_be_p(frame + 2 * ETH_ALEN), ==, TEST_ETHERTYPE);
    g_assert_cmpstr((char *)frame + ETH_HLEN, ==, payload);
    guest_free(&n->m->alloc, buf);
}

static void nic_tx(Nic *n, int pair, const char *payload)
{
    uint8_t pkt[VNET_HDR_SIZE + ETH_FRAME_LEN] = { 0 };
    size_t len = make_frame(pkt + VNET_HDR_SIZE, host_mac, guest_mac, payload);
    uint64_t buf = guest_alloc(&n->m->alloc, sizeof(pkt));
    QVirtQueue *vq = n->vqs[pair * 2 + 1];
    uint32_t head;

    qtest_memwrite(n->m->qts, buf, pkt, VNET_HDR_SIZE + len);
    head = qvirtqueue_add(n->m->qts, vq, buf, VNET_HDR_SIZE + len, false,
                          false);
    qvirtqueue_kick(n->m->qts, &n->dev->vdev, vq, head);
    nic_wait_used(n, vq, head);
    guest_free(&n->m->alloc, buf);
}

/* One frame each way on queue pair @pair */
static void check_traffic(Nic *n, int sock, int pair, const char *tag)
{
    g_autofree char *rx = g_strdup_printf("rx-%s-%d", tag, pair);
    g_autofree char *tx = g_strdup_printf("tx-%s-%d", tag, pair);
    uint32_t head;
    uint64_t buf = nic_post_rx(n, pair, &head);

    host_send(sock, rx);
    nic_expect_rx(n, pair, buf, head, rx);

    nic_tx(n, pair, tx);
    host_expect(sock, tx);
}

/* Processes */

static QTestState *start_qemu_as(const char *binary_var, const char *netdev,
                                 int pairs, const char *extra)
{
    g_autofree char *mq = pairs > 1 ?
        g_strdup_printf(",mq=on,vectors=%d", 2 * pairs + 2) : g_strdup("");
    g_autofree char *args = g_strdup_printf(
        "-M %s -m 64 -nodefaults -netdev tap-transfer,id=n0,%s "
        "-device virtio-net-pci,netdev=n0,addr=04.0,mac=" GUEST_MAC "%s %s",
        machine_type, netdev, mq, extra ?: "");

    return tap_transfer_qtest_init(binary_var, args);
}

static QTestState *start_qemu(const char *netdev, int pairs,
                              const char *extra)
{
    return start_qemu_as(src_binary_var, netdev, pairs, extra);
}

static char *migration_uri(void)
{
    return g_strdup_printf("unix:%s/migsock", tmpdir);
}

typedef struct DestOptions {
    const char *binary_var;
    const char *extra;
    /* Stay alive after a failed load, to be inspected */
    bool keep_on_error;
} DestOptions;

static QTestState *start_dest_opts(const char *netdev, int pairs,
                                   bool transfer, const DestOptions *opts)
{
    g_autofree char *args = g_strdup_printf("-incoming defer %s",
                                            opts->extra ?: "");
    g_autofree char *uri = migration_uri();
    QTestState *to = start_qemu_as(opts->binary_var, netdev, pairs, args);

    migrate_set_parameter_bool(to, "backend-transfer", transfer);
    if (opts->keep_on_error) {
        migrate_incoming_qmp(to, uri, NULL, "{ 'exit-on-error': false }");
    } else {
        migrate_incoming_qmp(to, uri, NULL, "{}");
    }
    return to;
}

static QTestState *start_dest(const char *netdev, int pairs, bool transfer,
                              const char *extra)
{
    DestOptions opts = { .extra = extra };

    return start_dest_opts(netdev, pairs, transfer, &opts);
}

static void migrate_start(QTestState *from, QTestState *to, bool transfer)
{
    g_autofree char *uri = migration_uri();

    migrate_set_parameter_bool(from, "backend-transfer", transfer);
    migrate_qmp(from, to, uri, NULL, "{}");
}

static void migrate_to(QTestState *from, QTestState *to, bool transfer)
{
    migrate_start(from, to, transfer);
    wait_for_migration_complete(from);
    g_test_message("downtime with backend-transfer %s: %" PRId64 " ms",
                   transfer ? "on" : "off",
                   read_migrate_property_int(from, "downtime"));
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

static unsigned count_tun_fds(pid_t pid)
{
    g_autoptr(GArray) fds = tun_fds(pid);

    return fds->len;
}

static unsigned count_fds(pid_t pid)
{
    g_autofree char *dirname = g_strdup_printf("/proc/%d/fd", pid);
    g_autoptr(GDir) dir = g_dir_open(dirname, 0, NULL);
    unsigned n = 0;

    g_assert_nonnull(dir);
    while (g_dir_read_name(dir)) {
        n++;
    }
    return n;
}

static bool same_file(pid_t pid1, int fd1, pid_t pid2, int fd2)
{
    return syscall(SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) == 0;
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

/* A failed migration restarts the VM from a bottom half: wait for it */
static void wait_running(QTestState *qts)
{
    gint64 deadline = g_get_monotonic_time() + TIMEOUT_US;

    for (;;) {
        QDict *rsp = qtest_qmp_assert_success_ref(
            qts, "{ 'execute': 'query-status' }");
        bool running = qdict_get_bool(rsp, "running");

        qobject_unref(rsp);
        if (running) {
            return;
        }
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(10 * 1000);
    }
}

/*
 * A migration the destination refuses, kept alive to be inspected: it
 * must hold none of the fds it received, only @own_fds of a TAP it
 * opened itself.  Once it goes, the
 * source's migration ends; without a return path the source may have
 * finished sending before the refusal, and management resumes it, as
 * the test does.  Either way the source runs again.
 */
static void migrate_refused(QTestState *from, QTestState *to, bool transfer,
                            unsigned own_fds)
{
    g_autofree char *status = NULL;
    QDict *rsp;

    migrate_start(from, to, transfer);
    do {
        g_free(status);
        g_usleep(10 * 1000);
        status = migrate_query_status(to);
    } while (strcmp(status, "failed"));
    rsp = qtest_qmp_assert_success_ref(to, "{ 'execute': 'query-migrate' }");
    g_free(dest_error);
    dest_error = g_strdup(qdict_get_try_str(rsp, "error-desc"));
    g_test_message("destination: %s", dest_error);
    qobject_unref(rsp);
    g_assert_cmpuint(count_tun_fds(qtest_pid(to)), ==, own_fds);
    qtest_quit(to);

    do {
        g_free(status);
        g_usleep(10 * 1000);
        status = migrate_query_status(from);
    } while (strcmp(status, "failed") && strcmp(status, "completed"));
    if (!strcmp(status, "completed")) {
        qtest_qmp_assert_success(from, "{ 'execute': 'cont' }");
    }
    wait_running(from);
}

/* A VM with one NIC on netdev n0, TAP tt0, and the host end of tt0 */
typedef struct Vm {
    QTestState *qts;
    Machine m;
    Nic nic;
    int sock;
} Vm;

static void vm_start(Vm *vm, const char *netdev, int pairs, const char *extra)
{
    vm->qts = start_qemu(netdev, pairs, extra);
    vm->sock = host_tap_attach("tt0");
    machine_init(&vm->m, vm->qts);
    nic_start(&vm->nic, &vm->m, 0, pairs);
}

static void vm_migrated(Vm *vm, QTestState *to)
{
    vm->qts = to;
    machine_migrated(&vm->m, to, &vm->nic, 1);
}

static void vm_release(Vm *vm)
{
    nic_release(&vm->nic);
    machine_release(&vm->m);
    close(vm->sock);
}

/* Running the QEMU binary directly, for what happens before qtest can */
static bool run_qemu(const char *const *prefix, const char *binary,
                     const char *const *args, char **out, char **err)
{
    g_autoptr(GPtrArray) argv = g_ptr_array_new();
    g_auto(GStrv) envp = g_environ_unsetenv(g_get_environ(),
                                            "QEMU_MODULE_DIR");
    int status;

    for (; prefix && *prefix; prefix++) {
        g_ptr_array_add(argv, (char *)*prefix);
    }
    g_ptr_array_add(argv, (char *)binary);
    for (; *args; args++) {
        g_ptr_array_add(argv, (char *)*args);
    }
    g_ptr_array_add(argv, NULL);
    g_assert_true(g_spawn_sync(NULL, (char **)argv->pdata, envp,
                               G_SPAWN_SEARCH_PATH, NULL, NULL, out, err,
                               &status, NULL));
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* QEMU's message is one line; a sanitizer build's runtime may add its own */
static void assert_one_line(const char *text)
{
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    int n = 0;

    for (int i = 0; lines[i]; i++) {
        n += lines[i][0] && !g_str_has_prefix(lines[i], "==");
    }
    g_assert_cmpint(n, ==, 1);
}

/* Tests without migration */

static void test_module_missing(void)
{
    const char *qemu = g_getenv("QTEST_QEMU_BINARY");
    g_autofree char *lonely = g_build_filename(tmpdir, "qemu-no-modules",
                                               NULL);
    g_autofree char *err = NULL;
    const char *args[] = {
        "-M", "none", "-display", "none",
        "-netdev", "tap-transfer,id=n0,ifname=tt9", NULL
    };

    g_assert_nonnull(qemu);
    /* Same binary, in a directory with no modules next to it */
    if (link(qemu, lonely) < 0) {
        g_autofree char *contents = NULL;
        gsize len;

        g_assert_true(g_file_get_contents(qemu, &contents, &len, NULL));
        g_assert_true(g_file_set_contents(lonely, contents, len, NULL));
        g_assert_cmpint(chmod(lonely, 0755), ==, 0);
    }
    g_assert_false(run_qemu(NULL, lonely, args, NULL, &err));
    unlink(lonely);

    g_assert_nonnull(strstr(err, "network backend 'tap-transfer' is not "
                            "available: module 'net-tap-transfer' not found"));
    assert_one_line(err);
}

static void test_netdev_help(void)
{
    g_autofree char *out = NULL;
    const char *args[] = { "-netdev", "help", NULL };

    g_assert_true(run_qemu(NULL, g_getenv("QTEST_QEMU_BINARY"), args, &out,
                           NULL));
    g_assert_nonnull(strstr(out, "\ntap-transfer\n"));
}

static void test_bad_options(void)
{
    g_autofree char *err = NULL;
    const char *args[] = {
        "-M", "none", "-display", "none",
        "-netdev", "tap-transfer,id=n0,helper=/bin/true", NULL
    };

    g_assert_false(run_qemu(NULL, g_getenv("QTEST_QEMU_BINARY"), args, NULL,
                            &err));
    g_assert_nonnull(strstr(err, "helper= and br= are not supported by "
                            "tap-transfer"));
    assert_one_line(err);
}

static void test_rx_tx(void)
{
    Vm vm = { 0 };

    if (!need_tap()) {
        return;
    }
    vm_start(&vm, "ifname=tt0,script=no,downscript=no", 1, NULL);
    check_traffic(&vm.nic, vm.sock, 0, "plain");
    vm_release(&vm);
    qtest_quit(vm.qts);
}

static void test_multiqueue(void)
{
    Vm vm = { 0 };

    if (!need_tap()) {
        return;
    }
    vm_start(&vm, "ifname=tt0,queues=4,script=no,downscript=no", 4, NULL);
    g_assert_cmpuint(count_tun_fds(qtest_pid(vm.qts)), ==, 4);

    /*
     * The kernel steers host-to-guest frames by flow; with one flow they
     * all take one queue.  Guest-to-host works per queue.
     */
    for (int pair = 0; pair < 4; pair++) {
        g_autofree char *tx = g_strdup_printf("mq-tx-%d", pair);

        nic_tx(&vm.nic, pair, tx);
        host_expect(vm.sock, tx);
    }
    vm_release(&vm);
    qtest_quit(vm.qts);
}

/* The destination needs no network privilege to adopt the TAP */
static void test_unprivileged_open(void)
{
    g_autofree char *err = NULL;
    const char *setpriv[] = { "setpriv", "--bounding-set=-all", NULL };
    const char *args[] = {
        "-M", "none", "-display", "none",
        "-netdev", "tap-transfer,id=n0,ifname=tt9,script=no,downscript=no",
        NULL
    };

    if (!need_tap()) {
        return;
    }
    g_assert_false(run_qemu(setpriv, g_getenv("QTEST_QEMU_BINARY"), args,
                            NULL, &err));
    g_assert_nonnull(strstr(err, "netdev n0: this QEMU lacks CAP_NET_ADMIN"));
    assert_one_line(err);
}

/* Handover */

static void do_handover(const char *netdev, int pairs,
                        const char *dest_binary_var)
{
    DestOptions dest = { .binary_var = dest_binary_var };
    g_autoptr(GArray) src_fds = NULL;
    g_autoptr(GArray) dst_fds = NULL;
    unsigned ifindex, links;
    uint64_t features;
    QTestState *to;
    Vm vm = { 0 };

    vm_start(&vm, netdev, pairs, NULL);
    ifindex = if_nametoindex("tt0");
    links = count_links();
    features = qvirtio_get_features(&vm.nic.dev->vdev);
    check_traffic(&vm.nic, vm.sock, 0, "before");
    src_fds = tun_fds(qtest_pid(vm.qts));
    g_assert_cmpuint(src_fds->len, ==, pairs);

    /*
     * tt0 is a TAP that the source keeps open: had the destination
     * opened it, a single-queue one would have failed with EBUSY, and
     * a multiqueue one would show more queues.
     */
    to = start_dest_opts(netdev, pairs, true, &dest);
    g_assert_cmpuint(count_tun_fds(qtest_pid(to)), ==, 0);
    migrate_to(vm.qts, to, true);
    qtest_qmp_eventwait(to, "RESUME");

    dst_fds = tun_fds(qtest_pid(to));
    assert_same_files(qtest_pid(vm.qts), src_fds, qtest_pid(to), dst_fds);
    g_assert_cmpuint(if_nametoindex("tt0"), ==, ifindex);
    g_assert_cmpuint(count_links(), ==, links);

    /* The source's exit leaves the TAP to the destination */
    qtest_quit(vm.qts);
    vm_migrated(&vm, to);
    g_assert_cmpuint(if_nametoindex("tt0"), ==, ifindex);
    /* What the guest negotiated is still offered */
    g_assert_cmphex(qvirtio_get_features(&vm.nic.dev->vdev), ==, features);
    check_traffic(&vm.nic, vm.sock, 0, "after");
    for (int pair = 1; pair < pairs; pair++) {
        g_autofree char *tx = g_strdup_printf("after-tx-%d", pair);

        nic_tx(&vm.nic, pair, tx);
        host_expect(vm.sock, tx);
    }
    vm_release(&vm);
    qtest_quit(to);
}

static void test_handover(void)
{
    if (need_tap()) {
        do_handover("ifname=tt0,script=no,downscript=no", 1, NULL);
    }
}

static void test_handover_multiqueue(void)
{
    if (need_tap()) {
        do_handover("ifname=tt0,queues=4,script=no,downscript=no", 4, NULL);
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
    do_handover("ifname=tt0,script=no,downscript=no,vhost=on", 1, NULL);
}

/* A destination with every capability dropped adopts the TAP */
static void test_handover_unprivileged(void)
{
    g_autofree char *wrapped = NULL;

    if (!need_tap()) {
        return;
    }
    wrapped = g_strdup_printf("setpriv --bounding-set=-all %s",
                              g_getenv("QTEST_QEMU_BINARY"));
    g_setenv("TAP_TRANSFER_UNPRIVILEGED_QEMU", wrapped, true);
    do_handover("ifname=tt0,script=no,downscript=no", 1,
                "TAP_TRANSFER_UNPRIVILEGED_QEMU");
}

/* ...but with backend-transfer off it must open a TAP, and cannot */
static void test_unprivileged_transfer_off(void)
{
    DestOptions dest = {
        .binary_var = "TAP_TRANSFER_UNPRIVILEGED_QEMU",
        .keep_on_error = true,
    };
    g_autofree char *log = g_build_filename(tmpdir, "unprivileged.log", NULL);
    g_autofree char *wrapped = NULL;
    g_autofree char *err = NULL;
    QTestState *to;
    Vm vm = { 0 };

    if (!need_tap()) {
        return;
    }
    /* QMP only says the load failed; the reason is on stderr */
    wrapped = g_strdup_printf("2>%s setpriv --bounding-set=-all %s", log,
                              g_getenv("QTEST_QEMU_BINARY"));
    g_setenv("TAP_TRANSFER_UNPRIVILEGED_QEMU", wrapped, true);
    vm_start(&vm, "ifname=tt0,script=no,downscript=no", 1, NULL);
    to = start_dest_opts("ifname=tt1,script=no,downscript=no", 1, false,
                         &dest);
    migrate_refused(vm.qts, to, false, 0);
    g_assert_cmpuint(if_nametoindex("tt1"), ==, 0);
    g_assert_true(g_file_get_contents(log, &err, NULL, NULL));
    /* On stderr, or (QEMU >= 10.2) in the migration's error */
    if (!*err) {
        g_free(err);
        err = g_strdup_printf("%s\n", dest_error);
    }
    g_assert_nonnull(strstr(err, "netdev n0: this QEMU lacks CAP_NET_ADMIN, "
                            "which opening a TAP device needs: could not "
                            "configure /dev/net/tun (tt1): Operation not "
                            "permitted\n"));
    unlink(log);
    check_traffic(&vm.nic, vm.sock, 0, "kept");
    vm_release(&vm);
    qtest_quit(vm.qts);
}

/* Four netdevs of two queues each in one VM: every queue moves */
static void test_four_netdevs(void)
{
    enum { NICS = 4, PAIRS = 2 };
    Machine m = { 0 };
    Nic nics[NICS] = { 0 };
    int socks[NICS];
    GString *args = g_string_new("-M pc -m 64 -nodefaults");
    g_autofree char *dest_args = NULL;
    g_autofree char *uri = migration_uri();
    QTestState *from, *to;

    if (!need_tap()) {
        g_string_free(args, true);
        return;
    }
    for (int i = 0; i < NICS; i++) {
        g_string_append_printf(args, " -netdev tap-transfer,id=n%d,ifname=tt%d,"
                               "queues=%d,script=no,downscript=no "
                               "-device virtio-net-pci,netdev=n%d,addr=%02x.0,"
                               "mac=52:54:00:12:34:5%d,mq=on,vectors=%d",
                               i, i, PAIRS, i, 4 + i, 6 + i, 2 * PAIRS + 2);
    }
    from = qtest_init(args->str);
    machine_init(&m, from);
    for (int i = 0; i < NICS; i++) {
        g_autofree char *ifname = g_strdup_printf("tt%d", i);

        socks[i] = host_tap_attach(ifname);
        nic_start(&nics[i], &m, i, PAIRS);
    }

    dest_args = g_strdup_printf("%s -incoming defer", args->str);
    to = qtest_init(dest_args);
    migrate_set_parameter_bool(to, "backend-transfer", true);
    migrate_incoming_qmp(to, uri, NULL, "{}");
    migrate_to(from, to, true);
    qtest_qmp_eventwait(to, "RESUME");
    g_assert_cmpuint(count_tun_fds(qtest_pid(to)), ==, NICS * PAIRS);
    qtest_quit(from);

    machine_migrated(&m, to, nics, NICS);
    for (int i = 0; i < NICS; i++) {
        for (int pair = 0; pair < PAIRS; pair++) {
            g_autofree char *tx = g_strdup_printf("nic%d-pair%d", i, pair);

            nic_tx(&nics[i], pair, tx);
            host_expect(socks[i], tx);
        }
        nic_release(&nics[i]);
        close(socks[i]);
    }
    machine_release(&m);
    qtest_quit(to);
    g_string_free(args, true);
}

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

    if (!need_tap()) {
        return;
    }
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

/* QMP only says the load failed; the reason is on the QEMU's stderr */
static const char *logged_qemu(void)
{
    g_autofree char *logged = g_strdup_printf("2>%s/qemu.log %s", tmpdir,
                                              g_getenv("QTEST_QEMU_BINARY"));

    g_setenv("TAP_TRANSFER_LOGGED_QEMU", logged, true);
    return "TAP_TRANSFER_LOGGED_QEMU";
}

static void assert_logged(const char *line)
{
    g_autofree char *log = g_build_filename(tmpdir, "qemu.log", NULL);
    g_autofree char *err = NULL;

    g_assert_true(g_file_get_contents(log, &err, NULL, NULL));
    g_assert_nonnull(strstr(err, line));
    g_test_message("logged: %s", g_strchomp(err));
    unlink(log);
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

#define STRANDED_HDR_LEN (ETH_HLEN + 20 + 8)

static void host_send_udp(int sock, unsigned ifindex, int flow,
                          const char *payload)
{
    uint8_t frame[ETH_FRAME_LEN] = { 0 };
    uint8_t *ip = frame + ETH_HLEN;
    uint8_t *udp = ip + 20;
    size_t len = strlen(payload) + 1;
    struct sockaddr_ll sll = {
        .sll_family = AF_PACKET,
        .sll_protocol = htons(ETH_P_IP),
        .sll_ifindex = ifindex,
        .sll_halen = ETH_ALEN,
    };

    memcpy(frame, guest_mac, ETH_ALEN);
    memcpy(frame + ETH_ALEN, host_mac, ETH_ALEN);
    stw_be_p(frame + 2 * ETH_ALEN, ETH_P_IP);
    ip[0] = 0x45;
    stw_be_p(ip + 2, 20 + 8 + len);
    ip[8] = 64;
    ip[9] = IPPROTO_UDP;
    stl_be_p(ip + 12, 0x0a000001);
    stl_be_p(ip + 16, 0x0a000002);
    stw_be_p(udp, 40000 + flow);
    stw_be_p(udp + 2, 9);
    stw_be_p(udp + 4, 8 + len);
    memcpy(udp + 8, payload, len);
    memcpy(sll.sll_addr, guest_mac, ETH_ALEN);
    g_assert_cmpint(sendto(sock, frame, STRANDED_HDR_LEN + len, 0,
                           (struct sockaddr *)&sll, sizeof(sll)),
                    ==, STRANDED_HDR_LEN + len);
}

/* Frames the QEMUs read from TAP @ifname, from /proc/net/dev */
static uint64_t tap_frames_read(const char *ifname)
{
    g_autofree char *text = NULL;
    g_autofree char *prefix = g_strdup_printf("%s:", ifname);
    g_auto(GStrv) lines = NULL;

    g_assert_true(g_file_get_contents("/proc/net/dev", &text, NULL, NULL));
    lines = g_strsplit(text, "\n", -1);
    for (int i = 0; lines[i]; i++) {
        g_auto(GStrv) f = g_strsplit_set(g_strstrip(lines[i]), ": ", -1);
        g_autoptr(GPtrArray) v = g_ptr_array_new();

        if (!g_str_has_prefix(lines[i], prefix)) {
            continue;
        }
        for (int j = 1; f[j]; j++) {
            if (*f[j]) {
                g_ptr_array_add(v, f[j]);
            }
        }
        /* 8 receive columns, then transmit bytes, transmit packets */
        g_assert_cmpuint(v->len, >, 9);
        return g_ascii_strtoull(g_ptr_array_index(v, 9), NULL, 10);
    }
    g_assert_not_reached();
}

/* A command on the control queue, which must succeed */
static void nic_ctrl(Nic *n, uint8_t class, uint8_t cmd, const void *data,
                     size_t len)
{
    QTestState *qts = n->m->qts;
    QVirtQueue *vq = n->vqs[n->nqueues - 1];
    g_autofree uint8_t *req = g_malloc(2 + len);
    uint64_t req_addr = guest_alloc(&n->m->alloc, 2 + len);
    uint64_t ack = guest_alloc(&n->m->alloc, 1);
    uint32_t head;

    req[0] = class;
    req[1] = cmd;
    memcpy(req + 2, data, len);
    qtest_memwrite(qts, req_addr, req, 2 + len);
    qtest_writeb(qts, ack, 0xff);
    head = qvirtqueue_add(qts, vq, req_addr, 2 + len, false, true);
    qvirtqueue_add(qts, vq, ack, 1, true, false);
    qvirtqueue_kick(qts, &n->dev->vdev, vq, head);
    nic_wait_used(n, vq, head);
    g_assert_cmpuint(qtest_readb(qts, ack), ==, VIRTIO_NET_OK);
    guest_free(&n->m->alloc, req_addr);
    guest_free(&n->m->alloc, ack);
}

/* The driver turns on @pairs queue pairs, as Linux does at probe */
static void nic_set_pairs(Nic *n, int pairs)
{
    uint8_t pairs_le[2];

    stw_le_p(pairs_le, pairs);
    nic_ctrl(n, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
             pairs_le, sizeof(pairs_le));
}

/*
 * The driver turns on RSS over @pairs queue pairs: IPv4 hashing, a
 * one-entry indirection table, a 40-byte key
 */
static void nic_enable_rss(Nic *n, int pairs)
{
    uint8_t cfg[4 + 2 + 2 + 2 + 2 + 1 + RSS_KEY_SIZE] = { 0 };

    stl_le_p(cfg, VIRTIO_NET_RSS_HASH_TYPE_IPv4);
    stw_le_p(cfg + 10, pairs);
    cfg[12] = RSS_KEY_SIZE;
    memset(cfg + 13, 0x6d, RSS_KEY_SIZE);
    nic_ctrl(n, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_RSS_CONFIG, cfg,
             sizeof(cfg));
}

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
            g_assert_cmpint(sscanf((char *)frame + STRANDED_HDR_LEN,
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

    if (need_tap()) {
        do_stranded(c->netdev, c->pairs, c->refusing_netdev);
    }
}

/*
 * Management software opens the TAP itself and passes its queues in,
 * creates netdevs and NICs at run time, and hands QEMU the migration
 * channel as an fd.
 */
enum { MGMT_QUEUES = 4 };

/*
 * Management opens queue after queue of the multiqueue TAP tt0, to be
 * inherited by the next QEMU, or (@cloexec) passed with getfd.
 */
static void mgmt_open_tap(int *fds, bool cloexec)
{
    for (int i = 0; i < MGMT_QUEUES; i++) {
        struct ifreq ifr = {
            .ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE,
        };

        fds[i] = open("/dev/net/tun", O_RDWR | (cloexec ? O_CLOEXEC : 0));
        g_assert_cmpint(fds[i], >=, 0);
        pstrcpy(ifr.ifr_name, IFNAMSIZ, "tt0");
        g_assert_cmpint(ioctl(fds[i], TUNSETIFF, &ifr), ==, 0);
    }
}

static void mgmt_getfd(QTestState *qts, int fd, const char *name)
{
    qtest_qmp_fds_assert_success(qts, &fd, 1,
                                 "{ 'execute': 'getfd',"
                                 "  'arguments': { 'fdname': %s } }", name);
}

/*
 * A QEMU with the NIC on netdev n0, on management's @fds if any, else
 * just told the queue count.  On the command line the fds are
 * inherited; at run time they come with getfd, as q0..q3.
 */
static QTestState *mgmt_start(const int *fds, bool runtime, bool incoming)
{
    const char *mq = "mq=on,vectors=10";
    g_autofree char *netdev = NULL;
    QTestState *qts;
    QDict *args;

    if (!runtime) {
        netdev = fds ? g_strdup_printf("fds=%d:%d:%d:%d", fds[0], fds[1],
                                       fds[2], fds[3]) :
                       g_strdup_printf("queues=%d", MGMT_QUEUES);
        return qtest_initf("-M pc -m 64 -nodefaults %s -netdev "
                           "tap-transfer,id=n0,%s -device virtio-net-pci,"
                           "netdev=n0,addr=04.0,mac=" GUEST_MAC ",%s",
                           incoming ? "-incoming defer" : "", netdev, mq);
    }
    qts = qtest_initf("-M pc -m 64 -nodefaults %s",
                      incoming ? "-incoming defer" : "");
    for (int i = 0; fds && i < MGMT_QUEUES; i++) {
        g_autofree char *name = g_strdup_printf("q%d", i);

        mgmt_getfd(qts, fds[i], name);
    }
    args = qdict_new();
    qdict_put_str(args, "type", "tap-transfer");
    qdict_put_str(args, "id", "n0");
    if (fds) {
        qdict_put_str(args, "fds", "q0:q1:q2:q3");
    } else {
        qdict_put_int(args, "queues", MGMT_QUEUES);
    }
    qtest_qmp_assert_success(qts, "{ 'execute': 'netdev_add',"
                             "  'arguments': %p }", args);
    qtest_qmp_assert_success(qts, "{ 'execute': 'device_add', 'arguments':"
                             "  { 'driver': 'virtio-net-pci', 'id': 'nic0',"
                             "    'netdev': 'n0', 'addr': '04.0',"
                             "    'mac': '" GUEST_MAC "', 'mq': true,"
                             "    'vectors': 10 } }");
    return qts;
}

/*
 * The source runs on management's fds; the destination gets nothing
 * but the queue count, or fds of its own (@dest_fds), which it must
 * close unused.  The migration goes over fd: channels on both sides.
 */
static void do_mgmt_handover(bool runtime, bool dest_fds)
{
    int src_fds[MGMT_QUEUES], dst_given[MGMT_QUEUES], chan[2];
    g_autoptr(GArray) src_tun = NULL;
    g_autoptr(GArray) dst_tun = NULL;
    unsigned ifindex, links;
    QTestState *to;
    Vm vm = { 0 };

    mgmt_open_tap(src_fds, runtime);
    vm.qts = mgmt_start(src_fds, runtime, false);
    for (int i = 0; i < MGMT_QUEUES; i++) {
        close(src_fds[i]);
    }
    vm.sock = host_tap_attach("tt0");
    machine_init(&vm.m, vm.qts);
    nic_start(&vm.nic, &vm.m, 0, MGMT_QUEUES);
    check_traffic(&vm.nic, vm.sock, 0, "mgmt-before");
    src_tun = tun_fds(qtest_pid(vm.qts));
    g_assert_cmpuint(src_tun->len, ==, MGMT_QUEUES);
    ifindex = if_nametoindex("tt0");
    links = count_links();

    if (dest_fds) {
        /* The same TAP's queues, as naive management would pass */
        mgmt_open_tap(dst_given, runtime);
    }
    to = mgmt_start(dest_fds ? dst_given : NULL, runtime, true);
    for (int i = 0; dest_fds && i < MGMT_QUEUES; i++) {
        close(dst_given[i]);
    }
    g_assert_cmpuint(count_tun_fds(qtest_pid(to)), ==,
                     dest_fds ? MGMT_QUEUES : 0);

    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM, 0, chan), ==, 0);
    mgmt_getfd(vm.qts, chan[0], "mig");
    mgmt_getfd(to, chan[1], "mig");
    close(chan[0]);
    close(chan[1]);
    migrate_set_parameter_bool(to, "backend-transfer", true);
    migrate_incoming_qmp(to, "fd:mig", NULL, "{}");
    migrate_set_parameter_bool(vm.qts, "backend-transfer", true);
    migrate_qmp(vm.qts, to, "fd:mig", NULL, "{}");
    wait_for_migration_complete(vm.qts);
    qtest_qmp_eventwait(to, "RESUME");

    /* Only the source's queues, not one of those passed to it */
    dst_tun = tun_fds(qtest_pid(to));
    assert_same_files(qtest_pid(vm.qts), src_tun, qtest_pid(to), dst_tun);
    g_assert_cmpuint(if_nametoindex("tt0"), ==, ifindex);
    g_assert_cmpuint(count_links(), ==, links);

    qtest_quit(vm.qts);
    vm_migrated(&vm, to);
    check_traffic(&vm.nic, vm.sock, 0, "mgmt-after");
    for (int pair = 1; pair < MGMT_QUEUES; pair++) {
        g_autofree char *tx = g_strdup_printf("mgmt-tx-%d", pair);

        nic_tx(&vm.nic, pair, tx);
        host_expect(vm.sock, tx);
    }
    vm_release(&vm);
    qtest_quit(to);
}

typedef struct MgmtCase {
    const char *path;
    bool runtime;
    bool dest_fds;
} MgmtCase;

static const MgmtCase mgmt_cases[] = {
    { "/tap-transfer/management/fds", false, false },
    { "/tap-transfer/management/fds-to-dest", false, true },
    { "/tap-transfer/management/runtime", true, false },
    { "/tap-transfer/management/runtime-fds-to-dest", true, true },
};

static void test_mgmt(const void *opaque)
{
    const MgmtCase *c = opaque;

    if (need_tap()) {
        do_mgmt_handover(c->runtime, c->dest_fds);
    }
}

/*
 * The TAP in a file descriptor set (add-fd), named /dev/fdset/N: once
 * the set is removed, the netdev holds the only copy, and hands it over.
 */
static void test_mgmt_fdset(void)
{
    struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR };
    g_autoptr(GArray) src_tun = NULL;
    g_autoptr(GArray) dst_tun = NULL;
    QTestState *to;
    Vm vm = { 0 };
    int fd;

    if (!need_tap()) {
        return;
    }
    fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    g_assert_cmpint(fd, >=, 0);
    pstrcpy(ifr.ifr_name, IFNAMSIZ, "tt0");
    g_assert_cmpint(ioctl(fd, TUNSETIFF, &ifr), ==, 0);

    vm.qts = qtest_init("-M pc -m 64 -nodefaults");
    qtest_qmp_fds_assert_success(vm.qts, &fd, 1,
                                 "{ 'execute': 'add-fd',"
                                 "  'arguments': { 'fdset-id': 3 } }");
    close(fd);
    qtest_qmp_assert_success(vm.qts, "{ 'execute': 'netdev_add', 'arguments':"
                             "  { 'type': 'tap-transfer', 'id': 'n0',"
                             "    'fd': '/dev/fdset/3' } }");
    qtest_qmp_assert_success(vm.qts, "{ 'execute': 'device_add', 'arguments':"
                             "  { 'driver': 'virtio-net-pci', 'id': 'nic0',"
                             "    'netdev': 'n0', 'addr': '04.0',"
                             "    'mac': '" GUEST_MAC "' } }");
    qtest_qmp_assert_success(vm.qts, "{ 'execute': 'remove-fd',"
                             "  'arguments': { 'fdset-id': 3 } }");
    src_tun = tun_fds(qtest_pid(vm.qts));
    g_assert_cmpuint(src_tun->len, ==, 1);
    vm.sock = host_tap_attach("tt0");
    machine_init(&vm.m, vm.qts);
    nic_start(&vm.nic, &vm.m, 0, 1);
    check_traffic(&vm.nic, vm.sock, 0, "fdset-src");

    to = start_dest("script=no,downscript=no", 1, true, NULL);
    migrate_to(vm.qts, to, true);
    qtest_qmp_eventwait(to, "RESUME");
    dst_tun = tun_fds(qtest_pid(to));
    assert_same_files(qtest_pid(vm.qts), src_tun, qtest_pid(to), dst_tun);
    qtest_quit(vm.qts);
    vm_migrated(&vm, to);
    check_traffic(&vm.nic, vm.sock, 0, "fdset-dst");
    vm_release(&vm);
    qtest_quit(to);
}

/*
 * The parameter as a property: -global migration.backend-transfer=on on
 * a destination whose main channel is on its command line.
 */
static void test_global_property(void)
{
    const char *netdev = "ifname=tt0,script=no,downscript=no";
    g_autofree char *uri = migration_uri();
    g_autofree char *extra = g_strdup_printf(
        "-global migration.backend-transfer=on -incoming %s", uri);
    g_autoptr(GArray) src_tun = NULL;
    g_autoptr(GArray) dst_tun = NULL;
    QTestState *to;
    QDict *rsp;
    Vm vm = { 0 };

    if (!need_tap()) {
        return;
    }
    vm_start(&vm, netdev, 1, NULL);
    src_tun = tun_fds(qtest_pid(vm.qts));
    to = start_qemu(netdev, 1, extra);
    rsp = qtest_qmp_assert_success_ref(
        to, "{ 'execute': 'query-migrate-parameters' }");
    g_assert_true(qdict_get_bool(rsp, "backend-transfer"));
    qobject_unref(rsp);

    migrate_to(vm.qts, to, true);
    qtest_qmp_eventwait(to, "RESUME");
    dst_tun = tun_fds(qtest_pid(to));
    assert_same_files(qtest_pid(vm.qts), src_tun, qtest_pid(to), dst_tun);
    qtest_quit(vm.qts);
    vm_migrated(&vm, to);
    check_traffic(&vm.nic, vm.sock, 0, "global");
    vm_release(&vm);
    qtest_quit(to);
}

/*
 * QEMU's own local upgrade mode: cpr-transfer keeps guest RAM in place
 * (memfd, aux-ram-share) and needs the destination to take its state
 * from a cpr channel before it creates devices, so its monitor answers
 * only once the source migrates.  The TAP goes in the main stream.
 * @defer: the destination gets its main channel and the parameter over
 * QMP then, rather than on its command line.
 */
static void do_cpr_transfer(int pairs, bool defer, const char *dst_var)
{
    g_autofree char *netdev = g_strdup_printf(
        "ifname=tt0,queues=%d,script=no,downscript=no", pairs);
    g_autofree char *cpr_path = g_build_filename(tmpdir, "cpr.sock", NULL);
    g_autofree char *mig_path = g_build_filename(tmpdir, "migsock", NULL);
    g_autofree char *cpr_channel = g_strdup_printf(
        "cpr,addr.transport=socket,addr.type=unix,addr.path=%s", cpr_path);
    const char *ram = "-machine aux-ram-share=on "
        "-object memory-backend-memfd,id=pc.ram,size=64M "
        "-machine memory-backend=pc.ram";
    g_autofree char *dst_extra = g_strdup_printf(
        "%s -incoming %s -incoming %s%s", ram, cpr_channel,
        defer ? "defer" : "unix:", defer ? "" : mig_path);
    g_autofree char *dst_args = NULL;
    g_autofree char *mq = pairs > 1 ?
        g_strdup_printf(",mq=on,vectors=%d", 2 * pairs + 2) : g_strdup("");
    g_autoptr(GArray) src_tun = NULL;
    g_autoptr(GArray) dst_tun = NULL;
    unsigned ifindex;
    QTestState *to;
    Vm vm = { 0 };

    vm_start(&vm, netdev, pairs, ram);
    check_traffic(&vm.nic, vm.sock, 0, "cpr-before");
    src_tun = tun_fds(qtest_pid(vm.qts));
    ifindex = if_nametoindex("tt0");

    dst_args = g_strdup_printf(
        "-M %s -m 64 -nodefaults -netdev tap-transfer,id=n0,%s "
        "-device virtio-net-pci,netdev=n0,addr=04.0,mac=" GUEST_MAC "%s "
        "%s %s", machine_type, netdev, mq, defer ? "" :
        "-global migration.backend-transfer=on", dst_extra);
    to = tap_transfer_qtest_init_deferred(dst_var, dst_args);
    for (int i = 0; !g_file_test(cpr_path, G_FILE_TEST_EXISTS); i++) {
        g_assert_cmpint(i, <, 3000);
        g_usleep(10 * 1000);
    }

    migrate_set_parameter_str(vm.qts, "mode", "cpr-transfer");
    migrate_set_parameter_bool(vm.qts, "backend-transfer", true);
    qtest_qmp_assert_success(vm.qts,
        "{ 'execute': 'migrate', 'arguments': { 'channels': ["
        "  { 'channel-type': 'main', 'addr': { 'transport': 'socket',"
        "    'type': 'unix', 'path': %s } },"
        "  { 'channel-type': 'cpr', 'addr': { 'transport': 'socket',"
        "    'type': 'unix', 'path': %s } } ] } }", mig_path, cpr_path);

    /* The destination's monitor answers once its cpr state is loaded */
    qtest_connect(to);
    qtest_qmp_handshake(to, NULL);
    if (defer) {
        g_autofree char *uri = g_strdup_printf("unix:%s", mig_path);

        migrate_set_parameter_bool(to, "backend-transfer", true);
        migrate_incoming_qmp(to, uri, NULL, "{}");
    }
    wait_for_migration_complete(vm.qts);
    /* Its RESUME event may have gone out before the monitor connected */
    wait_running(to);

    dst_tun = tun_fds(qtest_pid(to));
    assert_same_files(qtest_pid(vm.qts), src_tun, qtest_pid(to), dst_tun);
    g_assert_cmpuint(if_nametoindex("tt0"), ==, ifindex);
    qtest_quit(vm.qts);
    vm_migrated(&vm, to);
    check_traffic(&vm.nic, vm.sock, 0, "cpr-after");
    for (int pair = 1; pair < pairs; pair++) {
        g_autofree char *tx = g_strdup_printf("cpr-tx-%d", pair);

        nic_tx(&vm.nic, pair, tx);
        host_expect(vm.sock, tx);
    }
    vm_release(&vm);
    qtest_quit(to);
    unlink(cpr_path);
    unlink(mig_path);
}

typedef struct CprCase {
    const char *path;
    int pairs;
    bool defer;
} CprCase;

static const CprCase cpr_cases[] = {
    { "/tap-transfer/migration/cpr-transfer", 1, false },
    { "/tap-transfer/migration/cpr-transfer-defer", 1, true },
    { "/tap-transfer/migration/cpr-transfer-multiqueue", 4, false },
};

static void test_cpr_transfer(const void *opaque)
{
    const CprCase *c = opaque;

    if (need_tap()) {
        do_cpr_transfer(c->pairs, c->defer, NULL);
    }
}

/*
 * QEMU's local upgrade mode between versions, with the TAP.  Only the
 * upgrade: 10.0 cannot load 10.2's cpr state (vmstate_load_state error
 * -2, before any device exists), so a rollback uses plain precopy.
 */
static void test_cross_version_cpr_transfer(void)
{
    const char *version[] = { "--version", NULL };
    g_autofree char *src = NULL;
    g_autofree char *dst = NULL;

    if (!need_tap()) {
        return;
    }
    g_assert_true(run_qemu(NULL, g_getenv("QTEST_QEMU_BINARY_SRC"), version,
                           &src, NULL));
    g_assert_true(run_qemu(NULL, g_getenv("QTEST_QEMU_BINARY_DST"), version,
                           &dst, NULL));
    if (strstr(src, "version 10.2.") && strstr(dst, "version 10.0.")) {
        g_test_skip("cpr-transfer from QEMU 10.2 to 10.0: 10.0 cannot load "
                    "10.2's cpr state; roll back with plain precopy");
        return;
    }
    do_cpr_transfer(2, false, "QTEST_QEMU_BINARY_DST");
}

/* backend-transfer off: an ordinary migration onto a TAP of its own */
static void test_transfer_off(void)
{
    QTestState *from, *to;
    Vm vm = { 0 };
    int sock1;

    if (!need_tap()) {
        return;
    }
    vm_start(&vm, "ifname=tt0,script=no,downscript=no", 1, NULL);
    check_traffic(&vm.nic, vm.sock, 0, "src");

    to = start_dest("ifname=tt1,script=no,downscript=no", 1, false, NULL);
    migrate_to(vm.qts, to, false);
    qtest_qmp_eventwait(to, "RESUME");
    sock1 = host_tap_attach("tt1");

    from = vm.qts;
    vm_migrated(&vm, to);
    check_traffic(&vm.nic, sock1, 0, "dst");
    vm_release(&vm);
    close(sock1);
    qtest_quit(from);
    qtest_quit(to);
}

/* A deleted netdev takes its migration state with it */
static void test_netdev_del(void)
{
    const char *netdev = "ifname=tt0,script=no,downscript=no";
    QTestState *to;
    Vm vm = { 0 };

    if (!need_tap()) {
        return;
    }
    vm_start(&vm, netdev, 1, NULL);
    qtest_qmp_assert_success(vm.qts, "{ 'execute': 'netdev_add', 'arguments':"
                             " { 'type': 'tap-transfer', 'id': 'n1',"
                             "   'ifname': 'tt5', 'script': 'no',"
                             "   'downscript': 'no' } }");
    g_assert_cmpuint(if_nametoindex("tt5"), !=, 0);
    qtest_qmp_assert_success(vm.qts, "{ 'execute': 'netdev_del',"
                             " 'arguments': { 'id': 'n1' } }");
    g_assert_cmpuint(if_nametoindex("tt5"), ==, 0);

    /* The destination has no n1: a stale section would fail the load */
    to = start_dest(netdev, 1, true, NULL);
    migrate_to(vm.qts, to, true);
    qtest_qmp_eventwait(to, "RESUME");
    qtest_quit(vm.qts);
    vm_migrated(&vm, to);
    check_traffic(&vm.nic, vm.sock, 0, "after");
    vm_release(&vm);
    qtest_quit(to);
}

/* The downscript runs once, in whichever QEMU owns the TAP at the end */
static void test_downscript(void)
{
    g_autofree char *script = g_build_filename(tmpdir, "down.sh", NULL);
    g_autofree char *log = g_build_filename(tmpdir, "down.log", NULL);
    g_autofree char *body = g_strdup_printf("#!/bin/sh\necho \"$1\" >> %s\n",
                                            log);
    g_autofree char *netdev = g_strdup_printf("ifname=tt0,script=no,"
                                              "downscript=%s", script);
    g_autofree char *contents = NULL;
    QTestState *to;
    Vm vm = { 0 };

    if (!need_tap()) {
        return;
    }
    g_assert_true(g_file_set_contents(script, body, -1, NULL));
    g_assert_cmpint(chmod(script, 0755), ==, 0);
    unlink(log);

    vm_start(&vm, netdev, 1, NULL);
    to = start_dest(netdev, 1, true, NULL);
    migrate_to(vm.qts, to, true);
    qtest_qmp_eventwait(to, "RESUME");

    qtest_quit(vm.qts);
    g_assert_false(g_file_test(log, G_FILE_TEST_EXISTS));
    vm_migrated(&vm, to);
    check_traffic(&vm.nic, vm.sock, 0, "after");
    vm_release(&vm);

    qtest_quit(to);
    g_assert_true(g_file_get_contents(log, &contents, NULL, NULL));
    g_assert_cmpstr(contents, ==, "tt0\n");
    unlink(log);
    unlink(script);
}

/*
 * The destination goes away after the fds were sent, before it ran: the
 * source is resumed on the same TAP.
 */
static void test_dest_killed(void)
{
    const char *netdev = "ifname=tt0,script=no,downscript=no";
    unsigned fds_before;
    QTestState *to;
    Vm vm = { 0 };

    if (!need_tap()) {
        return;
    }
    vm_start(&vm, netdev, 1, NULL);
    fds_before = count_fds(qtest_pid(vm.qts));
    to = start_dest(netdev, 1, true, "-S");
    migrate_to(vm.qts, to, true);
    g_assert_cmpuint(count_tun_fds(qtest_pid(to)), ==, 1);

    qtest_quit(to);

    qtest_qmp_assert_success(vm.qts, "{ 'execute': 'cont' }");
    check_traffic(&vm.nic, vm.sock, 0, "resumed");
    g_assert_cmpuint(count_fds(qtest_pid(vm.qts)), ==, fds_before);
    vm_release(&vm);
    qtest_quit(vm.qts);
}

/*
 * "cancelled" is reported before the migration is cleaned up (QEMU 10.2
 * does that later, in a bottom half): a new migrate meanwhile fails with
 * "duplicate yank instance".  Wait for its yank instance to go.
 */
static void wait_migration_cleaned_up(QTestState *qts)
{
    gint64 deadline = g_get_monotonic_time() + TIMEOUT_US;

    for (;;) {
        QDict *rsp = qtest_qmp(qts, "{ 'execute': 'query-yank' }");
        QList *list = qdict_get_qlist(rsp, "return");
        bool found = false;
        QListEntry *e;

        QLIST_FOREACH_ENTRY(list, e) {
            QDict *inst = qobject_to(QDict, qlist_entry_obj(e));

            found |= !strcmp(qdict_get_str(inst, "type"), "migration");
        }
        qobject_unref(rsp);
        if (!found) {
            return;
        }
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(10 * 1000);
    }
}

/* Cancelled in setup or while active: the source keeps reading its TAP */
static void test_cancel(void)
{
    g_autofree char *path = g_build_filename(tmpdir, "stalled", NULL);
    g_autofree char *uri = g_strdup_printf("unix:%s", path);
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    unsigned fds_before;
    int listener;
    Vm vm = { 0 };

    if (!need_tap()) {
        return;
    }
    /* A destination that accepts nothing: the migration stays active */
    pstrcpy(sun.sun_path, sizeof(sun.sun_path), path);
    listener = socket(AF_UNIX, SOCK_STREAM, 0);
    g_assert_cmpint(bind(listener, (struct sockaddr *)&sun, sizeof(sun)),
                    ==, 0);
    g_assert_cmpint(listen(listener, 4), ==, 0);

    vm_start(&vm, "ifname=tt0,script=no,downscript=no", 1, NULL);
    migrate_set_parameter_bool(vm.qts, "backend-transfer", true);
    fds_before = count_fds(qtest_pid(vm.qts));

    for (int active = 0; active < 2; active++) {
        const char *ungoals[] = { "failed", "completed", NULL };

        migrate_qmp(vm.qts, NULL, uri, NULL, "{}");
        if (active) {
            wait_for_migration_status(vm.qts, "active", ungoals);
        }
        migrate_cancel(vm.qts);
        wait_for_migration_status(vm.qts, "cancelled", NULL);
        wait_migration_cleaned_up(vm.qts);
        check_traffic(&vm.nic, vm.sock, 0, active ? "active" : "setup");
        g_assert_cmpuint(count_fds(qtest_pid(vm.qts)), ==, fds_before);
    }
    vm_release(&vm);
    qtest_quit(vm.qts);
    close(listener);
    unlink(path);
}

/* A -> B -> A' -> B' ...: fds neither leak nor go missing */
static void test_ping_pong(void)
{
    const char *netdev = "ifname=tt0,script=no,downscript=no";
    enum { HANDOVERS = 20 };
    unsigned ifindex, first_fds = 0;
    Vm vm = { 0 };

    if (!need_tap()) {
        return;
    }
    vm_start(&vm, netdev, 1, NULL);
    ifindex = if_nametoindex("tt0");
    for (int i = 0; i < HANDOVERS; i++) {
        g_autofree char *tag = g_strdup_printf("hop%d", i);
        QTestState *to = start_dest(netdev, 1, true, NULL);
        unsigned fds;

        migrate_to(vm.qts, to, true);
        qtest_qmp_eventwait(to, "RESUME");
        qtest_quit(vm.qts);
        vm_migrated(&vm, to);
        check_traffic(&vm.nic, vm.sock, 0, tag);

        g_assert_cmpuint(count_tun_fds(qtest_pid(to)), ==, 1);
        g_assert_cmpuint(if_nametoindex("tt0"), ==, ifindex);
        fds = count_fds(qtest_pid(to));
        if (i == 0) {
            first_fds = fds;
        }
        g_assert_cmpuint(fds, ==, first_fds);
    }
    vm_release(&vm);
    qtest_quit(vm.qts);
}

/* Channels that cannot carry fds are refused before anything is sent */
static void test_refuse_channels(void)
{
    static const struct {
        const char *uri;
        bool tls, postcopy;
        const char *reason;
    } cases[] = {
        { "tcp:127.0.0.1:1", false, false,
          "needs a UNIX socket migration channel" },
        { "exec:cat > /dev/null", false, false,
          "needs a UNIX socket migration channel" },
        { "file:/dev/null", false, false,
          "needs a UNIX socket migration channel" },
        { "unix:/nonexistent/sock", true, false, "over TLS" },
        { "unix:/nonexistent/sock", false, true, "postcopy" },
    };
    Vm vm = { 0 };

    if (!need_tap()) {
        return;
    }
    vm_start(&vm, "ifname=tt0,script=no,downscript=no", 1, NULL);
    migrate_set_parameter_bool(vm.qts, "backend-transfer", true);

    for (int i = 0; i < ARRAY_SIZE(cases); i++) {
        g_autofree char *tag = g_strdup_printf("refused%d", i);
        const char *desc;
        QDict *rsp;

        if (cases[i].tls || cases[i].postcopy) {
            if (cases[i].tls) {
                rsp = qtest_qmp(vm.qts, "{ 'execute': 'migrate-set-parameters',"
                                "  'arguments': { 'tls-creds': 'tls0' } }");
            } else {
                rsp = qtest_qmp(vm.qts,
                                "{ 'execute': 'migrate-set-capabilities',"
                                "  'arguments': { 'capabilities': ["
                                "    { 'capability': 'postcopy-ram',"
                                "      'state': true } ] } }");
            }
            if (qdict_haskey(rsp, "error")) {
                g_test_message("cannot set up case %s: %s", cases[i].reason,
                               qdict_get_str(qdict_get_qdict(rsp, "error"),
                                             "desc"));
                qobject_unref(rsp);
                continue;
            }
            qobject_unref(rsp);
        }
        rsp = qtest_qmp(vm.qts, "{ 'execute': 'migrate', 'arguments': "
                        "{ 'uri': %s } }", cases[i].uri);
        g_assert_true(qdict_haskey(rsp, "error"));
        desc = qdict_get_str(qdict_get_qdict(rsp, "error"), "desc");
        g_test_message("%s: %s", cases[i].uri, desc);
        g_assert_nonnull(strstr(desc, cases[i].reason));
        g_assert_null(strchr(desc, '\n'));
        qobject_unref(rsp);

        /* Nothing was sent; the source still runs on its TAP */
        check_traffic(&vm.nic, vm.sock, 0, tag);
        qtest_qmp_assert_success(vm.qts,
            "{ 'execute': 'migrate-set-capabilities', 'arguments': "
            "  { 'capabilities': [ { 'capability': 'postcopy-ram',"
            "                        'state': false } ] } }");
        qtest_qmp_assert_success(vm.qts,
            "{ 'execute': 'migrate-set-parameters',"
            "  'arguments': { 'tls-creds': '' } }");
    }
    vm_release(&vm);
    qtest_quit(vm.qts);
}

/*
 * Management hands over an fd: channel that cannot carry fds: refused
 * by the migrate command itself; the VM never stops and the fd is closed.
 */
static void test_refuse_fd_channels(void)
{
    const char *reasons[] = { "fd:mig is a pipe", "fd:mig is an IPv4 socket" };
    Vm vm = { 0 };

    if (!need_tap()) {
        return;
    }
    vm_start(&vm, "ifname=tt0,script=no,downscript=no", 1, NULL);
    migrate_set_parameter_bool(vm.qts, "backend-transfer", true);

    for (int i = 0; i < ARRAY_SIZE(reasons); i++) {
        unsigned fds_before = count_fds(qtest_pid(vm.qts));
        g_autofree char *tag = g_strdup_printf("fd-refused%d", i);
        g_autofree char *expected = g_strdup_printf(
            "backend-transfer passes file descriptors and needs a UNIX "
            "socket migration channel; %s", reasons[i]);
        int fds[2];
        const char *desc;
        QDict *rsp;

        if (i == 0) {
            g_assert_cmpint(pipe(fds), ==, 0);
        } else {
            fds[0] = socket(AF_INET, SOCK_STREAM, 0);
            fds[1] = -1;
            g_assert_cmpint(fds[0], >=, 0);
        }
        qtest_qmp_fds_assert_success(vm.qts, &fds[0], 1,
            "{ 'execute': 'getfd', 'arguments': { 'fdname': 'mig' } }");
        close(fds[0]);
        if (fds[1] >= 0) {
            close(fds[1]);
        }

        rsp = qtest_qmp(vm.qts, "{ 'execute': 'migrate', 'arguments': "
                        "{ 'uri': 'fd:mig' } }");
        g_assert_true(qdict_haskey(rsp, "error"));
        desc = qdict_get_str(qdict_get_qdict(rsp, "error"), "desc");
        g_test_message("fd:mig: %s", desc);
        g_assert_cmpstr(desc, ==, expected);
        qobject_unref(rsp);

        /* Refused before the stop: no STOP event, and it still runs */
        g_assert_null(qtest_qmp_event_ref(vm.qts, "STOP"));
        rsp = qtest_qmp_assert_success_ref(vm.qts,
                                           "{ 'execute': 'query-status' }");
        g_assert_true(qdict_get_bool(rsp, "running"));
        qobject_unref(rsp);
        check_traffic(&vm.nic, vm.sock, 0, tag);
        g_assert_cmpuint(count_fds(qtest_pid(vm.qts)), ==, fds_before);
    }
    vm_release(&vm);
    qtest_quit(vm.qts);
}

/*
 * The destination refuses what the source sends: it says why, naming
 * the netdev, closes every fd it received, and the source goes on.
 */
static void do_refused(const char *src_netdev, bool src_transfer,
                       const char *dst_netdev, int dst_pairs,
                       bool dst_transfer, const char *reason)
{
    DestOptions dest = {
        .binary_var = logged_qemu(),
        .keep_on_error = true,
    };
    QTestState *to;
    Vm vm = { 0 };

    vm_start(&vm, src_netdev, 1, NULL);
    to = start_dest_opts(dst_netdev, dst_pairs, dst_transfer, &dest);
    migrate_refused(vm.qts, to, src_transfer,
                    dst_transfer ? 0 : dst_pairs);
    assert_logged(reason);

    check_traffic(&vm.nic, vm.sock, 0, "kept");
    vm_release(&vm);
    qtest_quit(vm.qts);
}

/*
 * The destination adopts the TAP, then fails on a later section: a device
 * the source has and it has not.  It must not have read the TAP, so the
 * frames sent meanwhile reach the guest on the source, which runs on.
 */
static void test_refused_after_adoption(void)
{
    const char *netdev = "ifname=tt0,script=no,downscript=no";
    DestOptions dest = { .keep_on_error = true };
    g_autofree char *status = NULL;
    enum { FRAMES = 4 };
    uint64_t bufs[FRAMES];
    uint32_t heads[FRAMES];
    QTestState *to;
    Vm vm = { 0 };

    if (!need_tap()) {
        return;
    }
    vm_start(&vm, netdev, 1, "-device virtio-rng-pci,addr=05.0");
    to = start_dest_opts(netdev, 1, true, &dest);
    migrate_start(vm.qts, to, true);
    do {
        g_free(status);
        g_usleep(10 * 1000);
        status = migrate_query_status(to);
    } while (strcmp(status, "failed"));
    /* It holds the source's TAP... */
    g_assert_cmpuint(count_tun_fds(qtest_pid(to)), ==, 1);
    for (int i = 0; i < FRAMES; i++) {
        g_autofree char *payload = g_strdup_printf("after-adoption-%d", i);

        host_send(vm.sock, payload);
    }
    /* ...and had it read the TAP, it would have done so by now */
    g_usleep(200 * 1000);
    qtest_quit(to);

    do {
        g_free(status);
        g_usleep(10 * 1000);
        status = migrate_query_status(vm.qts);
    } while (strcmp(status, "failed") && strcmp(status, "completed"));
    if (!strcmp(status, "completed")) {
        qtest_qmp_assert_success(vm.qts, "{ 'execute': 'cont' }");
    }
    wait_running(vm.qts);
    for (int i = 0; i < FRAMES; i++) {
        bufs[i] = nic_post_rx(&vm.nic, 0, &heads[i]);
    }
    for (int i = 0; i < FRAMES; i++) {
        g_autofree char *payload = g_strdup_printf("after-adoption-%d", i);

        nic_expect_rx(&vm.nic, 0, bufs[i], heads[i], payload);
    }
    vm_release(&vm);
    qtest_quit(vm.qts);
}

static void test_refused_on_off(void)
{
    if (need_tap()) {
        do_refused("ifname=tt0,script=no,downscript=no", true,
                   "ifname=tt1,script=no,downscript=no", 1, false,
                   "netdev n0: backend-transfer is on on the source and off "
                   "here; set it the same on both sides\n");
    }
}

static void test_refused_off_on(void)
{
    if (need_tap()) {
        do_refused("ifname=tt0,script=no,downscript=no", false,
                   "ifname=tt0,script=no,downscript=no", 1, true,
                   "netdev n0: backend-transfer is off on the source and on "
                   "here; set it the same on both sides\n");
    }
}

static void test_refused_queues(void)
{
    if (need_tap()) {
        do_refused("ifname=tt0,script=no,downscript=no", true,
                   "ifname=tt0,queues=2,script=no,downscript=no", 2, true,
                   "netdev n0: the source has 1 queues, this QEMU was "
                   "configured with 2\n");
    }
}

static void test_refused_ifname(void)
{
    if (need_tap()) {
        do_refused("ifname=tt0,script=no,downscript=no", true,
                   "ifname=tt7,script=no,downscript=no", 1, true,
                   "netdev n0: the source's TAP device is tt0, this QEMU was "
                   "configured with ifname=tt7\n");
    }
}

/*
 * A hostile source: what it hands over is a TUN device, not a TAP.  The
 * source is given the TUN fd with fd=, which -netdev tap accepts.
 */
static void test_refused_tun(void)
{
    struct ifreq ifr = { .ifr_flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR };
    g_autofree char *netdev = NULL;
    DestOptions dest = { .keep_on_error = true };
    QTestState *from, *to;

    dest.binary_var = logged_qemu();
    int fd;

    if (!need_tap()) {
        return;
    }
    fd = open("/dev/net/tun", O_RDWR);
    g_assert_cmpint(fd, >=, 0);
    pstrcpy(ifr.ifr_name, IFNAMSIZ, "ttun0");
    g_assert_cmpint(ioctl(fd, TUNSETIFF, &ifr), ==, 0);
    netdev = g_strdup_printf("fd=%d", fd);

    from = start_qemu(netdev, 1, NULL);
    to = start_dest_opts(netdev, 1, true, &dest);
    /* No fd left in it, its own inherited copy of the TUN fd included */
    migrate_refused(from, to, true, 0);
    assert_logged("netdev n0: queue 0: received device ttun0 is a TUN, not a "
                  "TAP device\n");
    qtest_quit(from);
    close(fd);
}

/* cpr-exec sends fd numbers, not fds: refused up front (QEMU >= 10.2) */
static void test_refused_cpr_exec(void)
{
    const char *desc;
    QDict *rsp;
    Vm vm = { 0 };

    if (!need_tap()) {
        return;
    }
    vm_start(&vm, "ifname=tt0,script=no,downscript=no", 1, NULL);
    rsp = qtest_qmp(vm.qts, "{ 'execute': 'migrate-set-parameters',"
                    "  'arguments': { 'mode': 'cpr-exec' } }");
    if (qdict_haskey(rsp, "error")) {
        g_test_skip("this QEMU has no cpr-exec migration mode");
        qobject_unref(rsp);
        vm_release(&vm);
        qtest_quit(vm.qts);
        return;
    }
    qobject_unref(rsp);
    migrate_set_parameter_bool(vm.qts, "backend-transfer", true);

    rsp = qtest_qmp(vm.qts, "{ 'execute': 'migrate', 'arguments': "
                    "{ 'uri': 'unix:/nonexistent/sock' } }");
    g_assert_true(qdict_haskey(rsp, "error"));
    desc = qdict_get_str(qdict_get_qdict(rsp, "error"), "desc");
    g_test_message("%s", desc);
    g_assert_nonnull(strstr(desc, "migration mode cpr-exec"));
    g_assert_null(strchr(desc, '\n'));
    qobject_unref(rsp);

    check_traffic(&vm.nic, vm.sock, 0, "kept");
    vm_release(&vm);
    qtest_quit(vm.qts);
}

/*
 * Between two QEMU versions, as QEMU's own migration tests do it: the
 * source from $QTEST_QEMU_BINARY_SRC, the destination from
 * $QTEST_QEMU_BINARY_DST, on a machine type both have.
 */
static void test_cross_version_handover(const void *opaque)
{
    int pairs = GPOINTER_TO_INT(opaque);
    g_autofree char *netdev = g_strdup_printf(
        "ifname=tt0,queues=%d,script=no,downscript=no", pairs);

    if (need_tap()) {
        do_handover(netdev, pairs, "QTEST_QEMU_BINARY_DST");
    }
}

/* VIRTIO_NET_F_GUEST_UDP_TUNNEL_GSO (65), ..._HOST_UDP_TUNNEL_GSO (67) */
#define TUNNEL_FEATURES_HI ((1u << (65 - 64)) | (1u << (67 - 64)))

static bool qemu_at_least(QTestState *qts, int64_t major, int64_t minor)
{
    QDict *rsp = qtest_qmp_assert_success_ref(qts,
                                              "{ 'execute': 'query-version' }");
    QDict *v = qdict_get_qdict(rsp, "qemu");
    int64_t ma = qdict_get_int(v, "major");
    int64_t mi = qdict_get_int(v, "minor");

    qobject_unref(rsp);
    return ma > major || (ma == major && mi >= minor);
}

/*
 * A guest that uses UDP tunnel offloads (QEMU >= 10.2, on a kernel that
 * has them): that state travels in an optional subsection, which a
 * destination without tunnel offloads refuses in one line, naming the
 * netdev.  $TAP_TRANSFER_SRC_ARGS turns them on for a machine type that
 * has them off.
 */
static void test_tunnel_handover(void)
{
    const char *netdev = "ifname=tt0,script=no,downscript=no";
    const char *dst_qemu = g_getenv("QTEST_QEMU_BINARY_DST") ?:
                           g_getenv("QTEST_QEMU_BINARY");
    DestOptions dest = {
        .binary_var = "TAP_TRANSFER_LOGGED_DST",
        .keep_on_error = true,
    };
    g_autofree char *logged = NULL;
    g_autoptr(GArray) src_fds = NULL;
    g_autoptr(GArray) dst_fds = NULL;
    QTestState *to;
    Vm vm = { 0 };

    if (!need_tap()) {
        return;
    }
    nic_want_features_hi = TUNNEL_FEATURES_HI;
    vm_start(&vm, netdev, 1, g_getenv("TAP_TRANSFER_SRC_ARGS"));
    nic_want_features_hi = 0;
    if ((nic_features_hi(&vm.nic) & TUNNEL_FEATURES_HI) !=
        TUNNEL_FEATURES_HI) {
        g_test_skip("the source offers no UDP tunnel offloads (QEMU older "
                    "than 10.2, or a kernel without them)");
        vm_release(&vm);
        qtest_quit(vm.qts);
        return;
    }
    src_fds = tun_fds(qtest_pid(vm.qts));
    logged = g_strdup_printf("2>%s/qemu.log %s", tmpdir, dst_qemu);
    g_setenv("TAP_TRANSFER_LOGGED_DST", logged, true);
    to = start_dest_opts(netdev, 1, true, &dest);

    if (!qemu_at_least(to, 10, 2)) {
        migrate_refused(vm.qts, to, true, 0);
        assert_logged("netdev n0: the guest uses UDP tunnel offloads on the "
                      "TAP device, which this QEMU does not support\n");
        g_assert_cmpuint(count_tun_fds(qtest_pid(vm.qts)), ==, 1);
        vm_release(&vm);
        qtest_quit(vm.qts);
        return;
    }

    /* Without the subsection the destination would refuse the features */
    migrate_to(vm.qts, to, true);
    qtest_qmp_eventwait(to, "RESUME");
    dst_fds = tun_fds(qtest_pid(to));
    assert_same_files(qtest_pid(vm.qts), src_fds, qtest_pid(to), dst_fds);
    qtest_quit(vm.qts);
    vm_migrated(&vm, to);
    g_assert_cmphex(nic_features_hi(&vm.nic) & TUNNEL_FEATURES_HI, ==,
                    TUNNEL_FEATURES_HI);
    vm_release(&vm);
    qtest_quit(to);
}

/*
 * A known limit: QEMU 10.2 saves a guest's RSS state in a newer format
 * that 10.0 cannot load, with no compat switch.  Handing such a guest
 * back to 10.0 fails on the destination with QEMU's own one-line reason;
 * the source runs on, on its TAP.
 */
static void test_cross_version_rss(void)
{
    const char *netdev = "ifname=tt0,queues=2,script=no,downscript=no";
    const char *rss = "-global virtio-net-pci.rss=on";
    const char *dst_qemu = g_getenv("QTEST_QEMU_BINARY_DST");
    DestOptions dest = {
        .binary_var = "TAP_TRANSFER_LOGGED_DST",
        .extra = rss,
        .keep_on_error = true,
    };
    g_autofree char *logged = NULL;
    QTestState *to;
    Vm vm = { 0 };

    if (!need_tap()) {
        return;
    }
    vm_start(&vm, netdev, 2, rss);
    if (!(qvirtio_get_features(&vm.nic.dev->vdev) &
          (1ull << VIRTIO_NET_F_RSS))) {
        g_test_skip("the source offers no RSS");
        goto out;
    }
    nic_set_pairs(&vm.nic, 2);
    nic_enable_rss(&vm.nic, 2);
    logged = g_strdup_printf("2>%s/qemu.log %s", tmpdir, dst_qemu);
    g_setenv("TAP_TRANSFER_LOGGED_DST", logged, true);
    to = start_dest_opts(netdev, 2, true, &dest);
    if (!qemu_at_least(vm.qts, 10, 2) || qemu_at_least(to, 10, 2)) {
        g_test_skip("only QEMU 10.2 to 10.0 cannot carry RSS state");
        qtest_quit(to);
        goto out;
    }
    /* It adopted the TAP before virtio-net's section failed */
    migrate_refused(vm.qts, to, true, 2);
    assert_logged("virtio-net-device/rss: incoming version_id 2 is too new "
                  "for local version_id 1\n");
    check_traffic(&vm.nic, vm.sock, 0, "rss-kept");
out:
    vm_release(&vm);
    qtest_quit(vm.qts);
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
    qtest_add_func("/tap-transfer/netdev-help", test_netdev_help);
    qtest_add_func("/tap-transfer/bad-options", test_bad_options);
    qtest_add_func("/tap-transfer/rx-tx", test_rx_tx);
    qtest_add_func("/tap-transfer/multiqueue", test_multiqueue);
    qtest_add_func("/tap-transfer/unprivileged-open", test_unprivileged_open);
    qtest_add_func("/tap-transfer/migration/handover", test_handover);
    qtest_add_func("/tap-transfer/migration/handover-multiqueue",
                   test_handover_multiqueue);
    qtest_add_func("/tap-transfer/migration/handover-vhost",
                   test_handover_vhost);
    qtest_add_func("/tap-transfer/migration/handover-unprivileged",
                   test_handover_unprivileged);
    qtest_add_func("/tap-transfer/migration/four-netdevs", test_four_netdevs);
    qtest_add_func("/tap-transfer/migration/zero-loss", test_zero_loss);
    for (int i = 0; i < ARRAY_SIZE(stranded_cases); i++) {
        qtest_add_data_func(stranded_cases[i].path, &stranded_cases[i],
                            test_stranded);
    }
    for (int i = 0; i < ARRAY_SIZE(mgmt_cases); i++) {
        qtest_add_data_func(mgmt_cases[i].path, &mgmt_cases[i], test_mgmt);
    }
    qtest_add_func("/tap-transfer/management/fdset", test_mgmt_fdset);
    qtest_add_func("/tap-transfer/migration/global-property",
                   test_global_property);
    for (int i = 0; i < ARRAY_SIZE(cpr_cases); i++) {
        qtest_add_data_func(cpr_cases[i].path, &cpr_cases[i],
                            test_cpr_transfer);
    }
    qtest_add_func("/tap-transfer/migration/transfer-off", test_transfer_off);
    qtest_add_func("/tap-transfer/migration/unprivileged-transfer-off",
                   test_unprivileged_transfer_off);
    qtest_add_func("/tap-transfer/migration/netdev-del", test_netdev_del);
    qtest_add_func("/tap-transfer/migration/downscript", test_downscript);
    qtest_add_func("/tap-transfer/migration/dest-killed", test_dest_killed);
    qtest_add_func("/tap-transfer/migration/cancel", test_cancel);
    qtest_add_func("/tap-transfer/migration/ping-pong", test_ping_pong);
    qtest_add_func("/tap-transfer/refused/channels", test_refuse_channels);
    qtest_add_func("/tap-transfer/refused/fd-channels",
                   test_refuse_fd_channels);
    qtest_add_func("/tap-transfer/refused/after-adoption",
                   test_refused_after_adoption);
    qtest_add_func("/tap-transfer/refused/on-off", test_refused_on_off);
    qtest_add_func("/tap-transfer/refused/off-on", test_refused_off_on);
    qtest_add_func("/tap-transfer/refused/queues", test_refused_queues);
    qtest_add_func("/tap-transfer/refused/ifname", test_refused_ifname);
    qtest_add_func("/tap-transfer/refused/tun", test_refused_tun);
    qtest_add_func("/tap-transfer/refused/cpr-exec", test_refused_cpr_exec);
    qtest_add_func("/tap-transfer/migration/tunnel", test_tunnel_handover);

    if (g_getenv("QTEST_QEMU_BINARY_SRC") &&
        g_getenv("QTEST_QEMU_BINARY_DST")) {
        machine_type = g_getenv("TAP_TRANSFER_MACHINE") ?: "pc-i440fx-10.0";
        src_binary_var = "QTEST_QEMU_BINARY_SRC";
        qtest_add_data_func("/tap-transfer/cross-version/handover",
                            GINT_TO_POINTER(1), test_cross_version_handover);
        qtest_add_data_func("/tap-transfer/cross-version/handover-multiqueue",
                            GINT_TO_POINTER(4), test_cross_version_handover);
        qtest_add_func("/tap-transfer/cross-version/tunnel",
                       test_tunnel_handover);
        qtest_add_func("/tap-transfer/cross-version/rss",
                       test_cross_version_rss);
        qtest_add_func("/tap-transfer/cross-version/cpr-transfer",
                       test_cross_version_cpr_transfer);
    }

    ret = g_test_run();
    g_free(dest_error);
    rmdir(tmpdir);
    g_free(tmpdir);
    return ret;
}
