/*
 * tap-transfer tests, the netdev as management sees it: a QOM
 * object at /netdevs/ID whose properties follow the handover, and
 * migration sections keyed by the netdev id rather than by the order in
 * which netdevs were created
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <net/if.h>
#include <sys/ioctl.h>
#include "qemu/cutils.h"
#include "qobject/qdict.h"
#include "migration/migration-qmp.h"
#include "migration/migration-util.h"
#include "tap-transfer-compat.h"
#include "framework.h"

#define NETDEV "ifname=tt0,script=no,downscript=no"

static void assert_state(QTestState *qts, const char *id, const char *state)
{
    g_autofree char *value = qom_get_str(qts, id, "state");

    g_assert_cmpstr(value, ==, state);
}

static void assert_ifname(QTestState *qts, const char *id, const char *ifname)
{
    g_autofree char *value = qom_get_str(qts, id, "ifname");

    g_assert_cmpstr(value, ==, ifname);
}

/* What "info network" says of the netdev's queue 0 */
static void assert_info_network(QTestState *qts, const char *info)
{
    g_autofree char *out = qtest_hmp(qts, "info network");

    g_test_message("info network: %s", out);
    g_assert_nonnull(strstr(out, info));
}

/* Properties are for reading: management cannot make a state up */
static void assert_read_only(QTestState *qts, const char *id)
{
    g_autofree char *path = g_strdup_printf("/netdevs/%s", id);
    QDict *rsp = qtest_qmp(qts, "{ 'execute': 'qom-set', 'arguments': "
                           "{ 'path': %s, 'property': 'state', "
                           "'value': 'adopted' } }", path);

    g_assert_true(qdict_haskey(rsp, "error"));
    qobject_unref(rsp);
}

/*
 * Every state a netdev goes through in one handover, on both sides:
 * the source owns its TAP and hands it over; the destination awaits,
 * holds it idle while paused, and has adopted it once the VM runs.
 */
static void test_qom_states(void)
{
    DestOptions dest = { .extra = "-S" };
    QTestState *to;
    Vm vm = { 0 };

    vm_start(&vm, NETDEV, 1, NULL);
    assert_state(vm.qts, "n0", "own");
    assert_ifname(vm.qts, "n0", "tt0");
    g_assert_cmpint(qom_get_int(vm.qts, "n0", "queues"), ==, 1);
    g_assert_cmpint(qom_get_int(vm.qts, "n0", "frames-held"), ==, 0);
    assert_read_only(vm.qts, "n0");
    assert_info_network(vm.qts, "tap-transfer,ifname=tt0,queue=0/1,own");

    to = start_dest_opts(NETDEV, 1, true, &dest);
    assert_state(to, "n0", "awaiting");
    assert_info_network(to, "queue=0/1,awaiting migration");

    migrate_to(vm.qts, to, true);
    assert_state(vm.qts, "n0", "handed-over");
    assert_info_network(vm.qts, "tap-transfer,ifname=tt0,queue=0/1,"
                        "handed over");
    wait_for_migration_status(to, "completed", NULL);
    assert_state(to, "n0", "idle");
    assert_ifname(to, "n0", "tt0");
    assert_info_network(to, "tap-transfer,ifname=tt0,queue=0/1,adopted, "
                        "idle until the VM runs");

    qtest_qmp_assert_success(to, "{ 'execute': 'cont' }");
    qtest_qmp_eventwait(to, "RESUME");
    assert_state(to, "n0", "adopted");
    qtest_quit(vm.qts);
    vm_migrated(&vm, to);
    check_traffic(&vm.nic, vm.sock, 0, "after");
    vm_release(&vm);
    qtest_quit(to);
}

/*
 * Frames read from the TAP that the NIC could not take yet are held as
 * the VM stops, counted in frames-held, and reach the guest in order
 * once it runs again.
 */
static void test_qom_frames_held(void)
{
    enum { FRAMES = 3 };
    uint64_t bufs[FRAMES];
    uint32_t heads[FRAMES];
    uint64_t read_before;
    Vm vm = { 0 };

    vm_start(&vm, NETDEV, 1, NULL);
    read_before = tap_frames_read("tt0");
    for (int i = 0; i < FRAMES; i++) {
        g_autofree char *payload = g_strdup_printf("held-%d", i);

        host_send(vm.sock, payload);
    }
    /* No RX buffer is posted: QEMU reads one and waits for the guest */
    for (int i = 0; tap_frames_read("tt0") == read_before; i++) {
        g_assert_cmpint(i, <, 3000);
        g_usleep(10 * 1000);
    }
    g_assert_cmpint(qom_get_int(vm.qts, "n0", "frames-held"), ==, 0);

    qtest_qmp_assert_success(vm.qts, "{ 'execute': 'stop' }");
    g_assert_cmpint(qom_get_int(vm.qts, "n0", "frames-held"), >=, 1);
    g_test_message("frames held while stopped: %" PRId64,
                   qom_get_int(vm.qts, "n0", "frames-held"));
    assert_state(vm.qts, "n0", "own");

    qtest_qmp_assert_success(vm.qts, "{ 'execute': 'cont' }");
    wait_running(vm.qts);
    for (int i = 0; i < FRAMES; i++) {
        bufs[i] = nic_post_rx(&vm.nic, 0, &heads[i]);
    }
    for (int i = 0; i < FRAMES; i++) {
        g_autofree char *payload = g_strdup_printf("held-%d", i);

        nic_expect_rx(&vm.nic, 0, bufs[i], heads[i], payload);
    }
    g_assert_cmpint(qom_get_int(vm.qts, "n0", "frames-held"), ==, 0);
    vm_release(&vm);
    qtest_quit(vm.qts);
}

