//! The workers asleep for want of a place: they found a job queued and every place taken
//! (only while the pool has more workers than its target, or while a place is held outside a
//! job), and must be woken when a place frees up that no worker about to look at the queue
//! will take: the target raised by `set_threads`, or a place given back by a thread that does
//! not serve the queue next.
//!
//! # Protocol
//!
//! A worker about to sleep that finds no place counts itself (once per sleep), then looks for
//! a place again; whoever frees a place frees it, then reads the count. The two sides write
//! one of the permit word and the count and then read the other, with a `SeqCst` fence in
//! between: the Dekker pattern, as in `sleep` and `room`. At least one side sees the other's
//! write, so either the worker's second look finds the place or the freer sees the count and
//! wakes the sleepers (the worker is listed in `Sleep` before it looks, so that wake-up
//! reaches it). The loom models below check both ways a place frees up.

use std::cell::Cell;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use crate::sync::{fence, AtomicUsize};

pub(super) struct Starved {
    count: AtomicUsize,
}

impl Starved {
    pub(super) fn new() -> Self {
        Starved {
            count: AtomicUsize::new(0),
        }
    }

    /// For a worker about to sleep that found a job queued and no place: counts it (once per
    /// sleep, in `counted`; [`uncount`](Self::uncount) ends it), then looks again: true if
    /// `place_free()` is now.
    pub(super) fn count_and_look(
        &self,
        counted: &Cell<bool>,
        place_free: impl Fn() -> bool,
    ) -> bool {
        if !counted.replace(true) {
            self.count.fetch_add(1, SeqCst);
            // ORDERING: the sleeper's half of the Dekker pattern (see the module docs).
            fence(SeqCst);
        }
        place_free()
    }

    /// For a thread that has just freed a place: true if a worker may be asleep for want of
    /// one (the caller wakes it).
    pub(super) fn any_after_freeing(&self) -> bool {
        // ORDERING: the freer's half of the Dekker pattern (see the module docs).
        fence(SeqCst);
        self.count.load(Relaxed) > 0
    }

    /// Ends a sleep counted by [`count_and_look`](Self::count_and_look).
    pub(super) fn uncount(&self, counted: &Cell<bool>) {
        if counted.get() {
            self.count.fetch_sub(1, SeqCst);
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::super::permits::Permits;
    use super::super::sleep::{Sleep, Sleeper};
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// A worker's wait for a place, as `Serve` does it: take a place, else sleep unless a
    /// place is free or, counted starved, free on a second look.
    fn take_a_place(permits: &Permits, sleep: &Sleep, starved: &Starved) {
        let me = std::sync::Arc::new(Sleeper::default());
        loop {
            if let Some(permit) = permits.try_acquire() {
                drop(permit);
                return;
            }
            let counted = Cell::new(false);
            sleep.sleep(&me, None, || {
                permits.available() || starved.count_and_look(&counted, || permits.available())
            });
            starved.uncount(&counted);
        }
    }

    /// A place held outside a job (a hook's, or a per-worker state's `Drop`'s) is given back
    /// while the only other worker goes to sleep for want of it: the worker takes it (loom
    /// reports a deadlock if it sleeps forever).
    #[test]
    fn a_place_given_back_reaches_a_starved_worker() {
        loom::model(|| {
            let permits = Arc::new(Permits::new(1));
            let sleep = Arc::new(Sleep::new());
            let starved = Arc::new(Starved::new());
            let held = permits.try_acquire().expect("the one place");
            let worker = {
                let (p, s, st) = (permits.clone(), sleep.clone(), starved.clone());
                thread::spawn(move || take_a_place(&p, &s, &st))
            };
            drop(held);
            if starved.any_after_freeing() {
                sleep.wake_one();
            }
            worker.join().unwrap();
        });
    }

    /// The target raised (`set_threads`) while a worker goes to sleep because every place is
    /// taken by a running job: the worker takes the new place.
    #[test]
    fn a_raised_target_reaches_a_starved_worker() {
        loom::model(|| {
            let permits = Arc::new(Permits::new(1));
            let sleep = Arc::new(Sleep::new());
            let starved = Arc::new(Starved::new());
            let running = permits.try_acquire().expect("the one place");
            let worker = {
                let (p, s, st) = (permits.clone(), sleep.clone(), starved.clone());
                thread::spawn(move || take_a_place(&p, &s, &st))
            };
            permits.set_target(2);
            if starved.any_after_freeing() {
                sleep.wake_all();
            }
            worker.join().unwrap();
            drop(running);
        });
    }
}
