//! The terminal progress bar of a batch ([`Batch::progress_bar`], the `progress` feature).
//!
//! One line of fixed layout: every field but the bar itself has the same width from the first
//! draw to the last, so the bar never grows or shrinks as counts change:
//!
//! ```text
//!   1.2s [=========>                ]  37/100,   3 failed,   0 not started 30.8/s ETA   2.0s
//! ```
//!
//! Times are short and sub-second below a minute (`0.4s`, `59.9s`, `1m03s`, `2h05m`, `3d04h`),
//! right-aligned to one width; the ETA is `?` until the first item finishes. The counts are
//! right-aligned to the width of the total; the rate has a width of its own (`0.3`, `92.5`,
//! `1234`, `56k`, `7M` per second).
//!
//! The formatting is in pure functions ([`short_duration`], [`eta`], [`rate`], [`counters`]),
//! called from `indicatif` template keys at each draw. The failure and not-started counts are
//! the driver's, shared with those keys through atomics; the position is `indicatif`'s.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use super::result::Progress;
#[cfg(doc)]
use super::Batch;

/// The line: the keys other than `wide_bar` are this module's.
const TEMPLATE: &str = "{elapsed} [{wide_bar}] {counts} {rate} ETA {eta}";

/// Width of an elapsed time or an ETA: the longest [`short_duration`] (`59m59s`).
const DURATION_WIDTH: usize = 6;

/// Width of the number of a rate, before `/s`: the longest (`99.9`, `9999`, `999k`).
const RATE_WIDTH: usize = 4;

/// A batch's bar: what the driver updates at each report.
pub(super) struct Bar {
    bar: ProgressBar,
    counts: Arc<Counts>,
}

/// The counts the bar shows that `indicatif` does not keep.
#[derive(Default)]
struct Counts {
    failed: AtomicUsize,
    not_started: AtomicUsize,
}

impl Bar {
    /// A bar for `total` items on stderr (drawn only if it is a terminal), drawn at once.
    pub(super) fn new(total: usize) -> Self {
        Self::with_target(total, ProgressDrawTarget::stderr())
    }

    fn with_target(total: usize, target: ProgressDrawTarget) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total as u64), target);
        let counts = Arc::new(Counts::default());
        bar.set_style(style(&counts));
        bar.tick();
        Bar { bar, counts }
    }

    /// Shows `progress`: the counts first, so the draw that moving the bar makes sees them.
    pub(super) fn update(&self, progress: &Progress) {
        self.counts.failed.store(progress.failed, Relaxed);
        self.counts.not_started.store(progress.not_started, Relaxed);
        self.bar.set_position(progress.finished() as u64);
    }

    /// Draws the final state and leaves it on the terminal.
    pub(super) fn finish(self) {
        self.bar.finish();
    }
}

fn style(counts: &Arc<Counts>) -> ProgressStyle {
    let Ok(style) = ProgressStyle::with_template(TEMPLATE) else {
        return ProgressStyle::default_bar();
    };
    let counts = Arc::clone(counts);
    style
        .with_key(
            "elapsed",
            |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{:>DURATION_WIDTH$}", short_duration(state.elapsed()));
            },
        )
        .with_key(
            "eta",
            |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let left = state.len().unwrap_or(0).saturating_sub(state.pos());
                let _ = write!(out, "{:>DURATION_WIDTH$}", eta(state.eta(), left));
            },
        )
        .with_key(
            "rate",
            |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = out.write_str(&rate(state.per_sec()));
            },
        )
        .with_key(
            "counts",
            move |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let (pos, failed, not_started) = (
                    state.pos(),
                    counts.failed.load(Relaxed),
                    counts.not_started.load(Relaxed),
                );
                let len = state.len().unwrap_or(pos);
                let _ = out.write_str(&counters(pos, len, failed, not_started));
            },
        )
        .progress_chars("=> ")
}

/// A short time, unpadded: tenths of a second below a minute (`0.4s`, `59.9s`), then the two
/// largest units (`1m03s`, `2h05m`, `3d04h`), and `>99d` from 100 days. At most
/// [`DURATION_WIDTH`] characters. Truncated, never rounded up.
fn short_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..=59 => format!("{secs}.{}s", d.subsec_millis() / 100),
        60..=3_599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3_600..=86_399 => format!("{}h{:02}m", secs / 3_600, secs % 3_600 / 60),
        86_400..=8_639_999 => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3_600),
        _ => ">99d".to_owned(),
    }
}

