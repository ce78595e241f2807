/*
 * The tap-transfer tests' framework
 *
 * The test moves into a network namespace of its own, so the TAP
 * devices the QEMUs create vanish with it, also when a test fails.
 * Frames are injected and captured on the host side of the TAP with an
 * AF_PACKET socket; the guest side is driven with libqos virtqueues.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <net/if.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <linux/kcmp.h>
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "qobject/qdict.h"
#include "qobject/qlist.h"
#include "standard-headers/linux/virtio_pci.h"
#include "libqos/malloc-pc.h"
#include "libqos/virtio.h"
#include "migration/migration-qmp.h"
#include "migration/migration-util.h"
#include "tap-transfer-compat.h"
#include "framework.h"

static const uint8_t guest_mac[ETH_ALEN] = { 0x52, 0x54, 0, 0x12, 0x34, 0x56 };
static const uint8_t host_mac[ETH_ALEN] = { 0x02, 0, 0, 0, 0, 0x01 };

/* The environment, and registering the cases that need TAP devices */

static const char *setup_namespace(void)
{
    int fd;

    if (geteuid() != 0) {
        return "needs root for TAP devices and a network namespace";
    }
    if (access("/dev/net/tun", R_OK | W_OK) < 0) {
        return "needs /dev/net/tun";
    }
    if (unshare(CLONE_NEWNET) < 0) {
        return "cannot create a network namespace";
    }
    /* Keep the kernel's own IPv6 chatter off the test TAPs */
    fd = open("/proc/sys/net/ipv6/conf/default/disable_ipv6", O_WRONLY);
    if (fd >= 0) {
        g_assert_cmpint(write(fd, "1", 1), ==, 1);
        close(fd);
    }
    return NULL;
}

TapTransferTestEnv *tap_transfer_get_env(void)
{
    static TapTransferTestEnv *env;

    if (env) {
        return env;
    }
    env = g_new0(TapTransferTestEnv, 1);
    env->machine_type = "pc";
    env->skip_reason = setup_namespace();
    env->tmpdir = g_dir_make_tmp("tap-transfer-test-XXXXXX", NULL);
    g_assert_nonnull(env->tmpdir);
    return env;
}

void tap_transfer_env_clean(TapTransferTestEnv *env)
{
    g_free(env->dest_error);
    env->dest_error = NULL;
    rmdir(env->tmpdir);
    g_free(env->tmpdir);
    env->tmpdir = NULL;
}

bool need_tap(void)
{
    TapTransferTestEnv *env = tap_transfer_get_env();

    if (env->skip_reason) {
        g_test_skip(env->skip_reason);
        return false;
    }
    return true;
}

typedef struct TapTransferTest {
    void (*func)(void);
    void (*data_func)(const void *data);
    const void *data;
} TapTransferTest;

static void tap_transfer_test_run(const void *opaque)
{
    const TapTransferTest *test = opaque;

    if (!need_tap()) {
        return;
    }
    if (test->func) {
        test->func();
    } else {
        test->data_func(test->data);
    }
}

void tap_transfer_test_add(const char *path, void (*fn)(void))
{
    TapTransferTest *test = g_new0(TapTransferTest, 1);

    test->func = fn;
    qtest_add_data_func_full(path, test, tap_transfer_test_run, g_free);
}

void tap_transfer_test_add_data(const char *path, const void *data,
                                void (*fn)(const void *data))
{
    TapTransferTest *test = g_new0(TapTransferTest, 1);

    test->data_func = fn;
    test->data = data;
    qtest_add_data_func_full(path, test, tap_transfer_test_run, g_free);
}

int open_test_tap(const char *ifname, short flags, bool cloexec)
{
    struct ifreq ifr = { .ifr_flags = flags };
    int fd = open("/dev/net/tun", O_RDWR | (cloexec ? O_CLOEXEC : 0));

    g_assert_cmpint(fd, >=, 0);
    pstrcpy(ifr.ifr_name, IFNAMSIZ, ifname);
    g_assert_cmpint(ioctl(fd, TUNSETIFF, &ifr), ==, 0);
    return fd;
}

