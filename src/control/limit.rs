//! A program's concurrency limit, fixed or adaptive: at most `limit` of its attempts queued or
//! running at once, the others waiting in a line outside the pool (so that other programs' jobs
//! pass them in the queue).
//!
//! # Adaptive: additive increase, multiplicative decrease
//!
//! Every attempt that ends is a sample. An overloaded one (the [`Overload`] signal says so, or
//! the deadline cut the attempt off, queued or running) multiplies the limit by 0.9 (by at least 1), down to `min`; a good one,
//! while the limit is in use (at least half of it taken), counts towards an increase of 1 once
//! `limit` good samples have been seen, up to `max`. That is TCP's congestion avoidance
//! (one more per round trip's worth of successes, a cut on loss) with the 0.9 cut of Netflix's
//! AIMD limit: the limit settles just above what the backend serves, and follows it down at
//! once and up again within a few round trips.
//!
//! # Protocol
//!
//! A call takes a slot with one compare-and-swap of `in_flight` against `limit`, and gives it
//! back with one decrement: neither takes a lock while nobody waits. The line is behind a lock,
//! and `waiting` mirrors its length. A call that finds no slot joins the line, writes
//! `waiting`, and then, if it is the first in the line, tries once more; a slot given back
//! decrements `in_flight` and then reads `waiting`, and lets the line in (under its lock) if it
//! is not 0. The two sides write one atomic and read the other with a `SeqCst` fence in
//! between, the Dekker pattern: either the second try finds the slot or the releaser sees the
//! waiter (the model below checks it). While the line is not empty, every slot given back
//! looks at it, so a waiter behind the first is reached too. A call that finds the line not
//! empty joins it, and a call that takes a slot without joining (the short way) looks at the
//! line after its claim and gives the slot back if anyone waits, so waiters keep their order
//! against later calls.
//!
//! The limit moves under the line's lock (a raise lets waiters in); good samples are counted
//! without it, and only the one that completes a raise's count takes it.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::line::{self, Leavers};
use super::{erase, Classifier, Classify, Grant, Waiter};
use crate::guard;
use crate::limits::ADAPTIVE_BACKOFF_RATIO;
use crate::sync::{fence, lock, AtomicUsize, Mutex};

/// The overload signal of [`AsyncProgram::adaptive_concurrency`](crate::AsyncProgram::adaptive_concurrency):
/// which ended attempts tell that the backend has more than it can take. An attempt that its
/// deadline cut off, queued or running, always counts as one (a call that timed out waiting
/// for a slot, before its attempt, does not); a panic never does.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use asyncify_pool::Overload;
///
/// struct Reply { status: u16 }
/// // A 429, or an answer slower than two seconds.
/// let signal = Overload::when(|r: &Reply| r.status == 429).or_slower_than(Duration::from_secs(2));
/// # let _ = signal;
/// ```
pub struct Overload<O> {
    when: Option<Classify<O>>,
    slower_than: Option<Duration>,
}

impl<O> Overload<O> {
    /// Outputs for which `classify` says true are overloads (it runs on the thread that ended
    /// the attempt; a panic in it counts as "no").
    ///
    /// # Examples
    ///
    /// ```
    /// let signal = asyncify_pool::Overload::when(|status: &u16| *status == 429);
    /// # let _ = signal;
    /// ```
    pub fn when(classify: impl Fn(&O) -> bool + Send + Sync + 'static) -> Self {
        Overload {
            when: Some(Arc::new(classify)),
            slower_than: None,
        }
    }

    /// Only attempts that ran longer than `latency` (and timeouts) are overloads.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let signal = asyncify_pool::Overload::<String>::slower_than(Duration::from_millis(800));
    /// # let _ = signal;
    /// ```
    pub fn slower_than(latency: Duration) -> Self {
        Overload {
            when: None,
            slower_than: Some(latency),
        }
    }

    /// Also attempts that ran longer than `latency`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let signal = asyncify_pool::Overload::when(|s: &u16| *s == 503).or_slower_than(Duration::from_secs(1));
    /// # let _ = signal;
    /// ```
    pub fn or_slower_than(mut self, latency: Duration) -> Self {
        self.slower_than = Some(latency);
        self
    }
}

