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
//! A sleeper registers in the list of sleepers, then checks whether it may go on, and only then
//! waits on its own [`Sleeper`]. A waker takes one sleeper *out* of the list and wakes it, so the
//! next waker wakes another one instead of the same one again (a queue of submissions wakes
//! each sleeper once, not each submission the first sleeper). Sleepers are woken last-in
//! first-out: the most recently idle worker has the warmest cache, and the others stay asleep.
//!
//! No wake-up is lost, by the Dekker pattern on two locations: a sleeper registers (the list
//! and its length `idle`), then checks its condition; a waker makes its change, then reads
//! `idle`. A `SeqCst` fence between the write and the read on each side means at least one of
//! them sees the other's write: either the sleeper sees the change and does not wait, or the
//! waker sees the sleeper and wakes it. A sleeper taken out of the list has its flag set under
//! its own lock before it is notified, so a wake that comes before the wait is not missed
//! either. A waker that reads no sleeper takes no lock and makes no system call.
//!
//! Every job queued wakes a sleeper if there is one, even while other workers spin. Skipping
//! the wake-up while a worker is counted as spinning (tokio's and rayon's "searching" workers)
//! made round trips 1.4–2.5 times slower in interleaved A/B runs on the 2-core machine: the
//! worker that just finished a job and starts to spin is the one the woken caller preempts, so
//! the job it was left to waited for the caller to park again.
//!
//! Every sleep lists the sleeper once, and every listing ends exactly once: the sleeper takes
//! itself out (it may go on after all), or a waker takes it out and sets its flag, which the
//! sleeper then consumes, also when it had decided to go on meanwhile (it then hands the
//! wake-up on). A flag left over from one sleep would end the next one early with the sleeper
//! still listed, and a later wake-up would then go to a worker that is not asleep: the lost
//! wake-up `tests/properties.rs` found in a first version of this protocol.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;

use crate::sync::{fence, lock, wait, AtomicUsize, Condvar, Mutex};

/// Spin rounds that double the pause (1, 2, … 32 pause instructions), before the steady ones.
const GROWING_SPINS: u32 = 6;
/// The most pause instructions between two looks at the queue: a job queued during a spin is
/// noticed within this many.
const MAX_PAUSES: u32 = 64;
/// Rounds that pause [`MAX_PAUSES`] each, after the growing ones: 1,023 pauses in all.
const STEADY_SPINS: u32 = 15;
/// Rounds that yield the core, after the spinning ones.
const YIELDS: u32 = 10;
/// The rounds of a pause that spin (the rest yield).
const SPINNING_ROUNDS: u32 = GROWING_SPINS + STEADY_SPINS;

/// How many rounds an idle worker spins and then yields before it sleeps: about as long as it
/// takes a caller woken by a finished job to submit the next one, and an idle pool still uses
/// no CPU once they are over. In interleaved A/B runs on the 2-core machine, 31 pauses and 5
/// yields made a 2-thread pool's round trip ×1.6–2.1 of the code before the rebuild (which spun
/// in crossbeam's receive, 127 pauses and 4 yields), and 1,023 pauses and 10 yields ×0.9–1.0
/// when they came in 10 doubling rounds (up to 512 pauses between two looks at the queue).
/// Looking every 64 pauses at most instead made the round trip several times faster
/// (BENCHMARKS.md): a job queued during a long pause waited for its end.
pub(super) const SPINS_BEFORE_SLEEP: u32 = GROWING_SPINS + STEADY_SPINS + YIELDS;

/// Aligned to its own cache lines, like the permits: idle workers write here, and every call
/// reads `idle`.
#[repr(align(128))]
pub(crate) struct Sleep {
    /// The length of `sleepers`, readable without the lock.
    idle: AtomicUsize,
    sleepers: Mutex<Vec<Arc<Sleeper>>>,
}

/// One worker's place to sleep, made once per worker.
#[derive(Default)]
pub(crate) struct Sleeper {
    woken: Mutex<bool>,
    cv: Condvar,
}

impl Sleep {
    pub(crate) fn new() -> Self {
        Sleep {
            idle: AtomicUsize::new(0),
            sleepers: Mutex::new(Vec::new()),
        }
    }

    /// Sleeps until woken, unless `may_go_on()` is already true once registered. Spurious
    /// returns happen: the caller loops.
    pub(crate) fn sleep(&self, me: &Arc<Sleeper>, may_go_on: impl Fn() -> bool) {
        {
            let mut sleepers = lock(&self.sleepers);
            sleepers.push(Arc::clone(me));
            self.idle.store(sleepers.len(), Relaxed);
        }
        // ORDERING: the sleeper's half of the Dekker pattern (see the module docs).
        fence(SeqCst);
        if may_go_on() {
            let listed = {
                let mut sleepers = lock(&self.sleepers);
                let before = sleepers.len();
                sleepers.retain(|s| !Arc::ptr_eq(s, me));
                self.idle.store(sleepers.len(), Relaxed);
                sleepers.len() < before
            };
            if !listed {
                // A waker took this sleeper out meanwhile. Take its wake-up now, so that it
                // does not end a later sleep early (with this sleeper still listed, a later
                // wake-up would go to a worker that is not asleep), and hand it on.
                me.take_wake();
                self.wake_one();
            }
            return;
        }
        me.take_wake();
    }

