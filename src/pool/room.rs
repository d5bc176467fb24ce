//! The bounded queue's room: how many jobs may wait in the queue, and the handles waiting for a
//! free slot.
//!
//! # Protocol
//!
//! With a capacity, `used` counts the jobs in the queue; taking a slot is one compare-and-swap
//! that fails at the capacity. A handle that finds no slot registers its waker, then tries
//! again (a slot freed in between is not missed); a worker that takes a job off the queue frees
//! its slot, then looks for registered waiters. The two sides write one of `used` and
//! `waiting` and then read the other, with a `SeqCst` fence in between, the Dekker pattern: at
//! least one sees the other's write, so either the handle's second try finds the slot or the
//! releaser sees the waiter and wakes it. (Fences, not `SeqCst` accesses alone: loom does not
//! model `SeqCst` accesses as one total order but does model fences, and the model below fails
//! without them.)
//!
//! Waking wakes every registered waiter: a woken handle that was dropped meanwhile must not
//! swallow the only wake-up.
//!
//! A worker frees a slot as it takes a job off the queue, before it runs that job, so it does
//! not wake the waiters itself: their wakers are user code, and one that blocks would keep the
//! job it just took in no queue and on no thread. It hands the wake-up to the timer's ringers
//! ([`Timer::hand_off`](super::timer::Timer::hand_off)), and runs it itself only if the pool is
//! closed or the OS refuses the timer a thread. The wakers are woken one at a time, and before
//! a wake-up that leaves others behind another drainer is queued for the ringers
//! ([`hand_to_ringers`]), so that one that blocks keeps no other asleep (up to the ringers'
//! bound on such tasks), at the cost of at most one more task per round in the usual case.
//! While one such wake-up has not taken the wakers yet (`handing`), later releases ask for no
//! other: it takes theirs too. The flag is cleared before the wakers are taken, so a waiter
//! registered after that either has its `waiting` seen by a later release, which asks again,
//! or sees the slot freed (the same Dekker pair).
//!
//! The wakers are taken out under the lock and woken after it, each
//! through the guard, so a waker that panics neither poisons the room nor keeps the others
//! asleep. `round` counts the wake-ups, so that a handle polled again in the same round by the
//! same task does not register a second waker.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Weak};
use std::task::Waker;

use super::timer::{hand_to_ringers, RingerTask};
use crate::guard;
use crate::job::Job;
use crate::sync::{fence, lock, AtomicBool, AtomicUsize, Mutex};

/// The shortest length of the held jobs' list at which it is swept.
const HELD_SWEEP_MIN: usize = 64;

pub(crate) struct Room {
    /// `None`: unbounded, every call finds room.
    capacity: Option<usize>,
    used: AtomicUsize,
    waiting: AtomicUsize,
    round: AtomicUsize,
    /// A wake-up asked for by [`release_for_hand_off`](Self::release_for_hand_off) has not
    /// taken the wakers yet: the releases meanwhile need not ask for another.
    handing: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
    /// Wakers taken out of `wakers` by a handed wake-up, still to be woken (see
    /// [`drain`](Self::drain)).
    to_wake: Mutex<VecDeque<Waker>>,
    /// A follow-up drainer is queued for the ringers and has not started.
    drainer_queued: AtomicBool,
    /// The jobs held by handles waiting for room, for the close (see [`Held`]).
    held: Mutex<HeldJobs>,
}

/// A job held by its handle until the bounded queue has room. The room keeps a `Weak` of each,
/// so that the pool's close drops the jobs of handles nobody polls any more: they count as
/// never running at once (their `AbortHandle`s say so), not only once polled.
pub(crate) type Held = Mutex<Option<Job>>;

struct HeldJobs {
    jobs: Vec<Weak<Held>>,
    /// The list is swept of the jobs that left it (queued, or their handles dropped) when it
    /// grows to this length: the sweep's cost is spread over the registrations since the last.
    sweep_at: usize,
    /// [`Room::drop_held`] has run: no job is held from then on.
    closed: bool,
}

impl Room {
    pub(crate) fn new(capacity: Option<usize>) -> Self {
        Room {
            capacity,
            used: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            round: AtomicUsize::new(0),
            handing: AtomicBool::new(false),
            wakers: Mutex::new(Vec::new()),
            to_wake: Mutex::new(VecDeque::new()),
            drainer_queued: AtomicBool::new(false),
            held: Mutex::new(HeldJobs {
                jobs: Vec::new(),
                sweep_at: HELD_SWEEP_MIN,
                closed: false,
            }),
        }
    }

    /// Takes a slot for one job: always without a capacity, if one is free with one.
    pub(crate) fn try_take(&self) -> bool {
        match self.capacity {
            None => true,
            Some(capacity) => self
                .used
                .fetch_update(SeqCst, SeqCst, |used| (used < capacity).then_some(used + 1))
                .is_ok(),
        }
    }

