/*
 * tap-transfer tests, a hostile stream: a real handover stream,
 * recorded with the TAP file descriptors it passed, replayed into fresh
 * destinations with the tap-transfer section changed, field by field
 * and at random
 *
 * A destination must never die of what it is sent, must refuse what it
 * cannot take with one line of its own naming the netdev (or QEMU's
 * loader's, when the change breaks the stream's structure), and must
 * keep none of the file descriptors it received and did not adopt.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <net/if.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/if_tun.h>
#include <sys/wait.h>
#include "qapi/error.h"
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "qemu/sockets.h"
#include "qobject/qdict.h"
#include "migration/migration-qmp.h"
#include "migration/migration-util.h"
#include "framework.h"

/* What savevm.c puts around a device's state */
#define SECTION_FULL 0x04
#define SECTION_FOOTER 0x7e
#define SUBSECTION 0x05

#define HOSTILE_QUEUES 2
#define HOSTILE_NETDEV "ifname=tt0,queues=2,script=no,downscript=no"
#define SECTION_ID "netdev/n0/tap-transfer"
#define RANDOM_MUTATIONS 500
/* Little RAM: the replays spend their time on the state that matters */
#define HOSTILE_EXTRA "-m 8"

/* Where each field of the tap-transfer section sits in the stream */
typedef struct Layout {
    size_t id_len, id, transfer;
    size_t fds_name, ifname, owns_downscript, queues;
    /* Of each queue: the byte its fd came with, then its fields */
    size_t queue[HOSTILE_QUEUES];
    size_t frames_name, nframes;
    /* Of the first frame */
    size_t frame_queue, frame_size;
    uint32_t nframes_value;
    /* The section's body, without header and footer */
    size_t start, end;
} Layout;

typedef struct Recording {
    GByteArray *bytes;
    /* The source's TAP fds, as the stream passed them, and their bytes */
    int fds[HOSTILE_QUEUES];
    size_t fd_offset[HOSTILE_QUEUES];
    Layout at;
    QTestState *source;
} Recording;

static Recording rec;
/* Which of the processes replaying at the same time this is */
static int worker;

static size_t section_find(const GByteArray *b)
{
    size_t idlen = strlen(SECTION_ID);

    for (size_t i = 0; i + 6 + idlen < b->len; i++) {
        if (b->data[i] == SECTION_FULL && b->data[i + 5] == idlen &&
            !memcmp(b->data + i + 6, SECTION_ID, idlen)) {
            /* header: type, section id, idstr, instance id, version */
            return i + 6 + idlen + 8;
        }
    }
    g_assert_not_reached();
}

static size_t subsection_fields(const GByteArray *b, size_t at,
                                const char *name)
{
    g_assert_cmpuint(b->data[at], ==, SUBSECTION);
    g_assert_cmpuint(b->data[at + 1], ==, strlen(name));
    g_assert_true(!memcmp(b->data + at + 2, name, strlen(name)));
    return at + 2 + strlen(name) + 4;
}

/* Read the section's layout: it is this project's own */
static void layout_parse(const GByteArray *b, Layout *at)
{
    size_t p = section_find(b);

    at->start = at->id_len = p;
    at->id = p + 4;
    at->transfer = at->id + ldl_be_p(b->data + at->id_len);
    g_assert_cmpuint(b->data[at->transfer], ==, 1);
    at->fds_name = at->transfer + 1;
    at->ifname = subsection_fields(b, at->fds_name, "tap-transfer/fds");
    at->owns_downscript = at->ifname + IFNAMSIZ;
    at->queues = at->owns_downscript + 1;
    g_assert_cmpuint(ldl_be_p(b->data + at->queues), ==, HOSTILE_QUEUES);
    p = at->queues + 4;
    for (int i = 0; i < HOSTILE_QUEUES; i++) {
        /* fd byte, enabled, using_vnet_hdr, hdr_len, has_ufo, has_uso */
        at->queue[i] = p;
        p += 1 + 1 + 1 + 4 + 1 + 1;
    }
    at->frames_name = p;
    at->nframes = subsection_fields(b, p, "tap-transfer/packets");
    at->nframes_value = ldl_be_p(b->data + at->nframes);
    g_assert_cmpuint(at->nframes_value, >, 0);
    p = at->frame_queue = at->nframes + 4;
    at->frame_size = p + 4;
    for (uint32_t i = 0; i < at->nframes_value; i++) {
        p += 8 + ldl_be_p(b->data + p + 4);
    }
    at->end = p;
    g_assert_cmpuint(b->data[at->end], ==, SECTION_FOOTER);
}

