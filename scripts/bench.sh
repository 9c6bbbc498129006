#!/usr/bin/env bash
# `make bench`: Hospes' figures against QEMU on the same machine, in the same run.
# Release builds; prints tables, asserts nothing. See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p hospes-vmm --bin hospes-vmm -p hospes-tests --bins
echo "== start-up and memory: tiny PVH guest, hospes-vmm vs qemu-system-x86_64 -M microvm"
target/release/bench
echo
echo "== virtio-blk device path vs preadv/pwritev on the same file"
cargo bench -q -p hospes-devices --bench blk --features test-support
echo
echo "== display: full 1080p frames/s and small-update latency to an RFB client, vs qemu -vga std"
target/release/display_bench
echo
echo "== USB: xHCI bulk IN into guest memory vs memcpy, and the tablet's QMP event -> guest report latency vs QEMU"
cargo bench -q -p hospes-devices --bench xhci --features test-support
target/release/usb_bench
echo
echo "== network through passt (guest -> host) and the audio path's latency through PipeWire"
target/release/bench_io
echo
echo "== the app: start to the filled library window, VM view frame rate (GNOME Boxes beside it if installed)"
./scripts/bench-app.sh --runs 5
