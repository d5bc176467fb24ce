//! [`Builder`]: a pool's configuration, every knob with its documented default, checked once
//! at [`build`](Builder::build).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::registry::Registry;
use super::WorkerPool;
use crate::error::PoolError;
use crate::limits::{MAX_THREADS, MIN_STACK_SIZE};

/// A thread start or stop hook.
pub(crate) type Hook = Arc<dyn Fn(usize) + Send + Sync>;

/// Configuration for a [`WorkerPool`], made by [`WorkerPool::builder`].
///
/// | knob | default |
/// |---|---|
/// | [`threads`](Self::threads) | `num_cpus::get()` (also for 0), at most [`WorkerPool::MAX_THREADS`] |
/// | [`thread_name`](Self::thread_name) | `"asyncify"`, threads are named `asyncify-0`, `asyncify-1`, … |
/// | [`stack_size`](Self::stack_size) | the standard library's default (`RUST_MIN_STACK`, else 2 MiB), at least 64 KiB |
/// | [`on_thread_start`](Self::on_thread_start) / [`on_thread_stop`](Self::on_thread_stop) | none |
/// | [`queue_capacity`](Self::queue_capacity) | unbounded |
/// | [`keep_alive`](Self::keep_alive) | `Duration::ZERO`: surplus threads leave at their next job boundary |
///
/// # Examples
///
/// ```
/// use asyncify_pool::WorkerPool;
///
/// let pool = WorkerPool::builder()
///     .threads(4)
///     .thread_name("llm")
///     .stack_size(256 * 1024)
///     .on_thread_start(|i| println!("worker {i} up"))
///     .build()
///     .unwrap();
/// assert_eq!(pool.threads(), 4);
/// let name = pool.spawn(|| std::thread::current().name().unwrap().to_owned()).wait().unwrap();
/// assert!(name.starts_with("llm-"));
/// ```
#[must_use]
pub struct Builder {
    threads: usize,
    name: String,
    stack_size: Option<usize>,
    on_start: Option<Hook>,
    on_stop: Option<Hook>,
    queue_capacity: Option<usize>,
    keep_alive: Duration,
}

/// What every thread of a pool is started with.
pub(crate) struct ThreadConfig {
    pub(crate) name: String,
    pub(crate) stack_size: usize,
    pub(crate) on_start: Option<Hook>,
    pub(crate) on_stop: Option<Hook>,
    /// How long a thread above the target may go without a job before it leaves.
    pub(crate) keep_alive: Duration,
}

impl Builder {
    pub(super) fn new() -> Self {
        Builder {
            threads: 0,
            name: "asyncify".to_owned(),
            stack_size: None,
            on_start: None,
            on_stop: None,
            queue_capacity: None,
            keep_alive: Duration::ZERO,
        }
    }

