//! [`RateLimiter`]: at most `n` attempts let into the pool per period, with a burst, shared by
//! every program handed the same limiter; calls beyond it wait in one line, in order, on the
//! pool's timer.
//!
//! The turns come by time alone, never by what the pool does with the attempts let in: a
//! limiter that let the next turn wait for the last attempt's start would make a job that
//! waits for a later call, while the earlier ones are queued behind it, wait for good.
//!
//! The limiter is a GCRA (the "virtual scheduling" form of a token bucket): it keeps the
//! theoretical arrival time `tat` of the next turn. With interval `T = per / n` and tolerance
//! `τ = T × (burst − 1)`, a turn at `now` is allowed if `now ≥ tat − τ`, and moves `tat` to
//! `max(tat, now) + T`. So `burst` turns may go at once, and from then on one every `T`.
//!
//! Time is counted exactly, in units of `1/n` ns since the limiter was made (so `T` is `per`'s
//! nanoseconds, with no rounding), in a `u128`: no period, rate or burst overflows it.
//!
//! Every pool with a call in the line has the limiter's alarm set on its timer (for the next
//! token, or far ahead if none will come), so that a pool's close lets its calls go at once,
//! whichever pool's call is at the head.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::line::{self, Leavers};
use super::{Grant, Waiter};
use crate::pool::{Alarm, Registry};
use crate::sync::{lock, Mutex};

/// A rate limit: at most `n` attempts let into the pool per `per`, `burst` of them at once.
/// Cheap to clone; clones are the same limit, so handing one to several programs
/// ([`AsyncProgram::with_rate_limiter`](crate::AsyncProgram::with_rate_limiter)) makes them
/// share it (one API key behind several modules).
///
/// A call that finds no token waits in the limiter's line, holding no worker, in the order the
/// calls came; a dropped handle leaves the line. Each attempt of a retried call takes a token.
///
/// A token is taken when an attempt is let into the pool's queue, and the attempt starts when
/// a worker takes it: at once while a worker is free, so that then the starts keep the limit.
/// Attempts let in while every worker is busy wait in the queue, and start as workers free
/// up, possibly closer together than `per / n` (the turns come by time, whatever the pool
/// does with them). For a backend that counts requests strictly, give the program's pool the
/// threads its rate needs, or retry the backend's "too many requests" answers
/// ([`Retry::retry_if`](crate::Retry::retry_if)).
///
/// An attempt that never starts (its handle dropped or aborted while it is queued, its
/// deadline passed there, its pool closed, or the copy of its input for a retry panicked)
/// gives its token back, as if it had never been taken, so that it costs no turn of the
/// quota: a token comes back only while no later turn could have used the room it frees (no
/// other turn took from a full or nearly full burst meanwhile, no other token came back), and
/// is otherwise lost, never letting more than `n` per `per` and `burst` at once into the pool.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use asyncify_pool::{RateLimiter, WorkerPool};
///
/// let pool = WorkerPool::new(2);
/// let key = RateLimiter::new(100, Duration::from_secs(1)); // one start every 10 ms
/// let embed = pool.asyncify(|s: &'static str| s.len()).with_rate_limiter(&key);
/// let rerank = pool.asyncify(|s: &'static str| s.len() * 2).with_rate_limiter(&key);
/// let start = Instant::now();
/// let handles: Vec<_> = (0..5).flat_map(|_| [embed.call("a"), rerank.call("b")]).collect();
/// for h in handles {
///     h.wait().unwrap();
/// }
/// // Ten starts under one limit: the first at once, then one every 10 ms.
/// assert!(start.elapsed() >= Duration::from_millis(90));
/// ```
#[derive(Clone)]
pub struct RateLimiter(Arc<Rate>);

pub(crate) struct Rate {
    n: u32,
    per: Duration,
    burst: u32,
    /// The origin of the limiter's time.
    base: Instant,
    /// `T` and `τ`, in units of `1/n` ns.
    interval: u128,
    tolerance: u128,
    state: Mutex<State>,
    /// Waiters that left the line without a token, towards its next prune.
    leavers: Leavers,
}

