/*
 * tap-transfer tests, what is refused, and how: channels that cannot
 * pass fds, mismatched sides, a source that hands over something else than
 * a TAP
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <net/if.h>
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

/* ...but with backend-transfer off it must open a TAP, and cannot */
static void test_unprivileged_transfer_off(void)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    DestOptions dest = {
        .binary_var = "TAP_TRANSFER_UNPRIVILEGED_QEMU",
        .keep_on_error = true,
    };
    g_autofree char *log = g_build_filename(env->tmpdir, "unprivileged.log",
                                            NULL);
    g_autofree char *wrapped = NULL;
    QTestState *to;
    Vm vm = { 0 };

    /* QMP only says the load failed; the reason is on stderr */
    wrapped = g_strdup_printf("2>%s setpriv --bounding-set=-all %s", log,
                              g_getenv("QTEST_QEMU_BINARY"));
    g_setenv("TAP_TRANSFER_UNPRIVILEGED_QEMU", wrapped, true);
    vm_start(&vm, "ifname=tt0,script=no,downscript=no", 1, NULL);
    to = start_dest_opts("ifname=tt1,script=no,downscript=no", 1, false,
                         &dest);
    migrate_refused(vm.qts, to, false, 0);
    g_assert_cmpuint(if_nametoindex("tt1"), ==, 0);
    assert_reported(log, "netdev n0: this QEMU lacks CAP_NET_ADMIN, "
                    "which opening a TAP device needs: could not "
                    "configure /dev/net/tun (tt1): Operation not "
                    "permitted\n");
    check_traffic(&vm.nic, vm.sock, 0, "kept");
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
 * the source has and it has not.  It gives the TAP back, having read
 * nothing from it, so the frames sent meanwhile reach the guest on the
 * source, which runs on.
 */
static void test_refused_after_adoption(void)
{
    const char *netdev = "ifname=tt0,script=no,downscript=no";
    DestOptions dest = { .keep_on_error = true };
    enum { FRAMES = 4 };
    uint64_t bufs[FRAMES];
    uint32_t heads[FRAMES];
    QTestState *to;
    Vm vm = { 0 };

    vm_start(&vm, netdev, 1, "-device virtio-rng-pci,addr=05.0");
    to = start_dest_opts(netdev, 1, true, &dest);
    migrate_start(vm.qts, to, true);
    wait_incoming_failed(to);
    /* It holds none of the source's TAP... */
    wait_tun_fds(qtest_pid(to), 0);
    for (int i = 0; i < FRAMES; i++) {
        g_autofree char *payload = g_strdup_printf("after-adoption-%d", i);

        host_send(vm.sock, payload);
    }
    /* ...and would have read these by now, had it kept it */
    g_usleep(200 * 1000);
    qtest_quit(to);

    resume_source(vm.qts);
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
    do_refused("ifname=tt0,script=no,downscript=no", true,
               "ifname=tt1,script=no,downscript=no", 1, false,
               "netdev n0: backend-transfer is on on the source and off "
               "here; set it the same on both sides\n");
}

static void test_refused_off_on(void)
{
    do_refused("ifname=tt0,script=no,downscript=no", false,
               "ifname=tt0,script=no,downscript=no", 1, true,
               "netdev n0: backend-transfer is off on the source and on "
               "here; set it the same on both sides\n");
}

static void test_refused_queues(void)
{
    do_refused("ifname=tt0,script=no,downscript=no", true,
               "ifname=tt0,queues=2,script=no,downscript=no", 2, true,
               "netdev n0: the source has 1 queues, this QEMU was "
               "configured with 2\n");
}

static void test_refused_ifname(void)
{
    do_refused("ifname=tt0,script=no,downscript=no", true,
               "ifname=tt7,script=no,downscript=no", 1, true,
               "netdev n0: the source's TAP device is tt0, this QEMU was "
               "configured with ifname=tt7\n");
}

/*
 * The destination wants vhost, which it cannot set up: it adopts
 * nothing, and the source keeps its TAP.
 */