/*
 * A source on a 2-queue TAP whose guest posted no receive buffers, so
 * that frames QEMU read wait in the NIC and travel as held frames,
 * migrated to a socket of the test's, which keeps the stream and fds.
 */
static void record_stream(void)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    g_autofree char *path = g_build_filename(env->tmpdir, "record.sock", NULL);
    g_autofree char *uri = g_strdup_printf("unix:%s", path);
    uint64_t read_before;
    unsigned ifindex;
    int listener, conn, sock, nfds = 0;
    Vm vm = { 0 };

    vm_start(&vm, HOSTILE_NETDEV, HOSTILE_QUEUES, HOSTILE_EXTRA);
    nic_set_pairs(&vm.nic, HOSTILE_QUEUES);
    ifindex = if_nametoindex("tt0");
    sock = socket(AF_PACKET, SOCK_RAW, 0);
    g_assert_cmpint(sock, >=, 0);
    read_before = tap_frames_read("tt0");
    for (int flow = 0; flow < 8; flow++) {
        host_send_udp(sock, ifindex, flow, "held");
    }
    for (int i = 0; tap_frames_read("tt0") == read_before; i++) {
        g_assert_cmpint(i, <, 3000);
        g_usleep(10 * 1000);
    }
    g_usleep(100 * 1000);
    close(sock);

    listener = unix_listen(path, &error_abort);
    migrate_set_parameter_bool(vm.qts, "backend-transfer", true);
    migrate_qmp(vm.qts, NULL, uri, NULL, "{}");
    conn = accept(listener, NULL, NULL);
    g_assert_cmpint(conn, >=, 0);

    rec.bytes = g_byte_array_new();
    for (;;) {
        uint8_t buf[65536];
        union {
            struct cmsghdr hdr;
            char buf[CMSG_SPACE(sizeof(int) * HOSTILE_QUEUES)];
        } control;
        struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
        struct msghdr msg = {
            .msg_iov = &iov, .msg_iovlen = 1,
            .msg_control = &control, .msg_controllen = sizeof(control),
        };
        ssize_t len = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
        struct cmsghdr *cmsg;

        g_assert_cmpint(len, >=, 0);
        if (!len) {
            break;
        }
        for (cmsg = CMSG_FIRSTHDR(&msg); cmsg;
             cmsg = CMSG_NXTHDR(&msg, cmsg)) {
            int n = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);

            g_assert_cmpint(cmsg->cmsg_type, ==, SCM_RIGHTS);
            g_assert_cmpint(nfds + n, <=, HOSTILE_QUEUES);
            memcpy(rec.fds + nfds, CMSG_DATA(cmsg), n * sizeof(int));
            nfds += n;
        }
        g_byte_array_append(rec.bytes, buf, len);
    }
    close(conn);
    close(listener);
    unlink(path);
    wait_for_migration_complete(vm.qts);
    g_assert_cmpint(nfds, ==, HOSTILE_QUEUES);

    layout_parse(rec.bytes, &rec.at);
    for (int i = 0; i < HOSTILE_QUEUES; i++) {
        rec.fd_offset[i] = rec.at.queue[i];
        g_assert_cmpuint(rec.bytes->data[rec.fd_offset[i]], ==, ' ');
    }
    g_test_message("recorded %u bytes, %d fds, the section at %zu..%zu "
                   "with %u held frames", rec.bytes->len, nfds,
                   rec.at.start, rec.at.end, rec.at.nframes_value);
    /* The source stays, paused, the TAP's other holder */
    rec.source = vm.qts;
    vm_release(&vm);
}

/* The recording all hostile-stream cases replay, made on first use */
static void hostile_ready(void)
{
    if (!rec.bytes) {
        record_stream();
    }
}