struct State {
    /// The theoretical arrival time of the next start, in units of `1/n` ns since `base`.
    tat: u128,
    /// Tokens taken in this epoch may come back ([`Rate::give_back`]); a start that takes from
    /// a full or nearly full burst, or a token that comes back, begins the next.
    epoch: u64,
    line: VecDeque<Weak<dyn Waiter>>,
    /// The pools whose timers have the limiter's alarm set, and for when.
    armed: Vec<(u64, Instant)>,
    /// The pools of the calls that joined the line since it was last empty: with more than
    /// one, serving the line looks at every call (a closed pool's may be anywhere in it);
    /// with one, only at the head.
    pools: Vec<u64>,
}

/// How far ahead the alarm is set when no token will ever come (a limit of one start per
/// `Duration::MAX`): only a pool's close rings it.
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// A token of a rate limit, for one attempt: spent when the attempt starts ([`Token::spend`]);
/// dropped unspent (the attempt never started), it goes back to the limiter if it may (see
/// [`Rate::give_back`]).
pub(crate) struct Token(Option<(Arc<Rate>, u64)>);

impl Token {
    /// The attempt starts: the token is used.
    pub(crate) fn spend(mut self) {
        self.0 = None;
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        if let Some((rate, epoch)) = self.0.take() {
            rate.give_back(epoch);
        }
    }
}

/// What [`Rate::take`] gave.
pub(crate) enum Take {
    /// A token.
    Now(Token),
    /// None yet: the waiter is in the line.
    Wait,
    /// The waiter's pool is closed.
    Closed,
}

impl RateLimiter {
    /// At most `n` attempts let into the pool per `per`, one at a time (a burst of 1: turns are
    /// spaced `per / n` apart; see [`RateLimiter`] for when the starts are). A `per` of zero
    /// means no limit.
    ///
    /// # Panics
    ///
    /// If `n` is 0 (no start would ever be allowed).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let limit = asyncify_pool::RateLimiter::new(60, Duration::from_secs(60));
    /// assert_eq!(limit.interval(), Duration::from_secs(1));
    /// ```
    pub fn new(n: u32, per: Duration) -> Self {
        Self::with_burst(n, per, 1)
    }

    /// At most `n` attempts let into the pool per `per`, and up to `burst` at once (a `burst`
    /// of 0 is taken as 1).
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// // 600 requests a minute, ten at once.
    /// let limit = asyncify_pool::RateLimiter::with_burst(600, Duration::from_secs(60), 10);
    /// assert_eq!(limit.burst(), 10);
    /// ```
    pub fn with_burst(n: u32, per: Duration, burst: u32) -> Self {
        assert!(
            n > 0,
            "asyncify-pool: a rate limit of 0 starts per period allows nothing"
        );
        let burst = burst.max(1);
        let interval = per.as_nanos();
        RateLimiter(Arc::new(Rate {
            n,
            per,
            burst,
            base: Instant::now(),
            interval,
            tolerance: interval * u128::from(burst - 1),
            state: Mutex::new(State {
                tat: 0,
                epoch: 0,
                line: VecDeque::new(),
                armed: Vec::new(),
                pools: Vec::new(),
            }),
            leavers: Leavers::default(),
        }))
    }

    /// The time between two starts at the steady rate: `per / n`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let limit = asyncify_pool::RateLimiter::new(50, Duration::from_secs(1));
    /// assert_eq!(limit.interval(), Duration::from_millis(20));
    /// ```
    pub fn interval(&self) -> Duration {
        self.0.per / self.0.n
    }

    /// How many starts may go at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// assert_eq!(asyncify_pool::RateLimiter::new(5, Duration::from_secs(1)).burst(), 1);
    /// ```
    pub fn burst(&self) -> u32 {
        self.0.burst
    }

    /// Calls waiting for a token now.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// assert_eq!(asyncify_pool::RateLimiter::new(5, Duration::from_secs(1)).waiting(), 0);
    /// ```
    pub fn waiting(&self) -> usize {
        // Not upgraded under the lock: a call's last owner would free user values there.
        let line: Vec<_> = lock(&self.0.state).line.iter().cloned().collect();
        let live: Vec<_> = line.iter().filter_map(Weak::upgrade).collect();
        let waiting = live.iter().filter(|w| !w.is_gone()).count();
        crate::guard::drop("a call that left a line", live);
        waiting
    }

