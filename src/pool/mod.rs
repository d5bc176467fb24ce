//! The worker pool: a set of OS threads that it owns, fed by one FIFO queue.
//!
//! # Policy
//!
//! * **Threads.** A pool runs the number of threads it was given, starting them at
//!   construction, at most [`WorkerPool::MAX_THREADS`]. They never idle out while they are
//!   within the target; an idle worker spins briefly, then sleeps (see `sleep`), so an idle
//!   pool costs no CPU.
//! * **Concurrency.** At most `threads()` jobs run at once: a worker takes a permit (see
//!   `permits`) before it takes a job, so from the moment `set_threads(n)` returns, a job starts
//!   only if fewer than `n` are running.
//! * **Resizing.** The limit moves at once; the threads follow lazily (see `registry`).
//!   Growing starts the missing threads at once, reusing any still alive above an earlier,
//!   lower target. Shrinking lowers the target, and a surplus worker retires once it has had
//!   no job for the keep-alive ([`Builder::keep_alive`]; by default at its next job boundary).
//!   A running job is never interrupted.
//! * **Order.** One FIFO queue: jobs start in submission order. A job waited on from inside
//!   another job of the pool may start earlier, on its waiter (see `worker`).
//! * **Waiting inside a job.** [`JobHandle::wait`] on a thread of the job's pool runs the
//!   awaited job there if nobody has started it, and only that job; past half of the stack, on
//!   a spare thread (see `worker`). Nested waits neither deadlock nor grow with the queue.
//! * **Backpressure.** Unbounded by default. With `queue_capacity(n)`, at most `n` jobs wait
//!   in the queue; a call that finds it full returns a handle that holds the job and queues it
//!   when a worker makes room (the handle is woken, no thread spins or blocks for it), and
//!   `try_spawn`/`try_call` refuse instead, handing the input back (see `room`).
//! * **Counting.** Each thread counts what it ran, and times a sample of it (queue wait and run
//!   time, in log-scale histograms over a recent window: see `window`), in its own cache lines;
//!   `stats()` adds them up, so counting costs the hot path no shared write. A clock read costs
//!   tens of nanoseconds, so only one call in `TIMING_SAMPLE` per calling thread is timed (one
//!   read on the caller, two on the worker); the others read no clock.
//! * **Shutdown.** `shutdown` closes the pool (later calls resolve at once to `ShutDown`); the
//!   workers run what is queued and leave, and `shutdown` waits until every thread of the pool
//!   is gone (see `shutdown`), then joins them. The last worker to leave tears the queue down:
//!   a job still in it tells its caller `ShutDown` (see `registry`). Dropping the last
//!   `WorkerPool` handle does the same without waiting.
//! * **User code** (programs, hooks, wakers, destructors of what users hand in) runs only
//!   through [`guard`](crate::guard), never under a lock of the pool: it cannot cost a worker,
//!   a permit or an answer.

mod builder;
mod histogram;
mod permits;
mod registry;
mod room;
mod shutdown;
mod sleep;
mod starved;
mod stats;
mod submit;
mod timer;
mod window;
mod worker;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use builder::Builder;
pub(crate) use histogram::Histogram;
pub use histogram::Percentiles;
pub(crate) use registry::Registry;
pub use stats::Stats;
pub(crate) use submit::Reserved;
pub(crate) use timer::{hand_to_ringers, Alarm, RingerTask, TimerKey};
pub(crate) use worker::on_thread_of;
pub use worker::worker_index;

use crate::capture::Captured;
use crate::error::{PoolError, Refusal, ShutdownTimeout, TryCallError};
use crate::job::JobHandle;
use crate::limits::MAX_THREADS;
use crate::sync::deadline_after;

