//! Saving a running helper and resuming it, for the save/restore tests: QMP `hospes-save`
//! writes the machine to the helper's `--state FILE` and ends it; starting the helper
//! again with the same flags and `--state FILE` resumes it from there.
//!
//! The counting guest (`tests/guests/count.S`) prints "count 1", "count 2", ... on COM1;
//! [`assert_counts_on`] checks that the console of the run before the save and the one
//! after it read together as one unbroken count.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use hospes_core::control::client::{QmpClient, SaveReport};

use crate::wait_timeout;

/// How long a save may go without a progress report, and how long the helper may take to
/// exit afterwards.
pub const SAVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Saves the helper `child` through its QMP socket `qmp` and waits for it to exit; the
/// returned report names the file and its size. Panics with the helper's reason when the
/// save fails or the helper does not exit cleanly after it.
pub fn save_and_wait(qmp: &Path, child: &mut Child) -> SaveReport {
    let mut client = QmpClient::connect(qmp).expect("connect to the helper's QMP socket");
    let report = client
        .save(SAVE_TIMEOUT, |_, _| {})
        .unwrap_or_else(|e| panic!("hospes-save failed: {e}"));
    let status = wait_timeout(child, SAVE_TIMEOUT).expect("the helper exits after a save");
    assert!(
        status.success(),
        "the helper ended with {status} after a save"
    );
    report
}

/// The numbers of the complete "count N" lines of a console, in order (a line cut off at
/// the end is left out).
pub fn counts(console: &str) -> Vec<u64> {
    let complete = match console.rfind('\n') {
        Some(end) => &console[..end],
        None => "",
    };
    complete
        .lines()
        .filter_map(|l| l.strip_prefix("count "))
        .map(|n| n.parse().unwrap_or_else(|_| panic!("not a count: {n:?}")))
        .collect()
}

/// Checks that the counting guest's console before a save (`before`) and after the resume
/// (`after`) read as one count from 1 without a gap or a repeat, and that neither shows a
/// bad pattern word; returns the last count before the save and the last one after.
pub fn assert_counts_on(before: &str, after: &str) -> (u64, u64) {
    for (which, text) in [("before the save", before), ("after the resume", after)] {
        assert!(
            !text.contains("bad pattern word"),
            "the guest found its memory changed {which}:\n{text}"
        );
    }
    assert!(
        !after.contains("ready"),
        "the resumed guest started over instead of going on:\n{after}"
    );
    let joined = format!("{before}{after}");
    let all = counts(&joined);
    assert!(
        !all.is_empty(),
        "no count on the console:\n{before}\n--- resumed ---\n{after}"
    );
    for (i, n) in all.iter().enumerate() {
        assert_eq!(
            *n,
            i as u64 + 1,
            "the count breaks at line {} (console before the save, then after):\n{joined}",
            i + 1
        );
    }
    let last_before = counts(before).last().copied().unwrap_or(0);
    (last_before, *all.last().unwrap_or(&0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_cut_by_the_save_reads_on_after_the_resume() {
        let (before, after) = assert_counts_on("ready\ncount 1\ncount 2\ncou", "nt 3\ncount 4\n");
        assert_eq!((before, after), (2, 4));
    }

    #[test]
    #[should_panic(expected = "the count breaks")]
    fn a_repeated_count_is_a_failure() {
        assert_counts_on("ready\ncount 1\ncount 2\n", "count 2\ncount 3\n");
    }

    #[test]
    #[should_panic(expected = "started over")]
    fn a_guest_that_starts_again_is_a_failure() {
        assert_counts_on("ready\ncount 1\n", "ready\ncount 1\n");
    }
}