    pub(crate) fn rate(&self) -> &Arc<Rate> {
        &self.0
    }
}

impl Rate {
    /// A token now, or `waiter` joins the line and is admitted with one later.
    pub(crate) fn take(self: &Arc<Self>, waiter: &Arc<dyn Waiter>, now: Option<Instant>) -> Take {
        let now = now.unwrap_or_else(Instant::now);
        let mut state = lock(&self.state);
        if state.line.is_empty() && self.try_spend(&mut state, now) {
            return Take::Now(self.token(&state));
        }
        let pool = waiter.registry();
        if !self.arm(&mut state, pool, now) {
            return Take::Closed;
        }
        if !state.pools.contains(&pool.id) {
            state.pools.push(pool.id);
        }
        state.line.push_back(Arc::downgrade(waiter));
        Take::Wait
    }

    /// A token now if one is there and nobody waits for one; `None` (joining no line) if not.
    pub(crate) fn try_take(self: &Arc<Self>, now: Option<Instant>) -> Option<Token> {
        let now = now.unwrap_or_else(Instant::now);
        let mut state = lock(&self.state);
        (state.line.is_empty() && self.try_spend(&mut state, now)).then(|| self.token(&state))
    }

    /// The token [`try_spend`](Self::try_spend) just took.
    fn token(self: &Arc<Self>, state: &State) -> Token {
        Token(Some((Arc::clone(self), state.epoch)))
    }

    /// A token taken in `epoch` comes back unspent: its attempt never started. It is the exact
    /// undo of its take (`tat` back by one interval: the limiter as if it had never been taken)
    /// as long as no start since took from a full or nearly full burst (less than an interval
    /// of room before it: without this token's take, the burst would have overflowed there and
    /// lost the room this frees) and no other token came back (whose undo assumed this one was
    /// taken); then the epoch is still `epoch`. Otherwise the token is lost: fewer starts than
    /// the limit allows, never more. The line, if anyone waits, is served at once.
    fn give_back(self: Arc<Self>, epoch: u64) {
        let serve = {
            let mut state = lock(&self.state);
            if state.epoch != epoch {
                return;
            }
            state.tat = state.tat.saturating_sub(self.interval);
            state.epoch += 1;
            !state.line.is_empty()
        };
        if serve {
            self.serve(false);
        }
    }

    /// A waiter left the line without a token (its call was dropped or ended): once about half
    /// the line has, the entries of those gone are taken out (see [`line`]).
    pub(crate) fn left(&self) {
        if !self.leavers.one_more() {
            return;
        }
        let looked_at = {
            let mut state = lock(&self.state);
            let Some(seen) = self.leavers.due(state.line.len()) else {
                return;
            };
            let looked_at = line::prune(&mut state.line);
            if state.line.is_empty() {
                state.pools.clear();
            }
            self.leavers.pruned(seen);
            looked_at
        };
        crate::guard::drop("calls in a line", looked_at);
    }

    /// `now` in the limiter's units.
    fn units(&self, now: Instant) -> u128 {
        now.saturating_duration_since(self.base).as_nanos() * u128::from(self.n)
    }

    /// Spends a token if one is there at `now`.
    fn try_spend(&self, state: &mut State, now: Instant) -> bool {
        let now = self.units(now);
        if now + self.tolerance < state.tat {
            return false;
        }
        if state.tat < now.saturating_add(self.interval) {
            // Less than an interval of room before this start: tokens taken before it can no
            // longer come back exactly (see `give_back`).
            state.epoch += 1;
        }
        state.tat = state.tat.max(now).saturating_add(self.interval);
        true
    }

    /// When the next token comes (`None`: past what an `Instant` holds, so never).
    fn next_token(&self, state: &State, now: Instant) -> Option<Instant> {
        let (at, now_units) = (state.tat.saturating_sub(self.tolerance), self.units(now));
        if at <= now_units {
            return Some(now);
        }
        let wait_ns = (at - now_units).div_ceil(u128::from(self.n));
        let secs = u64::try_from(wait_ns / 1_000_000_000).ok()?;
        now.checked_add(Duration::new(secs, (wait_ns % 1_000_000_000) as u32))
    }