impl<O> fmt::Debug for Overload<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overload")
            .field("when", &self.when.is_some())
            .field("slower_than", &self.slower_than)
            .finish()
    }
}

/// An [`Overload`] with its output type erased.
struct Signal {
    when: Option<Classifier>,
    slower_than: Option<Duration>,
}

/// What an ended attempt tells an adaptive limit.
pub(crate) enum Sample<'a> {
    /// It returned `output` (type-erased) after running `ran`.
    Returned(&'a dyn Any, Duration),
    /// The call timed out.
    TimedOut,
}

pub(crate) struct Limit {
    /// Slots taken: attempts queued or running.
    in_flight: AtomicUsize,
    /// The limit now (written under `line`'s lock, read anywhere).
    limit: AtomicUsize,
    /// Good samples towards the next increase.
    good: AtomicUsize,
    /// How many entries the line holds (some may have gone), written under its lock: a slot
    /// given back looks at the line only when it is not 0.
    waiting: AtomicUsize,
    line: Mutex<VecDeque<Weak<dyn Waiter>>>,
    /// Waiters that left the line without a slot, towards its next prune.
    leavers: Leavers,
    adaptive: Option<(usize, usize, Signal)>,
}

/// What leaves a line at once: waiters let in with their slots, and waiters that had gone.
#[derive(Default)]
struct Admitted {
    next: Vec<(Arc<dyn Waiter>, Slot)>,
    gone: Vec<Arc<dyn Waiter>>,
}

/// A slot of a limit, given back (and the next waiter admitted) when dropped or released.
pub(crate) struct Slot(Option<Arc<Limit>>);

impl Slot {
    fn of(limit: &Arc<Limit>) -> Self {
        Slot(Some(Arc::clone(limit)))
    }

    /// True if its limit is adaptive with a latency signal: the attempt must time its run.
    pub(crate) fn wants_latency(&self) -> bool {
        self.0.as_ref().is_some_and(|l| l.wants_latency())
    }

    /// Gives the slot back, then takes the sample of the attempt that held it (`None`: no
    /// sample): the overload classifier is user code, which may block, and must not hold the
    /// slot meanwhile.
    pub(crate) fn release(mut self, sample: Option<Sample<'_>>) {
        let limit = self
            .0
            .take()
            .expect("a slot holds its limit until released");
        limit.give_back();
        if let Some(sample) = sample {
            limit.sample(sample);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(limit) = self.0.take() {
            limit.give_back();
        }
    }
}

impl Limit {
    /// A fixed limit of `n` (at least 1).
    pub(crate) fn fixed(n: usize) -> Arc<Self> {
        Arc::new(Self::with(n.max(1), None))
    }

    /// An adaptive limit between `min` (at least 1) and `max`, starting at `min`.
    pub(crate) fn adaptive<O: 'static>(min: usize, max: usize, overload: Overload<O>) -> Arc<Self> {
        let min = min.max(1);
        let signal = Signal {
            when: overload.when.map(erase),
            slower_than: overload.slower_than,
        };
        Arc::new(Self::with(min, Some((min, max.max(min), signal))))
    }

    fn with(limit: usize, adaptive: Option<(usize, usize, Signal)>) -> Self {
        Limit {
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            good: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            line: Mutex::new(VecDeque::new()),
            leavers: Leavers::default(),
            adaptive,
        }
    }

