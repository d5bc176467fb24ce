//! The deadline in force inside a timed call: [`deadline()`].

use std::cell::Cell;
use std::time::Instant;

thread_local! {
    /// The deadline of the call running on this thread, if it has one.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
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
