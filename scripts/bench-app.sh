#!/usr/bin/env bash
# App benchmarks, printed as a table; GNOME Boxes side by side where the figure applies.
#
# 1. Start to the library window shown with the VM list filled: `hospes` with
#    HOSPES_BENCH_STARTUP=1 prints the time of the first frame painted after the library
#    loaded (app/src/bench.rs); the script subtracts the time it started the process.
#    Cold = page cache dropped first (needs root; skipped otherwise), warm = median of runs.
#    GNOME Boxes cannot say when its list is filled, so both apps are also timed to their
#    main window becoming visible on the X server (xdotool polled every 5 ms), the same way.
# 2. Frame rate of the VM view while the guest repaints whole 1080p frames: the
#    app/demo/fullframe.S guest on std-VGA, the app's VM window with HOSPES_BENCH_FPS
#    counting frames painted with new pixels and full screens received.
#
# Usage: scripts/bench-app.sh [--profile debug|release] [--runs N]
# Needs: xvfb, xdotool, /dev/kvm for 2; gnome-boxes for its column (install it for the
# benchmark only: apt-get install --no-install-recommends gnome-boxes).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
profile=release
runs=7
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    *) echo "usage: $0 [--profile debug|release] [--runs N]" >&2; exit 2 ;;
  esac
done

if [ -z "${HOSPES_BENCH_INNER:-}" ]; then
  if [ "$profile" = release ]; then
    (cd "$root" && cargo build --release -q -p hospes -p hospes-vmm -p hospesctl)
  fi
  # A desktop session has a session bus; without one GLib would spawn dbus-launch for each
  # app started (tens of ms each, for both apps).
  exec xvfb-run -a -s "-screen 0 1920x1200x24" dbus-run-session -- \
    env HOSPES_BENCH_INNER=1 "$0" --profile "$profile" --runs "$runs"
fi

bin=$root/target/$profile/hospes
ctl=$root/target/$profile/hospesctl
[ -x "$bin" ] && [ -x "$ctl" ] || { echo "bench-app: build $profile first" >&2; exit 1; }
work=$(mktemp -d)
trap 'for p in "$work"/run/hospes/*/pid; do [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null; done; rm -rf "$work"' EXIT
mkdir -p "$work/run" && chmod 700 "$work/run"
export GDK_BACKEND=x11 GSETTINGS_BACKEND=keyfile XDG_CONFIG_HOME=$work/config \
  XDG_CACHE_HOME=$work/cache XDG_DATA_HOME=$work/data XDG_RUNTIME_DIR=$work/run NO_AT_BRIDGE=1

# A library of twelve VMs, as a person might have.
for i in $(seq 1 12); do
  "$ctl" create "Machine $i" --preset linux --disk-size 0 >/dev/null
done
mkdir -p "$work/config"  # the first run would otherwise add the Demo VM

now_ns() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; }

# ms from launch to the painted, filled library.
hospes_painted() {
  local start end
  start=$(now_ns)
  end=$(HOSPES_BENCH_STARTUP=1 timeout 30 "$bin" | awk '/^startup-painted/ {print $2}')
  echo $(((end - start) / 1000000))
}

# ms from launch to a visible window titled $1 of command "${@:2}", which is then killed.
window_shown() {
  local title=$1 start end pid
  shift
  start=$(now_ns)
  "$@" >/dev/null 2>&1 &
  pid=$!
  # Poll every 5 ms (xdotool's own --sync polls only twice a second).
  for _ in $(seq 6000); do
    xdotool search --onlyvisible --name "$title" >/dev/null 2>&1 && break
    sleep 0.005
  done
  end=$(now_ns)
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  echo $(((end - start) / 1000000))
}

boxes=$(command -v gnome-boxes || true)
cold_ok=false
drop_caches && cold_ok=true

row() { printf '%-52s %14s %14s\n' "$@"; }
echo
row "figure" "hospes" "GNOME Boxes"
row "------" "------" "-----------"

if $cold_ok; then
  drop_caches; cold=$(hospes_painted)
  row "start -> library painted with 12 VMs, cold (ms)" "$cold" "n/a"
  drop_caches; cold_w=$(window_shown '^Hospes$' "$bin")
  cold_b=n/a
  if [ -n "$boxes" ]; then drop_caches; cold_b=$(window_shown '^Boxes$' "$boxes"); fi
  row "start -> main window visible, cold (ms)" "$cold_w" "$cold_b"
else
  row "cold start (page cache not droppable)" "skipped" "skipped"
fi

hospes_painted >/dev/null  # warm up
warm=$(for _ in $(seq "$runs"); do hospes_painted; done | median)
row "start -> library painted with 12 VMs, warm (ms)" "$warm" "n/a"
warm_w=$(for _ in $(seq "$runs"); do window_shown '^Hospes$' "$bin"; done | median)
warm_b=n/a
if [ -n "$boxes" ]; then
  window_shown '^Boxes$' "$boxes" >/dev/null
  warm_b=$(for _ in $(seq "$runs"); do window_shown '^Boxes$' "$boxes"; done | median)
fi
row "start -> main window visible, warm (ms)" "$warm_w" "$warm_b"

# 2. The VM view's frame rate on full-frame repaints.
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
  cc -c "$root/app/demo/fullframe.S" -o "$work/fullframe.o"
  cc -nostdlib -static -no-pie -Wl,--build-id=none -Wl,--no-warn-rwx-segments \
    -Wl,-T,"$root/app/demo/demo.ld" "$work/fullframe.o" -o "$work/fullframe.elf"
  rm -rf "$work/data"
  "$ctl" create "Full Frames" --preset kernel --kernel "$work/fullframe.elf" \
    --memory 64M --cpus 1 >/dev/null
  sed -i 's/enabled: false/enabled: true/; s/device: VirtioGpu/device: StdVga/; s/follow_window: true/follow_window: false/' \
    "$work/data/hospes/machines/full-frames/vm.ron"
  "$ctl" show "Full Frames" >/dev/null
  out=$(HOSPES_BENCH_FPS=10 timeout 60 "$bin" --open "Full Frames" 2>/dev/null | grep '^fps' || true)
  painted=$(awk '{print $3}' <<<"$out")
  received=$(awk '{print $5}' <<<"$out")
  row "VM view, 1080p full-frame repaints: frames painted/s" "${painted:-failed}" "n/a"
  row "VM view, 1080p full-frame repaints: screens received/s" "${received:-failed}" "n/a"
else
  row "VM view frame rate (no /dev/kvm)" "skipped" "n/a"
fi
echo
renderer="GTK's default (OpenGL)"
if [ -n "${GSK_RENDERER:-}" ]; then
  renderer="$GSK_RENDERER (GSK_RENDERER)"
elif ! compgen -G "/dev/dri/renderD*" >/dev/null; then
  renderer="cairo (no GPU render node; app/src/main.rs)"
fi
echo "profile: $profile; warm figures are medians of $runs runs; Xvfb; hospes renderer: $renderer."