    pub(crate) fn current(&self) -> usize {
        self.limit.load(SeqCst)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    /// True for an adaptive limit whose signal looks at how long attempts ran.
    pub(crate) fn wants_latency(&self) -> bool {
        self.adaptive
            .as_ref()
            .is_some_and(|(_, _, signal)| signal.slower_than.is_some())
    }

    /// Takes a slot if one is free under the limit now.
    fn claim(&self) -> bool {
        self.in_flight
            .fetch_update(SeqCst, SeqCst, |n| {
                (n < self.limit.load(SeqCst)).then_some(n + 1)
            })
            .is_ok()
    }

    /// A slot now, or `None`: `waiter` is in the line and will be admitted with one.
    pub(crate) fn acquire(self: &Arc<Self>, waiter: Weak<dyn Waiter>) -> Option<Slot> {
        let mut line = lock(&self.line);
        if line.is_empty() && self.claim() {
            return Some(Slot::of(self));
        }
        line.push_back(waiter);
        // ORDERING: the waiter's half of the Dekker pattern (see the module docs). A slot
        // given back before the fence may not have seen the line: the first in it claims the
        // slot now.
        self.waiting.store(line.len(), SeqCst);
        fence(SeqCst);
        if line.len() == 1 && self.claim() {
            // Only the `Weak` comes out: no user value is dropped under the lock.
            line.pop_front();
            self.waiting.store(0, SeqCst);
            return Some(Slot::of(self));
        }
        None
    }

    /// A slot now if one is free and nobody waits for it; `None` (joining no line) if not.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        if !self.claim() {
            return None;
        }
        // Claimed first, the line looked at after (with a fence, as a slot given back does):
        // a call that joined the line before may be what this slot was given back for, and
        // keeps its place ahead of this one.
        fence(SeqCst);
        if self.waiting.load(SeqCst) != 0 {
            self.give_back();
            return None;
        }
        Some(Slot::of(self))
    }

    /// A slot came back: the next waiters are let in, if any wait.
    fn give_back(self: &Arc<Self>) {
        // ORDERING: the releaser's half of the Dekker pattern (see the module docs).
        self.in_flight.fetch_sub(1, SeqCst);
        fence(SeqCst);
        if self.waiting.load(SeqCst) > 0 {
            let admitted = self.admit(&mut lock(&self.line));
            Limit::hand_out(admitted);
        }
    }

    /// A waiter left the line without a slot (its call was dropped or ended): once about half
    /// the line has, the entries of those gone are taken out (see [`line`]). `waiting` follows
    /// the line: only gone waiters leave it, so it is 0 only if no live one waits.
    pub(crate) fn left(&self) {
        if !self.leavers.one_more() {
            return;
        }
        let looked_at = {
            let mut line = lock(&self.line);
            let Some(seen) = self.leavers.due(line.len()) else {
                return;
            };
            let looked_at = line::prune(&mut line);
            self.waiting.store(line.len(), SeqCst);
            self.leavers.pruned(seen);
            looked_at
        };
        guard::drop("calls in a line", looked_at);
    }

    /// Takes the live waiters the limit lets in now out of the line, each with its slot.
    fn admit(self: &Arc<Self>, line: &mut VecDeque<Weak<dyn Waiter>>) -> Admitted {
        let mut admitted = Admitted::default();
        // The slot is claimed before a waiter is looked at: an upgraded waiter left in the
        // line would drop under the lock, and it may be a call's last owner.
        while !line.is_empty() && self.claim() {
            let next = line.pop_front().expect("not empty");
            match next.upgrade() {
                Some(waiter) if !waiter.is_gone() => {
                    admitted.next.push((waiter, Slot::of(self)));
                }
                other => {
                    // Nobody to let in: the slot goes back. Whoever gives back a slot now
                    // sees the line (`waiting` is not 0 until the store below) and waits for
                    // this lock.
                    self.in_flight.fetch_sub(1, SeqCst);
                    // Possibly the call's last owner, holding user values: dropped after the
                    // lock.
                    admitted.gone.extend(other);
                }
            }
        }
        self.waiting.store(line.len(), SeqCst);
        admitted
    }

    fn hand_out(admitted: Admitted) {
        let grants = admitted.next.into_iter();
        super::admit_all(grants.map(|(w, slot)| (w, Grant::Slot(slot))).collect());
        guard::drop("a call that left a line", admitted.gone);
    }

    /// An attempt ended: for an adaptive limit, move it. Classifies (user code) first, with no
    /// lock held.
    pub(crate) fn sample(self: &Arc<Self>, sample: Sample<'_>) {
        let Some((min, max, _)) = &self.adaptive else {
            return;
        };
        let Some(overloaded) = self.overloaded(sample) else {
            return;
        };
        if !overloaded {
            // A good sample counts while the limit is in use; one in `limit` of them (the one
            // that completes the count) raises it, under the line's lock.
            let limit = self.limit.load(SeqCst);
            let in_use = (self.in_flight.load(SeqCst) + 1).saturating_mul(2) >= limit;
            if !in_use || self.good.fetch_add(1, SeqCst) + 1 < limit {
                return;
            }
        }
        let (moved, admitted) = {
            let mut line = lock(&self.line);
            let before = self.limit.load(SeqCst);
            let after = if overloaded {
                let cut = (before as f64 * ADAPTIVE_BACKOFF_RATIO) as usize;
                self.good.store(0, SeqCst);
                cut.min(before.saturating_sub(1)).max(*min)
            } else if self.good.load(SeqCst) >= before {
                // Samples counted while this one waited for the lock count towards the next.
                let _ = self
                    .good
                    .fetch_update(SeqCst, SeqCst, |g| Some(g.saturating_sub(before)));
                before.saturating_add(1).min(*max)
            } else {
                // Another sample raised it meanwhile.
                before
            };
            self.limit.store(after, SeqCst);
            let admitted = if after > before {
                self.admit(&mut line)
            } else {
                Admitted::default()
            };
            ((before != after).then_some(after), admitted)
        };
        if let Some(limit) = moved {
            guard::quietly("a tracing subscriber", || {
                tracing::debug!(target: "asyncify_pool::adaptive", limit, "adaptive concurrency limit moved");
            });
        }
        Limit::hand_out(admitted);
    }

    /// What `sample` says of the backend: overloaded or not (`None` for a fixed limit). Runs
    /// the classifier: no lock held.
    fn overloaded(&self, sample: Sample<'_>) -> Option<bool> {
        let (_, _, signal) = self.adaptive.as_ref()?;
        Some(match sample {
            Sample::TimedOut => true,
            Sample::Returned(out, ran) => {
                signal.slower_than.is_some_and(|l| ran > l)
                    || signal
                        .when
                        .as_ref()
                        .is_some_and(|c| guard::call(|| c(out)).unwrap_or(false))
            }
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn adaptive(min: usize, max: usize) -> Arc<Limit> {
        Limit::adaptive(min, max, Overload::when(|s: &u16| *s == 429))
    }

    /// Good samples while the limit is in use raise it by one per `limit` of them; an overload
    /// cuts it by a tenth (at least one), never below `min` or above `max`.
    #[test]
    fn aimd_moves_between_min_and_max() {
        let limit = adaptive(2, 5);
        let held: Vec<_> = (0..2)
            .map(|_| limit.acquire(Weak::<Dummy>::new()).unwrap())
            .collect();
        for _ in 0..2 {
            limit.sample(Sample::Returned(&200u16, Duration::ZERO));
        }
        assert_eq!(limit.current(), 3);
        for _ in 0..20 {
            limit.sample(Sample::Returned(&200u16, Duration::ZERO));
        }
        assert_eq!(limit.current(), 5, "capped at max");
        limit.sample(Sample::Returned(&429u16, Duration::ZERO));
        assert_eq!(limit.current(), 4, "a cut of at least one");
        for _ in 0..10 {
            limit.sample(Sample::TimedOut);
        }
        assert_eq!(limit.current(), 2, "never below min");
        drop(held);
        assert_eq!(limit.in_flight(), 0);
    }

    /// The multiplicative decrease is a cut to 0.9 of the limit, rounded down: 100 to 90 to 81.
    #[test]
    fn an_overload_cuts_the_limit_to_nine_tenths() {
        let limit = adaptive(10, 200);
        let mut held = Vec::new();
        // From 10 to 100: one more per `limit` good samples, while at least half is taken.
        while limit.current() < 100 {
            while held.len() < limit.current() {
                held.push(limit.acquire(Weak::<Dummy>::new()).unwrap());
            }
            limit.sample(Sample::Returned(&200u16, Duration::ZERO));
        }
        assert_eq!(limit.current(), 100);
        limit.sample(Sample::Returned(&429u16, Duration::ZERO));
        assert_eq!(limit.current(), 90);
        limit.sample(Sample::TimedOut);
        assert_eq!(limit.current(), 81);
        drop(held);
    }

    /// `or_slower_than` adds latency to an output classifier: either one is an overload.
    #[test]
    fn or_slower_than_adds_latency_to_the_classifier() {
        let signal = Overload::when(|s: &u16| *s == 429).or_slower_than(Duration::from_millis(5));
        let limit = Limit::adaptive(1, 100, signal);
        let mut held = Vec::new();
        while limit.current() < 50 {
            while held.len() < limit.current() {
                held.push(limit.acquire(Weak::<Dummy>::new()).unwrap());
            }
            limit.sample(Sample::Returned(&200u16, Duration::from_millis(1)));
        }
        limit.sample(Sample::Returned(&200u16, Duration::from_millis(6)));
        assert_eq!(limit.current(), 45, "a slow answer is an overload");
        limit.sample(Sample::Returned(&429u16, Duration::ZERO));
        assert_eq!(limit.current(), 40, "and so is the classifier's");
        drop(held);
    }

    /// An idle limit does not grow: good samples count only while at least half of it is taken.
    #[test]
    fn an_unused_limit_does_not_grow() {
        let limit = adaptive(4, 100);
        for _ in 0..100 {
            limit.sample(Sample::Returned(&200u16, Duration::ZERO));
        }
        assert_eq!(limit.current(), 4);
    }

    /// Latency is a signal when asked for.
    #[test]
    fn slow_answers_are_overloads() {
        let limit = Limit::adaptive(
            1,
            10,
            Overload::<u16>::slower_than(Duration::from_millis(5)),
        );
        let _held = limit.acquire(Weak::<Dummy>::new()).unwrap();
        limit.sample(Sample::Returned(&200u16, Duration::ZERO));
        assert_eq!(limit.current(), 2);
        limit.sample(Sample::Returned(&200u16, Duration::from_millis(6)));
        assert_eq!(limit.current(), 1);
    }

    struct Dummy;
    impl Waiter for Dummy {
        fn admit(self: Arc<Self>, _: Grant) {}
        fn is_gone(&self) -> bool {
            true
        }
        fn registry(&self) -> &Arc<crate::pool::Registry> {
            unreachable!("never in a line in these tests")
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! The slot hand-off without a lock, checked over every interleaving (`.ci/loom`).
    use super::*;
    use loom::sync::atomic::AtomicBool;
    use loom::thread;

    /// A waiter that keeps the slot it is admitted with (or one that has gone).
    struct Keeper {
        admitted: AtomicBool,
        slot: Mutex<Option<Slot>>,
        gone: bool,
    }

    impl Keeper {
        fn new() -> Arc<Self> {
            Self::with(false)
        }

        fn with(gone: bool) -> Arc<Self> {
            Arc::new(Keeper {
                admitted: AtomicBool::new(false),
                slot: Mutex::new(None),
                gone,
            })
        }
    }

    impl Waiter for Keeper {
        fn admit(self: Arc<Self>, grant: Grant) {
            if let Grant::Slot(slot) = grant {
                *lock(&self.slot) = Some(slot);
            }
            self.admitted.store(true, SeqCst);
        }
        fn is_gone(&self) -> bool {
            self.gone
        }
        fn registry(&self) -> &Arc<crate::pool::Registry> {
            unreachable!("no pool in these models")
        }
    }

    fn weak(keeper: &Arc<Keeper>) -> Weak<dyn Waiter> {
        let waiter: Arc<dyn Waiter> = keeper.clone();
        Arc::downgrade(&waiter)
    }

    /// The only slot is given back while a call that found none joins the line: either its
    /// second try takes the slot or the releaser lets it in; never neither (it would wait
    /// forever), never both, and the count stays within the limit.
    #[test]
    fn a_slot_given_back_reaches_a_call_joining_the_line() {
        loom::model(|| {
            let limit = Limit::fixed(1);
            let held = limit.try_acquire().expect("a free slot");
            let releaser = thread::spawn(move || drop(held));
            let keeper = Keeper::new();
            let now = limit.acquire(weak(&keeper));
            releaser.join().unwrap();
            let admitted = keeper.admitted.load(SeqCst);
            assert!(
                now.is_some() != admitted,
                "now: {}, admitted: {admitted}",
                now.is_some()
            );
            assert_eq!(limit.in_flight(), 1);
            drop(now);
            drop(lock(&keeper.slot).take());
            assert_eq!(limit.in_flight(), 0);
        });
    }

    /// A call on the short way (`try_acquire`) races a slot given back and a call joining the
    /// line: whatever it gets, the call in the line is not left waiting behind a free slot.
    #[test]
    fn the_short_way_leaves_no_waiter_behind_a_free_slot() {
        loom::model(|| {
            let limit = Limit::fixed(1);
            let held = limit.try_acquire().expect("a free slot");
            let releaser = thread::spawn(move || drop(held));
            let short = {
                let limit = Arc::clone(&limit);
                thread::spawn(move || limit.try_acquire())
            };
            let keeper = Keeper::new();
            let now = limit.acquire(weak(&keeper));
            releaser.join().unwrap();
            if let Some(slot) = short.join().unwrap() {
                // It took the slot: the waiter has none yet, and gets it when this goes back.
                assert!(now.is_none() && !keeper.admitted.load(SeqCst));
                assert_eq!(limit.in_flight(), 1);
                drop(slot);
            }
            assert!(
                now.is_some() != keeper.admitted.load(SeqCst),
                "the waiter was missed, or served twice"
            );
            assert_eq!(limit.in_flight(), 1);
        });
    }

    /// A call already waits in the line when the slot is given back and a call on the short
    /// way tries at that moment: the short way never gets it (the waiter was first), and the
    /// waiter is let in.
    #[test]
    fn the_short_way_does_not_overtake_a_waiter() {
        loom::model(|| {
            let limit = Limit::fixed(1);
            let held = limit.try_acquire().expect("a free slot");
            let keeper = Keeper::new();
            assert!(limit.acquire(weak(&keeper)).is_none());
            let releaser = thread::spawn(move || drop(held));
            let short = {
                let limit = Arc::clone(&limit);
                thread::spawn(move || limit.try_acquire())
            };
            releaser.join().unwrap();
            assert!(short.join().unwrap().is_none(), "it overtook the waiter");
            assert!(keeper.admitted.load(SeqCst), "the waiter was missed");
            assert_eq!(limit.in_flight(), 1);
        });
    }

    /// Two calls wait behind a full limit of two while both slots are given back by two
    /// threads: both calls get a slot (the second perhaps at once, if the line emptied before
    /// it came), and exactly two are taken.
    #[test]
    fn every_waiter_behind_the_first_is_reached() {
        loom::model(|| {
            let limit = Limit::fixed(2);
            let held = [(); 2].map(|_| limit.try_acquire().expect("a free slot"));
            let first = Keeper::new();
            let second = Keeper::new();
            assert!(limit.acquire(weak(&first)).is_none());
            let releasers = held.map(|slot| thread::spawn(move || drop(slot)));
            let now = limit.acquire(weak(&second));
            for r in releasers {
                r.join().unwrap();
            }
            assert!(first.admitted.load(SeqCst), "the first waiter was missed");
            assert!(
                now.is_some() != second.admitted.load(SeqCst),
                "the second waiter was missed, or served twice"
            );
            assert_eq!(limit.in_flight(), 2);
        });
    }

    /// A prune (the entries of waiters that left taken out, `waiting` lowered) races the only
    /// slot given back: the live waiter behind a gone one is let in, once, and the count stays
    /// within the limit.
    #[test]
    fn a_prune_racing_a_slot_given_back_leaves_no_waiter_behind() {
        loom::model(|| {
            let limit = Limit::fixed(1);
            let held = limit.try_acquire().expect("a free slot");
            let (gone, live) = (Keeper::with(true), Keeper::new());
            assert!(limit.acquire(weak(&gone)).is_none());
            assert!(limit.acquire(weak(&live)).is_none());
            for _ in 1..line::PRUNE_AFTER {
                limit.leavers.one_more();
            }
            let releaser = thread::spawn(move || drop(held));
            limit.left(); // the one that makes the prune due
            releaser.join().unwrap();
            assert!(live.admitted.load(SeqCst), "the live waiter was missed");
            assert_eq!(limit.in_flight(), 1);
        });
    }
}
