# Thin wrapper around the meson project, as QEMU's own Makefile is.
#
#   make          install build dependencies, fetch QEMU, build
#   make check    ... and run the tests
#   make check-fleet   ... only the packaging and Ansible fleet tests
#   make demo     ... and upgrade a real guest's QEMU 10.0 -> 10.2 (and back)
#                 under a ping flood, with a report
#   make demo ONBOARD=1   ... the guest starts on Debian's stock QEMU 7.2
#                 (-netdev tap), is onboarded onto 10.0, then upgraded and
#                 rolled back
#   make bench    ... and compare with today's practice (RUNS=5), and time
#                 tap-transfer-upgrade for 1 VM and 3 VMs
#   make install  ... and install each QEMU under PREFIX (/opt/tap-transfer),
#                 and tap-transfer-upgrade in PREFIX/bin
#   make deb      ... and make Debian packages of them in BUILD/deb/
#                 (tap-transfer-qemu-10.0, -10.2, tap-transfer-tools), lintian'ed
#   make soak     ... and count lost pings over many handovers (N=200)
#   make check SANITIZE=1   the tests under ASan/UBSan, in build-sanitize/
#
# QEMU 10.0 and 10.2 are built and tested side by side (QEMU_VERSIONS).
# QEMU_SRC=/path/to/qemu-10.x uses your tree instead of Debian's source
# of that series; QEMU_VERSION=10.2 runs demo/bench on the 10.2 build.

# SANITIZE=1: a separate AddressSanitizer + UBSan build and test run
SANITIZE ?= 0
ifeq ($(SANITIZE),1)
BUILD ?= build-sanitize
export SANITIZE
else
BUILD ?= build
endif
QEMU_SRC ?=
QEMU_VERSIONS ?= 10.0,10.2
QEMU_VERSION ?= 10.0
MESON ?= meson

.PHONY: all deps setup build guest check check-fleet demo bench soak stress-refusal install deb clean

all: build

deps:
	scripts/pipeline/install-deps.sh

$(BUILD)/build.ninja:
	$(MAKE) deps
	$(MESON) setup $(BUILD) -Dqemu_src=$(QEMU_SRC) \
	    -Dqemu_versions=$(QEMU_VERSIONS)

setup: $(BUILD)/build.ninja
	$(MESON) configure $(BUILD) -Dqemu_src=$(QEMU_SRC) \
	    -Dqemu_versions=$(QEMU_VERSIONS)

build: deps setup
	$(MESON) compile -C $(BUILD)

# An ASan/UBSan QEMU runs a few times slower: so may its tests
TIMEOUT_MULTIPLIER = $(if $(filter 1,$(SANITIZE)),4,1)
check: build
	$(MESON) test -C $(BUILD) --print-errorlogs --no-rebuild \
	    --timeout-multiplier $(TIMEOUT_MULTIPLIER) || true
	scripts/pipeline/test-summary.py $(BUILD)/meson-logs/testlog.json

# Only the packaging and fleet tests (suite "fleet": make deb checked,
# the fresh-root install, the Ansible rollout); make check runs them too
check-fleet: build
	$(MESON) test -C $(BUILD) --print-errorlogs --no-rebuild --suite fleet || true
	scripts/pipeline/test-summary.py $(BUILD)/meson-logs/testlog.json

QEMU_BIN = $(BUILD)/qemu-$(QEMU_VERSION)-build/qemu-system-x86_64

guest: deps
	scripts/lab/guest/build-guest.sh

# The guest boots on QEMU 10.0 and is upgraded to 10.2 under the flood,
# then rolled back, when 10.2 is built (UPGRADE=0: one 10.0 -> 10.0 hop)
UPGRADE ?= 1
UPGRADE_BIN = $(BUILD)/qemu-10.2-build/qemu-system-x86_64
# ONBOARD=1: the VM boots on Debian's stock QEMU 7.2 (-netdev tap) and is
# onboarded onto QEMU 10.0 first (tap-transfer-upgrade --onboard)
ONBOARD ?= 0
STOCK = $(BUILD)/stock/stock-7.2/root/usr/bin
ifeq ($(ONBOARD),1)
demo: build guest
	scripts/pipeline/fetch-stock-qemu.sh $(BUILD)/stock 7.2 >/dev/null
	scripts/lab/demo-onboard.py --stock $(STOCK)/qemu-system-x86_64 \
	    --stock-fw "$$(cat $(BUILD)/stock/stock-7.2/firmware-args)" \
	    --qemu-img $(STOCK)/qemu-img --qemu $(QEMU_BIN) \
	    --guest "$$(scripts/lab/guest/build-guest.sh)" \
	    $$(if [ -x $(UPGRADE_BIN) ]; then echo --upgrade-to $(UPGRADE_BIN); fi)
else
demo: build guest
	scripts/lab/demo.py --qemu $(QEMU_BIN) --guest "$$(scripts/lab/guest/build-guest.sh)" \
	    $$(if [ "$(UPGRADE)$(QEMU_VERSION)" = 110.0 ] && [ -x $(UPGRADE_BIN) ]; then \
	         echo --upgrade-to $(UPGRADE_BIN) --rollback; fi)
endif

# RUNS=N runs of each mode (default 5); results in $(BUILD)/bench/
# SCALE=1: instead, how the cost grows with fds, RAM and VMs per host
# (scripts/lab/scale.py): tables in $(BUILD)/bench/scale/, figures in
# docs/devel/migration/
RUNS ?= 5
SCALE ?= 0
BENCH = $(if $(filter 1,$(SCALE)),scale.py --out $(BUILD)/bench/scale,bench.py --out $(BUILD)/bench)
bench: build guest
	scripts/lab/$(BENCH) --qemu $(QEMU_BIN) \
	    --guest "$$(scripts/lab/guest/build-guest.sh)" --runs $(RUNS) \
	    $$(if [ "$(UPGRADE)$(QEMU_VERSION)" = 110.0 ] && [ -x $(UPGRADE_BIN) ]; then \
	         echo --upgrade-to $(UPGRADE_BIN); fi)

# N handovers single-queue under 500 pings/s, N/2 with 4 queues, shared RAM
# and a ping flood; results in $(BUILD)/soak/.  Not part of make check.
N ?= 200
soak: build guest
	scripts/lab/soak.py --qemu $(QEMU_BIN) --guest "$$(scripts/lab/guest/build-guest.sh)" \
	    --n $(N) --out $(BUILD)/soak

# The refused handover that once aborted its source (issue 27), N times
# (200) on each series in QEMU_VERSIONS, on the ASan + UBSan build with
# every core kept busy; logs of failed runs in build-sanitize/stress-refusal/
comma := ,
stress-refusal:
	$(MAKE) build SANITIZE=1
	scripts/pipeline/stress-refusal.sh build-sanitize $(N) \
	    $(subst $(comma), ,$(QEMU_VERSIONS))

# Each QEMU series under its own prefix: $(PREFIX)/qemu-10.0, ...; the
# upgrade command in $(PREFIX)/bin
PREFIX ?= /opt/tap-transfer
DESTDIR ?=
install: build
	scripts/pipeline/install.sh $(BUILD) $(PREFIX) $(DESTDIR)

# Debian packages of each QEMU series built and of the command, for
# Debian 12: installed under /usr/lib/tap-transfer beside Debian's QEMU
deb: build
	scripts/pipeline/make-deb.sh $(BUILD)

clean:
	rm -rf $(BUILD)
