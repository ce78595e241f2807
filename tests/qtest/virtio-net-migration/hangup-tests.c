/*
 * tap-transfer tests, hang-ups: a destination that goes away, or
 * refuses on the return path, at each place in the tap-transfer section
 *
 * The destination is the test itself.  It takes the source's stream on
 * a UNIX socket, closes the TAP fds it is passed, and, with a return
 * path, refuses as QEMU does: a SHUT message with an error.  The source
 * is started with the module's test pause points (TAP_TRANSFER_TEST_PAUSE):
 * at each of them it has flushed everything before it and waits for the
 * test, which hangs up there in one case and lets it go on in the others.
 * Which point is reached, and when the source has taken in the refusal,
 * the test reads from the source's trace log: nothing here is left to
 * timing.
 *
 * Wherever the destination goes, the source must not die: its migration
 * fails (or completes, if the destination went after the stream), it
 * holds its own TAP fds and no others, and it runs again with frames
 * flowing both ways on both queues.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <net/if.h>
#include <poll.h>
#include <sys/socket.h>
#include "qapi/error.h"
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "qemu/sockets.h"
#include "qobject/qdict.h"
#include "migration/migration-qmp.h"
#include "migration/migration-util.h"
#include "framework.h"

#define HANGUP_QUEUES 2
#define HANGUP_NETDEV "ifname=tt0,queues=2,script=no,downscript=no"

/* The return path's SHUT message (migration.c): type 1, 4 bytes */
#define RP_MSG_SHUT 1

/* The source's trace events the test goes by */
#define HANGUP_TRACES                                                   \
    "-trace migrate_set_state -trace source_return_path_thread_bad_end " \
    "-trace migration_return_path_end_before -trace qemu_file_put_fd"

typedef struct HangupCase {
    const char *path;
    /* The pause point where the destination goes, NULL: after the end */
    const char *point;
    /* Which time the source pauses there: the queue, for the fd points */
    int nth;
    bool return_path;
    /* The TAP fds the destination has been passed when it goes */
    int fds;
} HangupCase;

/* The destination: the test, with the source's stream on @conn */
typedef struct FakeDest {
    const HangupCase *c;
    QTestState *source;
    int conn;
    int pause_listener;
    char *log;
    /* How many times the source paused at each point so far */
    GHashTable *paused;
    uint64_t bytes;
    int fds;
    bool gone;
} FakeDest;

static bool logged(const FakeDest *d, const char *what)
{
    g_autofree char *text = NULL;

    return g_file_get_contents(d->log, &text, NULL, NULL) &&
           strstr(text, what);
}

static void wait_logged(const FakeDest *d, const char *what)
{
    gint64 deadline = g_get_monotonic_time() + TIMEOUT_US;

    while (!logged(d, what)) {
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(10 * 1000);
    }
}

/*
 * Take in what the source sent, closing the fds that came with it;
 * false at the end of the stream, or if nothing is there and @wait is
 * false.
 */
static bool dest_read(FakeDest *d, bool wait)
{
    uint8_t buf[65536];
    union {
        struct cmsghdr hdr;
        char buf[CMSG_SPACE(sizeof(int) * HANGUP_QUEUES)];
    } control;
    struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1,
        .msg_control = &control, .msg_controllen = sizeof(control),
    };
    ssize_t len = recvmsg(d->conn, &msg,
                          MSG_CMSG_CLOEXEC | (wait ? 0 : MSG_DONTWAIT));

    if (len < 0 && !wait && errno == EAGAIN) {
        return false;
    }
    g_assert_cmpint(len, >=, 0);
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg); cmsg;
         cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        int n = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *fds = (int *)CMSG_DATA(cmsg);

        g_assert_cmpint(cmsg->cmsg_type, ==, SCM_RIGHTS);
        for (int i = 0; i < n; i++) {
            close(fds[i]);
        }
        d->fds += n;
    }
    d->bytes += len;
    return len > 0;
}

/*
 * The destination goes.  With a return path it refuses first, as a
 * QEMU whose load failed does, and waits until the source has taken
 * the refusal in; it has stopped reading before, so that nothing the
 * source sends from then on can reach it.
 */
static void dest_hang_up(FakeDest *d)
{
    while (dest_read(d, false)) {
        /* all that is there, so that the fds passed are counted */
    }
    if (d->c->return_path) {
        uint8_t shut[8];

        g_assert_cmpint(shutdown(d->conn, SHUT_RD), ==, 0);
        stw_be_p(shut, RP_MSG_SHUT);
        stw_be_p(shut + 2, 4);
        stl_be_p(shut + 4, 1);
        g_assert_cmpint(send(d->conn, shut, sizeof(shut), MSG_NOSIGNAL),
                        ==, sizeof(shut));
        wait_logged(d, "source_return_path_thread_bad_end");
    }
    close(d->conn);
    d->conn = -1;
    d->gone = true;
    g_test_message("destination gone after %" PRIu64 " bytes and %d fds",
                   d->bytes, d->fds);
}

