//! The helper's one logging module.
//!
//! Messages flow from the `log` macros into [`StderrLogger`], which writes one line per
//! record to stderr (the app collects a helper's stderr into its log). Anything a guest can
//! trigger at will (an unclaimed port, a bad register write) goes through [`guest_warn!`]
//! instead: each call site owns a [`RateLimit`] that lets a few messages per second through
//! and then prints how many it swallowed, so a guest writing garbage everywhere cannot
//! flood the log or slow its vCPU down.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

/// Messages a call site may log per window before it is throttled.
pub const BURST: u32 = 10;
/// Length of a rate-limiting window.
pub const WINDOW_MS: u128 = 1000;

/// `log` backend writing `hospes-vmm: LEVEL: message` lines to stderr.
pub struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let mut err = std::io::stderr().lock();
            // A closed stderr must not take the VM down: drop the line.
            let _ = writeln!(
                err,
                "hospes-vmm: {}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            );
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Parses a level name as `HOSPES_LOG` spells it (`error`, `warn`, `info`, `debug`, `trace`,
/// `off`); anything else is `warn`.
pub fn parse_level(name: Option<&str>) -> log::LevelFilter {
    match name.map(str::to_ascii_lowercase).as_deref() {
        Some("off") => log::LevelFilter::Off,
        Some("error") => log::LevelFilter::Error,
        Some("info") => log::LevelFilter::Info,
        Some("debug") => log::LevelFilter::Debug,
        Some("trace") => log::LevelFilter::Trace,
        _ => log::LevelFilter::Warn,
    }
}

/// Installs the stderr logger at the level named by `HOSPES_LOG` (default `warn`).
/// Calling it twice keeps the first logger.
pub fn init() {
    let level = parse_level(std::env::var("HOSPES_LOG").ok().as_deref());
    let logger = Box::leak(Box::new(StderrLogger { level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    passed: u32,
    suppressed: u64,
}

/// What a rate limiter says about one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` messages were swallowed since the last one that went through.
    Log { suppressed: u64 },
    /// Swallow it.
    Drop,
}

/// A per-call-site limit of [`BURST`] messages per [`WINDOW_MS`].
#[derive(Debug)]
pub struct RateLimit {
    site: &'static str,
    window: Mutex<Window>,
}

/// Every limiter that has throttled something, for [`flush_suppressed`].
static THROTTLED: Mutex<Vec<&'static RateLimit>> = Mutex::new(Vec::new());

/// Logs, for every call site still holding swallowed messages, how many there were. The
/// helper calls it when the VM ends, so a flood's size is on record even if nothing was
/// logged after it.
pub fn flush_suppressed() {
    let sites = std::mem::take(&mut *crate::bus::lock(&THROTTLED));
    for rl in sites {
        let n = std::mem::take(&mut crate::bus::lock(&rl.window).suppressed);
        if n > 0 {
            log::warn!("{}: suppressed {n} more messages", rl.site);
        }
    }
}

impl RateLimit {
    /// A limiter for the call site named `site` (`file:line`).
    pub const fn new(site: &'static str) -> Self {
        Self {
            site,
            window: Mutex::new(Window {
                start: None,
                passed: 0,
                suppressed: 0,
            }),
        }
    }

    /// Records that this limiter holds swallowed messages.
    fn note_throttled(&'static self) {
        let mut t = crate::bus::lock(&THROTTLED);
        if !t.iter().any(|r| std::ptr::eq(*r, self)) {
            t.push(self);
        }
    }

    /// Decides about a message arriving at `now`.
    pub fn check_at(&self, now: Instant) -> Verdict {
        let mut w = crate::bus::lock(&self.window);
        let expired = w
            .start
            .is_none_or(|s| now.saturating_duration_since(s).as_millis() >= WINDOW_MS);
        if expired {
            w.start = Some(now);
            w.passed = 0;
        }
        if w.passed < BURST {
            w.passed += 1;
            let suppressed = std::mem::take(&mut w.suppressed);
            Verdict::Log { suppressed }
        } else {
            w.suppressed += 1;
            Verdict::Drop
        }
    }

    /// Decides about a message arriving now.
    pub fn check(&'static self) -> Verdict {
        let v = self.check_at(Instant::now());
        if v == Verdict::Drop {
            self.note_throttled();
        }
        v
    }
}

/// `log::warn!` for messages a guest can trigger, limited per call site to [`BURST`] per
/// second; the first message after a throttled stretch is preceded by a
/// "suppressed K messages" line.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)*) => {{
        static LIMIT: $crate::logger::RateLimit =
            $crate::logger::RateLimit::new(concat!(file!(), ":", line!()));
        if let $crate::logger::Verdict::Log { suppressed } = LIMIT.check() {
            if suppressed > 0 {
                log::warn!("suppressed {} messages like the next one", suppressed);
            }
            log::warn!($($arg)*);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lets_a_burst_through_then_counts_what_it_drops() {
        let rl = RateLimit::new("here");
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(rl.check_at(t0), Verdict::Log { suppressed: 0 });
        }
        assert_eq!(rl.check_at(t0), Verdict::Drop);
        assert_eq!(rl.check_at(t0 + Duration::from_millis(10)), Verdict::Drop);
        let later = t0 + Duration::from_millis(WINDOW_MS as u64 + 1);
        assert_eq!(rl.check_at(later), Verdict::Log { suppressed: 2 });
        assert_eq!(rl.check_at(later), Verdict::Log { suppressed: 0 });
    }

    #[test]
    fn parses_level_names() {
        assert_eq!(parse_level(Some("DEBUG")), log::LevelFilter::Debug);
        assert_eq!(parse_level(Some("nonsense")), log::LevelFilter::Warn);
        assert_eq!(parse_level(None), log::LevelFilter::Warn);
    }
}
