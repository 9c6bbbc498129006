#!/usr/bin/env bash
# Validates the desktop integration files and the translation scaffolding, the same
# checks Flathub and GNOME's tooling run: desktop file, AppStream metainfo, GSettings
# schema, POTFILES completeness, an up-to-date template, and the Flatpak manifest.
set -euo pipefail
cd "$(dirname "$0")/.."

desktop-file-validate resources/io.github.hospes.Hospes.desktop
appstreamcli validate --no-net resources/io.github.hospes.Hospes.metainfo.xml
glib-compile-schemas --strict --dry-run resources
./scripts/check-potfiles.sh
./scripts/update-pot.sh --check
/usr/bin/python3 scripts/check-flatpak.py
echo "check-resources: all passed"
