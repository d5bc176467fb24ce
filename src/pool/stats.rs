//! What a pool counts: [`Stats`], and the per-thread [`Counters`] it adds up.
//!
//! Each thread of the pool counts what it ran, and how long each timed job (one call in
//! `TIMING_SAMPLE`, chosen by its caller: see `job`) waited in the queue and ran (see
//! `histogram` for the buckets and `window` for "recent"), in its own [`Counters`]:
//! one writer, so plain loads and stores. `stats()` adds every thread's up ([`Sum`]), with those
//! of the threads that left, folded into the pool's as they leave.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::histogram::{Histogram, Percentiles};
use super::window::{epoch, Recent};
use crate::job::{Outcome, Timing};
use crate::sync::AtomicU64;

/// One worker's tally, written only by that worker (so a plain load and store, no locked
/// instruction) and read by `stats()`. Aligned to keep workers off each other's cache lines.
#[repr(align(128))]
pub(crate) struct Counters {
    completed: AtomicU64,
    panicked: AtomicU64,
    cancelled: AtomicU64,
    abandoned: AtomicU64,
    /// When the pool started: epochs of the timing window count from here.
    origin: Instant,
    queue_wait: Recent,
    run_time: Recent,
}

impl Counters {
    /// Counters for a thread of a pool that started at `origin`.
    pub(crate) fn new(origin: Instant) -> Self {
        Counters {
            completed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            origin,
            queue_wait: Recent::default(),
            run_time: Recent::default(),
        }
    }

    /// Counts what a runner on this counter's thread found (husks and lost starts count
    /// nothing here: the job ran, and was counted, elsewhere), and times a job that ran if it
    /// was in the timing sample.
    pub(crate) fn record(&self, outcome: Outcome) {
        let (counter, timing) = match outcome {
            Outcome::Completed(timing) => (&self.completed, timing),
            Outcome::Panicked(timing) => (&self.panicked, timing),
            Outcome::Abandoned(timing) => (&self.abandoned, timing),
            Outcome::Cancelled => (&self.cancelled, None),
            Outcome::Husk | Outcome::Lost => return,
        };
        // ORDERING: single writer; readers want a recent value, not a synchronising one.
        counter.store(counter.load(Relaxed) + 1, Relaxed);
        if let Some(timing) = timing {
            self.time(timing);
        }
    }

    fn time(
        &self,
        Timing {
            queued,
            started,
            ended,
        }: Timing,
    ) {
        let epoch = epoch(self.origin, ended);
        self.run_time
            .record(epoch, ended.saturating_duration_since(started));
        if let Some(queued) = queued {
            self.queue_wait
                .record(epoch, started.saturating_duration_since(queued));
        }
    }

    /// Folds a leaving thread's tally into the pool's (under `ctrl`, so not racing).
    pub(crate) fn absorb(&self, other: &Counters) {
        for (mine, theirs) in [
            (&self.completed, &other.completed),
            (&self.panicked, &other.panicked),
            (&self.cancelled, &other.cancelled),
            (&self.abandoned, &other.abandoned),
        ] {
            mine.fetch_add(theirs.load(Relaxed), Relaxed);
        }
        self.queue_wait.absorb(&other.queue_wait);
        self.run_time.absorb(&other.run_time);
    }
}

/// [`Counters`] being added up into [`Stats`].
pub(crate) struct Sum {
    stats: Stats,
    /// The epoch of the moment the sum was begun.
    now: u64,
    queue_wait: Histogram,
    run_time: Histogram,
}

impl Sum {
    /// Begins a sum on `stats` (the pool's gauges), for a pool that started at `origin`.
    pub(crate) fn new(stats: Stats, origin: Instant) -> Self {
        Sum {
            stats,
            now: epoch(origin, Instant::now()),
            queue_wait: Histogram::default(),
            run_time: Histogram::default(),
        }
    }

    pub(crate) fn add(&mut self, counters: &Counters) {
        let stats = &mut self.stats;
        stats.completed += counters.completed.load(Relaxed);
        stats.panicked += counters.panicked.load(Relaxed);
        stats.cancelled += counters.cancelled.load(Relaxed);
        stats.abandoned += counters.abandoned.load(Relaxed);
        counters.queue_wait.add_to(self.now, &mut self.queue_wait);
        counters.run_time.add_to(self.now, &mut self.run_time);
    }

    pub(crate) fn finish(self) -> Stats {
        Stats {
            queue_wait: self.queue_wait.percentiles(),
            run_time: self.run_time.percentiles(),
            ..self.stats
        }
    }
}