/* Host side of a TAP device */

int host_tap_attach(const char *ifname)
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

size_t make_frame(uint8_t *frame, const uint8_t *dst,
                  const uint8_t *src, const char *payload)
{
    size_t len = strlen(payload) + 1;

    memcpy(frame, dst, ETH_ALEN);
    memcpy(frame + ETH_ALEN, src, ETH_ALEN);
    stw_be_p(frame + 2 * ETH_ALEN, TEST_ETHERTYPE);
    memcpy(frame + ETH_HLEN, payload, len);
    return MAX(ETH_HLEN + len, ETH_ZLEN);
}

void host_send(int sock, const char *payload)
{
    uint8_t frame[ETH_FRAME_LEN] = { 0 };
    size_t len = make_frame(frame, guest_mac, host_mac, payload);

    g_assert_cmpint(send(sock, frame, len, 0), ==, len);
}

void host_expect(int sock, const char *payload)
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

void host_send_udp(int sock, unsigned ifindex, int flow,
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
    g_assert_cmpint(sendto(sock, frame, UDP_FRAME_HDR_LEN + len, 0,
                           (struct sockaddr *)&sll, sizeof(sll)),
                    ==, UDP_FRAME_HDR_LEN + len);
}

uint64_t tap_frames_read(const char *ifname)
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

unsigned count_links(void)
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

/* Guest side: virtio-net-pci NICs driven through libqos */

void machine_init(Machine *m, QTestState *qts)
{
    m->qts = qts;
    pc_alloc_init(&m->alloc, qts, ALLOC_NO_FLAGS);
    m->bus = qpci_new_pc(qts, NULL);
}

void nic_find(Nic *n)
{
    QPCIAddress addr = { .devfn = n->devfn };

    n->dev = virtio_pci_new(n->m->bus, &addr);
    g_assert_nonnull(n->dev);
    qvirtio_pci_device_enable(n->dev);
}

uint32_t nic_features_hi(Nic *n)
{
    uint32_t base = n->dev->common_cfg_offset;

    qpci_io_writel(n->dev->pdev, n->dev->bar, base +
                   offsetof(struct virtio_pci_common_cfg,
                            device_feature_select), 2);
    return qpci_io_readl(n->dev->pdev, n->dev->bar, base +
                         offsetof(struct virtio_pci_common_cfg,
                                  device_feature));
}

void nic_set_features_hi(Nic *n, uint32_t features)
{
    uint32_t base = n->dev->common_cfg_offset;

    qpci_io_writel(n->dev->pdev, n->dev->bar, base +
                   offsetof(struct virtio_pci_common_cfg, guest_feature_select),
                   2);
    qpci_io_writel(n->dev->pdev, n->dev->bar, base +
                   offsetof(struct virtio_pci_common_cfg, guest_feature),
                   features);
}

void nic_start(Nic *n, Machine *m, int slot, int pairs)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
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
    if (env->nic_want_features_hi) {
        nic_set_features_hi(n, nic_features_hi(n) &
                               env->nic_want_features_hi);
    }
    qvirtio_set_features(vdev, features);
    n->nqueues = pairs * 2 + !!(features & (1ull << VIRTIO_NET_F_CTRL_VQ));
    n->vqs = g_new0(QVirtQueue *, n->nqueues);
    for (int i = 0; i < n->nqueues; i++) {
        n->vqs[i] = qvirtqueue_setup(vdev, &m->alloc, i);
    }
    qvirtio_set_driver_ok(vdev);
}

void nic_forget_device(Nic *n)
{
    g_free(n->dev->pdev);
    g_free(n->dev);
    n->dev = NULL;
}

void machine_migrated(Machine *m, QTestState *qts, Nic *nics, int n)
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

