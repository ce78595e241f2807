/*
 * tap-transfer tests, what happens around a handover: netdev_del,
 * the downscript, a destination that goes away, cancel, ping-pong
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <net/if.h>
#include <sys/ioctl.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
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

/* A deleted netdev takes its migration state with it */
static void test_netdev_del(void)
{
    const char *netdev = "ifname=tt0,script=no,downscript=no";
    QTestState *to;
    Vm vm = { 0 };

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

/*
 * While a migration saves the netdev's state, the netdev stays: no
 * netdev_del, nor a netdev_add whose state would be missing from the
 * stream.  Afterwards both work again.
 */
static void test_netdev_del_migrating(void)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    g_autofree char *path = g_build_filename(env->tmpdir, "stalled-del", NULL);
    g_autofree char *uri = g_strdup_printf("unix:%s", path);
    const char *ungoals[] = { "failed", "completed", NULL };
    int listener;
    Vm vm = { 0 };

    /* A destination that accepts nothing: the migration stays active */
    listener = unix_listen(path, &error_abort);

    vm_start(&vm, "ifname=tt0,script=no,downscript=no", 1, NULL);
    migrate_set_parameter_bool(vm.qts, "backend-transfer", true);
    migrate_qmp(vm.qts, NULL, uri, NULL, "{}");
    wait_for_migration_status(vm.qts, "active", ungoals);

    assert_qmp_error(vm.qts, "netdev_del not allowed while migrating: "
                     "netdev 'n0' has migration state",
                     "{ 'execute': 'netdev_del',"
                     "  'arguments': { 'id': 'n0' } }");
    assert_qmp_error(vm.qts, "netdev n1: a tap-transfer netdev cannot be "
                     "added while migrating",
                     "{ 'execute': 'netdev_add', 'arguments':"
                     " { 'type': 'tap-transfer', 'id': 'n1',"
                     "   'ifname': 'tt5', 'script': 'no',"
                     "   'downscript': 'no' } }");
    g_assert_cmpuint(if_nametoindex("tt5"), ==, 0);

    migrate_cancel(vm.qts);
    wait_for_migration_status(vm.qts, "cancelled", NULL);
    wait_migration_cleaned_up(vm.qts);
    check_traffic(&vm.nic, vm.sock, 0, "after-cancel");
    qtest_qmp_assert_success(vm.qts, "{ 'execute': 'netdev_add', 'arguments':"
                             " { 'type': 'tap-transfer', 'id': 'n1',"
                             "   'ifname': 'tt5', 'script': 'no',"
                             "   'downscript': 'no' } }");
    qtest_qmp_assert_success(vm.qts, "{ 'execute': 'netdev_del',"
                             " 'arguments': { 'id': 'n1' } }");
    g_assert_cmpuint(if_nametoindex("tt5"), ==, 0);
    vm_release(&vm);
    qtest_quit(vm.qts);
    close(listener);
    unlink(path);
}

/*
 * The downscript runs exactly once, in whichever QEMU owns the TAP at
 * the end: the one the VM last ran in.  It logs the TAP and the pid of
 * the QEMU that ran it.
 */
typedef enum DownscriptOwner {
    OWNER_SOURCE,
    OWNER_DESTINATION,
} DownscriptOwner;

typedef struct DownscriptCase {
    const char *path;
    /* The destination fails on a section after the TAP's, having adopted */
    bool dest_fails;
    /* The destination loads, paused, and goes without running the VM */
    bool dest_never_runs;
    /* With the VM paused, a first handover is refused, then one holds */
    bool refused_first;
    /*
     * The destination loads, paused, and hands the TAP on before it ran
     * the VM; that hop is refused, the destination goes, the source runs
     */
    bool onward_refused;
    DownscriptOwner owner;
} DownscriptCase;

static const DownscriptCase downscript_cases[] = {
    { "/tap-transfer/downscript/handover", .owner = OWNER_DESTINATION },
    { "/tap-transfer/downscript/load-fails-after-adoption",
      .dest_fails = true, .owner = OWNER_SOURCE },
    { "/tap-transfer/downscript/destination-never-runs",
      .dest_never_runs = true, .owner = OWNER_SOURCE },
    { "/tap-transfer/downscript/second-handover-after-refused",
      .refused_first = true, .owner = OWNER_DESTINATION },
    { "/tap-transfer/downscript/onward-refused-before-running",
      .onward_refused = true, .owner = OWNER_SOURCE },
};

/* A destination that refuses the state and stays to be looked at */
static void handover_refused(QTestState *from, const char *netdev,
                             const char *extra)
{
    DestOptions dest = { .keep_on_error = true, .extra = extra };
    QTestState *to = start_dest_opts(netdev, 1, true, &dest);
    g_autofree char *status = NULL;

    migrate_start(from, to, true);
    wait_incoming_failed(to);
    wait_tun_fds(qtest_pid(to), 0);
    qtest_quit(to);
    status = wait_migration_done(from);
}

