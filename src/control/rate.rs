//! [`RateLimiter`]: at most `n` starts per period, with a burst, shared by every program handed
//! the same limiter; calls beyond it wait in one line, in order, on the pool's timer.
//!
//! The limiter is a GCRA (the "virtual scheduling" form of a token bucket): it keeps the
//! theoretical arrival time `tat` of the next start. With interval `T = per / n` and tolerance
//! `τ = T × (burst − 1)`, a start at `now` is allowed if `now ≥ tat − τ`, and moves `tat` to
//! `max(tat, now) + T`. So `burst` starts may go at once, and from then on one every `T`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{Grant, Waiter};
use crate::pool::Alarm;
use crate::sync::{lock, Mutex};

/// A rate limit: at most `n` starts per `per`, `burst` of them at once. Cheap to clone; clones
/// are the same limit, so handing one to several programs
/// ([`AsyncProgram::with_rate_limiter`](crate::AsyncProgram::with_rate_limiter)) makes them
/// share it (one API key behind several modules).
///
/// A call that finds no token waits in the limiter's line, holding no worker, in the order the
/// calls came; a dropped handle leaves the line. Each attempt of a retried call takes a token.
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
    interval: Duration,
    tolerance: Duration,
    state: Mutex<State>,
}

struct State {
    /// The theoretical arrival time of the next start; `None` before the first (or never
    /// again, with `exhausted`).
    tat: Option<Instant>,
    /// `tat` went past what an `Instant` holds (a limit of one start per `Duration::MAX`).
    exhausted: bool,
    line: VecDeque<Weak<dyn Waiter>>,
    /// The time the limiter's alarm is set for, if it is.
    armed: Option<Instant>,
}

/// What [`Rate::take`] gave.
pub(crate) enum Take {
    /// A token, spent.
    Now,
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
        let interval = per / n;
        RateLimiter(Arc::new(Rate {
            n,
            per,
            burst,
            interval,
            tolerance: interval.saturating_mul(burst - 1),
            state: Mutex::new(State {
                tat: None,
                exhausted: false,
                line: VecDeque::new(),
                armed: None,
            }),
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
        self.0.interval
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
            return Take::Now;
        }
        state.line.push_back(Arc::downgrade(waiter));
        if state.line.len() == 1 && !self.arm(&mut state, waiter, now) {
            state.line.pop_back();
            return Take::Closed;
        }
        Take::Wait
    }

    /// Spends a token if one is there at `now`.
    fn try_spend(&self, state: &mut State, now: Instant) -> bool {
        if state.exhausted {
            return false;
        }
        let tat = state.tat.unwrap_or(now);
        if now.checked_add(self.tolerance).is_some_and(|t| t < tat) {
            return false;
        }
        match tat.max(now).checked_add(self.interval) {
            Some(next) => state.tat = Some(next),
            None => state.exhausted = true,
        }
        true
    }

    /// When the next token comes (`None`: never).
    fn next_token(&self, state: &State, now: Instant) -> Option<Instant> {
        if state.exhausted {
            return None;
        }
        let tat = state.tat.unwrap_or(now);
        Some(tat.checked_sub(self.tolerance).unwrap_or(now).max(now))
    }

    /// Sets the alarm for the next token on the timer of `head`'s pool, unless it is set for
    /// that time or sooner. False if that pool is closed (its timer takes nothing more).
    fn arm(self: &Arc<Self>, state: &mut State, head: &Arc<dyn Waiter>, now: Instant) -> bool {
        let Some(at) = self.next_token(state, now) else {
            return true; // never: the line waits for deadlines or the close
        };
        if state.armed.is_some_and(|armed| armed <= at) {
            return true;
        }
        let alarm: Weak<dyn Alarm> = Arc::downgrade(&(Arc::clone(self) as Arc<dyn Alarm>));
        let armed = head.registry().timer.at(at, alarm).is_ok();
        if armed {
            state.armed = Some(at);
        }
        armed
    }
}

impl Alarm for Rate {
    fn ring(self: Arc<Self>) {
        let mut admitted = Vec::new();
        let mut after_lock = Vec::new();
        let serve_again = {
            let mut state = lock(&self.state);
            state.armed = None;
            let now = Instant::now();
            // Waiters of a closed pool leave wherever they are; the live head takes a token
            // if there is one; the rest wait.
            let mut kept = VecDeque::with_capacity(state.line.len());
            let mut blocked = false;
            while let Some(next) = state.line.pop_front() {
                let Some(waiter) = next.upgrade() else {
                    continue;
                };
                if waiter.is_gone() {
                    // Possibly the call's last owner: dropped after the lock.
                    after_lock.push(waiter);
                } else if waiter.registry().is_closed() {
                    admitted.push((waiter, Grant::Closed));
                } else if !blocked && self.try_spend(&mut state, now) {
                    admitted.push((waiter, Grant::Token));
                } else {
                    blocked = true;
                    kept.push_back(Arc::downgrade(&waiter));
                    // Not dropped under the lock: its caller may let go meanwhile.
                    after_lock.push(waiter);
                }
            }
            state.line = kept;
            // The head's pool closed since it was looked at: serve the line again, which
            // lets it go.
            match state.line.front().and_then(Weak::upgrade) {
                Some(head) => {
                    let armed = self.arm(&mut state, &head, now);
                    after_lock.push(head);
                    !armed
                }
                None => false,
            }
        };
        for (waiter, grant) in admitted {
            crate::guard::quietly("a waiting call", || waiter.admit(grant));
        }
        crate::guard::drop("a call that left a line", after_lock);
        if serve_again {
            self.ring();
        }
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
        let t0 = Instant::now();
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

    #[test]
    fn extreme_periods() {
        let unlimited = RateLimiter::new(1, Duration::ZERO);
        let mut state = lock(&unlimited.rate().state);
        let now = Instant::now();
        assert!((0..1_000).all(|_| unlimited.rate().try_spend(&mut state, now)));
        drop(state);
        let never_again = RateLimiter::with_burst(1, Duration::MAX, u32::MAX);
        let rate = never_again.rate();
        let mut state = lock(&rate.state);
        assert!(rate.try_spend(&mut state, now), "the first start goes");
        assert!(!rate.try_spend(&mut state, now + Duration::from_secs(3600)));
        assert_eq!(rate.next_token(&state, now), None);
    }

    #[test]
    #[should_panic(expected = "allows nothing")]
    fn zero_starts_per_period_is_refused() {
        let _ = RateLimiter::new(0, Duration::from_secs(1));
    }
}
