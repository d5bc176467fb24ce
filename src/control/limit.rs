//! A program's concurrency limit, fixed or adaptive: at most `limit` of its attempts queued or
//! running at once, the others waiting in a line outside the pool (so that other programs' jobs
//! pass them in the queue).
//!
//! # Adaptive: additive increase, multiplicative decrease
//!
//! Every attempt that ends is a sample. An overloaded one (the [`Overload`] signal says so, or
//! the call timed out) multiplies the limit by 0.9 (by at least 1), down to `min`; a good one,
//! while the limit is in use (at least half of it taken), counts towards an increase of 1 once
//! `limit` good samples have been seen, up to `max`. That is TCP's congestion avoidance
//! (one more per round trip's worth of successes, a cut on loss) with the 0.9 cut of Netflix's
//! AIMD limit: the limit settles just above what the backend serves, and follows it down at
//! once and up again within a few round trips.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{erase, Classifier, Classify, Grant, Waiter};
use crate::guard;
use crate::limits::ADAPTIVE_BACKOFF_RATIO;
use crate::sync::{lock, Mutex};

/// The overload signal of [`AsyncProgram::adaptive_concurrency`](crate::AsyncProgram::adaptive_concurrency):
/// which ended attempts tell that the backend has more than it can take. A call that timed out
/// always counts as one; a panic never does.
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
    state: Mutex<State>,
    adaptive: Option<(usize, usize, Signal)>,
}

struct State {
    limit: usize,
    in_flight: usize,
    /// Good samples towards the next increase.
    good: usize,
    line: VecDeque<Weak<dyn Waiter>>,
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
            state: Mutex::new(State {
                limit,
                in_flight: 0,
                good: 0,
                line: VecDeque::new(),
            }),
            adaptive,
        }
    }

    pub(crate) fn current(&self) -> usize {
        lock(&self.state).limit
    }

    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.state).in_flight
    }

    /// True for an adaptive limit whose signal looks at how long attempts ran.
    pub(crate) fn wants_latency(&self) -> bool {
        self.adaptive
            .as_ref()
            .is_some_and(|(_, _, signal)| signal.slower_than.is_some())
    }

    /// A slot now, or `None`: `waiter` is in the line and will be admitted with one.
    pub(crate) fn acquire(self: &Arc<Self>, waiter: Weak<dyn Waiter>) -> Option<Slot> {
        let mut state = lock(&self.state);
        if state.line.is_empty() && state.in_flight < state.limit {
            state.in_flight += 1;
            return Some(Slot::of(self));
        }
        state.line.push_back(waiter);
        None
    }

    /// A slot now if one is free and nobody waits for it; `None` (joining no line) if not.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let mut state = lock(&self.state);
        if state.line.is_empty() && state.in_flight < state.limit {
            state.in_flight += 1;
            return Some(Slot::of(self));
        }
        None
    }

    /// A slot came back: the next waiters are let in.
    fn give_back(self: &Arc<Self>) {
        self.settle(true, None);
    }

    /// Takes the live waiters the limit lets in now out of the line, each with its slot.
    fn admit(self: &Arc<Self>, state: &mut State) -> Admitted {
        let mut admitted = Admitted::default();
        while state.in_flight < state.limit {
            let Some(next) = state.line.pop_front() else {
                break;
            };
            match next.upgrade() {
                Some(waiter) if !waiter.is_gone() => {
                    state.in_flight += 1;
                    admitted.next.push((waiter, Slot::of(self)));
                }
                // Possibly the call's last owner, holding user values: dropped after the lock.
                Some(gone) => admitted.gone.push(gone),
                None => {}
            }
        }
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
        if let Some(overloaded) = self.overloaded(sample) {
            self.settle(false, Some(overloaded));
        }
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

    /// Under one lock: a slot back (`give_back`), the limit moved by a verdict, the next
    /// waiters let in.
    fn settle(self: &Arc<Self>, give_back: bool, overloaded: Option<bool>) {
        let (moved, admitted) = {
            let mut state = lock(&self.state);
            if give_back {
                state.in_flight -= 1;
            }
            let moved = match (&self.adaptive, overloaded) {
                (Some((min, max, _)), Some(overloaded)) => {
                    let before = state.limit;
                    if overloaded {
                        let cut = (before as f64 * ADAPTIVE_BACKOFF_RATIO) as usize;
                        state.limit = cut.min(before.saturating_sub(1)).max(*min);
                        state.good = 0;
                    } else if (state.in_flight + 1).saturating_mul(2) >= before {
                        state.good += 1;
                        if state.good >= before {
                            state.good = 0;
                            state.limit = before.saturating_add(1).min(*max);
                        }
                    }
                    (before != state.limit).then_some(state.limit)
                }
                _ => None,
            };
            (moved, self.admit(&mut state))
        };
        if let Some(limit) = moved {
            guard::quietly("a tracing subscriber", || {
                tracing::debug!(target: "asyncify_pool::adaptive", limit, "adaptive concurrency limit moved");
            });
        }
        Limit::hand_out(admitted);
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
