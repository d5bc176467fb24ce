//! What one program's options count and time: [`ProgramStats`], and the [`Counts`] behind it.

use std::sync::atomic::Ordering::Relaxed;

use super::Controls;
use crate::limits::TIMING_SAMPLE;
use crate::pool::{Histogram, Percentiles};
use crate::sync::{lock, AtomicU64, Mutex};

impl Controls {
    pub(crate) fn stats(&self) -> ProgramStats {
        let c = &self.counts;
        ProgramStats {
            calls: c.calls.load(Relaxed),
            attempts: c.attempts.load(Relaxed),
            retries: c.retries.load(Relaxed),
            timed_out: c.timed_out.load(Relaxed),
            waited_for_rate: c.waited_for_rate.load(Relaxed),
            waited_for_slot: c.waited_for_slot.load(Relaxed),
            concurrency_limit: self.limit.as_ref().map(|l| l.current()),
            in_flight: self.limit.as_ref().map_or(0, |l| l.in_flight()),
            wait: lock(&c.wait).percentiles(),
            run_time: lock(&c.run_time).percentiles(),
        }
    }
}

/// A controlled program's tally (all `Relaxed`: a recent picture, exact once quiet).
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) calls: AtomicU64,
    pub(crate) attempts: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) waited_for_rate: AtomicU64,
    pub(crate) waited_for_slot: AtomicU64,
    /// Timed calls' waits (from the call to each attempt's start) and attempts' run times: a
    /// sample of one call in [`TIMING_SAMPLE`], so the lock is taken once per that many calls.
    pub(crate) wait: Mutex<Histogram>,
    pub(crate) run_time: Mutex<Histogram>,
}

impl Counts {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Counts a call; true if it is one of the timed sample.
    pub(crate) fn call_is_timed(&self) -> bool {
        self.calls.fetch_add(1, Relaxed) % u64::from(TIMING_SAMPLE) == 0
    }
}

/// What one program's options have done, from [`AsyncProgram::stats`](crate::AsyncProgram::stats).
///
/// It counts the calls of the program made by an option ([`timeout`], [`retry`],
/// [`rate_limit`], [`concurrency_limit`], [`adaptive_concurrency`]), not those of the program it
/// was made from; a program without options counts nothing here (its pool's
/// [`stats`](crate::WorkerPool::stats) counts every job).
///
/// [`timeout`]: crate::AsyncProgram::timeout
/// [`retry`]: crate::AsyncProgram::retry
/// [`rate_limit`]: crate::AsyncProgram::rate_limit
/// [`concurrency_limit`]: crate::AsyncProgram::concurrency_limit
/// [`adaptive_concurrency`]: crate::AsyncProgram::adaptive_concurrency
///
/// # Examples
///
/// ```
/// let pool = asyncify_pool::WorkerPool::new(2);
/// let p = pool.asyncify(|x: u32| x).concurrency_limit(3);
/// p.call(1).wait().unwrap();
/// let stats = p.stats();
/// assert_eq!((stats.calls, stats.attempts, stats.concurrency_limit), (1, 1, Some(3)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ProgramStats {
    /// Calls made.
    pub calls: u64,
    /// Attempts handed to the pool (a call that ended before its first, by its deadline or
    /// its caller, made none).
    pub attempts: u64,
    /// Attempts after a call's first.
    pub retries: u64,
    /// Calls that ended with [`JobError::TimedOut`](crate::JobError::TimedOut).
    pub timed_out: u64,
    /// Attempts that waited for a token of the rate limit.
    pub waited_for_rate: u64,
    /// Attempts that waited for a slot of the concurrency limit.
    pub waited_for_slot: u64,
    /// The concurrency limit now (for an adaptive one, where it has moved to); `None` without one.
    pub concurrency_limit: Option<usize>,
    /// Slots of the concurrency limit taken now: attempts queued or running, and calls that
    /// hold a slot while they wait for a rate limit's token (shared by every program using the
    /// same limit).
    pub in_flight: usize,
    /// How long calls waited for their attempts to start, from the call to each attempt's
    /// start (earlier attempts and backoffs included): at the program's limits, in backoffs,
    /// in the pool's queue. A sample, by a count of the program's calls: its first and then
    /// one in eight (a clock read per call would cost more than the rest of the options
    /// together). Since the program was made (no window, unlike the pool's). Only attempts
    /// that ended with the call still live are counted: a call that timed out or was dropped
    /// meanwhile is not.
    pub wait: Percentiles,
    /// How long attempts ran, of the same sample of calls (each attempt of a timed call).
    pub run_time: Percentiles,
}