    /// The number of worker threads; 0 means `num_cpus::get()`. More than
    /// [`WorkerPool::MAX_THREADS`] is an error at [`build`](Self::build).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::builder().threads(3).build().unwrap();
    /// assert_eq!(pool.threads(), 3);
    /// ```
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// The prefix of the worker threads' names: `{prefix}-{index}`. Linux shows only the first
    /// 15 bytes of a thread name, so keep it short. A prefix with a NUL byte is an error at
    /// [`build`](Self::build).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::builder().threads(1).thread_name("db").build().unwrap();
    /// let name = pool.spawn(|| std::thread::current().name().map(String::from)).wait().unwrap();
    /// assert_eq!(name.as_deref(), Some("db-0"));
    /// ```
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.name = prefix.into();
        self
    }

    /// The stack size of each worker thread, in bytes. A size the operating system refuses is
    /// an error at [`build`](Self::build) ([`PoolError::Spawn`]).
    ///
    /// Sizes below 64 KiB (0 included) are raised to 64 KiB, and so is a smaller
    /// `RUST_MIN_STACK` when this is not set: the pool's nested waits need that much (below).
    /// The operating system may round the size up further (to whole pages, or to its own
    /// minimum); the pool counts only on the size asked for.
    ///
    /// A job that waits on another job of its pool may run that job on its own stack (see
    /// [`JobHandle::wait`](crate::JobHandle::wait)), but only while less than half of the stack
    /// is in use; deeper, the awaited job runs on a spare thread with a stack of this size. So
    /// nested waits of any depth fit any stack size, as long as one level of the program's own
    /// nesting (its frames between one wait and the next) fits in half of it.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::builder().stack_size(8 << 20).build().unwrap();
    /// # drop(pool);
    /// ```
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// Runs on each thread of the pool when it starts, with the thread's index (0, 1, … in
    /// start order, never reused), before it runs any job. Spare threads (see
    /// [`stack_size`](Self::stack_size)) run it too. A panic in the hook is caught and reported
    /// through `tracing`; the thread goes on.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let started = Arc::new(AtomicUsize::new(0));
    /// let s = started.clone();
    /// let pool = asyncify_pool::WorkerPool::builder()
    ///     .threads(2)
    ///     .on_thread_start(move |_| { s.fetch_add(1, Ordering::SeqCst); })
    ///     .build()
    ///     .unwrap();
    /// pool.shutdown();
    /// assert_eq!(started.load(Ordering::SeqCst), 2);
    /// ```
    pub fn on_thread_start(mut self, hook: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_start = Some(Arc::new(hook));
        self
    }

    /// Runs on each thread of the pool just before it exits (shutdown, retiring after a
    /// `set_threads` that shrank the pool and its [`keep_alive`](Self::keep_alive), or a spare
    /// thread done with its job), with the thread's index. A panic in it is caught and
    /// reported through `tracing`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let stopped = Arc::new(AtomicUsize::new(0));
    /// let s = stopped.clone();
    /// let pool = asyncify_pool::WorkerPool::builder()
    ///     .threads(2)
    ///     .on_thread_stop(move |_| { s.fetch_add(1, Ordering::SeqCst); })
    ///     .build()
    ///     .unwrap();
    /// pool.shutdown(); // joins, so both hooks have run
    /// assert_eq!(stopped.load(Ordering::SeqCst), 2);
    /// ```
    pub fn on_thread_stop(mut self, hook: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_stop = Some(Arc::new(hook));
        self
    }

    /// Bounds the queue to `capacity` waiting jobs (running ones not counted).
    ///
    /// When the queue is full, [`WorkerPool::spawn`] and [`AsyncProgram::call`](crate::AsyncProgram::call) still return a
    /// handle at once, but the job waits inside the handle until a worker makes room: awaiting
    /// the handle waits asynchronously, [`JobHandle::wait`](crate::JobHandle::wait) blocks, and dropping the handle
    /// meanwhile queues nothing. [`WorkerPool::try_spawn`] and [`AsyncProgram::try_call`](crate::AsyncProgram::try_call) return
    /// the input back instead. A capacity of 0 is taken as 1; `usize::MAX` is unbounded.
    ///
    /// The handles waiting for room are woken from the pool's timer threads (started the first
    /// time a worker makes room while a handle waits), not by the worker that made room: a
    /// waker that blocks holds up no job, and the handles after it are woken by another of
    /// those threads, started once the first has been stuck for 10 ms. The timer's threads run
    /// at most eight such pieces of work at once (the pool's own included): while eight block,
    /// further wake-ups wait for one of them to return. Once the pool is shut down, the worker
    /// wakes them itself. Handing the wake-ups over costs throughput when many tasks wait on a
    /// small queue of short jobs (`BENCHMARKS.md`).
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::WorkerPool;
    /// use std::sync::mpsc;
    ///
    /// let pool = WorkerPool::builder().threads(1).queue_capacity(1).build().unwrap();
    /// let (release, gate) = mpsc::channel::<()>();
    /// let (started_tx, started) = mpsc::channel();
    /// let busy = pool.spawn(move || { started_tx.send(()).unwrap(); gate.recv().unwrap() });
    /// started.recv().unwrap();                  // the worker is busy
    /// let queued = pool.spawn(|| 1);            // takes the one queue slot
    /// let waiting = pool.spawn(|| 2);           // no room: held by its handle
    /// assert!(waiting.is_waiting_for_room());
    /// assert!(pool.try_spawn(|| 3).unwrap_err().is_full());
    /// release.send(()).unwrap();
    /// assert_eq!((queued.wait(), waiting.wait()), (Ok(1), Ok(2)));
    /// # busy.wait().unwrap();
    /// ```
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = Some(capacity.max(1));
        self
    }

    /// How long a thread above the pool's target stays alive without a job, after
    /// [`set_threads`](WorkerPool::set_threads) lowered the target. Default `Duration::ZERO`.
    ///
    /// Lowering the target takes effect at once for the concurrency limit (from the return of
    /// `set_threads(n)`, a job starts only while fewer than `n` run) but not for the threads: a
    /// surplus thread leaves once it has had no job for `keep_alive`. Raising the target again
    /// meanwhile reuses the living threads and starts only the missing ones, so a limit that
    /// moves up and down does not start and stop threads on every change. Until they leave,
    /// surplus threads count in [`Stats::live_threads`](crate::Stats::live_threads); idle, they
    /// sleep, and each wakes once as its keep-alive ends.
    ///
    /// * `Duration::ZERO`: a surplus thread leaves at its next job boundary (an idle one at
    ///   once), so the pool has `threads` threads again as soon as their jobs end.
    /// * `Duration::MAX`: surplus threads never leave on their own; they stay until the pool
    ///   shuts down.
    ///
    /// The keep-alive never delays a shutdown: [`shutdown`](WorkerPool::shutdown), its timed
    /// and async forms, and dropping the last handle end idle threads at once. The default
    /// pool of [`asyncify`](crate::asyncify) keeps surplus threads for 10 seconds.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = asyncify_pool::WorkerPool::builder()
    ///     .threads(8)
    ///     .keep_alive(Duration::from_secs(3600))
    ///     .build()
    ///     .unwrap();
    /// pool.set_threads(2).unwrap(); // at most 2 jobs at once from here on
    /// assert_eq!(pool.stats().threads, 2);
    /// assert_eq!(pool.stats().live_threads, 8); // the 6 surplus threads idle on
    /// pool.set_threads(8).unwrap(); // reuses them: no thread started
    /// ```
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// Starts the pool's threads.
    ///
    /// # Errors
    ///
    /// * [`PoolError::TooManyThreads`] for more than [`WorkerPool::MAX_THREADS`] threads;
    /// * [`PoolError::InvalidThreadName`] for a thread name with a NUL byte;
    /// * [`PoolError::Spawn`] if the operating system refuses a thread (for example its stack
    ///   size); the threads already started are stopped again.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::{PoolError, WorkerPool};
    ///
    /// let pool = WorkerPool::builder().build().unwrap();
    /// assert_eq!(pool.threads(), num_cpus::get());
    /// let err = WorkerPool::builder().thread_name("bad\0name").build().unwrap_err();
    /// assert!(matches!(err, PoolError::InvalidThreadName { .. }));
    /// ```
    pub fn build(self) -> Result<WorkerPool, PoolError> {
        let threads = match self.threads {
            0 => num_cpus::get().clamp(1, MAX_THREADS),
            n if n > MAX_THREADS => {
                return Err(PoolError::TooManyThreads {
                    requested: n,
                    max: MAX_THREADS,
                })
            }
            n => n,
        };
        if self.name.contains('\0') {
            return Err(PoolError::InvalidThreadName { name: self.name });
        }
        let config = ThreadConfig {
            name: self.name,
            stack_size: self
                .stack_size
                .unwrap_or_else(default_stack_size)
                .max(MIN_STACK_SIZE),
            on_start: self.on_start,
            on_stop: self.on_stop,
            keep_alive: self.keep_alive,
        };
        let capacity = self.queue_capacity.filter(|&c| c < usize::MAX);
        WorkerPool::start(Registry::new(threads, capacity, config), threads)
    }
}

/// The standard library's default stack size for new threads, which the pool passes on
/// explicitly (raised to `MIN_STACK_SIZE`) so that it knows how deep its own threads may go.
fn default_stack_size() -> usize {
    std::env::var("RUST_MIN_STACK")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2 << 20)
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("threads", &self.threads)
            .field("thread_name", &self.name)
            .field("stack_size", &self.stack_size)
            .field("queue_capacity", &self.queue_capacity)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}
