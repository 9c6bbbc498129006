#!/usr/bin/env bash
# Installs Hospes's desktop integration under PREFIX/share (default PREFIX: /usr/local):
# the desktop file and AppStream metainfo with their translations merged in, the settings
# schema (compiled), the app icons and the compiled translations.
# Used by the Flatpak manifest (PREFIX=/app); binaries are installed separately.
# Usage: scripts/install-data.sh [PREFIX]    (DESTDIR is honoured, as in `make install`)
set -euo pipefail
cd "$(dirname "$0")/.."

app_id=io.github.hospes.Hospes
share="${DESTDIR:-}${1:-/usr/local}/share"

install -d "$share/applications" "$share/metainfo" "$share/glib-2.0/schemas" \
  "$share/icons/hicolor/scalable/apps" "$share/icons/hicolor/symbolic/apps"
msgfmt --desktop --template "resources/$app_id.desktop" -d po -o "$share/applications/$app_id.desktop"
msgfmt --xml --template "resources/$app_id.metainfo.xml" -d po -o "$share/metainfo/$app_id.metainfo.xml"
install -m644 "resources/$app_id.gschema.xml" "$share/glib-2.0/schemas/"
glib-compile-schemas "$share/glib-2.0/schemas"
install -m644 "resources/icons/hicolor/scalable/apps/$app_id.svg" "$share/icons/hicolor/scalable/apps/"
install -m644 "resources/icons/hicolor/symbolic/apps/$app_id-symbolic.svg" \
  "$share/icons/hicolor/symbolic/apps/"
scripts/build-locale.sh "$share/locale"
echo "install-data: installed into $share"
