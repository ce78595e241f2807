/*
 * tap-transfer tests, the handover itself: the destination adopts
 * the source's TAP, with one queue, four, several netdevs, a destination
 * without privilege, cpr-transfer, and the ordinary migration with backend-
 * transfer off
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <net/if.h>
#include <sys/ioctl.h>
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

/* Handover */

void do_handover(const char *netdev, int pairs,
                 const char *dest_binary_var)
{
    DestOptions dest = { .binary_var = dest_binary_var };
    g_autoptr(GArray) src_fds = NULL;
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

    assert_tap_handed_over(vm.qts, src_fds, to, ifindex, links);

    /* The source's exit leaves the TAP to the destination */
    qtest_quit(vm.qts);
    vm_migrated(&vm, to);
    g_assert_cmpuint(if_nametoindex("tt0"), ==, ifindex);
    /* What the guest negotiated is still offered */
    g_assert_cmphex(qvirtio_get_features(&vm.nic.dev->vdev), ==, features);
    vm_finish(&vm, pairs, "after");
}

static void test_handover(void)
{
    do_handover("ifname=tt0,script=no,downscript=no", 1, NULL);
}

static void test_handover_multiqueue(void)
{
    do_handover("ifname=tt0,queues=4,script=no,downscript=no", 4, NULL);
}

static void test_handover_vhost(void)
{
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

    wrapped = g_strdup_printf("setpriv --bounding-set=-all %s",
                              g_getenv("QTEST_QEMU_BINARY"));
    g_setenv("TAP_TRANSFER_UNPRIVILEGED_QEMU", wrapped, true);
    do_handover("ifname=tt0,script=no,downscript=no", 1,
                "TAP_TRANSFER_UNPRIVILEGED_QEMU");
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

/* backend-transfer off: an ordinary migration onto a TAP of its own */
static void test_transfer_off(void)
{
    QTestState *from, *to;
    Vm vm = { 0 };
    int sock1;

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
    QTestState *to;
    QDict *rsp;
    Vm vm = { 0 };

    vm_start(&vm, netdev, 1, NULL);
    src_tun = tun_fds(qtest_pid(vm.qts));
    to = start_qemu(netdev, 1, extra);
    rsp = qtest_qmp_assert_success_ref(
        to, "{ 'execute': 'query-migrate-parameters' }");
    g_assert_true(qdict_get_bool(rsp, "backend-transfer"));
    qobject_unref(rsp);

    migrate_to(vm.qts, to, true);
    qtest_qmp_eventwait(to, "RESUME");
    assert_tap_handed_over(vm.qts, src_tun, to, 0, 0);
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
void do_cpr_transfer(int pairs, bool defer, const char *dst_var)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    g_autofree char *netdev = g_strdup_printf(
        "ifname=tt0,queues=%d,script=no,downscript=no", pairs);
    g_autofree char *cpr_path = g_build_filename(env->tmpdir, "cpr.sock", NULL);
    g_autofree char *mig_path = g_build_filename(env->tmpdir, "migsock", NULL);
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
        "%s %s", env->machine_type, netdev, mq, defer ? "" :
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

    assert_tap_handed_over(vm.qts, src_tun, to, ifindex, 0);
    qtest_quit(vm.qts);
    vm_migrated(&vm, to);
    vm_finish(&vm, pairs, "cpr-after");
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

    do_cpr_transfer(c->pairs, c->defer, NULL);
}

void tap_transfer_add_handover_tests(TapTransferTestEnv *env)
{
    tap_transfer_test_add("/tap-transfer/migration/handover", test_handover);
    tap_transfer_test_add("/tap-transfer/migration/handover-multiqueue",
                          test_handover_multiqueue);
    tap_transfer_test_add("/tap-transfer/migration/handover-vhost",
                          test_handover_vhost);
    tap_transfer_test_add("/tap-transfer/migration/handover-unprivileged",
                          test_handover_unprivileged);
    tap_transfer_test_add("/tap-transfer/migration/four-netdevs",
                          test_four_netdevs);
    tap_transfer_test_add("/tap-transfer/migration/global-property",
                          test_global_property);
    for (int i = 0; i < ARRAY_SIZE(cpr_cases); i++) {
        tap_transfer_test_add_data(cpr_cases[i].path, &cpr_cases[i],
                                   test_cpr_transfer);
    }
    tap_transfer_test_add("/tap-transfer/migration/transfer-off",
                          test_transfer_off);
}