static bool send_all(int sock, const uint8_t *data, size_t len, int fd)
{
    while (len) {
        struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
        union {
            struct cmsghdr hdr;
            char buf[CMSG_SPACE(sizeof(int))];
        } control = { 0 };
        struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
        struct pollfd pfd = { .fd = sock, .events = POLLOUT };
        ssize_t n;

        if (fd >= 0) {
            struct cmsghdr *cmsg = &control.hdr;

            iov.iov_len = 1;
            msg.msg_control = &control;
            msg.msg_controllen = sizeof(control);
            cmsg->cmsg_level = SOL_SOCKET;
            cmsg->cmsg_type = SCM_RIGHTS;
            cmsg->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
        }
        /* A destination that refused stops reading: give up then */
        if (poll(&pfd, 1, 10 * 1000) != 1) {
            return false;
        }
        n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n <= 0) {
            return false;
        }
        data += n;
        len -= n;
        fd = -1;
    }
    return true;
}

/*
 * Bytes @from to @to of the stream, each of @fds on the byte its queue's
 * fd came with; false if the destination stopped reading
 */
static bool feed_fds(int sock, const GByteArray *stream, size_t from,
                     size_t to, const int *fds)
{
    size_t done = from;

    for (int i = 0; i <= HOSTILE_QUEUES; i++) {
        size_t upto = i < HOSTILE_QUEUES ? rec.fd_offset[i] : to;

        if (upto < done) {
            continue;
        }
        upto = MIN(upto, to);
        if (!send_all(sock, stream->data + done, upto - done, -1)) {
            return false;
        }
        done = upto;
        if (i < HOSTILE_QUEUES && done == rec.fd_offset[i] && done < to) {
            if (!send_all(sock, stream->data + done, 1, fds[i])) {
                return false;
            }
            done++;
        }
    }
    return true;
}

/* The same with the fds the stream was recorded with */
static bool feed_part(int sock, const GByteArray *stream, size_t from,
                      size_t to)
{
    return feed_fds(sock, stream, from, to, rec.fds);
}

/* The stream, with each fd on the byte it came with */
static void feed(const char *path, const GByteArray *stream)
{
    int sock = unix_connect(path, &error_abort);

    feed_part(sock, stream, 0, stream->len);
    close(sock);
}

typedef enum Outcome {
    ACCEPTED,
    REFUSED,
} Outcome;

typedef struct Replay {
    Outcome outcome;
    /* What the destination said on stderr, and to QMP */
    char *log;
    char *error;
    unsigned tun_fds;
} Replay;

static void replay_free(Replay *r)
{
    g_free(r->log);
    g_free(r->error);
}

/*
 * Into a fresh destination (backend-transfer @transfer), kept alive
 * after a failed load to be looked at, with its stderr in a file
 */
static Replay replay(const GByteArray *stream, bool transfer)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    g_autofree char *path = g_strdup_printf("%s/replay%d.sock", env->tmpdir,
                                            worker);
    g_autofree char *uri = g_strdup_printf("unix:%s", path);
    g_autofree char *log = g_strdup_printf("%s/replay%d.log", env->tmpdir,
                                           worker);
    g_autofree char *logged = g_strdup_printf("2>%s %s", log,
                                              g_getenv("QTEST_QEMU_BINARY"));
    g_autofree char *status = NULL;
    DestOptions opts = {
        .binary_var = "TAP_TRANSFER_REPLAY_QEMU",
        .keep_on_error = true,
    };
    Replay r = { 0 };
    QTestState *to;
    int hdr_len;

    g_setenv("TAP_TRANSFER_REPLAY_QEMU", logged, true);
    unlink(path);
    to = start_qemu_as(opts.binary_var, HOSTILE_NETDEV, HOSTILE_QUEUES,
                       HOSTILE_EXTRA " -incoming defer");
    migrate_set_parameter_bool(to, "backend-transfer", transfer);
    migrate_incoming_qmp(to, uri, NULL, "{ 'exit-on-error': false }");
    feed(path, stream);
    do {
        g_free(status);
        g_usleep(2 * 1000);
        status = migrate_query_status(to);
    } while (strcmp(status, "completed") && strcmp(status, "failed"));
    r.outcome = strcmp(status, "completed") ? REFUSED : ACCEPTED;
    if (r.outcome == REFUSED) {
        QDict *rsp = qtest_qmp_assert_success_ref(
            to, "{ 'execute': 'query-migrate' }");

        r.error = g_strdup(qdict_get_try_str(rsp, "error-desc"));
        qobject_unref(rsp);
        /* It cleans up after the failure a little after saying so */
        wait_tun_fds(qtest_pid(to), transfer ? 0 : HOSTILE_QUEUES);
    }
    r.tun_fds = count_tun_fds(qtest_pid(to));
    /* A QEMU that died of it fails the test here */
    qtest_quit(to);
    /*
     * One that opened TAP queues of its own reset the header length of
     * the whole device: set the source's back for the next replay
     */
    hdr_len = ldl_be_p(rec.bytes->data + rec.at.queue[0] + 3);
    g_assert_cmpint(ioctl(rec.fds[0], TUNSETVNETHDRSZ, &hdr_len), ==, 0);
    g_assert_true(g_file_get_contents(log, &r.log, NULL, NULL));
    unlink(log);
    return r;
}