/// A pool of worker threads that runs blocking programs and hands their results back to async
/// (or blocking) callers.
///
/// `WorkerPool` is a cheap handle (`Clone + Send + Sync`): clones share the same threads. When
/// the last handle is dropped the pool closes: queued jobs still run and their handles resolve,
/// then the threads exit.
///
/// # Examples
///
/// ```
/// use asyncify_pool::WorkerPool;
///
/// let pool = WorkerPool::new(4);
/// let summarize = pool.asyncify(|text: String| format!("{} words", text.split_whitespace().count()));
/// let out = pollster::block_on(summarize.call("the quick brown fox".to_owned()));
/// assert_eq!(out.unwrap(), "4 words");
/// ```
#[derive(Clone)]
pub struct WorkerPool {
    handle: Arc<Handle>,
}

/// The user-facing owner: when the last `WorkerPool` clone goes, the pool closes. The pool's
/// threads hold only the `Registry`, so they do not keep the pool open.
struct Handle {
    registry: Arc<Registry>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.registry.close();
    }
}

impl WorkerPool {
    /// The most threads a pool may have: 1024. More is an error
    /// ([`PoolError::TooManyThreads`]) for [`Builder::threads`], [`set_threads`](Self::set_threads)
    /// and the `async_max_workers` setting, and a panic for [`new`](Self::new).
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::WorkerPool;
    /// assert!(WorkerPool::new(2).set_threads(WorkerPool::MAX_THREADS + 1).is_err());
    /// ```
    pub const MAX_THREADS: usize = MAX_THREADS;

    /// Starts a pool of `threads` worker threads.
    ///
    /// # Panics
    ///
    /// If `threads` is 0 (use [`builder`](Self::builder) for "one per CPU") or more than
    /// [`MAX_THREADS`](Self::MAX_THREADS), or if the operating system refuses to start a
    /// thread. [`builder`](Self::builder) returns these as errors instead.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(8);
    /// assert_eq!(pool.threads(), 8);
    /// ```
    pub fn new(threads: usize) -> Self {
        assert!(
            threads > 0,
            "WorkerPool::new(0): a pool needs at least one thread \
             (use WorkerPool::builder() for one per CPU)"
        );
        match Self::builder().threads(threads).build() {
            Ok(pool) => pool,
            Err(e) => panic!("WorkerPool::new({threads}): {e}"),
        }
    }

