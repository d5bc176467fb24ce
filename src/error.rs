//! Errors: every error type of the crate, what a job, the pool and the settings can tell
//! their callers.

use std::fmt;

/// Why a job did not produce its value.
///
/// Returned by awaiting or [`wait`](crate::JobHandle::wait)ing a [`JobHandle`](crate::JobHandle).
///
/// # Examples
///
/// ```
/// use asyncify_pool::{JobError, WorkerPool};
///
/// let pool = WorkerPool::new(1);
/// let err = pool.spawn(|| -> u32 { panic!("model unavailable") }).wait().unwrap_err();
/// assert!(err.is_panic());
/// assert!(err.to_string().contains("model unavailable"));
///
/// pool.shutdown();
/// let err = pool.spawn(|| 1).wait().unwrap_err();
/// assert!(matches!(err, JobError::ShutDown { .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobError {
    /// The program panicked. The worker thread caught the panic and went on with other jobs.
    #[non_exhaustive]
    Panicked {
        /// The panic message, or a note that the payload was not a string.
        message: String,
    },
    /// The pool was shut down (or all its handles dropped) before the job could start, so it
    /// never ran.
    #[non_exhaustive]
    ShutDown {},
    /// The job was cancelled: before it started, by the batch that owned it (its error budget
    /// ran out, or the batch was dropped), so it never ran; or through its
    /// [`AbortHandle`](crate::AbortHandle), before it started (it never ran) or while it ran
    /// (its output was discarded).
    #[non_exhaustive]
    Cancelled {},
    /// The call was refused before it was queued, because a setting it depends on is unusable:
    /// the `async_max_workers` in force for a call of the free [`asyncify`](crate::asyncify)
    /// is not a `usize` from 1 to [`WorkerPool::MAX_THREADS`](crate::WorkerPool::MAX_THREADS).
    /// It never ran.
    #[non_exhaustive]
    InvalidSetting {
        /// What is wrong with the setting (the [`SettingsError`]'s text).
        message: String,
    },
    /// The call's deadline passed (see [`AsyncProgram::timeout`](crate::AsyncProgram::timeout)):
    /// before the job started (it never ran), or while it ran (its output was discarded, and
    /// [`is_cancelled`](crate::is_cancelled) turned true inside it).
    #[non_exhaustive]
    TimedOut {},
}

impl JobError {
    pub(crate) fn timed_out() -> Self {
        JobError::TimedOut {}
    }

    pub(crate) fn shut_down() -> Self {
        JobError::ShutDown {}
    }

    pub(crate) fn cancelled() -> Self {
        JobError::Cancelled {}
    }

    pub(crate) fn panicked(message: String) -> Self {
        JobError::Panicked { message }
    }

    pub(crate) fn invalid_setting(error: SettingsError) -> Self {
        JobError::InvalidSetting {
            message: error.to_string(),
        }
    }

    /// True if the program panicked.
    ///
    /// # Examples
    ///
    /// ```
    /// # use asyncify_pool::WorkerPool;
    /// let pool = WorkerPool::new(1);
    /// assert!(pool.spawn(|| panic!("boom")).wait().unwrap_err().is_panic());
    /// ```
    pub fn is_panic(&self) -> bool {
        matches!(self, JobError::Panicked { .. })
    }

    /// True if the job never ran because the pool was shut down.
    ///
    /// # Examples
    ///
    /// ```
    /// # use asyncify_pool::WorkerPool;
    /// let pool = WorkerPool::new(1);
    /// pool.shutdown();
    /// assert!(pool.spawn(|| ()).wait().unwrap_err().is_shut_down());
    /// ```
    pub fn is_shut_down(&self) -> bool {
        matches!(self, JobError::ShutDown { .. })
    }

    /// True if the job was cancelled, by its batch or through its
    /// [`AbortHandle`](crate::AbortHandle).
    ///
    /// # Examples
    ///
    /// ```
    /// # use asyncify_pool::JobError;
    /// # fn check(e: JobError) -> bool {
    /// e.is_cancelled()
    /// # }
    /// ```
    pub fn is_cancelled(&self) -> bool {
        matches!(self, JobError::Cancelled { .. })
    }

    /// True if the call was refused because a setting it depends on is unusable.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::{asyncify, settings::{self, Overrides}};
    ///
    /// let program = asyncify(|x: u32| x);
    /// let bad = Overrides::new().with("async_max_workers", 0usize);
    /// let err = settings::context(bad, || program.call(1)).wait().unwrap_err();
    /// assert!(err.is_invalid_setting());
    /// ```
    pub fn is_invalid_setting(&self) -> bool {
        matches!(self, JobError::InvalidSetting { .. })
    }

