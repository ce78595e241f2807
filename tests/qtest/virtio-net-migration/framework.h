/*
 * The tap-transfer tests' framework: a network namespace of the
 * test's own, the host side of its TAP devices, virtio-net NICs driven
 * through libqos, and pairs of QEMUs that hand a TAP over
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef TAP_TRANSFER_TEST_FRAMEWORK_H
#define TAP_TRANSFER_TEST_FRAMEWORK_H

#include <linux/if_ether.h>
#include "libqtest.h"
#include "libqos/libqos-malloc.h"
#include "libqos/pci-pc.h"
#include "libqos/virtio-pci.h"
#include "standard-headers/linux/virtio_net.h"

#define TIMEOUT_US (30 * 1000 * 1000)
#define VNET_HDR_SIZE sizeof(struct virtio_net_hdr_mrg_rxbuf)
#define TEST_ETHERTYPE 0x88b5
#define GUEST_MAC "52:54:00:12:34:56"
#define NIC_DEVFN QPCI_DEVFN(4, 0)
#define RX_BUF_SIZE 2048
/* The RSS key size virtio-net takes */
#define RSS_KEY_SIZE 40
/* Ethernet, IPv4 and UDP headers of host_send_udp()'s frames */
#define UDP_FRAME_HDR_LEN (ETH_HLEN + 20 + 8)

/* The environment, and registering the cases that need TAP devices */

/*
 * What the cases share, set up once by tap_transfer_get_env(), as
 * migration-test's MigrationTestEnv
 */
typedef struct TapTransferTestEnv {
    /* Why the cases that need TAP devices skip, or NULL if they can run */
    const char *skip_reason;
    /* A directory of the test's own, for sockets, logs and scripts */
    char *tmpdir;
    /* Why the destination of the last migrate_refused() failed, per QMP */
    char *dest_error;
    /* Cross-version runs: a machine type both QEMUs have, the source QEMU */
    const char *machine_type;
    const char *src_binary_var;
    /* Feature bits 64..95 that nic_start() negotiates too, if offered */
    uint32_t nic_want_features_hi;
} TapTransferTestEnv;

/*
 * The first call moves the test into a network namespace of its own, or
 * finds why it cannot, and makes its directory
 */
TapTransferTestEnv *tap_transfer_get_env(void);
void tap_transfer_env_clean(TapTransferTestEnv *env);

/*
 * Whether the host can run the cases that need TAP devices; if not, the
 * case skips, saying why.  tap_transfer_test_add() checks it for the
 * cases it registers; a case with a precondition it must check first
 * calls it itself.
 */
bool need_tap(void);

/*
 * Register a case that needs TAP devices and a network namespace, as
 * migration-test's migration_test_add(): where the host has none, it
 * skips with the reason.  Cases that need no TAP use qtest_add_func().
 */
void tap_transfer_test_add(const char *path, void (*fn)(void));
void tap_transfer_test_add_data(const char *path, const void *data,
                                void (*fn)(const void *data));

/*
 * A TAP (or TUN) device @ifname of the test's own, TUNSETIFF with
 * @flags; with @cloexec, QEMUs started later do not inherit the fd
 */
int open_test_tap(const char *ifname, short flags, bool cloexec);

/* Host side of a TAP device */

int host_tap_attach(const char *ifname);

size_t make_frame(uint8_t *frame, const uint8_t *dst,
                  const uint8_t *src, const char *payload);

void host_send(int sock, const char *payload);

/* Wait for a frame from the guest and check its payload */
void host_expect(int sock, const char *payload);

void host_send_udp(int sock, unsigned ifindex, int flow,
                   const char *payload);

/* Frames the QEMUs read from TAP @ifname, from /proc/net/dev */
uint64_t tap_frames_read(const char *ifname);

/* The network devices in the test's namespace */
unsigned count_links(void);

/* Guest side: virtio-net-pci NICs driven through libqos */