    /// Sets the alarm on `pool`'s timer for the next token (or far ahead, if none will come),
    /// unless it is set there for that time or sooner. False if that pool is closed.
    fn arm(self: &Arc<Self>, state: &mut State, pool: &Registry, now: Instant) -> bool {
        if pool.is_closed() {
            // The close takes the alarm's entry off the timer and serves the line under this
            // lock, after the pool's flag is set; the record of the entry stays behind it. A
            // call that found the pool open and comes here after that round would trust the
            // record and wait for an alarm that will never ring: the flag, read under the
            // lock, sends it away instead (and the record goes).
            state.armed.retain(|&(id, _)| id != pool.id);
            return false;
        }
        let at = self
            .next_token(state, now)
            .unwrap_or_else(|| now.checked_add(NEVER).unwrap_or(now));
        if state
            .armed
            .iter()
            .any(|&(id, when)| id == pool.id && when <= at)
        {
            return true;
        }
        let alarm: Weak<dyn Alarm> = Arc::downgrade(&(Arc::clone(self) as Arc<dyn Alarm>));
        if pool.timer.at(at, alarm).is_err() {
            return false;
        }
        state.armed.retain(|&(id, _)| id != pool.id);
        state.armed.push((pool.id, at));
        true
    }

    /// Serves the line: the head takes a token if there is one (and the next, and so on), and
    /// waiters whose pool closed leave. With more than one pool in the line (or when told of a
    /// close, `closing`), every waiter is looked at; otherwise the line stops at the first that
    /// must wait, so that each token costs the few waiters it lets go, not the whole line. Told
    /// of a close (on a ringer), it hands each waiter it lets go to the ringers as a task of its
    /// own ([`line::admit_each_apart`]): a whole line may go at once then, and one whose input's
    /// `Drop` blocks must not hold up those behind it.
    fn serve(self: Arc<Self>, closing: bool) {
        let mut admitted = Vec::new();
        let mut after_lock = Vec::new();
        {
            let mut state = lock(&self.state);
            let now = Instant::now();
            state.armed.retain(|&(_, when)| when > now);
            let every = closing || state.pools.len() > 1;
            let mut kept = VecDeque::new();
            let mut blocked = false;
            while let Some(next) = state.line.pop_front() {
                let Some(waiter) = next.upgrade() else {
                    continue;
                };
                if waiter.is_gone() {
                    // Possibly the call's last owner: dropped after the lock.
                    after_lock.push(waiter);
                } else if waiter.registry().is_closed() {
                    // (Its pool's alarm record is stale: that entry went with the close.)
                    let pool = waiter.registry().id;
                    state.armed.retain(|&(id, _)| id != pool);
                    admitted.push((waiter, Grant::Closed));
                } else if !blocked && self.try_spend(&mut state, now) {
                    admitted.push((waiter, Grant::Token(self.token(&state))));
                } else {
                    blocked = true;
                    if self.arm(&mut state, waiter.registry(), now) {
                        kept.push_back(next);
                        // Not dropped under the lock: its caller may let go meanwhile.
                        after_lock.push(waiter);
                        if !every {
                            break;
                        }
                    } else {
                        admitted.push((waiter, Grant::Closed)); // closed just now
                    }
                }
            }
            // What was not looked at stays behind what was, in order.
            kept.append(&mut state.line);
            state.line = kept;
            if state.line.is_empty() {
                state.pools.clear();
            }
        }
        if closing {
            line::admit_each_apart(admitted);
        } else {
            super::admit_all(admitted);
        }
        crate::guard::drop("a call that left a line", after_lock);
    }
}

impl Alarm for Rate {
    fn ring(self: Arc<Self>) {
        self.serve(false);
    }