static GByteArray *stream_copy(void)
{
    GByteArray *b = g_byte_array_sized_new(rec.bytes->len);

    g_byte_array_append(b, rec.bytes->data, rec.bytes->len);
    return b;
}

/* One change aimed at one field, and the line it must be refused with */
typedef struct Mutation {
    const char *what;
    /* the field's offset in the Layout, and what is written there */
    size_t offset;
    int width;
    uint32_t value;
    const char *bytes;
    /* backend-transfer on the destination */
    bool dest_off;
    /* NULL: accepted */
    const char *refusal;
} Mutation;

#define AT(field) offsetof(Layout, field)

static const Mutation mutations[] = {
    { "id length 2 GiB", AT(id_len), 4, 0x80000000,
      .refusal = "netdev n0: the migration stream holds the state of "
                 "another netdev\n" },
    { "id length 1", AT(id_len), 4, 1,
      .refusal = "netdev n0: the migration stream holds the state of "
                 "another netdev\n" },
    { "id of another netdev", AT(id), 0, 0, "n9",
      .refusal = "netdev n0: the migration stream holds the state of "
                 "netdev n9\n" },
    { "transfer off, fds sent", AT(transfer), 1, 0,
      .refusal = "netdev n0: the stream carries TAP file descriptors, but "
                 "backend-transfer is off on the source\n" },
    { "transfer off on both sides, fds sent", AT(transfer), 1, 0,
      .dest_off = true,
      .refusal = "netdev n0: the stream carries TAP file descriptors, but "
                 "backend-transfer is off on the source\n" },
    { "backend-transfer off here", AT(transfer), 1, 1, .dest_off = true,
      .refusal = "netdev n0: backend-transfer is on on the source and off "
                 "here; set it the same on both sides\n" },
    { "TAP name without its NUL", AT(ifname), 0, 0, "tttttttttttttttt",
      .refusal = "netdev n0: invalid TAP device name received\n" },
    { "empty TAP name", AT(ifname), 1, 0,
      .refusal = "netdev n0: invalid TAP device name received\n" },
    { "another TAP name", AT(ifname), 0, 0, "tt7",
      .refusal = "netdev n0: the source's TAP device is tt7, this QEMU was "
                 "configured with ifname=tt0\n" },
    { "downscript ownership", AT(owns_downscript), 1, 1 },
    { "2^31 - 1 queues", AT(queues), 4, 0x7fffffff,
      .refusal = "netdev n0: the source has 2147483647 queues, this QEMU "
                 "was configured with 2\n" },
    { "-1 queues", AT(queues), 4, 0xffffffff,
      .refusal = "netdev n0: the source has -1 queues, this QEMU was "
                 "configured with 2\n" },
    { "1 queue", AT(queues), 4, 1,
      .refusal = "netdev n0: the source has 1 queues, this QEMU was "
                 "configured with 2\n" },
    /* The kernel does not tell: the guest finds the queue unusable */
    { "queue 1 enabled", AT(queue[1]), -1, 1 },
    { "vnet header not used", AT(queue[0]), -2, 0,
      .refusal = "netdev n0: queue 0: invalid vnet header: 12 bytes, not "
                 "used by the NIC\n" },
    /* Queue 0 is adopted before queue 1 fails: both go back */
    { "queue 1's vnet header not used", AT(queue[1]), -2, 0,
      .refusal = "netdev n0: queue 1: invalid vnet header: 12 bytes, not "
                 "used by the NIC\n" },
    { "vnet header of 65535 bytes", AT(queue[0]), -3, 65535,
      .refusal = "netdev n0: queue 0: the source's state has a vnet header "
                 "of 65535 bytes, TAP device tt0 one of 12\n" },
    { "vnet header of 7 bytes", AT(queue[1]), -3, 7,
      .refusal = "netdev n0: queue 1: the source's state has a vnet header "
                 "of 7 bytes, TAP device tt0 one of 12\n" },
    { "no vnet header", AT(queue[1]), -3, 0,
      .refusal = "netdev n0: queue 1: the source's state has a vnet header "
                 "of 0 bytes, TAP device tt0 one of 12\n" },
    { "2^31 - 1 frames", AT(nframes), 4, 0x7fffffff,
      .refusal = "netdev n0: the source holds 2147483647 frames, not 1 to "
                 "20000\n" },
    { "no frames", AT(nframes), 4, 0,
      .refusal = "netdev n0: the source holds 0 frames, not 1 to 20000\n" },
    { "a frame for queue 0x7fffff", AT(frame_queue), 4, 0x7fffff,
      .refusal = "netdev n0: received a frame for queue 8388607 of 2\n" },
    { "a frame of 0 bytes", AT(frame_size), 4, 0,
      .refusal = "netdev n0: received a frame of 0 bytes, not 1 to 69632\n" },
    { "a frame of 2 GiB", AT(frame_size), 4, 0x80000000,
      .refusal = "netdev n0: received a frame of 2147483648 bytes, not 1 "
                 "to 69632\n" },
};

