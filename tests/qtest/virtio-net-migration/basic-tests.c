/*
 * tap-transfer tests, without migration: frames both ways,
 * multiqueue, -netdev help and the errors before a TAP exists
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

/* Tests without migration */

/* @binary refuses -netdev @netdev in one line that contains @want */
static void assert_netdev_refused(const char *const *prefix,
                                  const char *binary, const char *netdev,
                                  const char *want)
{
    g_autofree char *err = NULL;
    const char *args[] = {
        "-M", "none", "-display", "none", "-netdev", netdev, NULL
    };

    g_assert_false(run_qemu(prefix, binary, args, NULL, &err));
    g_test_message("%s", err);
    g_assert_nonnull(strstr(err, want));
    assert_one_line(err);
}

static void test_module_missing(void)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    const char *qemu = g_getenv("QTEST_QEMU_BINARY");
    g_autofree char *lonely = g_build_filename(env->tmpdir, "qemu-no-modules",
                                               NULL);

    g_assert_nonnull(qemu);
    /* Same binary, in a directory with no modules next to it */
    if (link(qemu, lonely) < 0) {
        g_autofree char *contents = NULL;
        gsize len;

        g_assert_true(g_file_get_contents(qemu, &contents, &len, NULL));
        g_assert_true(g_file_set_contents(lonely, contents, len, NULL));
        g_assert_cmpint(chmod(lonely, 0755), ==, 0);
    }
    assert_netdev_refused(NULL, lonely, "tap-transfer,id=n0,ifname=tt9",
                          "network backend 'tap-transfer' is not "
                          "available: module 'net-tap-transfer' not found");
    unlink(lonely);
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
    assert_netdev_refused(NULL, g_getenv("QTEST_QEMU_BINARY"),
                          "tap-transfer,id=n0,helper=/bin/true",
                          "helper= and br= are not supported by "
                          "tap-transfer");
}

static void test_rx_tx(void)
{
    Vm vm = { 0 };

    vm_start(&vm, "ifname=tt0,script=no,downscript=no", 1, NULL);
    check_traffic(&vm.nic, vm.sock, 0, "plain");
    vm_release(&vm);
    qtest_quit(vm.qts);
}

static void test_multiqueue(void)
{
    Vm vm = { 0 };

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
    const char *setpriv[] = { "setpriv", "--bounding-set=-all", NULL };

    assert_netdev_refused(setpriv, g_getenv("QTEST_QEMU_BINARY"),
                          "tap-transfer,id=n0,ifname=tt9,script=no,"
                          "downscript=no",
                          "netdev n0: this QEMU lacks CAP_NET_ADMIN");
}

/*
 * A driver that is neither built in nor a module of this build is not
 * compiled, rather than a module that is not installed
 */
static void test_not_compiled(void)
{
#ifdef CONFIG_VDE
    g_test_skip("this build has the vde netdev");
    return;
#endif
    assert_netdev_refused(NULL, g_getenv("QTEST_QEMU_BINARY"), "vde,id=v0",
                          "network backend 'vde' is not compiled into "
                          "this binary");
}

/* The QOM type is known before any netdev loaded the module */
static void test_qom_type_before_use(void)
{
    static const char *const want[] = {
        "ifname", "queues", "state", "frames-held", "frames-dropped",
    };
    QTestState *qts = qtest_init("-M none");
    QDict *rsp = qtest_qmp(qts, "{ 'execute': 'qom-list-properties',"
                           "  'arguments': { 'typename': "
                           "    'netdev-tap-transfer' } }");
    int seen = 0;
    QListEntry *e;

    if (qdict_haskey(rsp, "error")) {
        g_test_message("%s", qdict_get_str(qdict_get_qdict(rsp, "error"),
                                           "desc"));
    }
    g_assert_false(qdict_haskey(rsp, "error"));
    QLIST_FOREACH_ENTRY(qdict_get_qlist(rsp, "return"), e) {
        QDict *prop = qobject_to(QDict, qlist_entry_obj(e));

        for (int i = 0; i < ARRAY_SIZE(want); i++) {
            seen += !strcmp(qdict_get_str(prop, "name"), want[i]);
        }
    }
    g_assert_cmpint(seen, ==, ARRAY_SIZE(want));
    qobject_unref(rsp);
    qtest_quit(qts);
}

/*
 * The id names the migration sections, whose names QEMU keeps to 255
 * characters: a longer one is refused rather than cut short, which
 * would give two netdevs the same section
 */
static void test_long_id(void)
{
    g_autofree char *longest = g_strnfill(229, 'n');
    g_autofree char *too_long = g_strnfill(230, 'n');
    g_autofree char *state = NULL;
    QTestState *qts;

    qts = qtest_init("-M none");
    assert_qmp_error(qts, "the id of a tap-transfer netdev names its "
                     "migration sections: at most 229 characters, not 230",
                     "{ 'execute': 'netdev_add', 'arguments':"
                     " { 'type': 'tap-transfer', 'id': %s, 'ifname': 'tt9',"
                     "   'script': 'no', 'downscript': 'no' } }", too_long);
    g_assert_cmpuint(if_nametoindex("tt9"), ==, 0);

    qtest_qmp_assert_success(qts, "{ 'execute': 'netdev_add', 'arguments':"
                             " { 'type': 'tap-transfer', 'id': %s,"
                             "   'ifname': 'tt9', 'script': 'no',"
                             "   'downscript': 'no' } }", longest);
    state = qom_get_str(qts, longest, "state");
    g_assert_cmpstr(state, ==, "own");
    qtest_quit(qts);
}

/* A failure in an fd set keeps the line that says what was being done */
static void test_fdset_error(void)
{
    assert_netdev_refused(NULL, g_getenv("QTEST_QEMU_BINARY"),
                          "tap-transfer,id=n0,fd=/dev/fdset/9",
                          "cannot take a TAP file descriptor from "
                          "/dev/fdset/9: ");
}

void tap_transfer_add_basic_tests(TapTransferTestEnv *env)
{
    qtest_add_func("/tap-transfer/module-missing", test_module_missing);
    qtest_add_func("/tap-transfer/netdev-help", test_netdev_help);
    qtest_add_func("/tap-transfer/bad-options", test_bad_options);
    tap_transfer_test_add("/tap-transfer/rx-tx", test_rx_tx);
    tap_transfer_test_add("/tap-transfer/multiqueue", test_multiqueue);
    tap_transfer_test_add("/tap-transfer/unprivileged-open",
                          test_unprivileged_open);
    qtest_add_func("/tap-transfer/not-compiled", test_not_compiled);
    qtest_add_func("/tap-transfer/qom-type-before-use",
                   test_qom_type_before_use);
    tap_transfer_test_add("/tap-transfer/long-id", test_long_id);
    qtest_add_func("/tap-transfer/fdset-error", test_fdset_error);
}
