//! The concurrency limit: at most `target` jobs run at once, and lowering `target` takes
//! effect for every job that starts after the call returns.
//!
//! # Protocol
//!
//! One atomic word holds `target` (high 32 bits), a `WAITING` flag (bit 31) and `running`
//! (low 31 bits). "Start a job if `running < target`" is one compare-and-swap on it, and
//! "set `target`" one update of it, so the two are totally ordered: once `set_target(n)` has
//! returned, no start can succeed against the old target.
//!
//! A worker that holds a job but finds no permit (only possible between a shrink and the
//! retirement of the surplus workers) sleeps on a condition variable. It sets `WAITING` in the
//! same word before its last try, under the gate lock, and `release` reads the flag from the
//! very subtraction that frees its permit. Both touch one memory location, whose modification
//! order is total, so either the sleeper's last try sees the freed permit or the releaser sees
//! the flag and wakes it (after the sleeper has released the gate lock by waiting). The common
//! path is one compare-and-swap to start and one subtraction to finish, and no lock.

use crate::sync::{lock, AtomicU64, Condvar, Mutex};
use std::sync::atomic::Ordering::{AcqRel, Acquire};

/// The most a pool may have of either count.
pub(crate) const MAX: usize = (1 << 31) - 1;

/// Set while some worker sleeps in `acquire`.
const WAITING: u64 = 1 << 31;
const RUNNING: u64 = WAITING - 1;

pub(crate) struct Permits {
    word: AtomicU64,
    /// How many workers sleep in `acquire`; `WAITING` is set while this is non-zero.
    gate: Mutex<usize>,
    gate_cv: Condvar,
}

const fn pack(target: usize, running: usize) -> u64 {
    ((target as u64) << 32) | running as u64
}

const fn target_of(word: u64) -> usize {
    (word >> 32) as usize
}

const fn running_of(word: u64) -> usize {
    (word & RUNNING) as usize
}

impl Permits {
    pub(crate) fn new(target: usize) -> Self {
        Permits {
            word: AtomicU64::new(pack(target.min(MAX), 0)),
            gate: Mutex::new(0),
            gate_cv: Condvar::new(),
        }
    }

    /// `(target, running)`, read together.
    pub(crate) fn load(&self) -> (usize, usize) {
        let word = self.word.load(Acquire);
        (target_of(word), running_of(word))
    }

    pub(crate) fn target(&self) -> usize {
        self.load().0
    }

    /// Takes a permit, waiting while `running >= target`.
    pub(crate) fn acquire(&self) {
        if self.try_acquire() {
            return;
        }
        let mut sleepers = lock(&self.gate);
        *sleepers += 1;
        loop {
            // ORDERING: the flag and the permits live in one word; see the protocol above.
            self.word.fetch_or(WAITING, AcqRel);
            if self.try_acquire() {
                break;
            }
            sleepers = self
                .gate_cv
                .wait(sleepers)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *sleepers -= 1;
        if *sleepers == 0 {
            self.word.fetch_and(!WAITING, AcqRel);
        }
    }

    pub(crate) fn try_acquire(&self) -> bool {
        // ORDERING: AcqRel orders the job's start after the permit; the decision itself needs
        // only the word's total modification order.
        self.word
            .fetch_update(AcqRel, Acquire, |w| {
                (running_of(w) < target_of(w)).then_some(w + 1)
            })
            .is_ok()
    }

    pub(crate) fn release(&self) {
        if self.word.fetch_sub(1, AcqRel) & WAITING != 0 {
            self.wake();
        }
    }

    /// Sets the target; returns the old one.
    pub(crate) fn set_target(&self, target: usize) -> usize {
        let target = target.min(MAX);
        let previous = self
            .word
            .fetch_update(AcqRel, Acquire, |w| {
                Some(pack(target, 0) | (w & !(u64::MAX << 32)))
            })
            .unwrap_or_else(|w| w);
        if previous & WAITING != 0 {
            self.wake();
        }
        target_of(previous)
    }

    fn wake(&self) {
        let _sleepers = lock(&self.gate);
        self.gate_cv.notify_all();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn pack_and_split() {
        let w = pack(7, 3);
        assert_eq!((target_of(w), running_of(w)), (7, 3));
        let w = pack(MAX, MAX - 1);
        assert_eq!((target_of(w), running_of(w)), (MAX, MAX - 1));
    }

    #[test]
    fn acquire_respects_target_and_release_frees() {
        let p = Permits::new(2);
        assert!(p.try_acquire());
        assert!(p.try_acquire());
        assert!(!p.try_acquire());
        p.release();
        assert!(p.try_acquire());
        assert_eq!(p.set_target(1), 2);
        p.release();
        assert!(!p.try_acquire(), "one still runs and the target is now 1");
        p.release();
        assert!(p.try_acquire());
        assert_eq!(p.load(), (1, 1));
    }

    #[test]
    fn raising_the_target_wakes_a_waiter() {
        let p = std::sync::Arc::new(Permits::new(1));
        p.acquire();
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || p.acquire())
        };
        while p.word.load(Acquire) & WAITING == 0 {
            std::thread::yield_now();
        }
        p.set_target(2);
        waiter.join().unwrap();
        assert_eq!(p.load(), (2, 2));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;
    use loom::thread;
    use std::sync::atomic::Ordering::SeqCst;

    /// Two workers start and finish a job each while a third thread shrinks the target from 2
    /// to 1: after `set_target` returns, never more than one job starts while another runs,
    /// and nobody sleeps forever (loom reports a deadlock if a waiter is never woken).
    #[test]
    fn shrink_while_jobs_start() {
        loom::model(|| {
            let permits = Arc::new(Permits::new(2));
            let shrunk = Arc::new(loom::sync::atomic::AtomicBool::new(false));
            let running = Arc::new(AtomicUsize::new(0));
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let (permits, shrunk, running) =
                        (permits.clone(), shrunk.clone(), running.clone());
                    thread::spawn(move || {
                        // Read before acquiring: if the shrink had returned by then, this job
                        // starts after it.
                        let was_shrunk = shrunk.load(SeqCst);
                        permits.acquire();
                        let now = running.fetch_add(1, SeqCst) + 1;
                        if was_shrunk {
                            // Started after the shrink returned: it must be alone.
                            assert_eq!(now, 1, "a job started above the new target");
                        }
                        running.fetch_sub(1, SeqCst);
                        permits.release();
                    })
                })
                .collect();
            permits.set_target(1);
            shrunk.store(true, SeqCst);
            for w in workers {
                w.join().unwrap();
            }
            assert_eq!(permits.load(), (1, 0));
        });
    }

    /// A worker blocked for lack of a permit is woken by a release racing its sleep.
    #[test]
    fn release_wakes_a_blocked_acquire() {
        loom::model(|| {
            let permits = Arc::new(Permits::new(1));
            permits.acquire();
            let waiter = {
                let permits = permits.clone();
                thread::spawn(move || {
                    permits.acquire();
                    permits.release();
                })
            };
            permits.release();
            waiter.join().unwrap();
            assert_eq!(permits.load(), (1, 0));
        });
    }

    /// A worker blocked after a shrink is woken when the target is raised again.
    #[test]
    fn grow_wakes_a_blocked_acquire() {
        loom::model(|| {
            let permits = Arc::new(Permits::new(1));
            permits.acquire();
            let waiter = {
                let permits = permits.clone();
                thread::spawn(move || permits.acquire())
            };
            permits.set_target(2);
            waiter.join().unwrap();
            assert_eq!(permits.load(), (2, 2));
        });
    }
}