/* Negative widths: a field of a queue, counted from its fd's byte */
static void mutation_apply(GByteArray *b, const Mutation *m)
{
    size_t at = *(const size_t *)((const char *)&rec.at + m->offset);

    switch (m->width) {
    case -1:                    /* enabled */
        b->data[at + 1] = m->value;
        break;
    case -2:                    /* using_vnet_hdr */
        b->data[at + 2] = m->value;
        break;
    case -3:                    /* host_vnet_hdr_len */
        stl_be_p(b->data + at + 3, m->value);
        break;
    case 0:
        memcpy(b->data + at, m->bytes, strlen(m->bytes));
        break;
    case 1:
        b->data[at] = m->value;
        break;
    case 4:
        stl_be_p(b->data + at, m->value);
        break;
    default:
        g_assert_not_reached();
    }
}

/* The stream as it was: the harness itself works */
static void test_hostile_baseline(void)
{
    Replay r;

    hostile_ready();
    r = replay(rec.bytes, true);
    g_test_message("baseline: %s", r.log);
    g_assert_cmpint(r.outcome, ==, ACCEPTED);
    g_assert_cmpuint(r.tun_fds, ==, HOSTILE_QUEUES);
    replay_free(&r);
}

static void test_hostile_fields(void)
{
    hostile_ready();
    for (int i = 0; i < ARRAY_SIZE(mutations); i++) {
        const Mutation *m = &mutations[i];
        g_autoptr(GByteArray) b = stream_copy();
        Replay r;

        mutation_apply(b, m);
        r = replay(b, !m->dest_off);
        g_test_message("%s: %s", m->what, r.log);
        if (m->refusal) {
            g_assert_cmpint(r.outcome, ==, REFUSED);
            g_assert_nonnull(strstr(r.log, m->refusal));
            /* Only a TAP of its own, with backend-transfer off */
            g_assert_cmpuint(r.tun_fds, ==, m->dest_off ? HOSTILE_QUEUES : 0);
        } else {
            g_assert_cmpint(r.outcome, ==, ACCEPTED);
            g_assert_cmpuint(r.tun_fds, ==, HOSTILE_QUEUES);
        }
        replay_free(&r);
    }
}