enum { NETDEVS = 2 };

static char *netdev_arg(int i)
{
    return g_strdup_printf(" -netdev tap-transfer,id=n%d,ifname=tt%d,"
                           "script=no,downscript=no", i, i);
}

static char *nic_arg(int i)
{
    return g_strdup_printf(" -device virtio-net-pci,netdev=n%d,addr=%02x.0,"
                           "mac=52:54:00:12:34:5%d", i, 4 + i, 6 + i);
}

/* A source with netdevs n0 on tt0 and n1 on tt1, each with its NIC */
static QTestState *start_two_netdevs(Machine *m, Nic *nics, int *socks)
{
    g_autoptr(GString) args = g_string_new("-M pc -m 64 -nodefaults");
    QTestState *qts;

    for (int i = 0; i < NETDEVS; i++) {
        g_autofree char *netdev = netdev_arg(i);
        g_autofree char *nic = nic_arg(i);

        g_string_append_printf(args, "%s%s", netdev, nic);
    }
    qts = qtest_init(args->str);
    machine_init(m, qts);
    for (int i = 0; i < NETDEVS; i++) {
        g_autofree char *ifname = g_strdup_printf("tt%d", i);

        socks[i] = host_tap_attach(ifname);
        nic_start(&nics[i], m, i, 1);
    }
    return qts;
}

/* Each NIC's frames go out on its own TAP: no netdev got another's */
static void finish_two_netdevs(QTestState *from, QTestState *to, Machine *m,
                               Nic *nics, int *socks)
{
    migrate_to(from, to, true);
    qtest_qmp_eventwait(to, "RESUME");
    qtest_quit(from);
    machine_migrated(m, to, nics, NETDEVS);
    for (int i = 0; i < NETDEVS; i++) {
        g_autofree char *id = g_strdup_printf("n%d", i);
        g_autofree char *ifname = g_strdup_printf("tt%d", i);
        g_autofree char *tx = g_strdup_printf("nic%d", i);

        assert_state(to, id, "adopted");
        assert_ifname(to, id, ifname);
        nic_tx(&nics[i], 0, tx);
        host_expect(socks[i], tx);
        nic_release(&nics[i]);
        close(socks[i]);
    }
    machine_release(m);
    qtest_quit(to);
}

/* The destination creates its netdevs in the other order */
static void test_netdev_order(void)
{
    Machine m = { 0 };
    Nic nics[NETDEVS] = { 0 };
    int socks[NETDEVS];
    g_autoptr(GString) args = g_string_new("-M pc -m 64 -nodefaults "
                                           "-incoming defer");
    g_autofree char *uri = migration_uri();
    QTestState *from, *to;

    from = start_two_netdevs(&m, nics, socks);
    for (int i = NETDEVS - 1; i >= 0; i--) {
        g_autofree char *netdev = netdev_arg(i);

        g_string_append(args, netdev);
    }
    for (int i = 0; i < NETDEVS; i++) {
        g_autofree char *nic = nic_arg(i);

        g_string_append(args, nic);
    }
    to = qtest_init(args->str);
    migrate_set_parameter_bool(to, "backend-transfer", true);
    migrate_incoming_qmp(to, uri, NULL, "{}");
    finish_two_netdevs(from, to, &m, nics, socks);
}