    fn close(self: Arc<Self>) -> bool {
        self.serve(true);
        false
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("n", &self.0.n)
            .field("per", &self.0.per)
            .field("burst", &self.0.burst)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// `burst` tokens at once, then one per interval; the arithmetic at the extremes.
    #[test]
    fn gcra_spends_a_burst_then_one_per_interval() {
        let limit = RateLimiter::with_burst(10, Duration::from_secs(1), 3);
        let rate = limit.rate();
        let mut state = lock(&rate.state);
        let t0 = rate.base;
        assert!((0..3).all(|_| rate.try_spend(&mut state, t0)));
        assert!(!rate.try_spend(&mut state, t0), "the burst is spent");
        assert_eq!(
            rate.next_token(&state, t0),
            Some(t0 + Duration::from_millis(100))
        );
        assert!(rate.try_spend(&mut state, t0 + Duration::from_millis(100)));
        assert!(!rate.try_spend(&mut state, t0 + Duration::from_millis(150)));
        // After a long pause, a full burst again, no more.
        let later = t0 + Duration::from_secs(10);
        assert!((0..3).all(|_| rate.try_spend(&mut state, later)));
        assert!(!rate.try_spend(&mut state, later));
    }

    /// No rounding: 3 starts per 2 ns is 2/3 ns apart, not "0 ns, no limit".
    #[test]
    fn intervals_below_a_nanosecond_are_exact() {
        let limit = RateLimiter::new(3, Duration::from_nanos(2));
        let rate = limit.rate();
        let mut state = lock(&rate.state);
        let t0 = rate.base + Duration::from_secs(1);
        assert!(rate.try_spend(&mut state, t0));
        assert!(
            !rate.try_spend(&mut state, t0),
            "a second start at the same nanosecond"
        );
        let later = t0 + Duration::from_nanos(2);
        assert_eq!(
            (0..5).filter(|_| rate.try_spend(&mut state, later)).count(),
            1
        );
    }

    #[test]
    fn extreme_periods_and_bursts() {
        let unlimited = RateLimiter::new(1, Duration::ZERO);
        let mut state = lock(&unlimited.rate().state);
        let now = Instant::now();
        assert!((0..1_000).all(|_| unlimited.rate().try_spend(&mut state, now)));
        drop(state);
        // One start per Duration::MAX, a burst of three: three go, then none for ever.
        let never_again = RateLimiter::with_burst(1, Duration::MAX, 3);
        let rate = never_again.rate();
        let mut state = lock(&rate.state);
        assert!(
            (0..3).all(|_| rate.try_spend(&mut state, now)),
            "the burst goes"
        );
        assert!(!rate.try_spend(&mut state, now + Duration::from_secs(3600)));
        assert_eq!(rate.next_token(&state, now), None);
        drop(state);
        let huge = RateLimiter::with_burst(u32::MAX, Duration::MAX, u32::MAX);
        let mut state = lock(&huge.rate().state);
        assert!((0..1_000).all(|_| huge.rate().try_spend(&mut state, now)));
    }

    /// A token given back undoes its take while nothing since could have used the room: it
    /// starts again at once. One that a start from a full burst came after is lost: giving it
    /// back then would let more than the burst start at once.
    #[test]
    fn a_token_given_back_never_lets_more_than_the_burst_start() {
        let limit = RateLimiter::with_burst(10, Duration::from_secs(1), 3);
        let rate = limit.rate();
        let t0 = rate.base + Duration::from_secs(1);
        let first = rate.try_take(Some(t0)).expect("a full burst");
        let others = [(); 2].map(|_| rate.try_take(Some(t0)).expect("the burst"));
        assert!(rate.try_take(Some(t0)).is_none(), "the burst is taken");
        drop(first); // never started
        let again = rate.try_take(Some(t0)).expect("the token given back");
        assert!(rate.try_take(Some(t0)).is_none(), "three at once, no more");
        drop((again, others));
        // A token taken ten seconds before two starts from a full burst: given back after
        // them, it would let a third start with them.
        let limit = RateLimiter::with_burst(10, Duration::from_secs(1), 2);
        let rate = limit.rate();
        let stale = rate.try_take(Some(t0)).expect("a full burst");
        let later = t0 + Duration::from_secs(10); // the burst is full again
        let spent = [(); 2].map(|_| rate.try_take(Some(later)).expect("the burst"));
        spent.into_iter().for_each(Token::spend);
        drop(stale); // taken before a start from a full burst: lost
        assert!(
            rate.try_take(Some(later)).is_none(),
            "two started at once: no third"
        );
    }

    #[test]
    #[should_panic(expected = "allows nothing")]
    fn zero_starts_per_period_is_refused() {
        let _ = RateLimiter::new(0, Duration::from_secs(1));
    }
}