/* A seeded random change of the section, at @at or near it */
static const char *mutate_random(GRand *rand, GByteArray *b, size_t *at)
{
    static const uint32_t boundaries[] = {
        0, 1, 2, 3, 0x7f, 0xff, 0x7fffffff, 0x80000000, 0xffffffff,
    };

    switch (g_rand_int_range(rand, 0, 3)) {
    case 0:
        b->data[*at] = g_rand_int_range(rand, 0, 256);
        return "byte";
    case 1:
        b->data[*at] ^= 1 << g_rand_int_range(rand, 0, 8);
        return "bit";
    default:
        *at = MIN(*at, rec.at.end - 4);
        stl_be_p(b->data + *at, boundaries[g_rand_int_range(
                     rand, 0, ARRAY_SIZE(boundaries))]);
        return "be32";
    }
}

typedef struct RandomCounts {
    unsigned accepted, module, loader;
} RandomCounts;

/* The changes whose number is @worker modulo 2, replayed */
static void replay_random(guint32 seed, RandomCounts *counts)
{
    g_autoptr(GRand) rand = g_rand_new_with_seed(seed);
    size_t span = rec.at.end - rec.at.start;

    for (int i = 0; i < RANDOM_MUTATIONS; i++) {
        g_autoptr(GByteArray) b = stream_copy();
        size_t at = rec.at.start + g_rand_int_range(rand, 0, span);
        const char *how = mutate_random(rand, b, &at);
        Replay r;

        if (i % 2 != worker) {
            continue;
        }
        r = replay(b, true);
        if (r.outcome == ACCEPTED) {
            counts->accepted++;
            g_assert_cmpuint(r.tun_fds, ==, HOSTILE_QUEUES);
        } else if (strstr(r.log, "netdev n0: ")) {
            counts->module++;
            g_assert_cmpuint(r.tun_fds, ==, 0);
        } else {
            /* The change broke the stream's structure: QEMU's loader says so */
            counts->loader++;
            g_assert_nonnull(r.error);
            g_assert_cmpuint(r.tun_fds, ==, 0);
        }
        if (g_test_verbose() || r.outcome == REFUSED) {
            g_test_message("#%d %s at +%zu: %s%s", i, how, at - rec.at.start,
                           r.outcome == ACCEPTED ? "accepted" : r.log,
                           r.error ?: "");
        }
        replay_free(&r);
    }
}

/*
 * Seeded random changes of the section: a byte, a bit, or a 32-bit
 * field set to a value at a boundary.  Whatever the outcome, the
 * destination lives, says why it refused, and keeps no fd it did not
 * adopt.  Two processes replay them, half each, as a machine has cores.
 */
static void test_hostile_random(void)
{
    const char *seed_env = g_getenv("TAP_TRANSFER_FUZZ_SEED");
    unsigned long seed = 0x7a9f3;
    RandomCounts mine = { 0 }, theirs = { 0 };
    int pipefd[2], status;
    pid_t pid;

    hostile_ready();
    if (seed_env) {
        g_assert_cmpint(qemu_strtoul(seed_env, NULL, 0, &seed), ==, 0);
    }
    g_test_message("seed 0x%lx (TAP_TRANSFER_FUZZ_SEED)", seed);
    g_assert_cmpint(pipe(pipefd), ==, 0);
    fflush(stdout);
    pid = fork();
    g_assert_cmpint(pid, >=, 0);
    worker = pid == 0;
    replay_random(seed, &mine);
    if (pid == 0) {
        g_assert_cmpint(write(pipefd[1], &mine, sizeof(mine)), ==,
                        sizeof(mine));
        _exit(0);
    }
    worker = 0;
    g_assert_cmpint(waitpid(pid, &status, 0), ==, pid);
    g_assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    g_assert_cmpint(read(pipefd[0], &theirs, sizeof(theirs)), ==,
                    sizeof(theirs));
    close(pipefd[0]);
    close(pipefd[1]);
    mine.accepted += theirs.accepted;
    mine.module += theirs.module;
    mine.loader += theirs.loader;
    g_test_message("%d random changes: %u accepted, %u refused by the "
                   "netdev, %u by QEMU's loader", RANDOM_MUTATIONS,
                   mine.accepted, mine.module, mine.loader);
    g_assert_cmpuint(mine.accepted + mine.module + mine.loader, ==,
                     RANDOM_MUTATIONS);
}