static void test_refused_vhost(void)
{
    if (access("/dev/vhost-net", F_OK) == 0) {
        g_test_skip("/dev/vhost-net exists: the destination's vhost would "
                    "work");
        return;
    }
    do_refused("ifname=tt0,script=no,downscript=no", true,
               "ifname=tt0,script=no,downscript=no,vhost=on", 1, true,
               "netdev n0: queue 0: ");
}

/*
 * A device of the test's, made with @flags, handed to a source with
 * fd=: the destination, given the same fd=, refuses it with @reason and
 * keeps no fd of it, its own inherited copy included
 */
static void do_refused_tap(short flags, const char *ifname,
                           const char *reason)
{
    g_autofree char *netdev = NULL;
    DestOptions dest = { .keep_on_error = true };
    QTestState *from, *to;
    int fd = open_test_tap(ifname, flags, false);

    dest.binary_var = logged_qemu();
    netdev = g_strdup_printf("fd=%d", fd);

    from = start_qemu(netdev, 1, NULL);
    to = start_dest_opts(netdev, 1, true, &dest);
    migrate_refused(from, to, true, 0);
    assert_logged(reason);
    qtest_quit(from);
    close(fd);
}

/*
 * A hostile source: what it hands over is a TUN device, not a TAP.  The
 * source is given the TUN fd with fd=, which -netdev tap accepts.
 */
static void test_refused_tun(void)
{
    do_refused_tap(IFF_TUN | IFF_NO_PI | IFF_VNET_HDR, "ttun0",
                   "netdev n0: queue 0: received device ttun0 is a TUN, "
                   "not a TAP device\n");
}

/*
 * netdev_add with the TAP fds management passes is refused, on a
 * running QEMU and on an incoming one alike, with @want.  Both are
 * given the same TAP: a probe leaves it as it found it.
 */
static void assert_mgmt_fds_refused(int *fds, int n, const char *want)
{
    const char *machines[] = { "-M none", "-M none -incoming defer" };

    for (int i = 0; i < ARRAY_SIZE(machines); i++) {
        QTestState *qts = qtest_init(machines[i]);
        g_autoptr(GString) names = g_string_new(NULL);
        QDict *rsp;

        for (int j = 0; j < n; j++) {
            g_autofree char *name = g_strdup_printf("q%d", j);

            qtest_qmp_fds_assert_success(qts, &fds[j], 1,
                "{ 'execute': 'getfd', 'arguments': { 'fdname': %s } }",
                name);
            g_string_append_printf(names, "%s%s", j ? ":" : "", name);
        }
        rsp = qtest_qmp(qts, "{ 'execute': 'netdev_add', 'arguments': "
                        "{ 'type': 'tap-transfer', 'id': 'n0', %s: %s } }",
                        n > 1 ? "fds" : "fd", names->str);
        g_assert_true(qdict_haskey(rsp, "error"));
        g_assert_cmpstr(qdict_get_str(qdict_get_qdict(rsp, "error"), "desc"),
                        ==, want);
        qobject_unref(rsp);
        qtest_quit(qts);
    }
}

/*
 * A TAP whose frames come with packet information, which tap.c would
 * read as frames: refused when management passes it, so that none
 * reaches a handover, where probing for it would cost downtime
 */
static void test_refused_pi(void)
{
    int fd = open_test_tap("ttpi0", IFF_TAP | IFF_VNET_HDR, true);

    assert_mgmt_fds_refused(&fd, 1, "netdev n0: TAP device ttpi0 prefixes "
                            "its frames with packet information (no "
                            "IFF_NO_PI)");
    close(fd);
}

/* The queues of one netdev are queues of one TAP device */
static void test_refused_two_devices(void)
{
    int fds[] = {
        open_test_tap("ttqa0", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, true),
        open_test_tap("ttqb0", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, true),
    };

    assert_mgmt_fds_refused(fds, 2, "netdev n0: queue 1 is TAP device "
                            "ttqb0, queue 0 ttqa0: the queues of a netdev "
                            "are one device");
    close(fds[0]);
    close(fds[1]);
}

