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
//!
//! # Sleeping until a deadline
//!
//! A worker above the pool's target sleeps at most until its keep-alive runs out (see
//! `registry`); every other worker sleeps without a deadline, so an idle pool with no surplus
//! threads makes no system call at all. A sleeper whose deadline passes ends its listing
//! itself, as one that goes on does (taking a wake-up that raced the deadline, and handing it
//! on). Each listing says whether it has a deadline, so that a shrink wakes only the sleepers
//! without one ([`wake_untimed`](Sleep::wake_untimed)): those that became surplus, and must
//! start watching the clock, by the same Dekker pattern as every other change. A sleeper that
//! already has a deadline is left asleep, so a limit that goes up and down wakes nobody.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::Instant;

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
    sleepers: Mutex<Vec<Listed>>,
}

/// A sleeper in the list.
struct Listed {
    sleeper: Arc<Sleeper>,
    /// It sleeps until a deadline at the latest, and notices a lapse of time by itself.
    timed: bool,
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

    /// Sleeps until woken or until `until` (`None`: no deadline), unless `may_go_on()` is
    /// already true once registered. Spurious returns happen: the caller loops.
    pub(crate) fn sleep(
        &self,
        me: &Arc<Sleeper>,
        until: Option<Instant>,
        may_go_on: impl Fn() -> bool,
    ) {
        {
            let mut sleepers = lock(&self.sleepers);
            sleepers.push(Listed {
                sleeper: Arc::clone(me),
                timed: until.is_some(),
            });
            self.idle.store(sleepers.len(), Relaxed);
        }
        // ORDERING: the sleeper's half of the Dekker pattern (see the module docs).
        fence(SeqCst);
        if may_go_on() || !me.take_wake(until) {
            self.unlist(me);
        }
    }

    /// Ends a listing that the sleeper ends itself: it goes on, or its deadline passed.
    fn unlist(&self, me: &Arc<Sleeper>) {
        let listed = {
            let mut sleepers = lock(&self.sleepers);
            let before = sleepers.len();
            sleepers.retain(|s| !Arc::ptr_eq(&s.sleeper, me));
            self.idle.store(sleepers.len(), Relaxed);
            sleepers.len() < before
        };
        if !listed {
            // A waker took this sleeper out meanwhile. Take its wake-up now, so that it does
            // not end a later sleep early (with this sleeper still listed, a later wake-up
            // would go to a worker that is not asleep), and hand it on.
            me.take_wake(None);
            self.wake_one();
        }
    }