void nic_release(Nic *n)
{
    for (int i = 0; i < n->nqueues; i++) {
        qvirtqueue_cleanup(n->dev->vdev.bus, n->vqs[i], &n->m->alloc);
    }
    g_free(n->vqs);
    nic_forget_device(n);
}

void machine_release(Machine *m)
{
    qpci_free_pc(m->bus);
    alloc_destroy(&m->alloc);
}

void nic_wait_used(Nic *n, QVirtQueue *vq, uint32_t head)
{
    gint64 deadline = g_get_monotonic_time() + TIMEOUT_US;
    uint32_t got;

    while (!qvirtqueue_get_buf(n->m->qts, vq, &got, NULL)) {
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(1000);
    }
    g_assert_cmpuint(got, ==, head);
}

uint64_t nic_post_rx(Nic *n, int pair, uint32_t *head)
{
    uint64_t buf = guest_alloc(&n->m->alloc, RX_BUF_SIZE);

    *head = qvirtqueue_add(n->m->qts, n->vqs[pair * 2], buf, RX_BUF_SIZE,
                           true, false);
    qvirtqueue_kick(n->m->qts, &n->dev->vdev, n->vqs[pair * 2], *head);
    return buf;
}

void nic_expect_rx(Nic *n, int pair, uint64_t buf, uint32_t head,
                   const char *payload)
{
    uint8_t frame[ETH_FRAME_LEN];

    nic_wait_used(n, n->vqs[pair * 2], head);
    qtest_memread(n->m->qts, buf + VNET_HDR_SIZE, frame, sizeof(frame));
    g_assert_cmpuint(lduw_be_p(frame + 2 * ETH_ALEN), ==, TEST_ETHERTYPE);
    g_assert_cmpstr((char *)frame + ETH_HLEN, ==, payload);
    guest_free(&n->m->alloc, buf);
}

void nic_tx(Nic *n, int pair, const char *payload)
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

void check_traffic(Nic *n, int sock, int pair, const char *tag)
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

void nic_ctrl(Nic *n, uint8_t class, uint8_t cmd, const void *data,
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

void nic_set_pairs(Nic *n, int pairs)
{
    uint8_t pairs_le[2];

    stw_le_p(pairs_le, pairs);
    nic_ctrl(n, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
             pairs_le, sizeof(pairs_le));
}

void nic_enable_rss(Nic *n, int pairs)
{
    uint8_t cfg[4 + 2 + 2 + 2 + 2 + 1 + RSS_KEY_SIZE] = { 0 };

    stl_le_p(cfg, VIRTIO_NET_RSS_HASH_TYPE_IPv4);
    stw_le_p(cfg + 10, pairs);
    cfg[12] = RSS_KEY_SIZE;
    memset(cfg + 13, 0x6d, RSS_KEY_SIZE);
    nic_ctrl(n, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_RSS_CONFIG, cfg,
             sizeof(cfg));
}

/* Processes */

QTestState *start_qemu_as(const char *binary_var, const char *netdev,
                          int pairs, const char *extra)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    g_autofree char *mq = pairs > 1 ?
        g_strdup_printf(",mq=on,vectors=%d", 2 * pairs + 2) : g_strdup("");
    g_autofree char *args = g_strdup_printf(
        "-M %s -m 64 -nodefaults -netdev tap-transfer,id=n0,%s "
        "-device virtio-net-pci,netdev=n0,addr=04.0,mac=" GUEST_MAC "%s %s",
        env->machine_type, netdev, mq, extra ?: "");

    return tap_transfer_qtest_init(binary_var, args);
}

QTestState *start_qemu(const char *netdev, int pairs,
                       const char *extra)
{
    return start_qemu_as(tap_transfer_get_env()->src_binary_var, netdev,
                         pairs, extra);
}

void vm_start(Vm *vm, const char *netdev, int pairs, const char *extra)
{
    vm->qts = start_qemu(netdev, pairs, extra);
    vm->sock = host_tap_attach("tt0");
    machine_init(&vm->m, vm->qts);
    nic_start(&vm->nic, &vm->m, 0, pairs);
}