    /// Wakes one sleeper, if any, after the caller made work or a permit available.
    pub(crate) fn wake_one(&self) {
        if self.someone_sleeps() {
            let sleeper = {
                let mut sleepers = lock(&self.sleepers);
                let sleeper = sleepers.pop();
                self.idle.store(sleepers.len(), Relaxed);
                sleeper
            };
            if let Some(sleeper) = sleeper {
                sleeper.wake();
            }
        }
    }

    /// Wakes every sleeper, after the caller changed what all of them should do.
    pub(crate) fn wake_all(&self) {
        if self.someone_sleeps() {
            let sleepers = {
                let mut sleepers = lock(&self.sleepers);
                self.idle.store(0, Relaxed);
                std::mem::take(&mut *sleepers)
            };
            for sleeper in sleepers {
                sleeper.wake();
            }
        }
    }

    fn someone_sleeps(&self) -> bool {
        // ORDERING: the waker's half of the Dekker pattern (see the module docs).
        fence(SeqCst);
        self.idle.load(Relaxed) > 0
    }
}

impl Sleeper {
    /// Set by the waker that took this sleeper out of the list, and only by it.
    fn wake(&self) {
        *lock(&self.woken) = true;
        self.cv.notify_one();
    }

    /// Waits for the wake-up of the waker that took (or will take) this sleeper out of the
    /// list, and consumes it: a sleeper is listed once per sleep and woken once per listing.
    fn take_wake(&self) {
        let mut woken = lock(&self.woken);
        while !*woken {
            woken = wait(&self.cv, woken, None);
        }
        *woken = false;
    }
}

/// A short pause for a worker that found nothing to do: spins, growing to [`MAX_PAUSES`]
/// pause instructions, then yields the core.
pub(super) fn pause(round: u32) {
    if round < SPINNING_ROUNDS {
        for _ in 0..(1u32 << round.min(GROWING_SPINS)).min(MAX_PAUSES) {
            std::hint::spin_loop();
        }
    } else {
        std::thread::yield_now();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A waker takes a sleeper out of the list while that sleeper is deciding to go on after
    /// all: the sleeper consumes the wake-up (no flag is left to end its next sleep early) and
    /// hands it on to the other sleeper, which would otherwise sleep through the job it was for.
    #[test]
    fn a_wake_up_taken_by_a_sleeper_that_goes_on_is_handed_on() {
        let sleep = Arc::new(Sleep::new());
        let (done_tx, done) = std::sync::mpsc::channel();
        let other = {
            let sleep = Arc::clone(&sleep);
            std::thread::spawn(move || {
                sleep.sleep(&Arc::default(), || false);
                done_tx.send(()).unwrap();
            })
        };
        while sleep.idle.load(SeqCst) == 0 {
            std::thread::yield_now();
        }
        let me = Arc::new(Sleeper::default());
        // Listed last, so the wake-up made "meanwhile" takes this sleeper, not the other.
        sleep.sleep(&me, || {
            sleep.wake_one();
            true
        });
        assert!(
            !*lock(&me.woken),
            "a wake-up was left over for the next sleep"
        );
        done.recv_timeout(Duration::from_secs(60))
            .expect("the other sleeper was never woken");
        other.join().unwrap();
        assert_eq!(sleep.idle.load(SeqCst), 0);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicBool;
    use loom::thread;

    /// A job made available while a worker goes to sleep is never missed: the worker sees it
    /// before sleeping, or is woken (loom reports a deadlock if it sleeps forever).
    #[test]
    fn a_wake_racing_a_sleep_is_not_lost() {
        loom::model(|| {
            let sleep = loom::sync::Arc::new(Sleep::new());
            let work = loom::sync::Arc::new(AtomicBool::new(false));
            let (s, w) = (sleep.clone(), work.clone());
            let worker = thread::spawn(move || {
                let me = Arc::new(Sleeper::default());
                while !w.load(Relaxed) {
                    s.sleep(&me, || w.load(Relaxed));
                }
            });
            work.store(true, Relaxed);
            sleep.wake_one();
            worker.join().unwrap();
        });
    }

    const WORKERS: usize = 2;

    /// Workers that each take one unit of work, sleeping while there is none, and two units
    /// made available one after the other, each with a wake-up: every worker finishes, whatever
    /// the interleaving (a wake-up spent on a worker that went on anyway, or left over from an
    /// earlier sleep, would leave the other asleep: loom reports the deadlock).
    #[test]
    fn units_reach_every_worker() {
        loom::model(|| {
            let sleep = loom::sync::Arc::new(Sleep::new());
            let work = loom::sync::Arc::new(AtomicUsize::new(0));
            let workers: Vec<_> = (0..WORKERS)
                .map(|_| {
                    let (s, w) = (sleep.clone(), work.clone());
                    thread::spawn(move || {
                        let me = Arc::new(Sleeper::default());
                        while w
                            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                            .is_err()
                        {
                            s.sleep(&me, || w.load(SeqCst) > 0);
                        }
                    })
                })
                .collect();
            for _ in 0..WORKERS {
                work.fetch_add(1, SeqCst);
                sleep.wake_one();
            }
            for w in workers {
                w.join().unwrap();
            }
        });
    }
}
