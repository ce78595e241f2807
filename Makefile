# Thin wrapper around the meson project, as QEMU's own Makefile is.
#
#   make          install build dependencies, fetch QEMU, build
#   make check    ... and run the tests
#   make demo     ... and show a handover
#   make check SANITIZE=1   the tests under ASan/UBSan, in build-sanitize/
#
# QEMU_SRC=/path/to/qemu-10.0 uses your tree instead of Debian's source.

# SANITIZE=1: a separate AddressSanitizer + UBSan build and test run
SANITIZE ?= 0
ifeq ($(SANITIZE),1)
BUILD ?= build-sanitize
export SANITIZE
else
BUILD ?= build
endif
QEMU_SRC ?=
MESON ?= meson

.PHONY: all deps setup build check demo clean

all: build

deps:
	scripts/install-deps.sh

$(BUILD)/build.ninja:
	$(MAKE) deps
	$(MESON) setup $(BUILD) -Dqemu_src=$(QEMU_SRC)

setup: $(BUILD)/build.ninja
	$(MESON) configure $(BUILD) -Dqemu_src=$(QEMU_SRC)

build: deps setup
	$(MESON) compile -C $(BUILD)

check: build
	$(MESON) test -C $(BUILD) --print-errorlogs --no-rebuild || true
	scripts/test-summary.py $(BUILD)/meson-logs/testlog.json

demo: build
	$(MESON) test -C $(BUILD) --no-rebuild --verbose virtio-net-migration-test \
	    --test-args='-p /x86_64/tap-transfer/migration/handover'

clean:
	rm -rf $(BUILD)