typedef struct Machine {
    QTestState *qts;
    QGuestAllocator alloc;
    QPCIBus *bus;
} Machine;

typedef struct Nic {
    Machine *m;
    int devfn;
    QVirtioPCIDevice *dev;
    int nqueues;
    QVirtQueue **vqs;
} Nic;

void machine_init(Machine *m, QTestState *qts);

void nic_find(Nic *n);

/* Feature bits 64..95 that the device offers (virtio 1.0 transport) */
uint32_t nic_features_hi(Nic *n);

/* Before the low ones, which libqos sets and then FEATURES_OK */
void nic_set_features_hi(Nic *n, uint32_t features);

/* Reset the NIC in @slot and set up @pairs queue pairs as a driver does */
void nic_start(Nic *n, Machine *m, int slot, int pairs);

void nic_forget_device(Nic *n);

/*
 * The machine was migrated: drive its NICs, in the order they were
 * started, in the new process; their rings live on in guest memory.
 */
void machine_migrated(Machine *m, QTestState *qts, Nic *nics, int n);

void nic_release(Nic *n);

void machine_release(Machine *m);

/*
 * Poll the used ring rather than wait for an interrupt: one interrupt
 * can stand for many buffers.
 */
void nic_wait_used(Nic *n, QVirtQueue *vq, uint32_t head);

uint64_t nic_post_rx(Nic *n, int pair, uint32_t *head);

void nic_expect_rx(Nic *n, int pair, uint64_t buf, uint32_t head,
                   const char *payload);

void nic_tx(Nic *n, int pair, const char *payload);

/* One frame each way on queue pair @pair */
void check_traffic(Nic *n, int sock, int pair, const char *tag);

/* A command on the control queue, which must succeed */
void nic_ctrl(Nic *n, uint8_t class, uint8_t cmd, const void *data,
              size_t len);

/* The driver turns on @pairs queue pairs, as Linux does at probe */
void nic_set_pairs(Nic *n, int pairs);

/*
 * The driver turns on RSS over @pairs queue pairs: IPv4 hashing, a
 * one-entry indirection table, a 40-byte key
 */
void nic_enable_rss(Nic *n, int pairs);

/* Processes */

/* A VM with one NIC on netdev n0, TAP tt0, and the host end of tt0 */
typedef struct Vm {
    QTestState *qts;
    Machine m;
    Nic nic;
    int sock;
} Vm;

QTestState *start_qemu_as(const char *binary_var, const char *netdev,
                          int pairs, const char *extra);

QTestState *start_qemu(const char *netdev, int pairs,
                       const char *extra);

void vm_start(Vm *vm, const char *netdev, int pairs, const char *extra);

void vm_migrated(Vm *vm, QTestState *to);

void vm_release(Vm *vm);

/*
 * The VM's network works, one frame each way on queue pair 0 and one
 * out on each other pair; then the VM goes
 */
void vm_finish(Vm *vm, int pairs, const char *tag);

/* Running the QEMU binary directly, for what happens before qtest can */
bool run_qemu(const char *const *prefix, const char *binary,
              const char *const *args, char **out, char **err);

/* QEMU's message is one line; a sanitizer build's runtime may add its own */
void assert_one_line(const char *text);

/* QMP only says the load failed; the reason is on the QEMU's stderr */
const char *logged_qemu(void);

/* The processes' file descriptors */

/* The /dev/net/tun fds of process @pid */
GArray *tun_fds(pid_t pid);

unsigned count_tun_fds(pid_t pid);

/* Wait until process @pid holds @n /dev/net/tun fds */
void wait_tun_fds(pid_t pid, unsigned n);

unsigned count_fds(pid_t pid);

bool same_file(pid_t pid1, int fd1, pid_t pid2, int fd2);

/* Every source fd has a twin in the destination: the same open file */
void assert_same_files(pid_t src, GArray *src_fds, pid_t dst,
                       GArray *dst_fds);