    /// Frees a slot taken by [`try_take`](Self::try_take), and wakes the waiters if any, here.
    pub(crate) fn release(&self) {
        if self.release_wants_wake() {
            self.wake_all();
        }
    }

    /// Frees a slot taken by [`try_take`](Self::try_take); true if waiters must be woken and no
    /// wake-up is on its way to them already: the caller then has [`wake_handed`] called, on
    /// this thread or another (a worker hands it on: see the module docs).
    ///
    /// [`wake_handed`]: Self::wake_handed
    pub(crate) fn release_for_hand_off(&self) -> bool {
        if !self.release_wants_wake() {
            return false;
        }
        !self.handing.swap(true, SeqCst)
    }

    /// The wake-up a [`release_for_hand_off`](Self::release_for_hand_off) asked for, on a
    /// ringer (or here and now, off one). Later releases ask for another from here on: the
    /// flag is cleared before the wakers are taken, so a waiter that registers after they were
    /// taken is either seen by such a release or finds the slot itself. The wakers are then
    /// woken one at a time ([`drain`](Self::drain)); `follow_up()` makes a task that drains
    /// too, for a ringer to take if a waker blocks.
    pub(crate) fn wake_handed(&self, follow_up: &dyn Fn() -> RingerTask) {
        // (A swap, not a store: it reads the `true` of every release that asked for no
        // wake-up of its own, so what those releases saw comes before the wakers are taken
        // below. The loom model fails with a store.)
        self.handing.swap(false, SeqCst);
        let wakers = self.take_wakers();
        if wakers.is_empty() {
            return;
        }
        lock(&self.to_wake).extend(wakers);
        self.drain(follow_up);
    }

    /// A follow-up drainer's task: see [`wake_handed`](Self::wake_handed).
    pub(crate) fn drain_again(&self, follow_up: &dyn Fn() -> RingerTask) {
        self.drainer_queued.store(false, SeqCst);
        self.drain(follow_up);
    }

    /// Wakes the wakers taken for waking, one at a time, until none is left. Before each
    /// wake-up that leaves others behind, it makes sure another drainer is queued for the
    /// ringers, so that a waker that blocks keeps no other asleep: that drainer wakes the rest
    /// (and, before any wake-up of its own that leaves others, queues the next). Whoever adds
    /// wakers drains them, so none is left with no drainer running or queued.
    fn drain(&self, follow_up: &dyn Fn() -> RingerTask) {
        loop {
            let (waker, more) = {
                let mut to_wake = lock(&self.to_wake);
                let Some(waker) = to_wake.pop_front() else {
                    return;
                };
                (waker, !to_wake.is_empty())
            };
            if more
                && !self.drainer_queued.swap(true, SeqCst)
                && hand_to_ringers(follow_up()).is_some()
            {
                // Off a ringer (the pool closed, or the timer has no thread): this thread
                // wakes them all itself.
                self.drainer_queued.store(false, SeqCst);
            }
            guard::wake(waker);
        }
    }

    fn release_wants_wake(&self) -> bool {
        if self.capacity.is_none() {
            return false;
        }
        // ORDERING: the releaser's half of the Dekker pattern (see the module docs).
        self.used.fetch_sub(1, SeqCst);
        fence(SeqCst);
        self.waiting.load(SeqCst) > 0
    }

    /// Registers `waker` to be woken when a slot frees; returns the round it is registered in.
    /// The caller tries to take a slot again afterwards.
    pub(crate) fn register(&self, waker: Waker) -> usize {
        let mut wakers = lock(&self.wakers);
        wakers.push(waker);
        // ORDERING: the waiter's half of the Dekker pattern (see the module docs); the retry's
        // read of `used` comes after this fence.
        self.waiting.fetch_add(1, SeqCst);
        fence(SeqCst);
        self.round.load(SeqCst)
    }

    /// Registers `cx`'s waker to be woken when a slot frees up, unless `registered` holds a
    /// registration of the same task that no wake-up has consumed yet (a task polled again
    /// while the queue stays full registers once, not once per poll). True if it registered
    /// now: the caller then tries to take a slot once more. A registration it replaces (another
    /// task's) is taken out of the list. The waker's clone and the old one's drop (user code)
    /// happen outside the room's lock.
    pub(crate) fn register_once(
        &self,
        cx: &std::task::Context<'_>,
        registered: &mut Option<(usize, Waker)>,
    ) -> bool {
        if let Some((round, waker)) = registered {
            if self.still_registered(*round) && waker.will_wake(cx.waker()) {
                return false;
            }
        }
        let waker = cx.waker().clone();
        let round = self.register(waker.clone());
        // Another task's registration, or one a wake-up took: out of the list if still there.
        self.unregister(registered.replace((round, waker)));
        true
    }

