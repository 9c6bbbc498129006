#!/usr/bin/env bash
# Fails when po/POTFILES is out of step with the sources:
# - a file under app/src that calls gettext, ngettext, gettext_f or ngettext_f is missing;
# - a listed file does not exist.
set -euo pipefail
cd "$(dirname "$0")/.."

listed=$(grep -v '^\s*\(#\|$\)' po/POTFILES | sort -u)
status=0

while IFS= read -r file; do
  if ! grep -qxF "$file" <<<"$listed"; then
    echo "check-potfiles: $file has translatable strings but is not in po/POTFILES" >&2
    status=1
  fi
done < <(grep -rlE '\b(n?gettext|n?gettext_f)\(' app/src --include='*.rs' | sort)

while IFS= read -r file; do
  if [ ! -f "$file" ]; then
    echo "check-potfiles: po/POTFILES lists $file, which does not exist" >&2
    status=1
  fi
done <<<"$listed"

[ "$status" -eq 0 ] && echo "check-potfiles: po/POTFILES is complete"
exit "$status"