/*
 * While the destination's load waits for the rest of the netdev's
 * section, in the middle of its held frames, QMP runs: the netdev is
 * neither deleted from under the load nor joined by another one.  The
 * load then completes, and the TAP is adopted.
 */
static void test_hostile_netdev_del(void)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    g_autofree char *path = g_strdup_printf("%s/paused.sock", env->tmpdir);
    g_autofree char *uri = g_strdup_printf("unix:%s", path);
    g_autofree char *state = NULL;
    const char *ungoals[] = { "failed", "completed", NULL };
    QTestState *to;
    int sock;

    hostile_ready();
    unlink(path);
    to = start_qemu_as(NULL, HOSTILE_NETDEV, HOSTILE_QUEUES,
                       HOSTILE_EXTRA " -incoming defer");
    migrate_set_parameter_bool(to, "backend-transfer", true);
    migrate_incoming_qmp(to, uri, NULL, "{}");
    sock = unix_connect(path, &error_abort);
    g_assert_true(feed_part(sock, rec.bytes, 0, rec.at.frame_size));
    wait_for_migration_status(to, "active", ungoals);

    assert_qmp_error(to, "netdev_del not allowed while migrating: netdev "
                     "'n0' has migration state",
                     "{ 'execute': 'netdev_del', 'arguments': "
                     "{ 'id': 'n0' } }");
    assert_qmp_error(to, "netdev n1: a tap-transfer netdev cannot be added "
                     "while migrating",
                     "{ 'execute': 'netdev_add', 'arguments':"
                     " { 'type': 'tap-transfer', 'id': 'n1', 'ifname': 'tt5',"
                     "   'script': 'no', 'downscript': 'no' } }");

    g_assert_true(feed_part(sock, rec.bytes, rec.at.frame_size,
                            rec.bytes->len));
    close(sock);
    wait_for_migration_status(to, "completed", NULL);
    g_assert_cmpuint(count_tun_fds(qtest_pid(to)), ==, HOSTILE_QUEUES);
    state = qom_get_str(to, "n0", "state");
    g_assert_cmpstr(state, !=, "awaiting");
    qtest_quit(to);
}

/*
 * The stream names a single-queue TAP, and its two fds are copies of
 * that one queue's: a destination configured with two queues refuses a
 * TAP that cannot have two.  No real source sends this (virtio-net does
 * not even start on two queues of a single-queue TAP): the fds are the
 * test's.
 */
static void test_hostile_single_queue_tap(void)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    g_autofree char *path = g_strdup_printf("%s/single.sock", env->tmpdir);
    g_autofree char *uri = g_strdup_printf("unix:%s", path);
    g_autofree char *status = NULL;
    g_autoptr(GByteArray) b = NULL;
    DestOptions dest = { .keep_on_error = true };
    int fds[HOSTILE_QUEUES];
    QTestState *to;
    int sock, hdr_len;

    hostile_ready();
    /* The destination must not inherit them: they come in the stream */
    fds[0] = open_test_tap("ttsq0", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, true);
    for (int i = 1; i < HOSTILE_QUEUES; i++) {
        fds[i] = fcntl(fds[0], F_DUPFD_CLOEXEC, 0);
        g_assert_cmpint(fds[i], >=, 0);
    }
    /* Its vnet header as the stream says: only the queue count is wrong */
    hdr_len = ldl_be_p(rec.bytes->data + rec.at.queue[0] + 3);
    g_assert_cmpint(ioctl(fds[0], TUNSETVNETHDRSZ, &hdr_len), ==, 0);
    b = stream_copy();
    memset(b->data + rec.at.ifname, 0, IFNAMSIZ);
    memcpy(b->data + rec.at.ifname, "ttsq0", strlen("ttsq0"));

    dest.binary_var = logged_qemu();
    unlink(path);
    to = start_qemu_as(dest.binary_var, "queues=2,script=no,downscript=no",
                       HOSTILE_QUEUES, HOSTILE_EXTRA " -incoming defer");
    migrate_set_parameter_bool(to, "backend-transfer", true);
    migrate_incoming_qmp(to, uri, NULL, "{ 'exit-on-error': false }");
    sock = unix_connect(path, &error_abort);
    feed_fds(sock, b, 0, b->len, fds);
    close(sock);
    status = wait_migration_done(to);
    g_assert_cmpstr(status, ==, "failed");
    wait_tun_fds(qtest_pid(to), 0);
    qtest_quit(to);
    for (int i = 0; i < HOSTILE_QUEUES; i++) {
        close(fds[i]);
    }
    g_free(env->dest_error);
    env->dest_error = NULL;
    assert_logged("netdev n0: queue 0: received TAP device ttsq0 has one "
                  "queue, this QEMU was configured with 2\n");
}

