//! Translations: gettext setup and named-placeholder formatting.
//!
//! Strings with values in them are written with named placeholders, `{name}`, so a
//! translator can move them around: `gettext_f("{os} · {cpus}", &[("os", ...), ...])`.
//! The message is translated first and the values are substituted afterwards, in a single
//! pass, so a value that happens to contain `{...}` is never expanded again.
//!
//! The catalogue is found, in order, through `$HOSPES_LOCALEDIR`, the build tree's
//! `target/locale` (made by `scripts/build-locale.sh`, so `make run` shows translations),
//! and `<prefix>/share/locale` next to the installed binary.

use std::path::{Path, PathBuf};

use gettextrs::LocaleCategory;

/// The gettext text domain: `hospes.mo` in `<localedir>/<lang>/LC_MESSAGES/`.
pub const TEXT_DOMAIN: &str = "hospes";

/// Sets the locale from the environment and binds the `hospes` text domain.
///
/// Call once, first thing in `main`, before any thread is started. Failures are logged:
/// the app then runs untranslated.
pub fn init() {
    // SAFETY: called at the top of `main`, before GTK or any other thread exists, so no
    // other thread can be reading the locale while it changes.
    unsafe {
        gettextrs::setlocale(LocaleCategory::LcAll, "");
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let dir = locale_dir(
        std::env::var_os("HOSPES_LOCALEDIR").map(PathBuf::from),
        exe_dir.as_deref(),
    );
    if let Err(err) = gettextrs::bindtextdomain(TEXT_DOMAIN, dir.as_path()) {
        log::warn!("cannot bind text domain to {}: {err}", dir.display());
    }
    if let Err(err) = gettextrs::bind_textdomain_codeset(TEXT_DOMAIN, "UTF-8") {
        log::warn!("cannot set the text domain codeset: {err}");
    }
    if let Err(err) = gettextrs::textdomain(TEXT_DOMAIN) {
        log::warn!("cannot select text domain {TEXT_DOMAIN}: {err}");
    }
}

/// Picks the directory holding the compiled catalogues.
///
/// `env_dir` (from `$HOSPES_LOCALEDIR`) wins; then the build tree's `target/locale`, found
/// as `<exe_dir>/../locale` when it exists (the binary is `target/debug/hospes`); then the
/// install prefix's `<exe_dir>/../share/locale` (`/usr/bin/hospes`, `/app/bin/hospes`).
pub fn locale_dir(env_dir: Option<PathBuf>, exe_dir: Option<&Path>) -> PathBuf {
    if let Some(dir) = env_dir.filter(|dir| !dir.as_os_str().is_empty()) {
        return dir;
    }
    if let Some(prefix) = exe_dir.and_then(Path::parent) {
        let build_tree = prefix.join("locale");
        if build_tree.is_dir() {
            return build_tree;
        }
        return prefix.join("share/locale");
    }
    PathBuf::from("/usr/share/locale")
}

/// Translates `msgid`, then replaces each `{name}` with the value paired with `name`.
pub fn gettext_f(msgid: &str, args: &[(&str, &str)]) -> String {
    substitute(&gettextrs::gettext(msgid), args)
}

/// Translates the singular or plural form for `n`, then substitutes like [`gettext_f`].
pub fn ngettext_f(msgid: &str, msgid_plural: &str, n: u32, args: &[(&str, &str)]) -> String {
    substitute(&gettextrs::ngettext(msgid, msgid_plural, n), args)
}

/// Replaces `{name}` placeholders in one pass. Unknown placeholders and stray braces are
/// kept as written, so a translation error shows up on screen rather than as lost text.
fn substitute(template: &str, args: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after.find('}').and_then(|close| {
            let name = &after[..close];
            args.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value, close))
        });
        match value {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_named_placeholders_in_any_order() {
        let text = substitute("{b} then {a}", &[("a", "first"), ("b", "second")]);
        assert_eq!(text, "second then first");
    }

    #[test]
    fn substitutes_a_placeholder_used_twice() {
        assert_eq!(substitute("{x}-{x}", &[("x", "7")]), "7-7");
    }

    #[test]
    fn does_not_expand_placeholders_inside_values() {
        let text = substitute("{a} {b}", &[("a", "{b}"), ("b", "B")]);
        assert_eq!(text, "{b} B");
    }

    #[test]
    fn keeps_unknown_placeholders_and_stray_braces() {
        assert_eq!(substitute("{nope} { {x", &[("x", "1")]), "{nope} { {x");
    }

    #[test]
    fn untranslated_messages_fall_back_to_the_msgid() {
        // A variable, not a literal, so xgettext keeps test strings out of hospes.pot.
        let msgid = "{count} machines";
        let text = gettext_f(msgid, &[("count", "3")]);
        assert_eq!(text, "3 machines");
    }

    #[test]
    fn plural_form_follows_the_count() {
        let (singular, plural) = ("{n} vCPU", "{n} vCPUs");
        let one = ngettext_f(singular, plural, 1, &[("n", "1")]);
        let two = ngettext_f(singular, plural, 2, &[("n", "2")]);
        assert_eq!((one.as_str(), two.as_str()), ("1 vCPU", "2 vCPUs"));
    }

    #[test]
    fn locale_dir_prefers_the_environment() {
        let dir = locale_dir(
            Some(PathBuf::from("/x/locale")),
            Some(Path::new("/usr/bin")),
        );
        assert_eq!(dir, PathBuf::from("/x/locale"));
    }

    #[test]
    fn locale_dir_uses_the_build_tree_when_it_exists() -> std::io::Result<()> {
        let target = tempfile::tempdir()?;
        std::fs::create_dir_all(target.path().join("debug"))?;
        std::fs::create_dir_all(target.path().join("locale/de/LC_MESSAGES"))?;
        let dir = locale_dir(None, Some(&target.path().join("debug")));
        assert_eq!(dir, target.path().join("locale"));
        Ok(())
    }

    #[test]
    fn locale_dir_falls_back_to_the_install_prefix() {
        let dir = locale_dir(None, Some(Path::new("/nonexistent-prefix/bin")));
        assert_eq!(dir, PathBuf::from("/nonexistent-prefix/share/locale"));
    }
}
