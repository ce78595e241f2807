/*
 * QTest testcase for tap-transfer: virtio-net on a real TAP device, and
 * local migration that hands the TAP over to the destination QEMU
 *
 * The framework (virtio-net-migration/framework.c) gives each run a
 * network namespace of its own; the families of tests live beside it,
 * one file each, as QEMU's migration-test does.
 *
 * The suite is named after the netdev it tests: its paths are
 * /ARCH/tap-transfer/..., its functions tap_transfer_*, its environment
 * variables TAP_TRANSFER_*.  Only the binary and its directory go by
 * what the test drives, as QEMU's qtests do: virtio-net-migration-test.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "libqtest.h"
#include "virtio-net-migration/framework.h"

int main(int argc, char **argv)
{
    TapTransferTestEnv *env;
    int ret;

    g_test_init(&argc, &argv, NULL);
    env = tap_transfer_get_env();

    tap_transfer_add_basic_tests(env);
    tap_transfer_add_handover_tests(env);
    tap_transfer_add_lifecycle_tests(env);
    tap_transfer_add_zero_loss_tests(env);
    tap_transfer_add_management_tests(env);
    tap_transfer_add_refused_tests(env);
    tap_transfer_add_cross_version_tests(env);
    tap_transfer_add_hostile_stream_tests(env);
    tap_transfer_add_hangup_tests(env);
    tap_transfer_add_qom_tests(env);

    ret = g_test_run();
    tap_transfer_env_clean(env);
    return ret;
}
