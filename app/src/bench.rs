//! Measurement hooks for `scripts/bench-app.sh`, off unless asked for by environment:
//!
//! - `HOSPES_BENCH_STARTUP=1`: once the library window has painted its first frame with
//!   the list (or the empty state) in it, print `startup-painted <ns since the epoch>` on
//!   stdout and quit. The script subtracts the time it started the process.
//! - `HOSPES_BENCH_FPS=SECONDS`: a VM window counts the frames it paints with new guest
//!   pixels in them and the full screens of pixels it receives, and after SECONDS prints
//!   `fps painted <n> received <n>` and quits.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gtk::prelude::*;

/// Whether the startup probe is on.
pub fn startup_probe() -> bool {
    std::env::var_os("HOSPES_BENCH_STARTUP").is_some_and(|v| v == "1")
}

/// Prints the startup mark after the next frame `widget` paints, then quits.
pub fn report_startup_after_paint(widget: &impl IsA<gtk::Widget>) {
    let Some(clock) = widget.frame_clock() else {
        log::warn!("bench: no frame clock yet");
        return;
    };
    clock.connect_after_paint(|_| {
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        println!("startup-painted {ns}");
        relm4::main_application().quit();
    });
    widget.queue_draw();
}

/// How long the frame-rate probe runs, if it is on.
pub fn fps_window() -> Option<Duration> {
    std::env::var("HOSPES_BENCH_FPS")
        .ok()?
        .parse::<f64>()
        .ok()
        .filter(|secs| *secs > 0.0)
        .map(Duration::from_secs_f64)
}

/// Counts painted and received frames for the frame-rate probe.
#[derive(Debug, Default)]
pub struct FrameCounter {
    /// Full screens received when the measurement started.
    pub start: u64,
    /// Pixels received since the last full screen.
    pixels: u64,
    /// Full screens of pixels received.
    pub received: u64,
}

impl FrameCounter {
    /// `area` new pixels arrived on a `screen`-pixel display.
    pub fn received(&mut self, area: u64, screen: u64) {
        self.pixels += area;
        if screen > 0 && self.pixels >= screen {
            self.received += self.pixels / screen;
            self.pixels %= screen;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_screens_are_counted_from_rectangles() {
        let mut counter = FrameCounter::default();
        counter.received(500, 1000);
        assert_eq!(counter.received, 0);
        counter.received(600, 1000);
        assert_eq!(counter.received, 1);
        counter.received(2000, 1000);
        assert_eq!(counter.received, 3);
    }
}
