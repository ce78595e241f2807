/*
 * tap-transfer tests, between two QEMU versions
 * ($QTEST_QEMU_BINARY_SRC and _DST): upgrade and rollback handovers, and
 * the state only one of them has
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

    do_handover(netdev, pairs, "QTEST_QEMU_BINARY_DST");
}

/* VIRTIO_NET_F_GUEST_UDP_TUNNEL_GSO (65), ..._HOST_UDP_TUNNEL_GSO (67) */
#define TUNNEL_FEATURES_HI ((1u << (65 - 64)) | (1u << (67 - 64)))

/*
 * A guest that uses UDP tunnel offloads (QEMU >= 10.2, on a kernel that
 * has them): that state travels in an optional subsection, which a
 * destination without tunnel offloads refuses in one line, naming the
 * netdev.  $TAP_TRANSFER_SRC_ARGS turns them on for a machine type that
 * has them off.
 */
static void test_tunnel_handover(void)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    const char *netdev = "ifname=tt0,script=no,downscript=no";
    const char *dst_qemu = g_getenv("QTEST_QEMU_BINARY_DST") ?:
                           g_getenv("QTEST_QEMU_BINARY");
    DestOptions dest = {
        .binary_var = "TAP_TRANSFER_LOGGED_DST",
        .keep_on_error = true,
    };
    g_autofree char *logged = NULL;
    g_autoptr(GArray) src_fds = NULL;
    QTestState *to;
    Vm vm = { 0 };

    env->nic_want_features_hi = TUNNEL_FEATURES_HI;
    vm_start(&vm, netdev, 1, g_getenv("TAP_TRANSFER_SRC_ARGS"));
    env->nic_want_features_hi = 0;
    if ((nic_features_hi(&vm.nic) & TUNNEL_FEATURES_HI) !=
        TUNNEL_FEATURES_HI) {
        g_test_skip("the source offers no UDP tunnel offloads (QEMU older "
                    "than 10.2, or a kernel without them)");
        vm_release(&vm);
        qtest_quit(vm.qts);
        return;
    }
    src_fds = tun_fds(qtest_pid(vm.qts));
    logged = g_strdup_printf("2>%s/qemu.log %s", env->tmpdir, dst_qemu);
    g_setenv("TAP_TRANSFER_LOGGED_DST", logged, true);
    to = start_dest_opts(netdev, 1, true, &dest);

    if (!qemu_at_least(to, 10, 2)) {
        migrate_refused(vm.qts, to, true, 0);
        assert_logged("netdev n0: queue 0: the guest uses UDP tunnel "
                      "offloads on the TAP device, which this QEMU does not "
                      "support\n");
        g_assert_cmpuint(count_tun_fds(qtest_pid(vm.qts)), ==, 1);
        vm_release(&vm);
        qtest_quit(vm.qts);
        return;
    }

    /* Without the subsection the destination would refuse the features */
    migrate_to(vm.qts, to, true);
    qtest_qmp_eventwait(to, "RESUME");
    assert_tap_handed_over(vm.qts, src_fds, to, 0, 0);
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
    TapTransferTestEnv *env = tap_transfer_get_env();
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

    vm_start(&vm, netdev, 2, rss);
    if (!(qvirtio_get_features(&vm.nic.dev->vdev) &
          (1ull << VIRTIO_NET_F_RSS))) {
        g_test_skip("the source offers no RSS");
        goto out;
    }
    nic_set_pairs(&vm.nic, 2);
    nic_enable_rss(&vm.nic, 2);
    logged = g_strdup_printf("2>%s/qemu.log %s", env->tmpdir, dst_qemu);
    g_setenv("TAP_TRANSFER_LOGGED_DST", logged, true);
    to = start_dest_opts(netdev, 2, true, &dest);
    if (!qemu_at_least(vm.qts, 10, 2) || qemu_at_least(to, 10, 2)) {
        g_test_skip("only QEMU 10.2 to 10.0 cannot carry RSS state");
        qtest_quit(to);
        goto out;
    }
    /* It adopted the TAP before virtio-net's section failed, and let go */
    migrate_refused(vm.qts, to, true, 0);
    assert_logged("virtio-net-device/rss: incoming version_id 2 is too new "
                  "for local version_id 1\n");
    check_traffic(&vm.nic, vm.sock, 0, "rss-kept");
out:
    vm_release(&vm);
    qtest_quit(vm.qts);
}

void tap_transfer_add_cross_version_tests(TapTransferTestEnv *env)
{
    /* On one QEMU, the tunnel state's handover between two of them */
    tap_transfer_test_add("/tap-transfer/migration/tunnel",
                          test_tunnel_handover);
    if (!g_getenv("QTEST_QEMU_BINARY_SRC") ||
        !g_getenv("QTEST_QEMU_BINARY_DST")) {
        return;
    }
    env->machine_type = g_getenv("TAP_TRANSFER_MACHINE") ?: "pc-i440fx-10.0";
    env->src_binary_var = "QTEST_QEMU_BINARY_SRC";
    tap_transfer_test_add_data("/tap-transfer/cross-version/handover",
                               GINT_TO_POINTER(1), test_cross_version_handover);
    tap_transfer_test_add_data(
        "/tap-transfer/cross-version/handover-multiqueue",
        GINT_TO_POINTER(4), test_cross_version_handover);
    tap_transfer_test_add("/tap-transfer/cross-version/tunnel",
                          test_tunnel_handover);
    tap_transfer_test_add("/tap-transfer/cross-version/rss",
                          test_cross_version_rss);
    tap_transfer_test_add("/tap-transfer/cross-version/cpr-transfer",
                          test_cross_version_cpr_transfer);
}
