//! The synchronisation primitives of the state machines that loom checks (`permits`, `job`):
//! std's normally, loom's under `--cfg loom` (see the README for the command).

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicU64},
    Condvar, Mutex, MutexGuard,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicU64},
    Condvar, Mutex, MutexGuard,
};

/// Locks `m`, ignoring poison: every critical section using this leaves its data consistent
/// at each point where user code could panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