static void wait_job(QTestState *qts, const char *id)
{
    gint64 deadline = g_get_monotonic_time() + TIMEOUT_US;

    for (;;) {
        QDict *rsp = qtest_qmp(qts, "{ 'execute': 'query-jobs' }");
        QListEntry *e;
        bool done = false;

        QLIST_FOREACH_ENTRY(qdict_get_qlist(rsp, "return"), e) {
            QDict *job = qobject_to(QDict, qlist_entry_obj(e));

            if (!strcmp(qdict_get_str(job, "id"), id)) {
                g_assert_false(qdict_haskey(job, "error"));
                done = !strcmp(qdict_get_str(job, "status"), "concluded");
            }
        }
        qobject_unref(rsp);
        if (done) {
            break;
        }
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(10 * 1000);
    }
    qtest_qmp_assert_success(qts, "{ 'execute': 'job-dismiss',"
                             "  'arguments': { 'id': %s } }", id);
}

/* A qcow2 image, made by QEMU itself, that can take snapshots */
static void add_snapshot_disk(QTestState *qts, const char *file)
{
    qtest_qmp_assert_success(qts, "{ 'execute': 'blockdev-create',"
                             "  'arguments': { 'job-id': 'mkfile',"
                             "    'options': { 'driver': 'file',"
                             "      'filename': %s, 'size': 0 } } }", file);
    wait_job(qts, "mkfile");
    qtest_qmp_assert_success(qts, "{ 'execute': 'blockdev-add',"
                             "  'arguments': { 'driver': 'file',"
                             "    'node-name': 'file0', 'filename': %s } }",
                             file);
    qtest_qmp_assert_success(qts, "{ 'execute': 'blockdev-create',"
                             "  'arguments': { 'job-id': 'mkqcow2',"
                             "    'options': { 'driver': 'qcow2',"
                             "      'file': 'file0', 'size': 1048576 } } }");
    wait_job(qts, "mkqcow2");
    qtest_qmp_assert_success(qts, "{ 'execute': 'blockdev-add',"
                             "  'arguments': { 'driver': 'qcow2',"
                             "    'node-name': 'disk0', 'file': 'file0' } }");
}

/*
 * A snapshot cannot hold the fds that backend-transfer passes: refused
 * before the VM stops, and the netdev keeps its TAP (it used to be left
 * handed over, the downscript off, until a cont).  With the parameter
 * off the same snapshot is taken.
 */
static void test_refused_snapshot(void)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    g_autofree char *file = g_build_filename(env->tmpdir, "snap.qcow2", NULL);
    g_autofree char *refused = NULL;
    g_autofree char *taken = NULL;
    g_autofree char *state = NULL;
    Vm vm = { 0 };

    vm_start(&vm, "ifname=tt0,script=no,downscript=no", 1, NULL);
    add_snapshot_disk(vm.qts, file);
    qtest_qmp_assert_success(vm.qts, "{ 'execute': 'stop' }");
    migrate_set_parameter_bool(vm.qts, "backend-transfer", true);

    refused = qtest_hmp(vm.qts, "savevm s1");
    g_test_message("savevm: %s", refused);
    g_assert_nonnull(strstr(refused, "backend-transfer is on: a snapshot "
                            "cannot hold the file descriptors it passes; "
                            "turn it off to take one"));
    state = qom_get_str(vm.qts, "n0", "state");
    g_assert_cmpstr(state, ==, "own");

    migrate_set_parameter_bool(vm.qts, "backend-transfer", false);
    taken = qtest_hmp(vm.qts, "savevm s1");
    g_assert_cmpstr(taken, ==, "");

    qtest_qmp_assert_success(vm.qts, "{ 'execute': 'cont' }");
    check_traffic(&vm.nic, vm.sock, 0, "after-snapshot");
    vm_release(&vm);
    qtest_quit(vm.qts);
    unlink(file);
}

/*
 * A destination has a netdev that the source has not: no section comes
 * for it, and it stays without TAP.  It says so, naming the netdev, as
 * the VM starts; and a handover onwards is refused as it begins, before
 * the VM stops, rather than sending a file descriptor it does not have.
 */
