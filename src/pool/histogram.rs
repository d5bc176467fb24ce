//! Durations counted in fixed log-scale buckets, and the [`Percentiles`] read from them.
//!
//! # Buckets
//!
//! A duration is counted in nanoseconds, in units of 16 ns. Below 128 ns the buckets are 16 ns
//! wide; above, every power of two is split into 8 equal buckets, up to 2^45 ns (about 9.8
//! hours); everything longer shares one last bucket. That is [`BUCKETS`] counters, the same for
//! every histogram, so merging is adding bucket by bucket. The exact maximum is kept beside
//! them.
//!
//! # Precision
//!
//! A percentile is reported as the upper bound of the bucket it falls in, capped at the exact
//! maximum: never below the true value, and at most 12.5% above it (16 ns above it below
//! 128 ns). In the last bucket, past 9.8 hours, it is the maximum. So "p99 ≤ 200 ms" read from
//! here holds for the data.
//!
//! # Two forms
//!
//! [`Histogram`] is plain data: record, merge, take percentiles. [`AtomicHistogram`] is the live
//! form, written by one thread (a plain load and store per bucket, no locked instruction, as
//! the pool's counters are) and read by others into a `Histogram`.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::sync::AtomicU64;

/// Units of 2^`UNIT_SHIFT` ns: the finest resolution.
const UNIT_SHIFT: u32 = 4;
/// Buckets per power of two: 2^`SUB_BITS`.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// The first power of two (in units) that no regular bucket holds: 2^41 units = 2^45 ns.
const TOP_EXP: u32 = 41;
/// The bucket for everything from 2^45 ns up.
const OVERFLOW: usize = ((TOP_EXP - SUB_BITS + 1) as usize) * SUB as usize;
/// Counters per histogram.
pub(crate) const BUCKETS: usize = OVERFLOW + 1;

/// The bucket that counts `nanos`.
fn bucket(nanos: u64) -> usize {
    let units = nanos >> UNIT_SHIFT;
    if units < SUB {
        return units as usize;
    }
    let exp = 63 - units.leading_zeros(); // units in [2^exp, 2^(exp+1)), exp >= SUB_BITS
    if exp >= TOP_EXP {
        return OVERFLOW;
    }
    let sub = (units >> (exp - SUB_BITS)) & (SUB - 1);
    ((exp - SUB_BITS + 1) as usize) * SUB as usize + sub as usize
}

/// The nanoseconds where bucket `i` begins (`i` up to `BUCKETS`, whose bound is past the last).
fn lower_bound(i: usize) -> u64 {
    let (row, sub) = ((i as u64) / SUB, (i as u64) % SUB);
    let units = if row == 0 {
        sub
    } else {
        (SUB + sub) << (row - 1)
    };
    units << UNIT_SHIFT
}

/// The nanoseconds of `d`, saturating at `u64::MAX` (584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// How long a set of jobs took, as percentiles: part of [`Stats`](crate::Stats).
///
/// Each percentile is the smallest duration that at least that share of the `count` samples
/// do not exceed, as read from fixed log-scale buckets: never below the true value and at most
/// 12.5% above it (16 ns below 128 ns); `max` is exact. With no samples everything is zero.
/// Durations past `u64::MAX` nanoseconds (584 years) count as that.
///
/// In [`Stats`](crate::Stats) the samples are the timed jobs: one call in eight per calling
/// thread (its first, then every eighth), because a clock read on every job would cost the
/// pool's hot path more than the figures are worth. A count picks them, not the clock, the
/// queue or the load, so they are an unbiased sample of all calls (unless a thread's calls
/// repeat with a period dividing eight); `max` is the longest timed job's, and a rare long job
/// may fall outside the sample.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let pool = asyncify_pool::WorkerPool::new(1);
/// pool.spawn(|| std::thread::sleep(Duration::from_millis(5))).wait().unwrap();
/// let run = pool.stats().run_time;
/// assert_eq!(run.count, 1);
/// assert!(run.p50 >= Duration::from_millis(5) && run.p50 <= run.max);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Percentiles {
    /// Half of the samples took at most this.
    pub p50: Duration,
    /// 90% of the samples took at most this.
    pub p90: Duration,
    /// 99% of the samples took at most this.
    pub p99: Duration,
    /// The longest sample, exactly.
    pub max: Duration,
    /// How many samples there are.
    pub count: u64,
}

