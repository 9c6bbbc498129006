#!/usr/bin/env bash
# Opens the Hospes app (target/debug/hospes, built by `make build`) with the built-in Demo
# VM: it is added to your library ($XDG_DATA_HOME/hospes/machines/demo) when missing,
# started, and its window opened, so you see a running VM without an ISO. Type into that
# window: every key becomes a coloured bar. Extra arguments go to the app.
#
# The helper (hospes-vmm) is taken from beside the app binary; the build-tree schema and
# translations are found by the app itself.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${HOSPES_BIN:-$root/target/debug/hospes}
[ -x "$bin" ] || { echo "run-app: $bin is missing; run 'make build' first" >&2; exit 1; }
exec "$bin" --demo "$@"
