//! How idle workers sleep and are woken.
//!
//! # Protocol
//!
//! A worker with nothing to do first spins and yields for a short while (a job submitted right
//! after another is then taken without a system call), then sleeps here. It sleeps until
//! something it waits for may have happened: a job queued, a permit handed on by a worker that
//! leaves, the thread count changed, the pool closed. Whoever makes such a change calls
//! [`wake_one`](Sleep::wake_one) or [`wake_all`](Sleep::wake_all) *after* making it.
//!
//! No wake-up is lost, by the Dekker pattern on two locations: a sleeper registers (increments
//! `sleepers`), then checks whether it may go on; a waker makes its change, then reads
//! `sleepers`. A `SeqCst` fence between the write and the read on each side means at least one
//! of them sees the other's write: either the sleeper sees the change and does not sleep, or
//! the waker sees the sleeper and notifies it. The notify takes the sleep lock, which the
//! sleeper holds from its check until the condition variable releases it, so a notify cannot
//! fall between the check and the wait. A waker that reads no sleeper makes no system call.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use crate::sync::{fence, lock, wait, AtomicUsize, Condvar, Mutex};

/// How many times an idle worker spins (then yields) before it sleeps.
pub(super) const SPINS_BEFORE_SLEEP: u32 = 10;

pub(crate) struct Sleep {
    /// Workers registered to sleep (sleeping, or about to).
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Sleep {
    pub(crate) fn new() -> Self {
        Sleep {
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    /// Sleeps until woken, unless `may_go_on()` is already true once registered. Spurious
    /// returns happen: the caller loops.
    pub(crate) fn sleep(&self, may_go_on: impl Fn() -> bool) {
        let guard = lock(&self.lock);
        self.sleepers.fetch_add(1, Relaxed);
        // ORDERING: the sleeper's half of the Dekker pattern (see the module docs).
        fence(SeqCst);
        let guard = if may_go_on() {
            guard
        } else {
            wait(&self.cv, guard, None)
        };
        self.sleepers.fetch_sub(1, Relaxed);
        drop(guard);
    }

    /// Wakes one sleeper, if any, after the caller made work or a permit available.
    pub(crate) fn wake_one(&self) {
        if self.someone_sleeps() {
            let _guard = lock(&self.lock);
            self.cv.notify_one();
        }
    }

    /// Wakes every sleeper, after the caller changed what all of them should do.
    pub(crate) fn wake_all(&self) {
        if self.someone_sleeps() {
            let _guard = lock(&self.lock);
            self.cv.notify_all();
        }
    }

    fn someone_sleeps(&self) -> bool {
        // ORDERING: the waker's half of the Dekker pattern (see the module docs).
        fence(SeqCst);
        self.sleepers.load(Relaxed) > 0
    }
}

/// A short, growing pause for a worker that found nothing to do: spins, then yields the core.
pub(super) fn pause(round: u32) {
    if round < SPINS_BEFORE_SLEEP / 2 {
        for _ in 0..(1u32 << round) {
            std::hint::spin_loop();
        }
    } else {
        std::thread::yield_now();
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicBool;
    use loom::sync::Arc;
    use loom::thread;

    /// A job made available while a worker goes to sleep is never missed: the worker sees it
    /// before sleeping, or is woken (loom reports a deadlock if it sleeps forever).
    #[test]
    fn a_wake_racing_a_sleep_is_not_lost() {
        loom::model(|| {
            let sleep = Arc::new(Sleep::new());
            let work = Arc::new(AtomicBool::new(false));
            let (s, w) = (sleep.clone(), work.clone());
            let worker = thread::spawn(move || {
                while !w.load(Relaxed) {
                    s.sleep(|| w.load(Relaxed));
                }
            });
            work.store(true, Relaxed);
            sleep.wake_one();
            worker.join().unwrap();
        });
    }
}
