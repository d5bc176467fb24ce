//! Concurrency control for one program: deadlines, retries, rate limits and concurrency limits
//! (fixed or adaptive), the options of an [`AsyncProgram`](crate::AsyncProgram).
//!
//! # How a controlled call moves
//!
//! A call of a program with options is a [`call::Call`]: the caller's handle, and the driver of
//! the pool jobs it makes, one per attempt. It moves through gates, each of which it may have
//! to wait at, holding no worker:
//!
//! 1. a slot of the program's concurrency limit ([`limit`]), waiting in that limit's line;
//! 2. a token of its rate limit ([`rate`]), waiting in that limiter's line;
//! 3. an attempt: an ordinary job of the pool, under the caller's captured context, holding
//!    the slot until it ends;
//! 4. after the attempt, a verdict: done, or (by the [`retry`] policy) a backoff on the pool's
//!    timer and back to 1.
//!
//! The deadline, if any, is an entry on the pool's timer from the call on: when it rings the
//! call ends with `TimedOut` wherever it is (a queued attempt never starts, a running one sees
//! `is_cancelled()`). At the pool's close every wait outside the queue ends.
//!
//! Locks: a call's own state, then a line's (a limit's or a limiter's), then the timer's, in
//! that order only; every admission out of a line is made after its lock is released. User
//! code (an input's `Clone`, a classifier, a waker, a dropped value) runs through the guard
//! with none of them held.

pub(crate) mod call;
mod limit;
mod rate;
mod retry;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::guard;
use crate::limits::TIMING_SAMPLE;
use crate::pool::{Histogram, Percentiles, Registry};
use crate::sync::{lock, AtomicU64, Mutex};
pub(crate) use limit::Limit;
pub use limit::Overload;
pub use rate::RateLimiter;
pub(crate) use retry::Policy;
pub use retry::Retry;

/// The options a program carries (see [`AsyncProgram`](crate::AsyncProgram)'s `timeout`,
/// `retry`, `rate_limit`, `concurrency_limit` and `adaptive_concurrency`).
#[derive(Clone, Default)]
pub(crate) struct Controls {
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Option<Policy>,
    pub(crate) rate: Option<RateLimiter>,
    pub(crate) limit: Option<Arc<Limit>>,
    pub(crate) counts: Arc<Counts>,
}

impl Controls {
    /// The same options with fresh counts: a program made by an option counts its own calls.
    pub(crate) fn derive(
        controls: Option<&Arc<Controls>>,
        change: impl FnOnce(&mut Controls),
    ) -> Arc<Controls> {
        let mut next = controls.map(|c| Controls::clone(c)).unwrap_or_default();
        next.counts = Arc::default();
        change(&mut next);
        Arc::new(next)
    }

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

/// A user's test over a program's output (a retry's `retry_if`, an overload signal).
pub(crate) type Classify<O> = Arc<dyn Fn(&O) -> bool + Send + Sync>;

/// A [`Classify`] with its output type erased, as a program's options keep it: an output of
/// another type (a program with several input types) is never classified as true.
pub(crate) type Classifier = Arc<dyn Fn(&dyn std::any::Any) -> bool + Send + Sync>;

pub(crate) fn erase<O: 'static>(classify: Classify<O>) -> Classifier {
    Arc::new(move |out: &dyn std::any::Any| out.downcast_ref::<O>().is_some_and(|o| classify(o)))
}

/// Something waiting in a line (a limit's or a limiter's): a controlled call.
pub(crate) trait Waiter: Send + Sync {
    /// Its turn came: `grant` is what it waited for. Called with no lock held.
    fn admit(self: Arc<Self>, grant: Grant);
    /// True once it wants nothing any more (its caller left, or it ended): the line skips it.
    fn is_gone(&self) -> bool;
    /// The pool it runs on (for its timer, and to learn that it closed).
    fn registry(&self) -> &Arc<Registry>;
}

/// What a waiter is admitted with.
pub(crate) enum Grant {
    /// A slot of a concurrency limit, given back when dropped.
    Slot(limit::Slot),
    /// A token of a rate limit, spent.
    Token,
    /// Its pool closed: it will not run.
    Closed,
}

/// Waiters let out of a line, each with what it waited for.
type Admissions = VecDeque<(Arc<dyn Waiter>, Grant)>;

thread_local! {
    /// Admissions out of lines this thread is handing out now, if it is (see [`admit_all`]).
    static ADMITTING: RefCell<Option<Admissions>> = const { RefCell::new(None) };
    /// The deadline of the call running on this thread, if it has one.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Hands each waiter its grant, outside every lock, through the guard. An admission may free a
/// slot that admits the next waiter, and so on down a line (at a pool's close, every call in a
/// limit's line): those are queued on this thread and handed out by the outermost call here, in
/// a loop, so that the stack does not grow with the line.
pub(crate) fn admit_all(mut admitted: Vec<(Arc<dyn Waiter>, Grant)>) {
    if admitted.is_empty() {
        return;
    }
    let mine = ADMITTING.try_with(|queue| match &mut *queue.borrow_mut() {
        Some(queue) => {
            queue.extend(admitted.drain(..));
            false
        }
        slot @ None => {
            *slot = Some(admitted.drain(..).collect());
            true
        }
    });
    match mine {
        Ok(false) => {}
        Ok(true) => {
            while let Some((waiter, grant)) =
                ADMITTING.with(|queue| queue.borrow_mut().as_mut().and_then(VecDeque::pop_front))
            {
                guard::quietly("a waiting call", || waiter.admit(grant));
            }
            ADMITTING.with(|queue| *queue.borrow_mut() = None);
        }
        // A thread-local destructor: no queue, hand out here.
        Err(_) => {
            for (waiter, grant) in admitted {
                guard::quietly("a waiting call", || waiter.admit(grant));
            }
        }
    }
}

/// The deadline of the call running on this thread, set by
/// [`AsyncProgram::timeout`](crate::AsyncProgram::timeout): a program can give its own HTTP
/// request or query the time that is left. `None` outside such a call (inside a job without a
/// deadline that runs within one, the outer call's).
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use asyncify_pool::{deadline, WorkerPool};
///
/// let pool = WorkerPool::new(1);
/// let left = pool
///     .asyncify(|_: ()| deadline().map(|d| d.saturating_duration_since(Instant::now())))
///     .timeout(Duration::from_secs(30));
/// let left = left.call(()).wait().unwrap().unwrap();
/// assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(20));
/// assert_eq!(deadline(), None);
/// ```
pub fn deadline() -> Option<Instant> {
    DEADLINE.try_with(Cell::get).ok().flatten()
}

/// Runs `f` with `deadline` in force for [`deadline()`], restoring the previous one after,
/// panic or not.
pub(crate) fn with_deadline<R>(deadline: Instant, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Instant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEADLINE.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(DEADLINE.with(|d| d.replace(Some(deadline))));
    f()
}

impl fmt::Debug for Controls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controls")
            .field("timeout", &self.timeout)
            .field("retry_attempts", &self.retry.as_ref().map(Policy::attempts))
            .field("rate", &self.rate)
            .field(
                "concurrency_limit",
                &self.limit.as_ref().map(|l| l.current()),
            )
            .finish()
    }
}