/// A snapshot of what a pool is doing and has done, from [`WorkerPool::stats`](crate::WorkerPool::stats).
///
/// The counts are read one after another while the pool runs, so under load they are each
/// recent but not one atomic picture; once the pool is quiet they add up exactly: every job a
/// worker took off the queue (or its waiter started itself) is `completed`, `panicked`,
/// `cancelled` or `abandoned`, and the rest are `queued` or `running`. Jobs that never reached
/// a worker because the pool shut down (calls after `shutdown`, jobs left in the queue when the
/// last worker left, or the queue a timed-out `shutdown_timeout` abandoned) appear in none of
/// the counts: their callers got `ShutDown`. A job that a waiting job started out of line
/// counts once. A job is counted when it ends, before its caller can see its result (so a
/// caller that has its result finds it counted); an aborted job's caller has `Cancelled` at
/// once, and the job is counted `abandoned` when it ends.
///
/// `queue_wait` and `run_time` are [`Percentiles`] over the jobs that *ended* in the last one
/// to two minutes (two one-minute generations, taking turns; empty again once the pool has
/// been idle for two minutes), from fixed log-scale buckets: each percentile at most 12.5%
/// above the true value, never below it, and `max` exact (the longest *timed* job's).
///
/// **The durations are a sample; the counts are not.** Reading the clock costs tens of
/// nanoseconds, a fair share of what the pool adds to a call in a burst, so only one call in
/// eight is timed: each thread that makes calls times its first and then every eighth (a
/// count per thread, across pools and batches). The others read no clock at all. Which calls
/// are timed depends only on that count, not on the queue, the load or how long jobs take, so
/// the sample's percentiles estimate those of all calls without bias; `count` is the number
/// of timed jobs, about an eighth of those that ran. `completed`, `panicked`, `cancelled` and
/// `abandoned` count every job. (A thread whose calls repeat a pattern with a period dividing
/// eight, such as two programs called in turn, has the same places in it timed every time.)
///
/// A timed job that ran (`completed`, `panicked`, `abandoned`) has a `run_time`; if it started
/// from the queue it also has a `queue_wait`. A job started out of line by a worker that waits
/// on it (see [`JobHandle::wait`](crate::JobHandle::wait)), or taken from a handle still
/// waiting for room in a bounded queue, never waited its turn in the queue and has none, so
/// `queue_wait.count` may be below `run_time.count`.
///
/// # Examples
///
/// ```
/// let pool = asyncify_pool::WorkerPool::new(2);
/// pool.spawn(|| ()).wait().unwrap();
/// let _ = pool.spawn(|| panic!("no")).wait();
/// let stats = pool.stats();
/// assert_eq!((stats.completed, stats.panicked, stats.threads), (1, 1, 2));
/// // This thread's first call was timed, its second was not (one in eight is).
/// assert_eq!((stats.run_time.count, stats.queue_wait.count), (1, 1));
/// assert!(stats.run_time.p50 <= stats.run_time.max);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Jobs waiting in the queue (not those still held by a handle waiting for room).
    pub queued: usize,
    /// Jobs running now: places in the pool taken. A job waiting inside another job, run by the
    /// waiting worker (or a spare thread for it), shares the waiter's place and counts once. A
    /// worker takes its place before it takes a job off the queue, so one that finds the queue
    /// empty holds a place for a moment with no job (an idle pool may show up to one per
    /// worker).
    pub running: usize,
    /// Jobs that ran and returned, their output delivered to the caller (or, for a
    /// [detached](crate::JobHandle::detach) handle, dropped as asked).
    pub completed: u64,
    /// Jobs that ran and panicked (also those whose caller had given up meanwhile: the count
    /// is the only trace of a panic nobody received).
    pub panicked: u64,
    /// Jobs taken off the queue without running because their caller had dropped or aborted
    /// the handle, their batch had cancelled them, or their call's deadline had passed.
    pub cancelled: u64,
    /// Jobs that ran and returned after their caller dropped or
    /// [aborted](crate::AbortHandle::abort) the handle while they ran: their output was
    /// discarded. (Before the start, that caller's job is `cancelled` instead.)
    pub abandoned: u64,
    /// How long recent jobs waited in the queue: from entering it (for a bounded queue, once
    /// there was room) to their start. A sample: one call in eight per calling thread (see
    /// above).
    pub queue_wait: Percentiles,
    /// How long recent jobs ran: from their start to their end, panic or not. A sample: one
    /// call in eight per calling thread (see above).
    pub run_time: Percentiles,
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