    /// A [`Builder`] for thread count, names, stack size and hooks.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::builder().threads(2).build().unwrap();
    /// assert_eq!(pool.threads(), 2);
    /// ```
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// Starts `threads` workers on a new registry; stops them again if one cannot start.
    fn start(registry: Arc<Registry>, threads: usize) -> Result<WorkerPool, PoolError> {
        let pool = WorkerPool {
            handle: Arc::new(Handle {
                registry: Arc::clone(&registry),
            }),
        };
        registry.start_workers(threads)?;
        Ok(pool)
    }

    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.handle.registry
    }

    /// Runs `f` once on the pool, like tokio's `spawn_blocking`, with the caller's settings
    /// overrides and tracing span in force on the worker for exactly this job. The job is
    /// queued before `spawn` returns.
    ///
    /// If the pool is shut down, the returned handle resolves at once to
    /// [`JobError::ShutDown`](crate::JobError::ShutDown).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let h = pool.spawn(|| std::fs::metadata(".").is_ok());
    /// assert_eq!(h.wait(), Ok(true));
    /// ```
    pub fn spawn<F, T>(&self, f: F) -> JobHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.registry().submit(f, Captured::here())
    }

    /// Like [`spawn`](Self::spawn), but refuses instead of waiting when the bounded queue is
    /// full (see [`Builder::queue_capacity`]), or when the pool is shut down, handing `f` back.
    ///
    /// # Errors
    ///
    /// [`TryCallError`] carrying `f`, saying whether the queue was full or the pool shut down.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// assert_eq!(pool.try_spawn(|| 5).unwrap().wait(), Ok(5));
    /// pool.shutdown();
    /// let refused = pool.try_spawn(|| 5).unwrap_err();
    /// assert!(refused.is_shut_down());
    /// assert_eq!((refused.into_input())(), 5);
    /// ```
    pub fn try_spawn<F, T>(&self, f: F) -> Result<JobHandle<T>, TryCallError<F>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self.reserve() {
            Ok(reserved) => Ok(self
                .registry()
                .submit_reserved(reserved, f, Captured::here())),
            Err(reason) => Err(TryCallError::new(f, reason)),
        }
    }

    /// Takes a queue slot for one job, or says why not.
    pub(crate) fn reserve(&self) -> Result<Reserved, Refusal> {
        self.registry().reserve()
    }

    /// Takes a queue slot for one job, or arranges for `cx` to be woken when one frees up.
    #[cfg(feature = "tower")]
    pub(crate) fn poll_reserve(
        &self,
        cx: &mut std::task::Context<'_>,
        registered: &mut Option<(usize, std::task::Waker)>,
    ) -> std::task::Poll<Result<Reserved, Refusal>> {
        self.registry().poll_reserve(cx, registered)
    }

    /// Gives up a wait for a queue slot registered by [`poll_reserve`](Self::poll_reserve).
    #[cfg(feature = "tower")]
    pub(crate) fn unregister_room(&self, registered: Option<(usize, std::task::Waker)>) {
        self.registry().room.unregister(registered);
    }

    /// A snapshot of the pool's counters (see [`Stats`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(3);
    /// let stats = pool.stats();
    /// assert_eq!((stats.threads, stats.queued, stats.running, stats.completed), (3, 0, 0, 0));
    /// ```
    pub fn stats(&self) -> Stats {
        self.registry().stats()
    }

    /// The number of threads the pool runs (the most jobs it runs at once).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(asyncify_pool::WorkerPool::new(3).threads(), 3);
    /// ```
    pub fn threads(&self) -> usize {
        self.registry().permits.target()
    }

    /// Changes the number of threads. Growing starts the new threads before returning (a
    /// thread still alive above an earlier, lower count is reused instead). Shrinking never
    /// interrupts a running job: from the moment this returns, a job starts only while fewer
    /// than `threads` run, and surplus threads leave once they have had no job for the pool's
    /// [`keep_alive`](Builder::keep_alive) (by default at once, when their job ends).
    ///
    /// # Errors
    ///
    /// [`PoolError::ZeroThreads`] for 0, [`PoolError::TooManyThreads`] above
    /// [`MAX_THREADS`](Self::MAX_THREADS) (nothing changes then), [`PoolError::ShutDown`] after
    /// shutdown, [`PoolError::Spawn`] if the operating system refuses a thread (the pool keeps
    /// the threads it has, and `threads()` says how many).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// pool.set_threads(6).unwrap();
    /// assert_eq!(pool.threads(), 6);
    /// pool.set_threads(1).unwrap();
    /// assert_eq!(pool.threads(), 1);
    /// ```
    pub fn set_threads(&self, threads: usize) -> Result<(), PoolError> {
        match threads {
            0 => Err(PoolError::ZeroThreads),
            n if n > MAX_THREADS => Err(PoolError::TooManyThreads {
                requested: n,
                max: MAX_THREADS,
            }),
            n => self.registry().set_threads(n),
        }
    }

    /// Stops accepting jobs, runs every job already accepted, and joins the threads.
    ///
    /// Calls made after (or racing with) `shutdown` either run with their result delivered, or
    /// resolve to [`JobError::ShutDown`](crate::JobError::ShutDown); never both, never neither. Calling it again, or from
    /// several threads, is fine: every call returns once the threads are gone.
    ///
    /// Called from inside a job of this pool, it closes the pool and returns at once without
    /// joining (a worker cannot join itself, and waiting for the others could wait for the
    /// caller); the threads still drain the queue and exit.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// let queued: Vec<_> = (0..10).map(|i| pool.spawn(move || i)).collect();
    /// pool.shutdown();
    /// // Everything accepted before the shutdown ran.
    /// let results: Vec<_> = queued.into_iter().map(|h| h.wait().unwrap()).collect();
    /// assert_eq!(results, (0..10).collect::<Vec<_>>());
    /// assert!(pool.spawn(|| ()).wait().unwrap_err().is_shut_down());
    /// ```
    pub fn shutdown(&self) {
        let _ = self.shutdown_until(None);
    }

    /// Like [`shutdown`](Self::shutdown), but for async code: the pool closes when this is
    /// called, and the returned future resolves once every thread of the pool has run what was
    /// accepted and left, without blocking the executor that polls it.
    ///
    /// Dropping the future early leaves the pool closing in the background: the queued jobs
    /// still run. To bound the wait, race it with your runtime's timer (or use
    /// [`shutdown_timeout`](Self::shutdown_timeout), which blocks). Polled on a thread of this
    /// pool (inside one of its jobs or hooks), it resolves at once, as
    /// [`shutdown`](Self::shutdown) returns at once there. The
    /// threads are not joined (they have only their exit left; a later blocking `shutdown`
    /// joins them).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// let queued: Vec<_> = (0..4).map(|i| pool.spawn(move || i * 10)).collect();
    /// pollster::block_on(async {
    ///     pool.shutdown_async().await;
    ///     assert_eq!(pool.stats().live_threads, 0);
    ///     for (i, h) in queued.into_iter().enumerate() {
    ///         assert_eq!(h.await, Ok(i * 10)); // everything accepted ran
    ///     }
    /// });
    /// ```
    pub fn shutdown_async(&self) -> ShutdownFuture {
        let registry = self.registry();
        registry.close();
        ShutdownFuture {
            registry: Arc::clone(registry),
            slot: None,
        }
    }

    /// Like [`shutdown`](Self::shutdown), but waits at most `timeout` for the workers.
    /// `Duration::MAX` (or any timeout past what an `Instant` holds) waits without a limit.
    ///
    /// # Errors
    ///
    /// [`ShutdownTimeout`] if not every thread has left:
    ///
    /// * Time ran out with threads still running. They go on with the job they run and exit
    ///   after it; the jobs still queued then will not run, and their callers are told
    ///   [`JobError::ShutDown`](crate::JobError::ShutDown) at once, all of them before any of
    ///   those jobs is dropped (their inputs' `Drop`s run on this thread, after the callers are
    ///   told, and this call returns once they have).
    /// * It was called on a thread of this pool (inside one of its jobs or hooks), which cannot
    ///   wait for its own thread, whatever the timeout (`Duration::MAX` too): it closes the
    ///   pool and gives the error at once, and abandons nothing. The other threads run what
    ///   was queued and leave, as after [`shutdown`](Self::shutdown) there. (In the stop hook
    ///   of the last thread, which no longer counts itself, `threads()` may be 0.)
    ///
    /// `Ok` means every thread has left (its `on_thread_stop` hook has run, its per-worker
    /// states are dropped). `Duration::ZERO` looks once without waiting, so even on an idle
    /// pool, whose threads take a moment to wake and leave, it usually gives the error: nothing
    /// was lost, and the threads leave on their own right after (a later `shutdown` waits for
    /// them).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    ///
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let (started_tx, started) = mpsc::channel();
    /// let (release, released) = mpsc::channel::<()>();
    /// let _slow = pool.spawn(move || {
    ///     started_tx.send(()).unwrap();
    ///     let _ = released.recv(); // until `release` is dropped
    /// });
    /// started.recv().unwrap();
    /// let err = pool.shutdown_timeout(Duration::from_millis(10)).unwrap_err();
    /// assert_eq!(err.running(), 1);
    /// drop(release);
    /// ```
    pub fn shutdown_timeout(&self, timeout: Duration) -> Result<(), ShutdownTimeout> {
        self.shutdown_until(deadline_after(timeout))
    }

    fn shutdown_until(&self, deadline: Option<std::time::Instant>) -> Result<(), ShutdownTimeout> {
        let registry = self.registry();
        registry.close();
        if on_thread_of(registry.id) {
            // A thread of the pool cannot wait for itself, so not every thread has left: the
            // others drain the queue and leave.
            return Err(ShutdownTimeout {
                running: registry.permits.load().1,
                threads: registry.stats().live_threads,
                on_pool_thread: true,
            });
        }
        if registry.wait_gone(deadline) {
            return Ok(());
        }
        let timeout = ShutdownTimeout {
            running: registry.permits.load().1,
            threads: registry.stats().live_threads,
            on_pool_thread: false,
        };
        // Outside every lock: each job dropped tells its caller `ShutDown`.
        registry.abandon_queued();
        Err(timeout)
    }

    /// True once [`shutdown`](Self::shutdown) was called.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// assert!(!pool.is_shut_down());
    /// pool.shutdown();
    /// assert!(pool.is_shut_down());
    /// ```
    pub fn is_shut_down(&self) -> bool {
        self.registry().is_closed()
    }
}

