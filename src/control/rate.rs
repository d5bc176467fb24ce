//! [`RateLimiter`]: at most `n` starts per period, with a burst, shared by every program handed
//! the same limiter; calls beyond it wait in one line, in order, on the pool's timer.
//!
//! The limiter is a GCRA (the "virtual scheduling" form of a token bucket) over the starts:
//! it keeps the theoretical arrival time `tat` of the next start. With interval `T = per / n`
//! and tolerance `τ = T × (burst − 1)`, a start at `s` conforms if `s ≥ tat − τ`, and moves
//! `tat` to `max(tat, s) + T`. So `burst` starts may go at once, and from then on one every `T`.
//!
//! A call takes its token before its attempt is queued, and the attempt starts when a worker
//! takes it, later: all workers may be busy. So a token is a *reservation*: `out` counts those
//! taken and neither spent (started) nor given back, and a token is taken at `now` only if the
//! starts would conform were every reservation to start at once, now: if
//! `now ≥ max(tat, now) + out × T − τ`. A start moves `tat` as above and ends its reservation;
//! a token given back just ends it. Every start then conforms, however long its attempt
//! waited in the queue: with `g(t) = max(tat, t) + out × T`, a take at `a` leaves
//! `g(a) ≤ a + τ + T`; a start at `s` leaves `g(s)` as it was, a token given back lowers it,
//! and `g(t) − t` never grows with `t`; so at a start, `tat ≤ g(s) − T ≤ s + τ` (its own
//! reservation is still in `out`). With `out = burst` no token can be taken until a start or a
//! token given back, which serve the line.
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

/// A rate limit: at most `n` starts per `per`, `burst` of them at once. Cheap to clone; clones
/// are the same limit, so handing one to several programs
/// ([`AsyncProgram::with_rate_limiter`](crate::AsyncProgram::with_rate_limiter)) makes them
/// share it (one API key behind several modules).
///
/// A call that finds no token waits in the limiter's line, holding no worker, in the order the
/// calls came; a dropped handle leaves the line. Each attempt of a retried call takes a token.
///
/// The limit is on the starts of the program, wherever its attempts waited: a call takes a
/// token before its attempt is queued, and the token holds a place in the burst until the
/// attempt starts. So attempts whose turns came while every worker was busy do not start
/// together once workers are free: never more than `burst` at once, and one per `per / n` from
/// then on. An attempt that never starts (its handle dropped or aborted while it is queued,
/// its deadline passed there, its pool closed, or the copy of its input for a retry panicked)
/// gives its token back, so that it costs no start of the quota.
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
    /// Tokens out: taken, neither spent nor given back (at most `burst`).
    out: u128,
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
/// dropped unspent (the attempt never started), it goes back to the limiter.
pub(crate) struct Token(Option<Arc<Rate>>);