/// Durations in buckets: plain data, to merge and to read percentiles from.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Histogram {
    counts: [u64; BUCKETS],
    /// The longest duration recorded, in nanoseconds.
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; BUCKETS],
            max: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("percentiles", &self.percentiles())
            .finish()
    }
}

impl Histogram {
    /// Counts one duration.
    pub(crate) fn record(&mut self, d: Duration) {
        let n = nanos(d);
        self.counts[bucket(n)] += 1;
        self.max = self.max.max(n);
    }

    /// Adds `other`'s durations to these.
    #[cfg_attr(any(not(test), loom), allow(dead_code))] // for sums of snapshots (per-program figures)
    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine = mine.saturating_add(*theirs);
        }
        self.max = self.max.max(other.max);
    }

    /// The number of durations counted.
    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().fold(0, |sum, &c| sum.saturating_add(c))
    }

    /// p50, p90, p99 and max (see [`Percentiles`] for the precision).
    pub(crate) fn percentiles(&self) -> Percentiles {
        let count = self.count();
        Percentiles {
            p50: self.quantile(count, 500),
            p90: self.quantile(count, 900),
            p99: self.quantile(count, 990),
            max: Duration::from_nanos(self.max),
            count,
        }
    }

    /// The smallest bucket bound (capped at the max) that at least `per_mille`/1000 of the
    /// `count` durations do not exceed; zero for none.
    fn quantile(&self, count: u64, per_mille: u64) -> Duration {
        if count == 0 {
            return Duration::ZERO;
        }
        let rank = (u128::from(count) * u128::from(per_mille))
            .div_ceil(1000)
            .max(1);
        let mut seen = 0u128;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u128::from(c);
            if seen >= rank {
                let bound = if i == OVERFLOW {
                    u64::MAX
                } else {
                    lower_bound(i + 1)
                };
                return Duration::from_nanos(bound.min(self.max));
            }
        }
        Duration::from_nanos(self.max)
    }
}