/// The future of [`WorkerPool::shutdown_async`]: resolves once every thread of the pool is gone.
///
/// # Examples
///
/// ```
/// use asyncify_pool::{ShutdownFuture, WorkerPool};
///
/// let pool = WorkerPool::new(1);
/// let closing: ShutdownFuture = pool.shutdown_async();
/// assert!(pool.is_shut_down()); // closed at once, before the future is polled
/// pollster::block_on(closing);
/// ```
#[must_use = "the pool is closed already; await this to know when its threads are gone"]
pub struct ShutdownFuture {
    registry: Arc<Registry>,
    /// Where this future's waker waits for the last thread, once polled.
    slot: Option<shutdown::WakerSlot>,
}

impl std::future::Future for ShutdownFuture {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = self.get_mut();
        // Polled on a thread of the pool (wherever it was made), it cannot wait for itself.
        if on_thread_of(this.registry.id) {
            return std::task::Poll::Ready(());
        }
        this.registry.poll_gone(cx.waker(), &mut this.slot)
    }
}

impl Drop for ShutdownFuture {
    fn drop(&mut self) {
        // Its slot stays listed until the threads are gone, but empty: no waker kept alive.
        if let Some(slot) = self.slot.take() {
            let waker = crate::sync::lock(&slot).take();
            crate::guard::drop("a waker", waker);
        }
    }
}