void vm_migrated(Vm *vm, QTestState *to)
{
    vm->qts = to;
    machine_migrated(&vm->m, to, &vm->nic, 1);
}

void vm_release(Vm *vm)
{
    nic_release(&vm->nic);
    machine_release(&vm->m);
    close(vm->sock);
}

void vm_finish(Vm *vm, int pairs, const char *tag)
{
    check_traffic(&vm->nic, vm->sock, 0, tag);
    for (int pair = 1; pair < pairs; pair++) {
        g_autofree char *tx = g_strdup_printf("%s-tx-%d", tag, pair);

        nic_tx(&vm->nic, pair, tx);
        host_expect(vm->sock, tx);
    }
    vm_release(vm);
    qtest_quit(vm->qts);
}

bool run_qemu(const char *const *prefix, const char *binary,
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

void assert_one_line(const char *text)
{
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    int n = 0;

    for (int i = 0; lines[i]; i++) {
        n += lines[i][0] && !g_str_has_prefix(lines[i], "==");
    }
    g_assert_cmpint(n, ==, 1);
}

const char *logged_qemu(void)
{
    g_autofree char *logged = g_strdup_printf(
        "2>%s/qemu.log %s", tap_transfer_get_env()->tmpdir,
        g_getenv("QTEST_QEMU_BINARY"));

    g_setenv("TAP_TRANSFER_LOGGED_QEMU", logged, true);
    return "TAP_TRANSFER_LOGGED_QEMU";
}

/* The processes' file descriptors */

GArray *tun_fds(pid_t pid)
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

unsigned count_tun_fds(pid_t pid)
{
    g_autoptr(GArray) fds = tun_fds(pid);

    return fds->len;
}

void wait_tun_fds(pid_t pid, unsigned n)
{
    gint64 deadline = g_get_monotonic_time() + TIMEOUT_US;

    while (count_tun_fds(pid) != n) {
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(10 * 1000);
    }
}

unsigned count_fds(pid_t pid)
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

bool same_file(pid_t pid1, int fd1, pid_t pid2, int fd2)
{
    return syscall(SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) == 0;
}

void assert_same_files(pid_t src, GArray *src_fds, pid_t dst,
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

void assert_tap_handed_over(QTestState *from, GArray *src_fds,
                            QTestState *to, unsigned ifindex,
                            unsigned links)
{
    g_autoptr(GArray) dst_fds = tun_fds(qtest_pid(to));

    assert_same_files(qtest_pid(from), src_fds, qtest_pid(to), dst_fds);
    if (ifindex) {
        g_assert_cmpuint(if_nametoindex("tt0"), ==, ifindex);
    }
    if (links) {
        g_assert_cmpuint(count_links(), ==, links);
    }
}

/* Migration */

char *migration_uri(void)
{
    return g_strdup_printf("unix:%s/migsock", tap_transfer_get_env()->tmpdir);
}

QTestState *start_dest_opts(const char *netdev, int pairs,
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

QTestState *start_dest(const char *netdev, int pairs, bool transfer,
                       const char *extra)
{
    DestOptions opts = { .extra = extra };

    return start_dest_opts(netdev, pairs, transfer, &opts);
}

void migrate_start(QTestState *from, QTestState *to, bool transfer)
{
    g_autofree char *uri = migration_uri();

    migrate_set_parameter_bool(from, "backend-transfer", transfer);
    migrate_qmp(from, to, uri, NULL, "{}");
}

void migrate_to(QTestState *from, QTestState *to, bool transfer)
{
    migrate_start(from, to, transfer);
    wait_for_migration_complete(from);
    g_test_message("downtime with backend-transfer %s: %" PRId64 " ms",
                   transfer ? "on" : "off",
                   read_migrate_property_int(from, "downtime"));
}

void wait_running(QTestState *qts)
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

char *wait_migration_done(QTestState *qts)
{
    char *status = NULL;

    do {
        g_free(status);
        g_usleep(10 * 1000);
        status = migrate_query_status(qts);
    } while (strcmp(status, "failed") && strcmp(status, "completed"));
    return status;
}

void wait_incoming_failed(QTestState *to)
{
    g_autofree char *status = wait_migration_done(to);

    g_assert_cmpstr(status, ==, "failed");
}

void resume_source(QTestState *from)
{
    g_autofree char *status = wait_migration_done(from);

    if (!strcmp(status, "completed")) {
        qtest_qmp_assert_success(from, "{ 'execute': 'cont' }");
    }
    wait_running(from);
}

void migrate_refused(QTestState *from, QTestState *to, bool transfer,
                     unsigned own_fds)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    QDict *rsp;

    migrate_start(from, to, transfer);
    wait_incoming_failed(to);
    rsp = qtest_qmp_assert_success_ref(to, "{ 'execute': 'query-migrate' }");
    g_free(env->dest_error);
    env->dest_error = g_strdup(qdict_get_try_str(rsp, "error-desc"));
    g_test_message("destination: %s", env->dest_error);
    qobject_unref(rsp);
    /* What it received it closes as it cleans up after the failure */
    wait_tun_fds(qtest_pid(to), own_fds);
    qtest_quit(to);
    resume_source(from);
}

void wait_migration_cleaned_up(QTestState *qts)
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

void assert_reported(const char *log, const char *line)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    g_autofree char *err = NULL;
    g_autofree char *all = NULL;

    g_assert_true(g_file_get_contents(log, &err, NULL, NULL));
    unlink(log);
    /*
     * Whatever else is on stderr (a sanitizer's runtime, warnings), the
     * line is there or, from QEMU 10.2 on, in the migration's error.
     */
    all = g_strdup_printf("%s\n%s\n", err, env->dest_error ?: "");
    g_test_message("reported: %s", all);
    g_assert_nonnull(strstr(all, line));
}

void assert_logged(const char *line)
{
    g_autofree char *log = g_build_filename(tap_transfer_get_env()->tmpdir,
                                            "qemu.log", NULL);

    assert_reported(log, line);
}

/* QMP and QOM */

/* The response, whose "return" is the value, of any type */
QDict *qom_get(QTestState *qts, const char *id, const char *prop)
{
    g_autofree char *path = g_strdup_printf("/netdevs/%s", id);
    QDict *rsp = qtest_qmp(qts, "{ 'execute': 'qom-get', 'arguments': "
                           "{ 'path': %s, 'property': %s } }", path, prop);

    g_assert_true(qdict_haskey(rsp, "return"));
    return rsp;
}

char *qom_get_str(QTestState *qts, const char *id, const char *prop)
{
    QDict *rsp = qom_get(qts, id, prop);
    char *value = g_strdup(qdict_get_str(rsp, "return"));

    qobject_unref(rsp);
    return value;
}

int64_t qom_get_int(QTestState *qts, const char *id, const char *prop)
{
    QDict *rsp = qom_get(qts, id, prop);
    int64_t value = qdict_get_int(rsp, "return");

    qobject_unref(rsp);
    return value;
}

void assert_qmp_error(QTestState *qts, const char *error,
                      const char *fmt, ...)
{
    va_list ap;
    QDict *rsp;

    va_start(ap, fmt);
    rsp = qtest_vqmp(qts, fmt, ap);
    va_end(ap);
    g_assert_true(qdict_haskey(rsp, "error"));
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(rsp, "error"), "desc"), ==,
                    error);
    qobject_unref(rsp);
}

bool qemu_at_least(QTestState *qts, int64_t major, int64_t minor)
{
    QDict *rsp = qtest_qmp_assert_success_ref(qts,
                                              "{ 'execute': 'query-version' }");
    QDict *v = qdict_get_qdict(rsp, "qemu");
    int64_t ma = qdict_get_int(v, "major");
    int64_t mi = qdict_get_int(v, "minor");

    qobject_unref(rsp);
    return ma > major || (ma == major && mi >= minor);
}
