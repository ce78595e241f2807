/*
 * tap-transfer tests, management's ways: TAP queues passed as fds=,
 * on the command line or at run time, fd: migration channels, fd sets
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <net/if.h>
#include <sys/un.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "qobject/qdict.h"
#include "qobject/qlist.h"
#include "libqos/virtio.h"
#include "migration/migration-qmp.h"
#include "migration/migration-util.h"
#include "tap-transfer-compat.h"
#include "framework.h"

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
        fds[i] = open_test_tap("tt0", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR |
                               IFF_MULTI_QUEUE, cloexec);
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
    assert_tap_handed_over(vm.qts, src_tun, to, ifindex, links);

    qtest_quit(vm.qts);
    vm_migrated(&vm, to);
    vm_finish(&vm, MGMT_QUEUES, "mgmt-after");
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

    do_mgmt_handover(c->runtime, c->dest_fds);
}

/*
 * The TAP in a file descriptor set (add-fd), named /dev/fdset/N: once
 * the set is removed, the netdev holds the only copy, and hands it over.
 */
static void test_mgmt_fdset(void)
{
    g_autoptr(GArray) src_tun = NULL;
    QTestState *to;
    Vm vm = { 0 };
    int fd = open_test_tap("tt0", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, true);

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
    assert_tap_handed_over(vm.qts, src_tun, to, 0, 0);
    qtest_quit(vm.qts);
    vm_migrated(&vm, to);
    check_traffic(&vm.nic, vm.sock, 0, "fdset-dst");
    vm_release(&vm);
    qtest_quit(to);
}

/*
 * netdev_add on an incoming QEMU with fewer vhostfds than TAP queues is
 * refused, and every fd that management passed for it is closed: none
 * left open, none closed twice.
 */
static void test_mgmt_vhostfds_count(void)
{
    int fds[MGMT_QUEUES];
    int vhostfd;
    unsigned fds_before;
    QTestState *qts;
    QDict *rsp;

    qts = qtest_init("-M pc -m 64 -nodefaults -incoming defer");
    fds_before = count_fds(qtest_pid(qts));
    mgmt_open_tap(fds, true);
    for (int i = 0; i < MGMT_QUEUES; i++) {
        g_autofree char *name = g_strdup_printf("q%d", i);

        mgmt_getfd(qts, fds[i], name);
        close(fds[i]);
    }
    vhostfd = open("/dev/null", O_RDWR | O_CLOEXEC);
    g_assert_cmpint(vhostfd, >=, 0);
    mgmt_getfd(qts, vhostfd, "v0");
    close(vhostfd);
    g_assert_cmpuint(count_fds(qtest_pid(qts)), ==,
                     fds_before + MGMT_QUEUES + 1);

    rsp = qtest_qmp(qts, "{ 'execute': 'netdev_add', 'arguments': "
                    "{ 'type': 'tap-transfer', 'id': 'n0', "
                    "'fds': 'q0:q1:q2:q3', 'vhostfds': 'v0' } }");
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(rsp, "error"), "desc"), ==,
                    "the number of vhostfds passed does not match the "
                    "number of queues");
    qobject_unref(rsp);
    g_assert_cmpuint(count_fds(qtest_pid(qts)), ==, fds_before);
    /* The TAP went with the last of its queues */
    g_assert_cmpuint(if_nametoindex("tt0"), ==, 0);
    qtest_quit(qts);
}

void tap_transfer_add_management_tests(TapTransferTestEnv *env)
{
    for (int i = 0; i < ARRAY_SIZE(mgmt_cases); i++) {
        tap_transfer_test_add_data(mgmt_cases[i].path, &mgmt_cases[i],
                                   test_mgmt);
    }
    tap_transfer_test_add("/tap-transfer/management/fdset", test_mgmt_fdset);
    tap_transfer_test_add("/tap-transfer/management/vhostfds-count",
                          test_mgmt_vhostfds_count);
}
