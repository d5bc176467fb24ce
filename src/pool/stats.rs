//! What a pool counts: [`Stats`], and the per-thread [`Counters`] it adds up.

use std::sync::atomic::Ordering::Relaxed;

use crate::job::Outcome;
use crate::sync::AtomicU64;

/// One worker's tally, written only by that worker (so a plain load and store, no locked
/// instruction) and read by `stats()`. Aligned to keep workers off each other's cache lines.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Counters {
    completed: AtomicU64,
    panicked: AtomicU64,
    cancelled: AtomicU64,
}

impl Counters {
    /// Counts what a runner on this counter's thread found (husks and lost starts count
    /// nothing here: the job ran, and was counted, elsewhere).
    pub(crate) fn record(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Completed => &self.completed,
            Outcome::Panicked => &self.panicked,
            Outcome::Cancelled => &self.cancelled,
            Outcome::Husk | Outcome::Lost => return,
        };
        // ORDERING: single writer; readers want a recent value, not a synchronising one.
        counter.store(counter.load(Relaxed) + 1, Relaxed);
    }

    pub(crate) fn add_to(&self, stats: &mut Stats) {
        stats.completed += self.completed.load(Relaxed);
        stats.panicked += self.panicked.load(Relaxed);
        stats.cancelled += self.cancelled.load(Relaxed);
    }

    /// Folds a leaving thread's tally into the pool's (under `ctrl`, so not racing).
    pub(crate) fn absorb(&self, other: &Counters) {
        for (mine, theirs) in [
            (&self.completed, &other.completed),
            (&self.panicked, &other.panicked),
            (&self.cancelled, &other.cancelled),
        ] {
            mine.fetch_add(theirs.load(Relaxed), Relaxed);
        }
    }
}

/// A snapshot of what a pool is doing and has done, from [`WorkerPool::stats`](crate::WorkerPool::stats).
///
/// The counts are read one after another while the pool runs, so under load they are each
/// recent but not one atomic picture; once the pool is quiet they add up exactly: every job a
/// worker took off the queue is `completed`, `panicked` or `cancelled`, and the rest are
/// `queued` or `running`. Jobs that never reached a worker because the pool shut down (calls
/// after `shutdown`, jobs left in the queue when the last worker left, or the queue a timed-out
/// `shutdown_timeout` abandoned) appear in none of the counts: their callers got `ShutDown`.
/// A job that a waiting job started out of line counts once, as `completed` or `panicked`.
///
/// # Examples
///
/// ```
/// let pool = asyncify_pool::WorkerPool::new(2);
/// pool.spawn(|| ()).wait().unwrap();
/// let _ = pool.spawn(|| panic!("no")).wait();
/// let stats = pool.stats();
/// assert_eq!((stats.completed, stats.panicked, stats.threads), (1, 1, 2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Jobs waiting in the queue (not those still held by a handle waiting for room).
    pub queued: usize,
    /// Jobs running now: places in the pool taken. A job waiting inside another job, run by the
    /// waiting worker (or a spare thread for it), shares the waiter's place and counts once.
    pub running: usize,
    /// Jobs that ran and returned (also those whose caller gave up while they ran: dropped or
    /// aborted handles, whose output was discarded).
    pub completed: u64,
    /// Jobs that ran and panicked.
    pub panicked: u64,
    /// Jobs taken off the queue without running because their caller had dropped or aborted
    /// the handle (or their batch had cancelled them).
    pub cancelled: u64,
    /// The thread count asked for ([`WorkerPool::threads`](crate::WorkerPool::threads)): the
    /// target, and the most jobs that run at once.
    pub threads: usize,
    /// Worker threads alive now. Above `threads` after a shrink until the surplus threads
    /// leave: for a moment by default, or while they idle within the pool's
    /// [`keep_alive`](crate::Builder::keep_alive) (the default pool's is 10 seconds). Surplus
    /// threads run jobs like the others, but never more than `threads` jobs run at once.
    /// Spare threads, which run one job waited on from a deep stack and leave, are not counted.
    pub live_threads: usize,
}