    /// Wakes one sleeper, if any, after the caller made work or a permit available.
    pub(crate) fn wake_one(&self) {
        if self.someone_sleeps() {
            let listed = {
                let mut sleepers = lock(&self.sleepers);
                let listed = sleepers.pop();
                self.idle.store(sleepers.len(), Relaxed);
                listed
            };
            if let Some(listed) = listed {
                listed.sleeper.wake();
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
            for listed in sleepers {
                listed.sleeper.wake();
            }
        }
    }

    /// Wakes every sleeper without a deadline, after the caller made a change that only a
    /// sleeper watching the clock notices by itself (a shrink: a surplus worker's keep-alive
    /// must end its sleep).
    pub(crate) fn wake_untimed(&self) {
        if self.someone_sleeps() {
            let untimed = {
                let mut sleepers = lock(&self.sleepers);
                if sleepers.iter().all(|s| s.timed) {
                    return;
                }
                let (timed, untimed) = std::mem::take(&mut *sleepers)
                    .into_iter()
                    .partition(|s| s.timed);
                *sleepers = timed;
                self.idle.store(sleepers.len(), Relaxed);
                untimed
            };
            for listed in untimed {
                listed.sleeper.wake();
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
    /// False if `until` passed first (nothing consumed: the sleeper must end its listing).
    fn take_wake(&self, until: Option<Instant>) -> bool {
        let mut woken = lock(&self.woken);
        while !*woken {
            if until.is_some_and(|t| Instant::now() >= t) {
                return false;
            }
            woken = wait(&self.cv, woken, until);
        }
        *woken = false;
        true
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
                sleep.sleep(&Arc::default(), None, || false);
                done_tx.send(()).unwrap();
            })
        };
        while sleep.idle.load(SeqCst) == 0 {
            std::thread::yield_now();
        }
        let me = Arc::new(Sleeper::default());
        // Listed last, so the wake-up made "meanwhile" takes this sleeper, not the other.
        sleep.sleep(&me, None, || {
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

    /// A sleep with a deadline ends by itself once the deadline passes, unlisted (a later
    /// wake-up must not go to it), and a wake-up that comes then is not left over.
    #[test]
    fn a_timed_sleep_ends_at_its_deadline_and_unlists_itself() {
        let sleep = Sleep::new();
        let me = Arc::new(Sleeper::default());
        let until = Instant::now() + Duration::from_millis(5);
        sleep.sleep(&me, Some(until), || false);
        assert!(
            Instant::now() >= until,
            "returned before its deadline, unwoken"
        );
        assert_eq!(sleep.idle.load(SeqCst), 0);
        assert!(lock(&sleep.sleepers).is_empty());
        sleep.wake_one();
        assert!(!*lock(&me.woken), "a wake-up went to a sleeper that left");
    }

    /// `wake_untimed` wakes the sleepers without a deadline and leaves the timed ones asleep.
    #[test]
    fn wake_untimed_wakes_only_sleepers_without_a_deadline() {
        let sleep = Arc::new(Sleep::new());
        let (done_tx, done) = std::sync::mpsc::channel();
        let spawn_sleeper = |until: Option<Instant>, name: &'static str| {
            let (sleep, done_tx) = (Arc::clone(&sleep), done_tx.clone());
            std::thread::spawn(move || {
                sleep.sleep(&Arc::default(), until, || false);
                done_tx.send(name).unwrap();
            })
        };
        let far = Instant::now() + Duration::from_secs(3600);
        let timed = spawn_sleeper(Some(far), "timed");
        let untimed = spawn_sleeper(None, "untimed");
        while sleep.idle.load(SeqCst) < 2 {
            std::thread::yield_now();
        }
        sleep.wake_untimed();
        let first = done.recv_timeout(Duration::from_secs(60));
        assert_eq!(first, Ok("untimed"));
        untimed.join().unwrap();
        assert_eq!(
            sleep.idle.load(SeqCst),
            1,
            "the timed sleeper is still listed"
        );
        sleep.wake_untimed();
        assert!(lock(&sleep.sleepers)[0].timed);
        sleep.wake_all();
        assert_eq!(done.recv_timeout(Duration::from_secs(60)), Ok("timed"));
        timed.join().unwrap();
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicBool;
    use loom::thread;

    /// A change made while a worker goes to sleep without a deadline, announced by `wake`, is
    /// never missed: the worker sees it before sleeping, or is woken (loom reports a deadlock
    /// if it sleeps forever).
    fn a_change_racing_a_sleep_is_not_lost(wake: fn(&Sleep)) {
        loom::model(move || {
            let sleep = loom::sync::Arc::new(Sleep::new());
            let changed = loom::sync::Arc::new(AtomicBool::new(false));
            let (s, c) = (sleep.clone(), changed.clone());
            let worker = thread::spawn(move || {
                let me = Arc::new(Sleeper::default());
                while !c.load(Relaxed) {
                    s.sleep(&me, None, || c.load(Relaxed));
                }
            });
            changed.store(true, Relaxed);
            wake(&sleep);
            worker.join().unwrap();
        });
    }

    /// A job made available (`wake_one`).
    #[test]
    fn a_wake_racing_a_sleep_is_not_lost() {
        a_change_racing_a_sleep_is_not_lost(Sleep::wake_one);
    }

    /// A shrink, which wakes only the sleepers without a deadline (`wake_untimed`).
    #[test]
    fn a_wake_untimed_racing_an_untimed_sleep_is_not_lost() {
        a_change_racing_a_sleep_is_not_lost(Sleep::wake_untimed);
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
                            s.sleep(&me, None, || w.load(SeqCst) > 0);
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
