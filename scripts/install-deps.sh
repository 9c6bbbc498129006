#!/usr/bin/env bash
# Installs everything Hospes needs to build, run and test on Debian 12: system packages
# through apt-get (as root, or through sudo) and the Python test peers in .venv.
# Idempotent: a second run with everything present touches nothing and takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  # build
  build-essential pkg-config libgtk-4-dev libadwaita-1-dev gettext
  # the pipewire crate's bindings (bindgen needs libclang)
  libpipewire-0.3-dev libclang-dev clang
  # tiny test guests and peers
  gcc binutils qemu-system-x86 passt acpica-tools gvncviewer
  # firmware for BIOS and UEFI guests (and the VGA BIOS option ROM)
  seabios ovmf
  # TPM 2.0 for Windows guests (one swtpm process per VM)
  swtpm swtpm-tools
  # install media for the firmware tests: El Torito ISOs, and GRUB's (grub-mkrescue)
  xorriso grub-pc-bin grub-common mtools
  # qemu-img and qemu-io: qcow2 disks (hospesctl create --disk-format qcow2) and the qcow2 tests
  qemu-utils
  # a headless PipeWire daemon for the sound tests (dbus-run-session starts its bus)
  pipewire-bin wireplumber dbus-bin
  # headless GUI tests and desktop-integration checks
  xvfb xauth imagemagick x11-utils dbus-x11 at-spi2-core python3-pyatspi xdotool openbox
  desktop-file-utils appstream libglib2.0-bin python3-yaml python3-venv
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Python peers for the interop tests (real QMP client), in a project-local venv.
py_packages=(qemu.qmp==0.0.6 vncdotool==1.4.2)
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import qemu.qmp, vncdotool' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install -q "${py_packages[@]}"
fi