/// The ETA, unpadded, with `left` items to go: `?` while `indicatif` has no estimate (it says
/// zero until an item finishes), else a [`short_duration`].
fn eta(eta: Duration, left: u64) -> String {
    if left > 0 && eta.is_zero() {
        "?".to_owned()
    } else {
        short_duration(eta)
    }
}

/// Items per second, always [`RATE_WIDTH`] + 2 characters: ` 0.3/s`, `92.5/s`, `1234/s`,
/// ` 56k/s`, `  7M/s`; `?` when there is no finite rate.
fn rate(per_sec: f64) -> String {
    let number = if !per_sec.is_finite() || per_sec < 0.0 {
        "?".to_owned()
    } else if per_sec < 99.95 {
        format!("{per_sec:.1}")
    } else if per_sec < 9_999.5 {
        format!("{per_sec:.0}")
    } else if per_sec < 999_500.0 {
        format!("{:.0}k", per_sec / 1e3)
    } else if per_sec < 999_500_000.0 {
        format!("{:.0}M", per_sec / 1e6)
    } else {
        "1G+".to_owned()
    };
    format!("{number:>RATE_WIDTH$}/s")
}

/// `pos/len, F failed, N not started`, each count right-aligned to the width of `len`, so the
/// text has one length for a given `len` whatever the counts (none exceeds `len`).
fn counters(pos: u64, len: u64, failed: usize, not_started: usize) -> String {
    let width = len.to_string().len();
    format!("{pos:>width$}/{len}, {failed:>width$} failed, {not_started:>width$} not started")
}