    /// True if the call's deadline passed before it produced its value.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use asyncify_pool::WorkerPool;
    ///
    /// let pool = WorkerPool::new(1);
    /// let slow = pool
    ///     .asyncify(|ms: u64| std::thread::sleep(Duration::from_millis(ms)))
    ///     .timeout(Duration::from_millis(10));
    /// assert!(slow.call(2_000).wait().unwrap_err().is_timed_out());
    /// ```
    pub fn is_timed_out(&self) -> bool {
        matches!(self, JobError::TimedOut { .. })
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Panicked { message } => write!(f, "the job panicked: {message}"),
            JobError::ShutDown {} => f.write_str("the pool was shut down before the job could run"),
            JobError::Cancelled {} => f.write_str("the job was cancelled"),
            JobError::InvalidSetting { message } => write!(f, "the call was refused: {message}"),
            JobError::TimedOut {} => f.write_str("the call's deadline passed"),
        }
    }
}

impl std::error::Error for JobError {}

/// Why the pool could not be built or resized.
///
/// # Examples
///
/// ```
/// use asyncify_pool::{PoolError, WorkerPool};
///
/// let pool = WorkerPool::new(2);
/// assert!(matches!(pool.set_threads(0), Err(PoolError::ZeroThreads)));
/// assert!(matches!(pool.set_threads(usize::MAX), Err(PoolError::TooManyThreads { .. })));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum PoolError {
    /// A thread count of zero was asked for where it means nothing (`set_threads(0)`).
    ZeroThreads,
    /// The pool has been shut down and takes no more changes.
    ShutDown,
    /// The operating system refused to start a worker thread.
    Spawn(std::io::Error),
    /// More threads were asked for than [`WorkerPool::MAX_THREADS`](crate::WorkerPool::MAX_THREADS).
    #[non_exhaustive]
    TooManyThreads {
        /// The thread count asked for.
        requested: usize,
        /// The most a pool may have.
        max: usize,
    },
    /// The thread name prefix cannot name an OS thread (it contains a NUL byte).
    #[non_exhaustive]
    InvalidThreadName {
        /// The prefix given.
        name: String,
    },
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::ZeroThreads => f.write_str("a worker pool needs at least one thread"),
            PoolError::ShutDown => f.write_str("the pool has been shut down"),
            PoolError::Spawn(e) => write!(f, "could not start a worker thread: {e}"),
            PoolError::TooManyThreads { requested, max } => write!(
                f,
                "{requested} threads were asked for, and a pool has at most {max} (WorkerPool::MAX_THREADS)"
            ),
            PoolError::InvalidThreadName { name } => {
                write!(f, "the thread name {name:?} contains a NUL byte")
            }
        }
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PoolError::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a settings operation was refused.
///
/// # Examples
///
/// ```
/// use asyncify_pool::settings::{self, Overrides, SettingsError};
///
/// let bad = Overrides::new().with("async_max_workers", 0usize);
/// assert!(matches!(settings::configure(bad), Err(SettingsError::InvalidValue { .. })));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettingsError {
    /// `configure` was called from inside a pool job. The global configuration belongs to the
    /// application; a job should use [`settings::context`](crate::settings::context) instead.
    InsideJob,
    /// A key was present but held a value of another type than the one asked for.
    WrongType {
        /// The key looked up.
        key: String,
        /// The type asked for.
        expected: &'static str,
        /// The type of the value stored under the key.
        found: &'static str,
    },
    /// A value the library itself reads (such as `async_max_workers`) is unusable.
    InvalidValue {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingsError::InsideJob => f.write_str(
                "settings::configure cannot be called from inside a pool job; use settings::context",
            ),
            SettingsError::WrongType {
                key,
                expected,
                found,
            } => write!(
                f,
                "setting `{key}` holds a `{found}`, not the `{expected}` asked for"
            ),
            SettingsError::InvalidValue { key, reason } => {
                write!(f, "setting `{key}` is invalid: {reason}")
            }
        }
    }
}

impl std::error::Error for SettingsError {}

/// [`WorkerPool::shutdown_timeout`](crate::WorkerPool::shutdown_timeout) ran out of time, or
/// was called on a thread of the pool (which cannot wait for itself): not every thread has left.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let pool = asyncify_pool::WorkerPool::new(2);
/// let _a = pool.spawn(|| std::thread::sleep(Duration::from_millis(300)));
/// let _b = pool.spawn(|| std::thread::sleep(Duration::from_millis(300)));
/// std::thread::sleep(Duration::from_millis(50));
/// let err = pool.shutdown_timeout(Duration::ZERO).unwrap_err();
/// assert_eq!(err.running(), 2);
/// println!("{err}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownTimeout {
    pub(crate) running: usize,
    pub(crate) threads: usize,
    /// Called on a thread of the pool, which cannot wait for itself (no time ran out).
    pub(crate) on_pool_thread: bool,
}

