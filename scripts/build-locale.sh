#!/usr/bin/env bash
# Compiles every translation in po/LINGUAS into target/locale/<lang>/LC_MESSAGES/hospes.mo,
# where a `hospes` built in target/debug or target/release finds it (see app/src/i18n.rs).
# Usage: scripts/build-locale.sh [OUTPUT_DIR]   (default: target/locale)
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/locale}
for lang in $(grep -v '^\s*\(#\|$\)' po/LINGUAS); do
  mkdir -p "$out/$lang/LC_MESSAGES"
  msgfmt --check --output-file="$out/$lang/LC_MESSAGES/hospes.mo" "po/$lang.po"
done
echo "build-locale: compiled $(grep -cv '^\s*\(#\|$\)' po/LINGUAS) translation(s) into $out"
