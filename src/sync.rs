//! Every lock, condition variable and atomic of the crate, from one switch: std's normally,
//! loom's under `--cfg loom`, so that the model checker sees all of them (`.ci/loom`).
//!
//! Poisoning is ignored everywhere: no critical section of this crate runs user code (that is
//! the rule of [`guard`](crate::guard)), so a poisoned lock is still a consistent one.

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{fence, AtomicBool, AtomicU16, AtomicU64, AtomicUsize},
    Condvar, Mutex, MutexGuard, RwLock,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{fence, AtomicBool, AtomicU16, AtomicU64, AtomicUsize},
    Condvar, Mutex, MutexGuard, RwLock,
};

/// For process-wide statics (pool ids, the address of tracing's static dispatcher, the count
/// of `guard`'s scopes): loom's atomics cannot be statics, and no model involves these.
pub(crate) use std::sync::atomic::{
    AtomicU64 as StaticAtomicU64, AtomicUsize as StaticAtomicUsize,
};

use std::sync::PoisonError;
use std::time::Instant;

/// Locks `m`.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cv`, until `deadline` if there is one. Spurious wake-ups happen: callers loop.
pub(crate) fn wait<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
) -> MutexGuard<'a, T> {
    match deadline {
        None => cv.wait(guard).unwrap_or_else(PoisonError::into_inner),
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            cv.wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0
        }
    }
}

/// `now + timeout`, or `None` ("no limit") where that is past what an `Instant` holds, as for
/// `Duration::MAX`.
pub(crate) fn deadline_after(timeout: std::time::Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}
