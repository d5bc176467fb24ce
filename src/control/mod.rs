//! Concurrency control for one program: deadlines, retries, rate limits and concurrency limits
//! (fixed or adaptive), the options of an [`AsyncProgram`](crate::AsyncProgram).
//!
//! # How a controlled call moves
//!
//! A call of a program with options passes gates, each of which it may have to wait at,
//! holding no worker:
//!
//! 1. a slot of the program's concurrency limit ([`limit`]), waiting in that limit's line;
//! 2. a token of its rate limit ([`rate`]), waiting in that limiter's line (the attempt
//!    carries it, like the slot: spent as the program starts, given back if it never does);
//! 3. an attempt ([`attempt`]): an ordinary job of the pool, under the caller's captured
//!    context, holding the slot until it ends;
//! 4. after the attempt, a verdict: done, or (by the [`retry`] policy) a backoff on the pool's
//!    timer and back to 1.
//!
//! [`start`] takes the shortest way that keeps the options: a call that passes its gates at
//! once is its first attempt's own job (no deadline, no retry policy), that job's cell with the
//! deadline beside it in one allocation ([`timed`]: a deadline, no retry policy), or that cell
//! inside a call ([`direct`]) that keeps the deadline and hands over to a driven call if the
//! policy wants another attempt. A call that must wait is driven from the start ([`call`]).
//!
//! The deadline, if any, is an entry on the pool's timer from the call on: when it rings the
//! call ends with `TimedOut` wherever it is (a queued attempt never starts, a running one sees
//! `is_cancelled()`). At the pool's close every wait outside the queue ends.
//!
//! Files: [`start`] (the way a call takes), [`attempt`] (an attempt's job), [`timed`] (a
//! deadline on the job's own cell), [`direct`] (the call around a first attempt), [`call`]
//! (the driver of a call's attempts), [`limit`] and [`rate`] (the gates), [`line`] (how
//! waiters leave a gate's line), [`retry`] (the policy and its backoff), [`deadline`] (the
//! deadline in force inside a call), [`stats`] (what a program counts).
//!
//! Locks: a call's own state, then a line's (a limit's or a limiter's), then the timer's, in
//! that order only; every admission out of a line is made after its lock is released. User
//! code (an input's `Clone`, a classifier, a waker, a dropped value) runs through the guard
//! with none of them held.

mod attempt;
mod call;
mod deadline;
mod direct;
mod limit;
mod line;
mod rate;
mod retry;
mod start;
mod stats;
mod timed;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use deadline::deadline;
pub(crate) use deadline::with_deadline;
pub(crate) use limit::Limit;
pub use limit::Overload;
pub(crate) use line::{admit_all, Grant, Waiter};
pub use rate::RateLimiter;
pub(crate) use retry::Policy;
pub use retry::Retry;
pub(crate) use start::start;
pub(crate) use stats::Counts;
pub use stats::ProgramStats;

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
}

/// A user's test over a program's output (a retry's `retry_if`, an overload signal).
pub(crate) type Classify<O> = Arc<dyn Fn(&O) -> bool + Send + Sync>;

/// A [`Classify`] with its output type erased, as a program's options keep it: an output of
/// another type (a program with several input types) is never classified as true.
pub(crate) type Classifier = Arc<dyn Fn(&dyn std::any::Any) -> bool + Send + Sync>;

pub(crate) fn erase<O: 'static>(classify: Classify<O>) -> Classifier {
    Arc::new(move |out: &dyn std::any::Any| {
        let out = out
            .downcast_ref::<O>()
            .or_else(|| out.downcast_ref::<Carried<O>>().map(|c| &c.out));
        out.is_some_and(|o| classify(o))
    })
}

/// An attempt's output with what its job hands back beside it, to be let go of on the
/// caller's side (a batch job's reference to its batch): a classifier sees only `out`, as it
/// would for a call.
pub(crate) struct Carried<O> {
    pub(crate) out: O,
    pub(crate) with: Arc<dyn std::any::Any + Send + Sync>,
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