impl fmt::Debug for ShutdownFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownFuture").finish_non_exhaustive()
    }
}

impl fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stats = self.stats();
        f.debug_struct("WorkerPool")
            .field("threads", &stats.threads)
            .field("live", &stats.live_threads)
            .field("shut_down", &self.is_shut_down())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::stats::Counters;
    use super::*;
    use std::pin::Pin;
    use std::time::{Duration, Instant};

    /// The last worker tears the queue down outside every lock of the pool: a job still queued
    /// whose closure holds the last `WorkerPool` handle is dropped there, and dropping that
    /// handle closes the pool again, which takes the control lock. Done under the lock (as it
    /// once was), that deadlocked. Here the queue is torn down as the last worker does it, on a
    /// thread of its own, and must finish, telling the job's caller `ShutDown`.
    #[test]
    fn tearing_the_queue_down_drops_a_last_handle_outside_the_lock() {
        let config = builder::ThreadConfig {
            name: "teardown".to_owned(),
            stack_size: 1 << 20,
            on_start: None,
            on_stop: None,
            keep_alive: Duration::ZERO,
        };
        let registry = Registry::new(1, None, config);
        let last = WorkerPool {
            handle: Arc::new(Handle {
                registry: Arc::clone(&registry),
            }),
        };
        // Queued as a call that raced the close would be, with the last handle in its closure.
        let handle = registry.submit(move || drop(last), Captured::default());
        registry.close();
        let (done_tx, done) = std::sync::mpsc::channel();
        let teardown = {
            let registry = Arc::clone(&registry);
            std::thread::spawn(move || {
                registry.thread_left(&Arc::new(Counters::new(Instant::now())), true);
                done_tx.send(()).unwrap();
            })
        };
        done.recv_timeout(Duration::from_secs(60))
            .expect("tearing the queue down deadlocked");
        teardown.join().unwrap();
        assert_eq!(handle.wait(), Err(crate::JobError::shut_down()));
    }

    #[test]
    fn pin_is_not_needed_for_handles() {
        fn unpin<T: Unpin>() {}
        unpin::<JobHandle<()>>();
        let mut handle = WorkerPool::new(1).spawn(|| 3);
        assert_eq!(pollster::block_on(Pin::new(&mut handle)), Ok(3));
    }
}