impl Token {
    /// The attempt starts now: the start is counted, and ends the token's reservation.
    pub(crate) fn spend(mut self) {
        if let Some(rate) = self.0.take() {
            rate.ended(Some(Instant::now()));
        }
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        if let Some(rate) = self.0.take() {
            rate.ended(None);
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
    /// At most `n` starts per `per`, one at a time (a burst of 1: starts are spaced `per / n`
    /// apart). A `per` of zero means no limit.
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

    /// At most `n` starts per `per`, and up to `burst` at once (a `burst` of 0 is taken as 1).
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
                out: 0,
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
        if state.line.is_empty() && self.try_reserve(&mut state, now) {
            return Take::Now(self.token());
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
        (state.line.is_empty() && self.try_reserve(&mut state, now)).then(|| self.token())
    }

    /// The token [`try_reserve`](Self::try_reserve) just took.
    fn token(self: &Arc<Self>) -> Token {
        Token(Some(Arc::clone(self)))
    }

    /// A token's reservation ends: its attempt started at `started`, or (`None`) never did and
    /// gives it back. Either may let the line's head take one sooner, so the line, if anyone
    /// waits, is served at once.
    fn ended(self: Arc<Self>, started: Option<Instant>) {
        let serve = {
            let mut state = lock(&self.state);
            if let Some(at) = started {
                self.start(&mut state, at);
            }
            state.out = state.out.saturating_sub(1);
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

    /// The starts reserved and not made yet, as time: `out × T`.
    fn reserved(&self, state: &State) -> u128 {
        state.out.saturating_mul(self.interval)
    }

    /// Takes a token if one is there at `now`: if the starts would conform with every token
    /// out starting now, and this one too (see the module's header).
    fn try_reserve(&self, state: &mut State, now: Instant) -> bool {
        let now = self.units(now);
        let projected = state.tat.max(now).saturating_add(self.reserved(state));
        if projected > now.saturating_add(self.tolerance) {
            return false;
        }
        state.out += 1;
        true
    }

    /// A start at `at` is counted.
    fn start(&self, state: &mut State, at: Instant) {
        state.tat = state.tat.max(self.units(at)).saturating_add(self.interval);
    }

    /// When the next token comes (`None`: never by time: past what an `Instant` holds, or
    /// `burst` tokens are out and a start or a token given back comes first).
    fn next_token(&self, state: &State, now: Instant) -> Option<Instant> {
        if state.out >= u128::from(self.burst) {
            return None;
        }
        // With fewer than `burst` out, the first `t` with `max(tat, t) + out × T − τ ≤ t` is
        // `tat + out × T − τ` (at most `tat`), or now.
        let at = state
            .tat
            .saturating_add(self.reserved(state))
            .saturating_sub(self.tolerance);
        let now_units = self.units(now);
        if at <= now_units {
            return Some(now);
        }
        let wait_ns = (at - now_units).div_ceil(u128::from(self.n));
        let secs = u64::try_from(wait_ns / 1_000_000_000).ok()?;
        now.checked_add(Duration::new(secs, (wait_ns % 1_000_000_000) as u32))
    }

    /// Sets the alarm on `pool`'s timer for the next token (or far ahead, if none will come by
    /// time),
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
    /// close, `every`), every waiter is looked at; otherwise the line stops at the first that
    /// must wait, so that each token costs the few waiters it lets go, not the whole line.
    fn serve(self: Arc<Self>, every: bool) {
        let mut admitted = Vec::new();
        let mut after_lock = Vec::new();
        {
            let mut state = lock(&self.state);
            let now = Instant::now();
            state.armed.retain(|&(_, when)| when > now);
            let every = every || state.pools.len() > 1;
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
                } else if !blocked && self.try_reserve(&mut state, now) {
                    admitted.push((waiter, Grant::Token(self.token())));
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
        super::admit_all(admitted);
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

    /// A token taken at `at` and its attempt started at once: false if there was none.
    fn starts_now(rate: &Rate, state: &mut State, at: Instant) -> bool {
        let taken = rate.try_reserve(state, at);
        if taken {
            rate.start(state, at);
            state.out -= 1;
        }
        taken
    }

    /// `burst` tokens at once, then one per interval; the arithmetic at the extremes.
    #[test]
    fn gcra_spends_a_burst_then_one_per_interval() {
        let limit = RateLimiter::with_burst(10, Duration::from_secs(1), 3);
        let rate = limit.rate();
        let mut state = lock(&rate.state);
        let t0 = rate.base;
        assert!((0..3).all(|_| starts_now(rate, &mut state, t0)));
        assert!(!starts_now(rate, &mut state, t0), "the burst is spent");
        assert_eq!(
            rate.next_token(&state, t0),
            Some(t0 + Duration::from_millis(100))
        );
        assert!(starts_now(
            rate,
            &mut state,
            t0 + Duration::from_millis(100)
        ));
        assert!(!starts_now(
            rate,
            &mut state,
            t0 + Duration::from_millis(150)
        ));
        // After a long pause, a full burst again, no more.
        let later = t0 + Duration::from_secs(10);
        assert!((0..3).all(|_| starts_now(rate, &mut state, later)));
        assert!(!starts_now(rate, &mut state, later));
    }

    /// No rounding: 3 starts per 2 ns is 2/3 ns apart, not "0 ns, no limit".
    #[test]
    fn intervals_below_a_nanosecond_are_exact() {
        let limit = RateLimiter::new(3, Duration::from_nanos(2));
        let rate = limit.rate();
        let mut state = lock(&rate.state);
        let t0 = rate.base + Duration::from_secs(1);
        assert!(starts_now(rate, &mut state, t0));
        assert!(
            !starts_now(rate, &mut state, t0),
            "a second start at the same nanosecond"
        );
        let later = t0 + Duration::from_nanos(2);
        assert_eq!(
            (0..5)
                .filter(|_| starts_now(rate, &mut state, later))
                .count(),
            1
        );
    }

    #[test]
    fn extreme_periods_and_bursts() {
        let unlimited = RateLimiter::new(1, Duration::ZERO);
        let mut state = lock(&unlimited.rate().state);
        let now = Instant::now();
        assert!((0..1_000).all(|_| starts_now(unlimited.rate(), &mut state, now)));
        drop(state);
        // One start per Duration::MAX, a burst of three: three go, then none for ever.
        let never_again = RateLimiter::with_burst(1, Duration::MAX, 3);
        let rate = never_again.rate();
        let mut state = lock(&rate.state);
        assert!(
            (0..3).all(|_| starts_now(rate, &mut state, now)),
            "the burst goes"
        );
        assert!(!starts_now(
            rate,
            &mut state,
            now + Duration::from_secs(3600)
        ));
        assert_eq!(rate.next_token(&state, now), None);
        drop(state);
        let huge = RateLimiter::with_burst(u32::MAX, Duration::MAX, u32::MAX);
        let mut state = lock(&huge.rate().state);
        assert!((0..1_000).all(|_| starts_now(huge.rate(), &mut state, now)));
    }

    /// A token given back always comes back: it had only reserved a start.
    #[test]
    fn a_token_given_back_comes_back() {
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
        assert_eq!(lock(&rate.state).out, 0);
        assert_eq!(lock(&rate.state).tat, 0, "no start was counted");
    }

    /// Tokens out hold their places in the burst however long their attempts wait to start,
    /// and the starts, when they come, conform: a long wait in the queue does not let the
    /// tokens of the time it lasted start together after it.
    #[test]
    fn tokens_out_hold_their_places_until_they_start() {
        let limit = RateLimiter::with_burst(10, Duration::from_secs(1), 2); // T = 100 ms
        let rate = limit.rate();
        let mut state = lock(&rate.state);
        let t0 = rate.base + Duration::from_secs(1);
        assert!((0..2).all(|_| rate.try_reserve(&mut state, t0)));
        // Ten seconds on, the two have not started: no third token, whatever the time.
        let later = t0 + Duration::from_secs(10);
        assert!(!rate.try_reserve(&mut state, later));
        assert_eq!(rate.next_token(&state, later), None, "it waits for a start");
        // They start together (a burst of two may), and the next comes an interval on.
        for _ in 0..2 {
            rate.start(&mut state, later);
            state.out -= 1;
        }
        assert!(!rate.try_reserve(&mut state, later), "two started just now");
        let next = later + Duration::from_millis(100);
        assert_eq!(rate.next_token(&state, later), Some(next));
        assert!(rate.try_reserve(&mut state, next));
        assert!(
            !rate.try_reserve(&mut state, next),
            "one per interval from then on"
        );
        // One token out, one start before it: the next waits for both, an interval each.
        rate.start(&mut state, next);
        state.out -= 1;
        assert!(rate.try_reserve(&mut state, next + Duration::from_millis(100)));
        assert_eq!(
            rate.next_token(&state, next),
            Some(next + Duration::from_millis(200))
        );
    }

    #[test]
    #[should_panic(expected = "allows nothing")]
    fn zero_starts_per_period_is_refused() {
        let _ = RateLimiter::new(0, Duration::from_secs(1));
    }
}
