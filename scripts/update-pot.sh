#!/usr/bin/env bash
# Regenerates po/hospes.pot from the files in po/POTFILES and merges it into every
# translation listed in po/LINGUAS. Run it after adding or changing translatable strings.
# With --check, changes nothing and fails if po/hospes.pot lacks or has extra messages
# (line numbers and dates do not count).
#
# Rust sources go through xgettext's C parser, which reads Rust string literals well
# enough; the keywords are our i18n.rs helpers. The desktop file, metainfo and schema use
# xgettext's own rules for those formats.
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t files < <(grep -v '^\s*\(#\|$\)' po/POTFILES)
rust=() other=()
for f in "${files[@]}"; do
  case "$f" in
    *.rs) rust+=("$f") ;;
    *) other+=("$f") ;;
  esac
done

check=false
[ "${1:-}" = --check ] && check=true

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pot=po/hospes.pot
$check && pot="$tmp/hospes.pot"

# xgettext's C lexer reads a Rust lifetime (`&'static str`) as an unterminated character
# constant. Give it copies with the apostrophe of lifetimes removed, at the same relative
# paths (so the references in the template name the real files), line numbers unchanged.
for f in "${rust[@]}"; do
  mkdir -p "$tmp/src/$(dirname "$f")"
  sed -E "s/'([A-Za-z_][A-Za-z0-9_]*)([^A-Za-z0-9_']|$)/\1\2/g" "$f" >"$tmp/src/$f"
done

common=(--from-code=UTF-8 --package-name=hospes --msgid-bugs-address=https://github.com/hospes/hospes/issues
  --copyright-holder="The Hospes authors" --add-comments=Translators: --sort-by-file)

xgettext "${common[@]}" --language=C --directory="$tmp/src" \
  --keyword=gettext --keyword=gettext_f --keyword=ngettext:1,2 --keyword=ngettext_f:1,2 \
  --flag=gettext_f:1:no-c-format --flag=ngettext_f:1:no-c-format \
  -o "$pot" "${rust[@]}"
xgettext "${common[@]}" --join-existing -o "$pot" "${other[@]}"

# Messages and comments only: no file references, no header dates.
messages() { msgcat --no-location --no-wrap --sort-output "$1" | sed '1,/^$/d'; }
if $check; then
  if ! diff -u <(messages po/hospes.pot) <(messages "$pot") >"$tmp/diff"; then
    echo "update-pot: po/hospes.pot is out of date; run scripts/update-pot.sh:" >&2
    cat "$tmp/diff" >&2
    exit 1
  fi
  echo "update-pot: po/hospes.pot is up to date"
  exit 0
fi

# Keep the header's charset UTF-8 (xgettext leaves CHARSET for a template).
sed -i 's/charset=CHARSET/charset=UTF-8/' "$pot"

for lang in $(grep -v '^\s*\(#\|$\)' po/LINGUAS); do
  if [ -f "po/$lang.po" ]; then
    msgmerge --quiet --update --backup=none --previous "po/$lang.po" po/hospes.pot
  else
    msginit --no-translator --locale="$lang" -i po/hospes.pot -o "po/$lang.po"
  fi
done
echo "update-pot: po/hospes.pot has $(grep -c '^msgid ' po/hospes.pot) messages (including the header)"