/* The source waits at a pause point: go there, or let it go on */
static void dest_serve_pause(FakeDest *d)
{
    int conn = accept4(d->pause_listener, NULL, NULL, SOCK_CLOEXEC);
    char line[64];
    size_t len = 0;
    int nth;

    g_assert_cmpint(conn, >=, 0);
    while (!len || line[len - 1] != '\n') {
        struct pollfd pfd = { .fd = conn, .events = POLLIN };
        ssize_t n;

        g_assert_cmpint(poll(&pfd, 1, TIMEOUT_US / 1000), ==, 1);
        n = read(conn, line + len, sizeof(line) - 1 - len);
        g_assert_cmpint(n, >, 0);
        len += n;
    }
    line[len - 1] = '\0';
    nth = GPOINTER_TO_INT(g_hash_table_lookup(d->paused, line));
    g_hash_table_insert(d->paused, g_strdup(line), GINT_TO_POINTER(nth + 1));
    if (!d->gone && d->c->point && !strcmp(line, d->c->point) &&
        nth == d->c->nth) {
        dest_hang_up(d);
    }
    g_assert_cmpint(write(conn, "g", 1), ==, 1);
    close(conn);
}

static void dest_run(FakeDest *d, int listener)
{
    gint64 deadline = g_get_monotonic_time() + TIMEOUT_US;

    d->conn = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    g_assert_cmpint(d->conn, >=, 0);
    /* Until the source's migration has ended, nothing can pause it */
    while (!logged(d, "new state failed") &&
           !logged(d, "new state completed")) {
        struct pollfd pfd[] = {
            { .fd = d->pause_listener, .events = POLLIN },
            { .fd = d->conn, .events = POLLIN },
        };

        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        /* The source must not die, whatever the destination does */
        g_assert_true(qtest_probe_child(d->source));
        g_assert_cmpint(poll(pfd, ARRAY_SIZE(pfd), 100), >=, 0);
        if (pfd[0].revents & POLLIN) {
            dest_serve_pause(d);
        }
        if (d->conn >= 0 && (pfd[1].revents & (POLLIN | POLLHUP)) &&
            !dest_read(d, true)) {
            /* The source finished and closed the stream */
            dest_hang_up(d);
        }
        /*
         * After the end: with a return path the source waits for the
         * destination's word, which is a refusal
         */
        if (!d->c->point && d->c->return_path && !d->gone &&
            logged(d, "migration_return_path_end_before")) {
            dest_hang_up(d);
        }
    }
    /* Completed: the source closes the stream as it cleans up */
    if (d->conn >= 0) {
        struct pollfd pfd = { .fd = d->conn, .events = POLLIN };

        do {
            g_assert_cmpint(poll(&pfd, 1, TIMEOUT_US / 1000), ==, 1);
        } while (dest_read(d, true));
        dest_hang_up(d);
    }
}