/*
 * @to adopted the TAP of @from, whose /dev/net/tun fds were @src_fds:
 * it holds the same open files, as many.  If not 0, @ifindex is tt0's
 * index and @links the namespace's link count before the handover,
 * which must be the same after: no device was made anew.
 */
void assert_tap_handed_over(QTestState *from, GArray *src_fds,
                            QTestState *to, unsigned ifindex,
                            unsigned links);

/* Migration */

typedef struct DestOptions {
    const char *binary_var;
    const char *extra;
    /* Stay alive after a failed load, to be inspected */
    bool keep_on_error;
} DestOptions;

char *migration_uri(void);

QTestState *start_dest_opts(const char *netdev, int pairs,
                            bool transfer, const DestOptions *opts);

QTestState *start_dest(const char *netdev, int pairs, bool transfer,
                       const char *extra);

void migrate_start(QTestState *from, QTestState *to, bool transfer);

void migrate_to(QTestState *from, QTestState *to, bool transfer);

/* A failed migration restarts the VM from a bottom half: wait for it */
void wait_running(QTestState *qts);

/* Wait for a migration to fail or complete, and say which */
char *wait_migration_done(QTestState *qts);

/* Wait for an incoming migration to fail, as the test wants it to */
void wait_incoming_failed(QTestState *to);

/*
 * The destination refused: the source runs again, by itself or, if it
 * had completed, with management's cont
 */
void resume_source(QTestState *from);

/*
 * A migration the destination refuses, kept alive to be inspected: it
 * must hold none of the fds it received, only @own_fds of a TAP it
 * opened itself.  Once it goes, the source's migration ends; without a
 * return path the source may have finished sending before the refusal,
 * and management resumes it, as the test does.  Either way the source
 * runs again.
 */
void migrate_refused(QTestState *from, QTestState *to, bool transfer,
                     unsigned own_fds);

/*
 * "cancelled" is reported before the migration is cleaned up (QEMU 10.2
 * does that later, in a bottom half): a new migrate meanwhile fails with
 * "duplicate yank instance".  Wait for its yank instance to go.
 */
void wait_migration_cleaned_up(QTestState *qts);

/*
 * The destination refused with @line: on its stderr, logged to @log,
 * or in the migration's error
 */
void assert_reported(const char *log, const char *line);

void assert_logged(const char *line);

/* QMP and QOM */

/* Properties of the netdev's QOM object, /netdevs/@id */
QDict *qom_get(QTestState *qts, const char *id, const char *prop);
char *qom_get_str(QTestState *qts, const char *id, const char *prop);
int64_t qom_get_int(QTestState *qts, const char *id, const char *prop);

/* The command fails, with @error as its error's description */
void assert_qmp_error(QTestState *qts, const char *error,
                      const char *fmt, ...) G_GNUC_PRINTF(3, 4);

bool qemu_at_least(QTestState *qts, int64_t major, int64_t minor);

/* The families of tests, each registering its own */
void tap_transfer_add_basic_tests(TapTransferTestEnv *env);
void tap_transfer_add_handover_tests(TapTransferTestEnv *env);
void tap_transfer_add_lifecycle_tests(TapTransferTestEnv *env);
void tap_transfer_add_zero_loss_tests(TapTransferTestEnv *env);
void tap_transfer_add_management_tests(TapTransferTestEnv *env);
void tap_transfer_add_refused_tests(TapTransferTestEnv *env);
void tap_transfer_add_cross_version_tests(TapTransferTestEnv *env);
void tap_transfer_add_hostile_stream_tests(TapTransferTestEnv *env);
void tap_transfer_add_hangup_tests(TapTransferTestEnv *env);
void tap_transfer_add_qom_tests(TapTransferTestEnv *env);

/* Shared by two families */
void do_handover(const char *netdev, int pairs,
                 const char *dest_binary_var);
void do_cpr_transfer(int pairs, bool defer, const char *dst_var);

#endif /* TAP_TRANSFER_TEST_FRAMEWORK_H */