    /// True if a waker registered in `round` is still registered (not woken since).
    fn still_registered(&self, round: usize) -> bool {
        round == self.round.load(SeqCst)
    }

    /// A waiter gives up (its handle is dropped, or it found its slot after all): takes out the
    /// waker it registered in `round`, if no wake-up has taken it yet, so that given-up
    /// waiters do not keep their tasks' wakers for as long as the queue stays full. (Clones
    /// of one task's waker are alike: any of them is that registration's.) The waker is
    /// dropped after the lock, through the guard.
    pub(crate) fn unregister(&self, registered: Option<(usize, Waker)>) {
        let Some((round, waker)) = registered else {
            return;
        };
        let taken = {
            let mut wakers = lock(&self.wakers);
            let at = self
                .still_registered(round)
                .then(|| wakers.iter().rposition(|w| w.will_wake(&waker)))
                .flatten();
            at.map(|at| {
                self.waiting.fetch_sub(1, SeqCst);
                wakers.swap_remove(at)
            })
        };
        guard::drop("a waker", (waker, taken));
    }

    /// A job that waits for room in its handle: kept for [`drop_held`](Self::drop_held).
    ///
    /// # Errors
    ///
    /// The job back if `drop_held` has run (the pool closed after its caller looked): it is
    /// refused, as a job held at the close would have been dropped.
    pub(crate) fn hold(&self, job: Job) -> Result<Arc<Held>, Job> {
        let mut list = lock(&self.held);
        if list.closed {
            return Err(job);
        }
        let held = Arc::new(Mutex::new(Some(job)));
        if list.jobs.len() >= list.sweep_at {
            list.jobs.retain(|job| job.strong_count() > 0);
            list.sweep_at = (2 * list.jobs.len()).max(HELD_SWEEP_MIN);
        }
        list.jobs.push(Arc::downgrade(&held));
        Ok(held)
    }

    /// At the close: takes every held job out of its handle and drops it through the guard
    /// (outside every lock: a job's closure is user code), which tells its handle `ShutDown`.
    pub(crate) fn drop_held(&self) {
        let list = {
            let mut list = lock(&self.held);
            list.closed = true;
            std::mem::take(&mut list.jobs)
        };
        for held in list {
            let Some(held) = held.upgrade() else {
                continue;
            };
            let job = lock(&held).take();
            guard::drop("the work of a call refused at shutdown", (job, held));
        }
    }

    /// Wakes every registered waiter (a slot freed, or the pool closed).
    pub(crate) fn wake_all(&self) {
        for waker in self.take_wakers() {
            guard::wake(waker);
        }
    }

    /// Every registered waker, out of the list (a new round).
    fn take_wakers(&self) -> Vec<Waker> {
        let mut wakers = lock(&self.wakers);
        self.waiting.store(0, SeqCst);
        self.round.fetch_add(1, SeqCst);
        std::mem::take(&mut *wakers)
    }
}