static void do_hangup(const HangupCase *c, bool check_order)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    g_autofree char *mig_path = g_build_filename(env->tmpdir, "hangup.sock",
                                                 NULL);
    g_autofree char *pause_path = g_build_filename(env->tmpdir, "pause.sock",
                                                   NULL);
    g_autofree char *uri = g_strdup_printf("unix:%s", mig_path);
    g_autofree char *status = NULL;
    g_autofree char *extra = NULL;
    FakeDest d = { .c = c };
    unsigned ifindex, fds_before;
    int listener;
    Vm vm = { 0 };

    d.log = g_build_filename(env->tmpdir, "hangup-source.log", NULL);
    d.paused = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    unlink(d.log);
    listener = unix_listen(mig_path, &error_abort);
    d.pause_listener = unix_listen(pause_path, &error_abort);

    extra = g_strdup_printf("-m 8 " HANGUP_TRACES " -D %s", d.log);
    g_setenv("TAP_TRANSFER_TEST_PAUSE", pause_path, true);
    vm_start(&vm, HANGUP_NETDEV, HANGUP_QUEUES, extra);
    g_unsetenv("TAP_TRANSFER_TEST_PAUSE");
    nic_set_pairs(&vm.nic, HANGUP_QUEUES);
    ifindex = if_nametoindex("tt0");
    fds_before = count_fds(qtest_pid(vm.qts));

    migrate_set_parameter_bool(vm.qts, "backend-transfer", true);
    if (c->return_path) {
        migrate_set_capability(vm.qts, "return-path", true);
    }
    migrate_qmp(vm.qts, NULL, uri, NULL, "{}");
    d.source = vm.qts;
    dest_run(&d, listener);

    /* The source lives, and says how its migration ended */
    status = wait_migration_done(vm.qts);
    g_assert_cmpstr(status, ==,
                    c->point || c->return_path ? "failed" : "completed");
    g_assert_true(d.gone);
    g_assert_cmpint(d.fds, ==, c->fds);
    if (c->point) {
        g_assert_cmpint(GPOINTER_TO_INT(g_hash_table_lookup(d.paused,
                                                            c->point)),
                        >, c->nth);
    }
    if (check_order) {
        /* The refusal came first, then the fd failed to go */
        g_autofree char *text = NULL;
        QDict *rsp;
        char *refused, *fd_failed;

        g_assert_true(g_file_get_contents(d.log, &text, NULL, NULL));
        refused = strstr(text, "source_return_path_thread_bad_end");
        fd_failed = strstr(text, "-> status -1");
        g_assert_nonnull(refused);
        g_assert_nonnull(fd_failed);
        g_assert_true(refused < fd_failed);
        rsp = qtest_qmp_assert_success_ref(vm.qts,
                                           "{ 'execute': 'query-migrate' }");
        g_assert_cmpstr(qdict_get_try_str(rsp, "error-desc"), ==,
                        "Sibling indicated error 1");
        qobject_unref(rsp);
    }

    /* It holds its own TAP, and nothing it did not hold before */
    resume_source(vm.qts);
    wait_migration_cleaned_up(vm.qts);
    g_assert_cmpuint(count_tun_fds(qtest_pid(vm.qts)), ==, HANGUP_QUEUES);
    g_assert_cmpuint(count_fds(qtest_pid(vm.qts)), ==, fds_before);
    g_assert_cmpuint(if_nametoindex("tt0"), ==, ifindex);
    vm_finish(&vm, HANGUP_QUEUES, "after-hangup");

    g_hash_table_destroy(d.paused);
    close(d.pause_listener);
    close(listener);
    unlink(pause_path);
    unlink(mig_path);
    unlink(d.log);
    g_free(d.log);
}

static void test_hangup(const void *opaque)
{
    do_hangup(opaque, false);
}

/*
 * The issue 27 order, forced: the destination's refusal arrives on the
 * return path while the source is about to send the first fd, and that
 * send then fails.  Before the fix, QEMU 10.2's source set the error of
 * the failed save twice and aborted, 10.0's prepended to no error and
 * crashed.
 */
static void test_refusal_then_fd_send(void)
{
    static const HangupCase c = {
        .point = "fd-before", .nth = 0, .return_path = true, .fds = 0,
    };

    do_hangup(&c, true);
}

/* At each place, in the order the source gets there, each way */
static const HangupCase hangup_cases[] = {
    { "/tap-transfer/hangup/section", "section", 0, false, 0 },
    { "/tap-transfer/hangup/fds", "fds", 0, false, 0 },
    { "/tap-transfer/hangup/before-fd0", "fd-before", 0, false, 0 },
    { "/tap-transfer/hangup/after-fd0", "fd-after", 0, false, 1 },
    { "/tap-transfer/hangup/before-fd1", "fd-before", 1, false, 1 },
    { "/tap-transfer/hangup/after-fd1", "fd-after", 1, false, 2 },
    { "/tap-transfer/hangup/fds-end", "fds-end", 0, false, 2 },
    { "/tap-transfer/hangup/end", NULL, 0, false, 2 },
    { "/tap-transfer/hangup/return-path/section", "section", 0, true, 0 },
    { "/tap-transfer/hangup/return-path/fds", "fds", 0, true, 0 },
    { "/tap-transfer/hangup/return-path/before-fd0", "fd-before", 0, true,
      0 },
    { "/tap-transfer/hangup/return-path/after-fd0", "fd-after", 0, true, 1 },
    { "/tap-transfer/hangup/return-path/before-fd1", "fd-before", 1, true,
      1 },
    { "/tap-transfer/hangup/return-path/after-fd1", "fd-after", 1, true, 2 },
    { "/tap-transfer/hangup/return-path/fds-end", "fds-end", 0, true, 2 },
    { "/tap-transfer/hangup/return-path/end", NULL, 0, true, 2 },
};

void tap_transfer_add_hangup_tests(TapTransferTestEnv *env)
{
    tap_transfer_test_add("/tap-transfer/hangup/refusal-then-fd-send",
                          test_refusal_then_fd_send);
    for (int i = 0; i < ARRAY_SIZE(hangup_cases); i++) {
        tap_transfer_test_add_data(hangup_cases[i].path, &hangup_cases[i],
                                   test_hangup);
    }
}