static void test_refused_awaiting(void)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    const char *netdev = "ifname=tt0,script=no,downscript=no";
    g_autofree char *path = g_build_filename(env->tmpdir, "onwards", NULL);
    g_autofree char *uri = g_strdup_printf("unix:%s", path);
    DestOptions dest = {
        .binary_var = logged_qemu(),
        .extra = "-netdev tap-transfer,id=n1,ifname=tt1,script=no,"
                 "downscript=no",
    };
    g_autofree char *state = NULL;
    g_autofree char *status = NULL;
    QTestState *to;
    int listener;
    QDict *rsp;
    Vm vm = { 0 };

    vm_start(&vm, netdev, 1, NULL);
    to = start_dest_opts(netdev, 1, true, &dest);
    migrate_to(vm.qts, to, true);
    qtest_qmp_eventwait(to, "RESUME");
    qtest_quit(vm.qts);
    vm_migrated(&vm, to);
    state = qom_get_str(to, "n1", "state");
    g_assert_cmpstr(state, ==, "awaiting");

    listener = unix_listen(path, &error_abort);
    migrate_qmp(to, NULL, uri, NULL, "{}");
    status = wait_migration_done(to);
    g_assert_cmpstr(status, ==, "failed");
    rsp = qtest_qmp_assert_success_ref(to, "{ 'execute': 'query-migrate' }");
    g_test_message("onwards: %s", qdict_get_try_str(rsp, "error-desc"));
    g_assert_cmpstr(qdict_get_try_str(rsp, "error-desc"), ==,
                    "netdev n1 has no TAP device to hand over: no incoming "
                    "migration brought one");
    qobject_unref(rsp);
    wait_migration_cleaned_up(to);
    /* Refused before the stop: the VM and its network go on */
    rsp = qtest_qmp_assert_success_ref(to, "{ 'execute': 'query-status' }");
    g_assert_true(qdict_get_bool(rsp, "running"));
    qobject_unref(rsp);
    check_traffic(&vm.nic, vm.sock, 0, "onwards-refused");
    vm_release(&vm);
    qtest_quit(to);
    close(listener);
    unlink(path);
    assert_logged("netdev n1: the VM runs, but the incoming migration "
                  "brought no state for this netdev, which has no TAP "
                  "device; is it missing on the source?\n");
}

/* cpr-exec sends fd numbers, not fds: refused up front (QEMU >= 10.2) */
static void test_refused_cpr_exec(void)
{
    const char *desc;
    QDict *rsp;
    Vm vm = { 0 };

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

void tap_transfer_add_refused_tests(TapTransferTestEnv *env)
{
    tap_transfer_test_add("/tap-transfer/migration/unprivileged-transfer-off",
                          test_unprivileged_transfer_off);
    tap_transfer_test_add("/tap-transfer/refused/channels",
                          test_refuse_channels);
    tap_transfer_test_add("/tap-transfer/refused/fd-channels",
                          test_refuse_fd_channels);
    tap_transfer_test_add("/tap-transfer/refused/after-adoption",
                          test_refused_after_adoption);
    tap_transfer_test_add("/tap-transfer/refused/on-off", test_refused_on_off);
    tap_transfer_test_add("/tap-transfer/refused/off-on", test_refused_off_on);
    tap_transfer_test_add("/tap-transfer/refused/queues", test_refused_queues);
    tap_transfer_test_add("/tap-transfer/refused/ifname", test_refused_ifname);
    tap_transfer_test_add("/tap-transfer/refused/tun", test_refused_tun);
    tap_transfer_test_add("/tap-transfer/refused/vhost", test_refused_vhost);
    tap_transfer_test_add("/tap-transfer/refused/cpr-exec",
                          test_refused_cpr_exec);
    tap_transfer_test_add("/tap-transfer/refused/packet-information",
                          test_refused_pi);
    tap_transfer_test_add("/tap-transfer/refused/two-devices",
                          test_refused_two_devices);
    tap_transfer_test_add("/tap-transfer/refused/snapshot",
                          test_refused_snapshot);
    tap_transfer_test_add("/tap-transfer/refused/awaiting",
                          test_refused_awaiting);
}
