//! The library's numbers, each defined once: the defaults of its settings and the bounds it
//! enforces.

use std::time::Duration;

/// The most worker threads a pool may have: [`WorkerPool::MAX_THREADS`](crate::WorkerPool::MAX_THREADS).
pub(crate) const MAX_THREADS: usize = 1024;

/// The smallest stack a thread of a pool is started with: a smaller
/// [`Builder::stack_size`](crate::Builder::stack_size) is raised to it. A waiter deep in its
/// stack hands the awaited job to a spare thread once half of the stack is used (see
/// `pool::worker`), so the other half must hold one more level of nesting and the hand-off
/// itself (starting a thread). In a debug build 2,000 nested waits on one thread ran with
/// 32 KiB and overflowed with 24 KiB; for a size below the OS's minimum, which the OS raises,
/// the half-stack check meant nothing at all (every nested wait went to a spare). Twice the
/// size that ran leaves room for the part of the stack the OS keeps (thread-local storage)
/// and for the library's frames growing.
pub(crate) const MIN_STACK_SIZE: usize = 64 << 10;

/// The default of the `async_max_workers` setting: the default pool's thread count.
pub(crate) const DEFAULT_ASYNC_MAX_WORKERS: usize = 8;

/// How long a thread of the default pool above `async_max_workers` stays alive without a job
/// (its [`Builder::keep_alive`](crate::Builder::keep_alive)), so that calls under different
/// values reuse threads instead of starting and stopping them (tokio's blocking pool keeps its
/// idle threads as long).
pub(crate) const DEFAULT_POOL_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The default of the `max_errors` setting: the failures a batch tolerates (DSPy's default).
pub(crate) const DEFAULT_MAX_ERRORS: usize = 10;

/// A [`Retry`](crate::Retry)'s first backoff, unless set.
pub(crate) const DEFAULT_RETRY_BASE: std::time::Duration = std::time::Duration::from_millis(100);

/// A [`Retry`](crate::Retry)'s longest backoff, unless set.
pub(crate) const DEFAULT_RETRY_CAP: std::time::Duration = std::time::Duration::from_secs(10);

/// What adaptive concurrency multiplies its limit by on an overload (Netflix's AIMD limit
/// uses the same 0.9).
pub(crate) const ADAPTIVE_BACKOFF_RATIO: f64 = 0.9;

/// How long an epoch of the pool's timing figures lasts: `stats().queue_wait` and
/// `stats().run_time` cover the jobs that ended in the current epoch and the one before.
pub(crate) const STATS_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// One call in this many, counted per submitting thread, is timed for `stats().queue_wait` and
/// `stats().run_time` (the first call of each thread among them). A clock read costs tens of
/// nanoseconds, a fair share of a call's overhead in a burst; the counts stay exact. At least 1
/// (1 times every call).
pub(crate) const TIMING_SAMPLE: u32 = 8;