/* The destination gets n0 and its NIC from netdev_add and device_add */
static void test_netdev_add(void)
{
    Machine m = { 0 };
    Nic nics[NETDEVS] = { 0 };
    int socks[NETDEVS];
    g_autofree char *netdev1 = netdev_arg(1);
    g_autofree char *nic1 = nic_arg(1);
    g_autofree char *args = g_strdup_printf("-M pc -m 64 -nodefaults "
                                            "-incoming defer%s%s",
                                            netdev1, nic1);
    g_autofree char *uri = migration_uri();
    QTestState *from, *to;

    from = start_two_netdevs(&m, nics, socks);
    to = qtest_init(args);
    qtest_qmp_assert_success(to, "{ 'execute': 'netdev_add', 'arguments': "
                             "{ 'type': 'tap-transfer', 'id': 'n0', "
                             "'ifname': 'tt0', 'script': 'no', "
                             "'downscript': 'no' } }");
    assert_state(to, "n0", "awaiting");
    qtest_qmp_assert_success(to, "{ 'execute': 'device_add', 'arguments': "
                             "{ 'driver': 'virtio-net-pci', 'netdev': 'n0', "
                             "'addr': '04.0', 'mac': '52:54:00:12:34:56' } }");
    migrate_set_parameter_bool(to, "backend-transfer", true);
    migrate_incoming_qmp(to, uri, NULL, "{}");
    finish_two_netdevs(from, to, &m, nics, socks);
}

/*
 * The source has a netdev n1 that the destination lacks: the load fails
 * naming its section, and the source keeps both TAPs.
 */
static void test_missing_netdev(void)
{
    DestOptions dest = {
        .binary_var = logged_qemu(),
        .keep_on_error = true,
    };
    g_autofree char *netdev1 = netdev_arg(1);
    QTestState *to;
    Vm vm = { 0 };

    vm_start(&vm, NETDEV, 1, netdev1);
    to = start_dest_opts(NETDEV, 1, true, &dest);
    migrate_refused(vm.qts, to, true, 0);
    assert_logged("'netdev/n1/tap-transfer");
    assert_state(vm.qts, "n0", "own");
    assert_state(vm.qts, "n1", "own");
    g_assert_cmpuint(count_tun_fds(qtest_pid(vm.qts)), ==, 2);
    check_traffic(&vm.nic, vm.sock, 0, "kept");
    vm_release(&vm);
    qtest_quit(vm.qts);
}

static void host_tap_rename(const char *from, const char *to)
{
    struct ifreq ifr = { 0 };
    int ctl = socket(AF_INET, SOCK_DGRAM, 0);

    g_assert_cmpint(ctl, >=, 0);
    pstrcpy(ifr.ifr_name, IFNAMSIZ, from);
    g_assert_cmpint(ioctl(ctl, SIOCGIFFLAGS, &ifr), ==, 0);
    /* The kernel renames only a device that is down */
    ifr.ifr_flags &= ~IFF_UP;
    g_assert_cmpint(ioctl(ctl, SIOCSIFFLAGS, &ifr), ==, 0);
    pstrcpy(ifr.ifr_newname, IFNAMSIZ, to);
    g_assert_cmpint(ioctl(ctl, SIOCSIFNAME, &ifr), ==, 0);
    pstrcpy(ifr.ifr_name, IFNAMSIZ, to);
    ifr.ifr_flags |= IFF_UP;
    g_assert_cmpint(ioctl(ctl, SIOCSIFFLAGS, &ifr), ==, 0);
    close(ctl);
}

/*
 * Management renames the TAP while the VM runs (to keep the name an
 * earlier QEMU's TAP had): the handover carries the name it has now.
 */
static void test_renamed_tap(void)
{
    QTestState *to;
    unsigned ifindex;
    Vm vm = { 0 };

    vm_start(&vm, NETDEV, 1, NULL);
    ifindex = if_nametoindex("tt0");
    host_tap_rename("tt0", "ttr0");
    /* The socket saw the device go down, and would say so once */
    close(vm.sock);
    vm.sock = host_tap_attach("ttr0");
    assert_ifname(vm.qts, "n0", "ttr0");
    check_traffic(&vm.nic, vm.sock, 0, "renamed");

    to = start_dest("script=no,downscript=no", 1, true, NULL);
    migrate_to(vm.qts, to, true);
    qtest_qmp_eventwait(to, "RESUME");
    g_assert_cmpuint(if_nametoindex("ttr0"), ==, ifindex);
    assert_ifname(to, "n0", "ttr0");
    assert_info_network(to, "tap-transfer,ifname=ttr0,queue=0/1,adopted");
    qtest_quit(vm.qts);
    vm_migrated(&vm, to);
    check_traffic(&vm.nic, vm.sock, 0, "after");
    vm_release(&vm);
    qtest_quit(to);
}

void tap_transfer_add_qom_tests(TapTransferTestEnv *env)
{
    tap_transfer_test_add("/tap-transfer/qom/states", test_qom_states);
    tap_transfer_test_add("/tap-transfer/qom/frames-held",
                          test_qom_frames_held);
    tap_transfer_test_add("/tap-transfer/qom/netdev-order", test_netdev_order);
    tap_transfer_test_add("/tap-transfer/qom/netdev-add", test_netdev_add);
    tap_transfer_test_add("/tap-transfer/qom/renamed-tap", test_renamed_tap);
    tap_transfer_test_add("/tap-transfer/refused/missing-netdev",
                          test_missing_netdev);
}
