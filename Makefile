# Hospes: the two set-up commands are `make run` and `make test` (see README.md).
# Both start by installing what is missing (scripts/install-deps.sh), so they work on a
# fresh Debian 12 machine with the Rust toolchain.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: deps build run test check-style check-resources test-rust test-gui test-slow bench

deps:
	./scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --bins
	./scripts/build-locale.sh

# Opens the app on a library holding the built-in default VM.
run: build
	./scripts/run-app.sh

check-style:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check-resources:
	./scripts/check-resources.sh

# The integration tests start the built binaries (hospes-vmm, hospesctl, hospes), so they
# are built first. The tests crate runs tiny guests on /dev/kvm and fails without it.
test-rust:
	$(CARGO) build --workspace --bins
	./scripts/build-locale.sh
	$(CARGO) test --workspace --no-fail-fast

# The app under Xvfb, checked through AT-SPI; screenshots land in target/gui-test/.
test-gui:
	./scripts/gui-test.sh target/debug/hospes

test: deps check-style check-resources test-rust test-gui

# Opt-in slow tier: real kernels and firmware (e.g. HOSPES_LINUX_KERNEL=/boot/vmlinuz-...;
# the USB hot-plug test also needs HOSPES_USB_TEST_DEVICE=VVVV:PPPP, see docs/usb.md; the
# Windows one HOSPES_WINDOWS_ISO=/path/Win11.iso, see docs/windows.md), meant for a laptop with VT-x/AMD-V; not part of `make test`.
test-slow: build
	$(CARGO) test -p hospes-tests --test slow_linux --test slow_uefi --test slow_usb --test slow_windows -- --ignored

bench: deps
	./scripts/bench.sh
