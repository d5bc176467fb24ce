//! Errors: what a job, the pool and the settings can tell their callers.

use std::any::Any;
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
    /// The job was cancelled before it started by the batch that owned it (its error budget ran
    /// out, or the batch was dropped); it never ran.
    #[non_exhaustive]
    Cancelled {},
}

impl JobError {
    pub(crate) fn shut_down() -> Self {
        JobError::ShutDown {}
    }

    pub(crate) fn cancelled() -> Self {
        JobError::Cancelled {}
    }

    pub(crate) fn from_panic(payload: &(dyn Any + Send)) -> Self {
        JobError::Panicked {
            message: panic_message(payload),
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

    /// True if the job never ran because its batch cancelled it.
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
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Panicked { message } => write!(f, "the job panicked: {message}"),
            JobError::ShutDown {} => f.write_str("the pool was shut down before the job could run"),
            JobError::Cancelled {} => f.write_str("the job was cancelled before it started"),
        }
    }
}

impl std::error::Error for JobError {}

/// The text of a panic payload: the `&str` or `String` it carries, or a note saying what it is not.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<panic payload is not a string>".to_owned()
    }
}

/// Why the pool could not be built or resized.
///
/// # Examples
///
/// ```
/// use asyncify_pool::{PoolError, WorkerPool};
///
/// let pool = WorkerPool::new(2);
/// assert!(matches!(pool.set_threads(0), Err(PoolError::ZeroThreads)));
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
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::ZeroThreads => f.write_str("a worker pool needs at least one thread"),
            PoolError::ShutDown => f.write_str("the pool has been shut down"),
            PoolError::Spawn(e) => write!(f, "could not start a worker thread: {e}"),
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