impl ShutdownTimeout {
    /// The jobs still running when time ran out (or when it was called on a thread of the
    /// pool, counting the job that called it): the places in the pool taken then, as
    /// [`Stats::running`](crate::Stats::running) counts them (a worker between two jobs holds
    /// one for a moment as it looks for the next, so an idle pool may show up to one per
    /// worker).
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = asyncify_pool::WorkerPool::new(1);
    /// # let _h = pool.spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
    /// # std::thread::sleep(std::time::Duration::from_millis(50));
    /// let err = pool.shutdown_timeout(std::time::Duration::ZERO).unwrap_err();
    /// assert_eq!(err.running(), 1);
    /// ```
    pub fn running(&self) -> usize {
        self.running
    }

    /// The worker threads that had not exited yet.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = asyncify_pool::WorkerPool::new(1);
    /// # let _h = pool.spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
    /// # std::thread::sleep(std::time::Duration::from_millis(50));
    /// let err = pool.shutdown_timeout(std::time::Duration::ZERO).unwrap_err();
    /// assert_eq!(err.threads(), 1);
    /// ```
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// True if `shutdown_timeout` was called on a thread of the pool (inside one of its jobs
    /// or hooks), which cannot wait for its own thread: it gave this error at once, whatever
    /// the timeout, and abandoned nothing. False if time ran out.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let inner = pool.clone();
    /// let err = pool
    ///     .spawn(move || inner.shutdown_timeout(std::time::Duration::MAX))
    ///     .wait()
    ///     .unwrap()
    ///     .unwrap_err();
    /// assert!(err.called_on_pool_thread());
    /// ```
    pub fn called_on_pool_thread(&self) -> bool {
        self.on_pool_thread
    }
}

impl fmt::Display for ShutdownTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.on_pool_thread {
            write!(
                f,
                "shutdown cannot wait on a thread of the pool itself: {} job(s) still running on \
                 {} thread(s)",
                self.running, self.threads
            )
        } else {
            write!(
                f,
                "shutdown timed out with {} job(s) still running on {} thread(s)",
                self.running, self.threads
            )
        }
    }
}

impl std::error::Error for ShutdownTimeout {}

/// Why a `try_` call refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Full,
    ShutDown,
}

/// A [`WorkerPool::try_spawn`](crate::WorkerPool::try_spawn) or
/// [`AsyncProgram::try_call`](crate::AsyncProgram::try_call) that was refused, with the input
/// handed back.
///
/// # Examples
///
/// ```
/// let pool = asyncify_pool::WorkerPool::new(1);
/// let double = pool.asyncify(|x: u32| x * 2);
/// pool.shutdown();
/// let err = double.try_call(21).unwrap_err();
/// assert!(err.is_shut_down() && !err.is_full());
/// assert_eq!(err.into_input(), 21);
/// ```
pub struct TryCallError<I> {
    input: I,
    reason: Refusal,
}

impl<I> TryCallError<I> {
    pub(crate) fn new(input: I, reason: Refusal) -> Self {
        TryCallError { input, reason }
    }

    /// True if the bounded queue was full.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = asyncify_pool::WorkerPool::new(1);
    /// # pool.shutdown();
    /// assert!(!pool.try_spawn(|| ()).unwrap_err().is_full());
    /// ```
    pub fn is_full(&self) -> bool {
        self.reason == Refusal::Full
    }

    /// True if the pool was shut down.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = asyncify_pool::WorkerPool::new(1);
    /// # pool.shutdown();
    /// assert!(pool.try_spawn(|| ()).unwrap_err().is_shut_down());
    /// ```
    pub fn is_shut_down(&self) -> bool {
        self.reason == Refusal::ShutDown
    }

    /// The input that was not queued.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = asyncify_pool::WorkerPool::new(1);
    /// # pool.shutdown();
    /// let p = pool.asyncify(|s: String| s.len());
    /// assert_eq!(p.try_call("kept".to_owned()).unwrap_err().into_input(), "kept");
    /// ```
    pub fn into_input(self) -> I {
        self.input
    }
}

impl<I> fmt::Debug for TryCallError<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TryCallError")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<I> fmt::Display for TryCallError<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            Refusal::Full => f.write_str("the pool's queue is full"),
            Refusal::ShutDown => f.write_str("the pool has been shut down"),
        }
    }
}

impl<I> std::error::Error for TryCallError<I> {}