/// The live form of a [`Histogram`]: written by one thread, read by any.
pub(crate) struct AtomicHistogram {
    /// On the heap, and made there: a thread's counters (four of these, 10 KB inline) are made
    /// by the thread that starts it, and a waiter deep in its stack starts a spare thread (see
    /// `worker`). An inline array was built on that stack and copied a few times over (in a
    /// debug build), which overflowed a small stack that still had room for the hand-off.
    counts: Box<[AtomicU64; BUCKETS]>,
    max: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        let counts: Box<[AtomicU64]> = (0..BUCKETS).map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram {
            counts: counts
                .try_into()
                .unwrap_or_else(|_| unreachable!("BUCKETS counters were made")),
            max: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    /// Counts one duration. Only one thread may record into a histogram (or
    /// [`add`](Self::add) or [`clear`](Self::clear) it): a plain load and store, no locked
    /// instruction.
    pub(crate) fn record(&self, d: Duration) {
        let n = nanos(d);
        let counter = &self.counts[bucket(n)];
        // ORDERING: single writer; readers want recent values, not a synchronising one.
        counter.store(counter.load(Relaxed) + 1, Relaxed);
        if n > self.max.load(Relaxed) {
            self.max.store(n, Relaxed);
        }
    }

    /// Adds what this histogram holds now to `into` (each bucket recent, not one atomic picture
    /// while it is written).
    pub(crate) fn add_to(&self, into: &mut Histogram) {
        for (sum, counter) in into.counts.iter_mut().zip(self.counts.iter()) {
            *sum = sum.saturating_add(counter.load(Relaxed));
        }
        into.max = into.max.max(self.max.load(Relaxed));
    }

    /// Adds `other`'s durations to these (by this histogram's one writer).
    pub(crate) fn add(&self, other: &Histogram) {
        for (counter, &c) in self.counts.iter().zip(&other.counts) {
            if c != 0 {
                counter.store(counter.load(Relaxed).saturating_add(c), Relaxed);
            }
        }
        if other.max > self.max.load(Relaxed) {
            self.max.store(other.max, Relaxed);
        }
    }

    /// Forgets every duration (by this histogram's one writer).
    pub(crate) fn clear(&self) {
        for counter in self.counts.iter() {
            counter.store(0, Relaxed);
        }
        self.max.store(0, Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn ns(n: u64) -> Duration {
        Duration::from_nanos(n)
    }

    #[test]
    fn each_bucket_begins_where_the_one_before_ends_and_is_at_most_an_eighth_wide() {
        assert_eq!(lower_bound(0), 0);
        for i in 1..BUCKETS {
            let (lo, prev) = (lower_bound(i), lower_bound(i - 1));
            assert!(lo > prev, "bucket {i}");
            assert_eq!(bucket(lo), i, "the lower bound of bucket {i}");
            assert_eq!(bucket(lo - 1), i - 1, "just below bucket {i}");
            if i >= SUB as usize && i < OVERFLOW {
                // Width over the lower bound: at most 1/8, so an upper bound is ≤ 12.5% high.
                let width = lower_bound(i + 1) - lo;
                assert!(width * 8 <= lo, "bucket {i}: [{lo}, {}) ns", lo + width);
            }
        }
        assert_eq!(lower_bound(1), 16);
        assert_eq!(lower_bound(SUB as usize), 128);
        assert_eq!(lower_bound(OVERFLOW), 1 << 45);
        assert_eq!(bucket(u64::MAX), OVERFLOW);
        assert_eq!(bucket((1 << 45) - 1), OVERFLOW - 1);
    }

    #[test]
    fn zero_and_the_longest_durations_are_recorded() {
        let mut h = Histogram::default();
        h.record(Duration::ZERO);
        h.record(Duration::MAX);
        let p = h.percentiles();
        assert_eq!(p.count, 2);
        assert_eq!(
            p.p50,
            ns(16),
            "the first bucket's bound: 16 ns above the true zero"
        );
        assert_eq!(p.max, ns(u64::MAX));
        assert_eq!(p.p99, ns(u64::MAX), "the overflow bucket reads as the max");
        let live = AtomicHistogram::default();
        live.record(Duration::ZERO);
        live.record(Duration::MAX);
        let mut read = Histogram::default();
        live.add_to(&mut read);
        assert_eq!(read, h);
    }

    #[test]
    fn an_empty_histogram_reads_as_zeros() {
        assert_eq!(Histogram::default().percentiles(), Percentiles::default());
    }

    #[test]
    fn percentiles_of_known_data_are_within_an_eighth_above_the_truth() {
        let mut h = Histogram::default();
        // 1 µs, 2 µs, ..., 1000 µs: the true p50 is 500 µs, p90 900 µs, p99 990 µs.
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p = h.percentiles();
        assert_eq!(p.count, 1000);
        assert_eq!(p.max, Duration::from_micros(1000));
        for (got, truth) in [(p.p50, 500), (p.p90, 900), (p.p99, 990)] {
            let truth = Duration::from_micros(truth);
            assert!(
                got >= truth && got <= truth + truth / 8,
                "{got:?} for {truth:?}"
            );
        }
    }

    #[test]
    fn one_sample_reads_as_itself_exactly() {
        let mut h = Histogram::default();
        h.record(Duration::from_millis(20));
        let p = h.percentiles();
        // The bucket's bound is above 20 ms; the max caps it.
        assert_eq!(
            (p.p50, p.p99, p.max),
            (p.max, p.max, Duration::from_millis(20))
        );
    }

    #[test]
    fn merging_is_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        for us in [3, 70, 70, 900, 12_000] {
            a.record(Duration::from_micros(us));
            all.record(Duration::from_micros(us));
        }
        for ms in [1, 5, 5_000] {
            b.record(Duration::from_millis(ms));
            all.record(Duration::from_millis(ms));
        }
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(a.count(), 8);

        let live = AtomicHistogram::default();
        live.add(&a);
        live.record(Duration::from_secs(3));
        all.record(Duration::from_secs(3));
        let mut read = Histogram::default();
        live.add_to(&mut read);
        assert_eq!(read, all);
        live.clear();
        let mut cleared = Histogram::default();
        live.add_to(&mut cleared);
        assert_eq!(cleared, Histogram::default());
    }
}
