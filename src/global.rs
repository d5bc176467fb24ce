//! The default pool behind the free [`asyncify`](crate::asyncify), sized by the
//! `async_max_workers` setting.
//!
//! DSPy's `asyncify` takes a global limiter whose size is `async_max_workers` as in force at the
//! call, and makes a new one when the setting changed. Here the default pool is resized to the
//! value in force at each call, before the job is queued, so both a `configure` and a
//! `context`/`scope` override count. With callers using different values at the same time the
//! pool follows the most recent call.
//!
//! Only the limit moves at each call; the threads follow lazily. Threads above a lowered value
//! stay for a keep-alive of 10 seconds without a job before they leave, and a call under a
//! higher value reuses them, so alternating values cost a call what a steady one does.

use std::sync::OnceLock;

use crate::limits::{DEFAULT_ASYNC_MAX_WORKERS, DEFAULT_POOL_KEEP_ALIVE};
use crate::pool::WorkerPool;
use crate::program::AsyncProgram;
use crate::settings::{self, SettingsError};

/// The default pool, started on first use with `async_max_workers` threads (8 if the value in
/// force then is unusable). Threads above the `async_max_workers` of the latest call stay for
/// 10 seconds without a job before they leave (see
/// [`Builder::keep_alive`](crate::Builder::keep_alive)): the limit follows each call at once,
/// and changing it starts no thread that is still alive.
///
/// # Examples
///
/// ```
/// let pool = asyncify_pool::default_pool();
/// assert!(pool.threads() >= 1);
/// ```
pub fn default_pool() -> &'static WorkerPool {
    static POOL: OnceLock<WorkerPool> = OnceLock::new();
    POOL.get_or_init(|| {
        WorkerPool::builder()
            .threads(settings::async_max_workers().unwrap_or(DEFAULT_ASYNC_MAX_WORKERS))
            .thread_name("asyncify")
            .keep_alive(DEFAULT_POOL_KEEP_ALIVE)
            .build()
            .unwrap_or_else(|e| panic!("asyncify-pool: cannot start the default pool: {e}"))
    })
}

/// Resizes `pool` to the `async_max_workers` in force here, or says why it cannot.
fn follow_setting(pool: &WorkerPool) -> Result<(), SettingsError> {
    let wanted = settings::async_max_workers()?;
    if pool.threads() != wanted {
        // Only fails after a shutdown, and then the call itself resolves to `ShutDown`.
        let _ = pool.set_threads(wanted);
    }
    Ok(())
}

/// Wraps `program` so that each call runs on the default pool, whose thread count follows the
/// `async_max_workers` setting in force at the call (default 8), as `dspy.asyncify` does.
///
/// # Examples
///
/// ```
/// use asyncify_pool::{asyncify, settings::{self, Overrides}};
///
/// let program = asyncify(|question: &'static str| format!("answer to {question}"));
/// let out = settings::context(Overrides::new().with("async_max_workers", 4usize), || {
///     let handle = program.call("life");
///     assert_eq!(asyncify_pool::default_pool().threads(), 4);
///     handle
/// });
/// assert_eq!(pollster::block_on(out).unwrap(), "answer to life");
/// ```
pub fn asyncify<P>(program: P) -> AsyncProgram<P> {
    AsyncProgram::new(program, default_pool().clone(), Some(follow_setting))
}