/// Wakers still registered when the pool goes (user values) are dropped through the guard.
impl Drop for Room {
    fn drop(&mut self) {
        let wakers = std::mem::take(&mut *lock(&self.wakers));
        let to_wake = std::mem::take(&mut *lock(&self.to_wake));
        guard::drop("a waker", (wakers, to_wake));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicBool;
    use loom::sync::Arc;
    use loom::thread;
    use std::task::Wake;

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            // A read-modify-write, as an executor's wake-up is (a task's state word). With a
            // plain store, loom can order the store before the task's own swap that it ran
            // after, so that the swap read the value before it (a known gap in loom's model of
            // modification order, loom's issue 282): a wake-up that no execution can lose.
            self.0.swap(true, SeqCst);
        }
    }

    /// The hand-off: a handle that found the queue full registers and retries while a worker
    /// frees the only slot. Either the retry takes the slot or the handle is woken; never
    /// neither (the handle would wait forever), and the slot count stays exact.
    #[test]
    fn a_freed_slot_reaches_a_registering_waiter() {
        loom::model(|| {
            let room = Arc::new(Room::new(Some(1)));
            assert!(room.try_take());
            let flag = std::sync::Arc::new(Flag(AtomicBool::new(false)));
            let releaser = {
                let room = room.clone();
                thread::spawn(move || room.release())
            };
            // The handle's side: a first try, then register and retry.
            let took = room.try_take() || {
                room.register(Waker::from(flag.clone()));
                room.try_take()
            };
            releaser.join().unwrap();
            let woken = flag.0.load(SeqCst);
            assert!(took || woken, "the freed slot was missed");
            assert!(room.used.load(SeqCst) <= 1);
        });
    }

    /// Two releases by workers, each handing its wake-up on (run here after it, at any point
    /// of the others' steps), while one waiter was registered before them and another
    /// registers and retries: a release that asks for no wake-up of its own (one is on its
    /// way) never leaves a waiter asleep with a slot free.
    #[test]
    fn handed_wake_ups_reach_every_waiter() {
        loom::model(|| {
            let room = Arc::new(Room::new(Some(2)));
            assert!(room.try_take() && room.try_take());
            let early = std::sync::Arc::new(Flag(AtomicBool::new(false)));
            room.register(Waker::from(early.clone()));
            let releasers: Vec<_> = (0..2)
                .map(|_| {
                    let room = room.clone();
                    thread::spawn(move || {
                        if room.release_for_hand_off() {
                            // (Off a ringer: no follow-up drainer is queued.)
                            room.wake_handed(&|| Box::new(|| {}));
                        }
                    })
                })
                .collect();
            let late = std::sync::Arc::new(Flag(AtomicBool::new(false)));
            let took = room.try_take() || {
                room.register(Waker::from(late.clone()));
                room.try_take()
            };
            for releaser in releasers {
                releaser.join().unwrap();
            }
            assert!(early.0.load(SeqCst), "the early waiter was never woken");
            assert!(
                took || late.0.load(SeqCst),
                "the late waiter missed a freed slot"
            );
            assert!(!room.handing.load(SeqCst), "a wake-up is still asked for");
        });
    }

    /// A handle whose task is polled again while the queue stays full calls `register_once`
    /// with its first registration, while a worker frees the only slot, wakes the waiters,
    /// and another caller takes the slot. The poll starts as a woken task's does, with its
    /// wake-up consumed if one came. After it, the task has the slot, or is woken again, or is still
    /// registered for the next wake-up: a poll never skips registering because of a
    /// registration that a wake-up has already consumed (it would sleep with nobody to wake it).
    #[test]
    fn a_task_polled_again_as_a_release_wakes_is_not_left_asleep() {
        loom::model(|| {
            let room = Arc::new(Room::new(Some(1)));
            assert!(room.try_take());
            let flag = std::sync::Arc::new(Flag(AtomicBool::new(false)));
            let waker = Waker::from(flag.clone());
            let mut registered = None;
            let cx = std::task::Context::from_waker(&waker);
            // The first poll: registers, retries, finds none (nobody has freed one yet).
            assert!(room.register_once(&cx, &mut registered));
            assert!(!room.try_take());
            let releaser = {
                let room = room.clone();
                thread::spawn(move || {
                    room.release();
                    room.try_take() // another caller, which may get the slot first
                })
            };
            // The second poll, racing the release; it starts as an executor's does, taking the
            // task's wake-up if one came (a read of it, as an executor's is).
            flag.0.swap(false, SeqCst);
            let took = room.register_once(&cx, &mut registered) && room.try_take();
            let rival_took = releaser.join().unwrap();
            assert!(!(took && rival_took), "two took the only slot");
            let still = registered
                .as_ref()
                .is_some_and(|(round, _)| room.still_registered(*round));
            assert!(
                took || flag.0.load(SeqCst) || still,
                "the task sleeps with nobody to wake it"
            );
        });
    }

    /// A handle holds its job while the pool closes (`drop_held`): the job is refused to it or
    /// dropped by the close, never kept with nobody to drop it, and its handle answers
    /// `ShutDown` either way.
    #[test]
    fn a_job_held_as_the_pool_closes_is_dropped_or_refused() {
        loom::model(|| {
            let room = Arc::new(Room::new(Some(1)));
            let (job, mut handle) = crate::job::new_job(|| 7u32, Default::default(), 1);
            let closer = {
                let room = room.clone();
                thread::spawn(move || room.drop_held())
            };
            let held = room.hold(job);
            closer.join().unwrap();
            match held {
                Ok(held) => assert!(lock(&held).is_none(), "the close left a held job"),
                Err(job) => drop(job),
            }
            match handle.poll_with(None) {
                std::task::Poll::Ready(Err(e)) => assert!(e.is_shut_down(), "{e:?}"),
                other => panic!("the handle of a dropped job: {other:?}"),
            }
        });
    }

    /// Two waiters and one release: both are woken (wake-all), so a waiter dropped before it
    /// polls again cannot swallow the only wake-up.
    #[test]
    fn a_release_wakes_every_waiter() {
        loom::model(|| {
            let room = Arc::new(Room::new(Some(1)));
            assert!(room.try_take());
            let flags: Vec<_> = (0..2)
                .map(|_| std::sync::Arc::new(Flag(AtomicBool::new(false))))
                .collect();
            for flag in &flags {
                room.register(Waker::from(flag.clone()));
            }
            let releaser = {
                let room = room.clone();
                thread::spawn(move || room.release())
            };
            releaser.join().unwrap();
            assert!(flags.iter().all(|f| f.0.load(SeqCst)));
        });
    }
}