static void test_downscript(const void *opaque)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    const DownscriptCase *c = opaque;
    g_autofree char *script = g_build_filename(env->tmpdir, "down.sh", NULL);
    g_autofree char *log = g_build_filename(env->tmpdir, "down.log", NULL);
    g_autofree char *body = g_strdup_printf(
        "#!/bin/sh\necho \"$1 $PPID\" >> %s\n", log);
    g_autofree char *netdev = g_strdup_printf(
        "ifname=tt0,script=no,downscript=%s", script);
    g_autofree char *refusing = g_strdup_printf(
        "ifname=tt7,script=no,downscript=%s", script);
    g_autofree char *expected = NULL;
    g_autofree char *contents = NULL;
    QTestState *to, *owner, *other;
    Vm vm = { 0 };

    g_assert_true(g_file_set_contents(script, body, -1, NULL));
    g_assert_cmpint(chmod(script, 0755), ==, 0);
    unlink(log);

    vm_start(&vm, netdev, 1,
             c->dest_fails ? "-device virtio-rng-pci,addr=05.0" : NULL);
    if (c->dest_fails) {
        handover_refused(vm.qts, netdev, NULL);
        resume_source(vm.qts);
        to = NULL;
    } else if (c->onward_refused) {
        g_autofree char *status = NULL;
        g_autofree char *state = NULL;

        to = start_dest(netdev, 1, true, "-S");
        migrate_to(vm.qts, to, true);
        /* Through the return path it learns that its hop was refused */
        migrate_set_capability(to, "return-path", true);
        handover_refused(to, refusing, "-global migration.x-return-path=on");
        status = migrate_query_status(to);
        g_assert_cmpstr(status, ==, "failed");
        /* Back to idle, and the TAP is not its own: it runs no downscript */
        state = qom_get_str(to, "n0", "state");
        g_assert_cmpstr(state, ==, "idle");
        qtest_quit(to);
        to = NULL;
        g_assert_false(g_file_test(log, G_FILE_TEST_EXISTS));
        qtest_qmp_assert_success(vm.qts, "{ 'execute': 'cont' }");
        wait_running(vm.qts);
    } else if (c->dest_never_runs) {
        to = start_dest(netdev, 1, true, "-S");
        migrate_to(vm.qts, to, true);
        qtest_quit(to);
        to = NULL;
        qtest_qmp_assert_success(vm.qts, "{ 'execute': 'cont' }");
        wait_running(vm.qts);
    } else {
        if (c->refused_first) {
            g_autofree char *status = NULL;

            /*
             * With a return path the source learns of the refusal and
             * stays paused, so it can be migrated again without running
             * in between (without, it completed and QEMU refuses to
             * migrate it again before a cont)
             */
            qtest_qmp_assert_success(vm.qts, "{ 'execute': 'stop' }");
            migrate_set_capability(vm.qts, "return-path", true);
            handover_refused(vm.qts, refusing,
                             "-global migration.x-return-path=on");
            status = migrate_query_status(vm.qts);
            g_assert_cmpstr(status, ==, "failed");
            wait_migration_cleaned_up(vm.qts);
            migrate_set_capability(vm.qts, "return-path", false);
        }
        to = start_dest(netdev, 1, true, NULL);
        migrate_to(vm.qts, to, true);
        if (c->refused_first) {
            /* The VM was paused: it stays so until management says */
            qtest_qmp_assert_success(to, "{ 'execute': 'cont' }");
        }
        wait_running(to);
    }
    vm_release(&vm);

    owner = c->owner == OWNER_SOURCE ? vm.qts : to;
    other = c->owner == OWNER_SOURCE ? to : vm.qts;
    expected = g_strdup_printf("tt0 %d\n", qtest_pid(owner));
    if (other) {
        qtest_quit(other);
        g_assert_false(g_file_test(log, G_FILE_TEST_EXISTS));
    }
    qtest_quit(owner);
    g_assert_true(g_file_get_contents(log, &contents, NULL, NULL));
    g_assert_cmpstr(contents, ==, expected);
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

/* Cancelled in setup or while active: the source keeps reading its TAP */
static void test_cancel(void)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    g_autofree char *path = g_build_filename(env->tmpdir, "stalled", NULL);
    g_autofree char *uri = g_strdup_printf("unix:%s", path);
    unsigned fds_before;
    int listener;
    Vm vm = { 0 };

    /* A destination that accepts nothing: the migration stays active */
    listener = unix_listen(path, &error_abort);

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

void tap_transfer_add_lifecycle_tests(TapTransferTestEnv *env)
{
    tap_transfer_test_add("/tap-transfer/migration/netdev-del",
                          test_netdev_del);
    tap_transfer_test_add("/tap-transfer/migration/netdev-del-migrating",
                          test_netdev_del_migrating);
    for (int i = 0; i < ARRAY_SIZE(downscript_cases); i++) {
        tap_transfer_test_add_data(downscript_cases[i].path,
                                   &downscript_cases[i], test_downscript);
    }
    tap_transfer_test_add("/tap-transfer/migration/dest-killed",
                          test_dest_killed);
    tap_transfer_test_add("/tap-transfer/migration/cancel", test_cancel);
    tap_transfer_test_add("/tap-transfer/migration/ping-pong", test_ping_pong);
}