#[cfg(all(test, feature = "progress", not(loom)))]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn short_durations_are_sub_second_below_a_minute() {
        assert_eq!(short_duration(Duration::ZERO), "0.0s");
        assert_eq!(short_duration(ms(40)), "0.0s");
        assert_eq!(short_duration(ms(400)), "0.4s");
        assert_eq!(short_duration(ms(1_250)), "1.2s");
        assert_eq!(short_duration(ms(59_999)), "59.9s");
    }

    #[test]
    fn short_durations_use_two_units_from_a_minute() {
        assert_eq!(short_duration(ms(60_000)), "1m00s");
        assert_eq!(short_duration(ms(61_000)), "1m01s");
        assert_eq!(short_duration(ms(63_900)), "1m03s");
        assert_eq!(short_duration(Duration::from_secs(3_599)), "59m59s");
        assert_eq!(short_duration(Duration::from_secs(3_600)), "1h00m");
        assert_eq!(
            short_duration(Duration::from_secs(2 * 3_600 + 5 * 60)),
            "2h05m"
        );
        assert_eq!(short_duration(Duration::from_secs(86_399)), "23h59m");
        assert_eq!(short_duration(Duration::from_secs(86_400)), "1d00h");
        assert_eq!(short_duration(Duration::from_secs(8_639_999)), "99d23h");
        assert_eq!(short_duration(Duration::from_secs(8_640_000)), ">99d");
        assert_eq!(short_duration(Duration::MAX), ">99d");
    }

    #[test]
    fn short_durations_fit_their_width() {
        let mut secs = 0;
        while secs < 10_000_000 {
            let text = short_duration(Duration::from_secs(secs) + ms(999));
            assert!(text.len() <= DURATION_WIDTH, "{secs}s: {text}");
            secs = secs * 3 / 2 + 1;
        }
    }

    #[test]
    fn the_eta_is_unknown_until_there_is_an_estimate() {
        assert_eq!(eta(Duration::ZERO, 10), "?");
        assert_eq!(eta(ms(400), 10), "0.4s");
        assert_eq!(eta(Duration::from_secs(61), 10), "1m01s");
        // Nothing left: zero is the answer, not a missing estimate.
        assert_eq!(eta(Duration::ZERO, 0), "0.0s");
    }

    #[test]
    fn rates_have_one_width() {
        let cases = [
            (0.0, " 0.0/s"),
            (0.34, " 0.3/s"),
            (92.5, "92.5/s"),
            (99.94, "99.9/s"),
            (99.96, " 100/s"),
            (1_234.4, "1234/s"),
            (9_999.6, " 10k/s"),
            (56_400.0, " 56k/s"),
            (999_400.0, "999k/s"),
            (999_600.0, "  1M/s"),
            (7_200_000.0, "  7M/s"),
            (5e9, " 1G+/s"),
            (f64::NAN, "   ?/s"),
            (f64::INFINITY, "   ?/s"),
        ];
        for (per_sec, text) in cases {
            assert_eq!(rate(per_sec), text, "{per_sec}");
        }
        let mut per_sec = 0.001;
        while per_sec < 1e12 {
            assert_eq!(rate(per_sec).len(), RATE_WIDTH + 2, "{per_sec}");
            per_sec *= 1.07;
        }
    }

    #[test]
    fn counters_keep_their_length_as_counts_change() {
        assert_eq!(
            counters(0, 100, 0, 0),
            "  0/100,   0 failed,   0 not started"
        );
        assert_eq!(
            counters(37, 100, 7, 0),
            " 37/100,   7 failed,   0 not started"
        );
        assert_eq!(
            counters(100, 100, 100, 0),
            "100/100, 100 failed,   0 not started"
        );
        assert_eq!(
            counters(100, 100, 12, 60),
            "100/100,  12 failed,  60 not started"
        );
        let length = counters(0, 100, 0, 0).len();
        for (pos, failed, not_started) in [(0, 7, 0), (9, 9, 0), (50, 10, 40), (100, 0, 100)] {
            assert_eq!(counters(pos, 100, failed, not_started).len(), length);
        }
        assert_eq!(counters(0, 0, 0, 0), "0/0, 0 failed, 0 not started");
        assert_eq!(counters(3, 7, 1, 0), "3/7, 1 failed, 0 not started");
    }

    /// A terminal of 100 columns that keeps what is written to it.
    #[derive(Debug, Default, Clone)]
    struct Screen(Arc<Mutex<Vec<String>>>);

    impl Screen {
        /// The lines the bar drew: those with its fields in them.
        fn lines(&self) -> Vec<String> {
            let written = self.0.lock().unwrap();
            written
                .iter()
                .filter(|s| s.contains("ETA"))
                .cloned()
                .collect()
        }
    }

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            100
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push(s.to_owned());
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn progress(done: usize, failed: usize, not_started: usize) -> Progress {
        Progress {
            done,
            failed,
            not_started,
            total: 100,
            elapsed: Duration::ZERO,
        }
    }

    /// What the user saw: the line drawn by `indicatif` has one length, and its bar one place,
    /// from the start (no failures) through the first failures to the end.
    #[test]
    fn the_drawn_line_keeps_its_layout() {
        let screen = Screen::default();
        let target = ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let bar = Bar::with_target(100, target);
        let states = [
            progress(0, 0, 0),
            progress(1, 0, 0),
            progress(30, 7, 0),
            progress(50, 12, 0),
            progress(60, 12, 28),
        ];
        for state in &states {
            bar.update(state);
            bar.bar.tick(); // a draw even where `set_position` skips one
        }
        bar.finish();

        let lines = screen.lines();
        assert!(lines.len() > states.len(), "{lines:#?}");
        let first = &lines[0];
        let last = lines.last().unwrap();
        assert!(
            first.contains("  0/100,   0 failed,   0 not started"),
            "{first}"
        );
        assert!(first.contains(" 0.0/s ETA      ?"), "{first}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains(" 37/100,   7 failed,   0 not started")),
            "{lines:#?}"
        );
        assert!(
            last.contains("100/100,  12 failed,  28 not started"),
            "{last}"
        );
        assert!(last.ends_with("ETA   0.0s"), "{last}");
        for line in &lines {
            assert_eq!(line.chars().count(), 100, "{line}");
            assert_eq!(line.find('['), first.find('['), "{line}");
            assert_eq!(line.find(']'), first.find(']'), "{line}");
            // Sub-second elapsed time, right-aligned: this test takes well under a minute.
            let elapsed = line.split(' ').find(|s| !s.is_empty()).unwrap();
            assert!(elapsed.ends_with('s') && elapsed.contains('.'), "{line}");
        }
    }
}