/*
 * QEMU's own stream analyzer reads the recorded stream, the netdev's
 * section included: its fields, its queues' fds and held frames
 */
static void test_hostile_analyze(void)
{
    TapTransferTestEnv *env = tap_transfer_get_env();
    const char *python = g_getenv("PYTHON");
    g_autofree char *dir = g_path_get_dirname(g_getenv("QTEST_QEMU_BINARY"));
    g_autofree char *script = g_build_filename(dir, "scripts",
                                               "analyze-migration.py", NULL);
    g_autofree char *file = g_build_filename(env->tmpdir, "recorded.stream",
                                             NULL);
    const char *argv[] = { python, script, "-f", file, NULL };
    g_autofree char *out = NULL;
    g_autofree char *err = NULL;
    const char *section;
    int status;

    if (!python) {
        g_test_skip("PYTHON is not set: no interpreter for "
                    "analyze-migration.py");
        return;
    }
    /* Without PYTHON, that is the reason to skip, whatever the host */
    if (!need_tap()) {
        return;
    }
    hostile_ready();
    g_assert_true(g_file_set_contents(file, (char *)rec.bytes->data,
                                      rec.bytes->len, NULL));
    g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, 0, NULL, NULL,
                               &out, &err, &status, NULL));
    unlink(file);
    g_test_message("analyze-migration.py: %s", err);
    g_assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    section = strstr(out, "\"netdev/n0/tap-transfer (");
    g_assert_nonnull(section);
    g_test_message("%.2000s", section);
    for (const char *const *f = (const char *const[]) {
             "\"stream_transfer\": true", "\"tap-transfer/fds\"",
             "\"stream_queues\": \"0x00000002\"",
             "\"fd\": \"passed with SCM_RIGHTS\"",
             "\"tap-transfer/packets\"", "\"stream_nframes\"", NULL };
         *f; f++) {
        g_assert_nonnull(strstr(section, *f));
    }
}

static void test_hostile_release(void)
{
    if (!rec.bytes) {
        g_test_skip("no stream was recorded");
        return;
    }
    for (int i = 0; i < HOSTILE_QUEUES; i++) {
        close(rec.fds[i]);
    }
    g_byte_array_unref(rec.bytes);
    rec.bytes = NULL;
    qtest_quit(rec.source);
}

void tap_transfer_add_hostile_stream_tests(TapTransferTestEnv *env)
{
    /* The first that runs records the stream, the last lets it go */
    tap_transfer_test_add("/tap-transfer/hostile-stream/baseline",
                          test_hostile_baseline);
    tap_transfer_test_add("/tap-transfer/hostile-stream/fields",
                          test_hostile_fields);
    tap_transfer_test_add("/tap-transfer/hostile-stream/random",
                          test_hostile_random);
    tap_transfer_test_add("/tap-transfer/hostile-stream/netdev-del",
                          test_hostile_netdev_del);
    tap_transfer_test_add("/tap-transfer/hostile-stream/single-queue-tap",
                          test_hostile_single_queue_tap);
    /* It checks for PYTHON before the TAP devices, for its reason */
    qtest_add_func("/tap-transfer/hostile-stream/analyze",
                   test_hostile_analyze);
    /* It needs none: it lets go of a recording if there is one */
    qtest_add_func("/tap-transfer/hostile-stream/release",
                   test_hostile_release);
}
