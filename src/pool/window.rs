//! A recent window of durations: two generations of an [`AtomicHistogram`], taking turns.
//!
//! # Policy
//!
//! Time since the pool started is cut into *epochs* of [`STATS_WINDOW`] (one minute). A
//! duration is recorded in the generation of the epoch it ended in: generation `epoch % 2`,
//! which its writer clears first if it still holds an older epoch. A reader at epoch `E` adds up
//! the generations holding `E` or `E - 1`, so [`Recent`] reports what ended in the current
//! minute and the one before: one to two minutes of data, and nothing once the pool has been
//! idle for two minutes. No thread rotates anything on a timer: the writer does it on its next
//! record, and the reader skips a generation that is too old.
//!
//! A reader racing the writer's clear, at an epoch boundary, may read part of the old
//! generation; the figures are recent, not one atomic picture, as the pool's counts are.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use super::histogram::{AtomicHistogram, Histogram};
use crate::limits::STATS_WINDOW;
use crate::sync::AtomicU64;

/// The epoch length in whole seconds (at least one).
const EPOCH_SECS: u64 = {
    assert!(
        STATS_WINDOW.as_secs() > 0,
        "a stats window is at least a second"
    );
    STATS_WINDOW.as_secs()
};

/// The epoch of `at` for a pool that started at `origin`.
pub(crate) fn epoch(origin: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(origin).as_secs() / EPOCH_SECS
}

/// One generation: the durations of one epoch.
#[derive(Default)]
struct Generation {
    /// The epoch the durations belong to. ORDERING: stored (release) after the clear that
    /// starts the epoch, loaded (acquire) before the buckets are read.
    epoch: AtomicU64,
    histogram: AtomicHistogram,
}

/// Durations that ended in the current epoch and the one before, written by one thread.
#[derive(Default)]
pub(crate) struct Recent {
    generations: [Generation; 2],
}

impl Recent {
    /// Counts `d`, which ended in `epoch`. One writer only (see [`AtomicHistogram::record`]);
    /// a duration older than the generation it would go to is not counted.
    pub(crate) fn record(&self, epoch: u64, d: Duration) {
        if let Some(generation) = self.generation_for(epoch) {
            generation.histogram.record(d);
        }
    }

    /// Adds the durations of epochs `now` and `now - 1` to `into` (and any later, from a
    /// writer whose clock read later than the reader's).
    pub(crate) fn add_to(&self, now: u64, into: &mut Histogram) {
        for generation in &self.generations {
            if generation.epoch.load(Acquire).saturating_add(1) >= now {
                generation.histogram.add_to(into);
            }
        }
    }

    /// Adds `other`'s generations to this one's, epoch by epoch (by this one's single writer:
    /// a leaving thread's durations folded into the pool's).
    pub(crate) fn absorb(&self, other: &Recent) {
        for theirs in &other.generations {
            let epoch = theirs.epoch.load(Acquire);
            let mut durations = Histogram::default();
            theirs.histogram.add_to(&mut durations);
            if durations.count() == 0 {
                continue;
            }
            if let Some(mine) = self.generation_for(epoch) {
                mine.histogram.add(&durations);
            }
        }
    }

    /// The generation that holds `epoch`, cleared for it if it held an older one; `None` if it
    /// holds a newer one.
    fn generation_for(&self, epoch: u64) -> Option<&Generation> {
        let generation = &self.generations[(epoch % 2) as usize];
        let held = generation.epoch.load(Relaxed);
        if held < epoch {
            generation.histogram.clear();
            generation.epoch.store(epoch, Release);
        } else if held > epoch {
            return None;
        }
        Some(generation)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn read(recent: &Recent, now: u64) -> Histogram {
        let mut h = Histogram::default();
        recent.add_to(now, &mut h);
        h
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn epochs_are_windows_since_the_origin() {
        let origin = Instant::now();
        assert_eq!(epoch(origin, origin), 0);
        assert_eq!(epoch(origin, origin + STATS_WINDOW - MS), 0);
        assert_eq!(epoch(origin, origin + STATS_WINDOW), 1);
        assert_eq!(epoch(origin, origin + 5 * STATS_WINDOW + MS), 5);
        // A time before the origin (it cannot happen, but must not panic) is epoch 0.
        assert_eq!(epoch(origin + STATS_WINDOW, origin), 0);
    }

    #[test]
    fn a_reader_sees_the_current_epoch_and_the_one_before() {
        let recent = Recent::default();
        recent.record(0, MS);
        recent.record(1, 2 * MS);
        recent.record(1, 2 * MS);
        assert_eq!(read(&recent, 1).count(), 3);
        // Epoch 2: epoch 0 is too old to read, though nobody has cleared it.
        assert_eq!(read(&recent, 2).count(), 2);
        assert_eq!(read(&recent, 2).percentiles().max, 2 * MS);
        // Idle for two epochs: nothing recent.
        assert_eq!(read(&recent, 3).count(), 0);
        // The writer's next record clears the generation it reuses.
        recent.record(3, 3 * MS);
        assert_eq!(read(&recent, 3).count(), 1);
        recent.record(4, 4 * MS);
        assert_eq!(read(&recent, 4).count(), 2);
        assert_eq!(read(&recent, 4).percentiles().max, 4 * MS);
        // A late record for an epoch whose generation moved on is dropped.
        recent.record(2, 9 * MS);
        assert_eq!(read(&recent, 4).count(), 2);
    }

    #[test]
    fn absorbing_merges_epoch_by_epoch() {
        let (pool, leaving) = (Recent::default(), Recent::default());
        pool.record(4, MS);
        pool.record(5, MS);
        leaving.record(5, 2 * MS);
        leaving.record(6, 3 * MS);
        pool.absorb(&leaving);
        // Epoch 4 gave way to the leaving thread's epoch 6; epoch 5 holds both.
        assert_eq!(read(&pool, 6).count(), 3);
        assert_eq!(read(&pool, 6).percentiles().max, 3 * MS);
        assert_eq!(read(&pool, 7).count(), 1);
        // An older epoch than the pool's does not overwrite newer durations.
        let old = Recent::default();
        old.record(4, 10 * MS);
        pool.absorb(&old);
        assert_eq!(read(&pool, 6).count(), 3);
    }
}
