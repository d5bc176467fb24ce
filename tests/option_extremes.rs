//! Program options at their extreme values: each gives its documented meaning, or the
//! documented panic. (A hostile tester's attacks; see also `extremes.rs` for the pool's own.)

mod common;

use std::panic::catch_unwind;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use asyncify_pool::{deadline, Overload, RateLimiter, Retry, WorkerPool};
use common::{spin_until, wait, Gauge, HANG};

fn counter() -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(0))
}

/// A panic payload's message.
fn msg(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// A zero timeout under a policy of `u32::MAX` attempts: every call is `TimedOut` without
/// running, and no attempt is counted.
#[test]
fn zero_timeout_with_endless_retry_never_runs() {
    let pool = WorkerPool::new(2);
    let runs = counter();
    let r = runs.clone();
    let p = pool
        .asyncify(move |_: u32| r.fetch_add(1, SeqCst))
        .retry(
            Retry::new(u32::MAX)
                .backoff(Duration::ZERO, Duration::ZERO)
                .retry_if(|_| true),
        )
        .timeout(Duration::ZERO);
    for _ in 0..50 {
        let e = wait(p.call(1)).unwrap_err();
        assert!(e.is_timed_out(), "{e:?}");
    }
    assert_eq!(runs.load(SeqCst), 0);
    let s = p.stats();
    assert_eq!(
        (s.calls, s.attempts, s.retries, s.timed_out),
        (50, 0, 0, 50)
    );
}

/// A timeout of `Duration::MAX` is no deadline, also for a retried call (`deadline()` is
/// `None` in every attempt).
#[test]
fn max_timeout_with_retry_has_no_deadline() {
    let pool = WorkerPool::new(1);
    let n = counter();
    let c = n.clone();
    let p = pool
        .asyncify(move |_: u32| (c.fetch_add(1, SeqCst) < 3, deadline().is_none()))
        .retry(
            Retry::new(u32::MAX)
                .backoff(Duration::ZERO, Duration::MAX)
                .retry_if(|o: &(bool, bool)| o.0),
        )
        .timeout(Duration::MAX);
    assert_eq!(wait(p.call(0)), Ok((false, true)));
    assert_eq!(p.stats().attempts, 4);
}

/// A `cap` below the `base` caps every wait: the attempts follow one another at once.
#[test]
fn a_cap_below_the_base_caps_every_wait() {
    let pool = WorkerPool::new(1);
    for (base, cap) in [
        (Duration::MAX, Duration::ZERO),
        (Duration::ZERO, Duration::MAX),
        (Duration::from_secs(3600), Duration::from_millis(1)),
    ] {
        let n = counter();
        let c = n.clone();
        let p = pool
            .asyncify(move |_: u32| c.fetch_add(1, SeqCst))
            .retry(Retry::new(6).backoff(base, cap).retry_if(|_| true));
        assert_eq!(wait(p.call(0)), Ok(5), "{base:?} {cap:?}");
        assert_eq!(p.stats().retries, 5);
    }
}

/// A rate of zero starts panics, as documented, with any period; the program is unharmed.
#[test]
fn rate_limit_zero_panics_as_documented() {
    let pool = WorkerPool::new(1);
    let p = pool.asyncify(|x: u32| x);
    for per in [Duration::ZERO, Duration::from_secs(1), Duration::MAX] {
        let e = catch_unwind(std::panic::AssertUnwindSafe(|| p.rate_limit(0, per)))
            .expect_err("rate_limit(0)");
        assert!(msg(&e).contains("allows nothing"), "{}", msg(&e));
        assert!(catch_unwind(|| RateLimiter::with_burst(0, per, u32::MAX)).is_err());
    }
    assert_eq!(wait(p.call(3)), Ok(3));
}

/// Rates that allow everything (`u32::MAX` per zero or per nanosecond, a burst of `u32::MAX`)
/// never make a call wait; the limiter reports its interval and burst at the extremes.
#[test]
fn rate_limit_extremes_that_mean_no_limit() {
    let pool = WorkerPool::new(2);
    let base = pool.asyncify(|x: u32| x);
    for p in [
        base.rate_limit(u32::MAX, Duration::ZERO),
        base.rate_limit(1, Duration::ZERO),
        base.rate_limit(u32::MAX, Duration::from_nanos(1)),
        base.with_rate_limiter(&RateLimiter::with_burst(u32::MAX, Duration::MAX, u32::MAX)),
        base.with_rate_limiter(&RateLimiter::with_burst(
            1,
            Duration::from_secs(3600),
            u32::MAX,
        )),
    ] {
        let hs: Vec<_> = (0..500).map(|i| p.call(i)).collect();
        for (i, h) in hs.into_iter().enumerate() {
            assert_eq!(wait(h), Ok(i as u32));
        }
        assert_eq!(p.stats().waited_for_rate, 0, "{:?}", p.stats());
    }
    assert_eq!(RateLimiter::with_burst(1, Duration::ZERO, 0).burst(), 1);
    assert_eq!(
        RateLimiter::with_burst(1, Duration::ZERO, u32::MAX).burst(),
        u32::MAX
    );
    assert_eq!(RateLimiter::new(1, Duration::MAX).interval(), Duration::MAX);
    assert_eq!(
        RateLimiter::new(u32::MAX, Duration::MAX).interval(),
        Duration::MAX / u32::MAX
    );
    assert_eq!(
        RateLimiter::new(u32::MAX, Duration::ZERO).interval(),
        Duration::ZERO
    );
}

/// A limit of `usize::MAX` lets every call run (four at once on four threads); a limit of 0
/// panics, as documented.
#[test]
fn a_concurrency_limit_of_usize_max() {
    let pool = WorkerPool::new(4);
    let gauge = Gauge::new();
    let g = gauge.clone();
    let p = pool
        .asyncify(move |_: u32| g.hold())
        .concurrency_limit(usize::MAX);
    assert_eq!(p.stats().concurrency_limit, Some(usize::MAX));
    let hs: Vec<_> = (0..4).map(|i| p.call(i)).collect();
    gauge.drive(4, 4);
    for h in hs {
        wait(h).unwrap();
    }
    assert_eq!(p.stats().in_flight, 0);
    let catch = catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.asyncify(|x: u32| x).concurrency_limit(0)
    }));
    assert!(catch.is_err());
}

/// An adaptive limit's bounds at their extremes: a `min` of 0 is 1, a `max` below `min` is
/// `min`, cuts never go below `min` (even `usize::MAX`), and latency bounds of zero and of
/// `Duration::MAX` leave nothing held.
#[test]
fn adaptive_edge_arguments() {
    let pool = WorkerPool::new(6);
    let base = pool.asyncify(|x: u32| x);
    let sig = || Overload::when(|_: &u32| false);
    assert_eq!(
        base.adaptive_concurrency(0, 0, sig())
            .stats()
            .concurrency_limit,
        Some(1)
    );
    assert_eq!(
        base.adaptive_concurrency(5, 2, sig())
            .stats()
            .concurrency_limit,
        Some(5)
    );
    assert_eq!(
        base.adaptive_concurrency(0, usize::MAX, sig())
            .stats()
            .concurrency_limit,
        Some(1)
    );
    assert_eq!(
        base.adaptive_concurrency(usize::MAX, 0, sig())
            .stats()
            .concurrency_limit,
        Some(usize::MAX)
    );
    // (5, 2): max taken as 5, so 5 run at once.
    let gauge = Gauge::new();
    let g = gauge.clone();
    let p = pool
        .asyncify(move |_: u32| g.hold() as u32)
        .adaptive_concurrency(5, 2, Overload::when(|_: &u32| true));
    let hs: Vec<_> = (0..10).map(|i| p.call(i)).collect();
    gauge.drive(10, 5);
    for h in hs {
        wait(h).unwrap();
    }
    assert_eq!(gauge.state().max, 5);
    assert_eq!(p.stats().concurrency_limit, Some(5), "never below min");
    // usize::MAX min, every answer an overload: the cut never goes below min, no overflow.
    let p = base.adaptive_concurrency(usize::MAX, usize::MAX, Overload::when(|_: &u32| true));
    for i in 0..50 {
        assert_eq!(wait(p.call(i)), Ok(i));
    }
    assert_eq!(p.stats().concurrency_limit, Some(usize::MAX));
    // slower_than(ZERO) / slower_than(MAX) with timeouts of ZERO.
    let p = base
        .adaptive_concurrency(1, usize::MAX, Overload::<u32>::slower_than(Duration::ZERO))
        .timeout(Duration::ZERO);
    for i in 0..50 {
        assert!(wait(p.call(i)).unwrap_err().is_timed_out());
    }
    assert_eq!(p.stats().concurrency_limit, Some(1));
    assert_eq!(p.stats().in_flight, 0);
    let p = base.adaptive_concurrency(1, usize::MAX, Overload::<u32>::slower_than(Duration::MAX));
    let hs: Vec<_> = (0..2000).map(|i| p.call(i)).collect();
    for (i, h) in hs.into_iter().enumerate() {
        assert_eq!(wait(h), Ok(i as u32));
    }
    let l = p.stats().concurrency_limit.unwrap();
    assert!(l >= 1, "{l}");
}

/// A limit of 1 grown from (1, usize::MAX) under load stays consistent: in_flight back to 0.
#[test]
fn adaptive_one_to_usize_max_under_load() {
    let pool = WorkerPool::new(4);
    let p = pool.asyncify(|x: u32| x).adaptive_concurrency(
        1,
        usize::MAX,
        Overload::when(|x: &u32| x % 97 == 0),
    );
    let hs: Vec<_> = (0..5000).map(|i| p.call(i)).collect();
    for (i, h) in hs.into_iter().enumerate() {
        assert_eq!(wait(h), Ok(i as u32));
    }
    let s = p.stats();
    assert_eq!(s.in_flight, 0);
    assert_eq!((s.calls, s.attempts), (5000, 5000));
    assert!(s.concurrency_limit.unwrap() >= 1);
}

/// Stacked options: the later replaces the earlier, both ways (a zero timeout over no limit,
/// no limit over a zero timeout; an endless retry policy under one of a single attempt).
#[test]
fn stacked_timeouts_and_retry_policies_the_last_one_wins() {
    let pool = WorkerPool::new(1);
    let base = pool.asyncify(|_: u32| deadline().is_some());
    assert_eq!(
        wait(base.timeout(Duration::ZERO).timeout(Duration::MAX).call(0)),
        Ok(false),
        "Duration::MAX after a zero timeout: no deadline"
    );
    let err = wait(base.timeout(Duration::MAX).timeout(Duration::ZERO).call(0)).unwrap_err();
    assert!(err.is_timed_out(), "a zero timeout after no limit: {err:?}");

    let runs = counter();
    let r = Arc::clone(&runs);
    let p = pool
        .asyncify(move |_: u32| r.fetch_add(1, SeqCst))
        .retry(
            Retry::new(5)
                .backoff(Duration::ZERO, Duration::ZERO)
                .retry_if(|_| true),
        )
        .retry(Retry::new(0).retry_if(|_| true));
    assert_eq!(wait(p.call(0)), Ok(0));
    assert_eq!(runs.load(SeqCst), 1);
    assert_eq!((p.stats().attempts, p.stats().retries), (1, 0));
}

/// Stacked rate limits: the later replaces the earlier (an hour's single token under no limit
/// at all, and the other way round; a shared limiter over the program's own).
#[test]
fn stacked_rate_limits_the_last_one_wins() {
    let pool = WorkerPool::new(2);
    let base = pool.asyncify(|x: u32| x);
    let unlimited = base
        .rate_limit(1, Duration::from_secs(3600))
        .rate_limit(u32::MAX, Duration::ZERO);
    for i in 0..5 {
        assert_eq!(unlimited.call(i).wait_timeout(HANG), Some(Ok(i)));
    }
    let strict = base
        .rate_limit(u32::MAX, Duration::ZERO)
        .rate_limit(1, Duration::from_secs(3600));
    assert_eq!(strict.call(0).wait_timeout(HANG), Some(Ok(0)));
    // The second token of the hour is not there: the call waits in the line (and leaves it
    // when dropped).
    let mut second = strict.call(1);
    assert_eq!(second.wait_timeout(Duration::from_millis(50)), None);
    drop(second);
    let key = RateLimiter::with_burst(1, Duration::ZERO, 1);
    let shared = base
        .rate_limit(1, Duration::from_secs(3600))
        .with_rate_limiter(&key);
    for i in 0..5 {
        assert_eq!(shared.call(i).wait_timeout(HANG), Some(Ok(i)));
    }
}

/// Stacked concurrency limits: the later replaces the earlier, an adaptive one a fixed one.
#[test]
fn stacked_concurrency_limits_the_last_one_wins() {
    let pool = WorkerPool::new(4);
    let gauge = Gauge::new();
    let g = Arc::clone(&gauge);
    let base = pool.asyncify(move |_: u32| g.hold());
    let p = base.concurrency_limit(1).concurrency_limit(3);
    assert_eq!(p.stats().concurrency_limit, Some(3));
    let handles: Vec<_> = (0..6).map(|i| p.call(i)).collect();
    gauge.drive(6, 3);
    for h in handles {
        wait(h).unwrap();
    }
    assert_eq!(gauge.state().max, 3);
    let p = base
        .concurrency_limit(3)
        .adaptive_concurrency(1, 1, Overload::when(|_: &usize| false));
    assert_eq!(p.stats().concurrency_limit, Some(1));
}

/// A call with a zero timeout never starts, so it takes no token: twenty of them leave the
/// hour's only token for the next call.
#[test]
fn zero_timeout_calls_take_no_token() {
    let pool = WorkerPool::new(1);
    let key = RateLimiter::new(1, Duration::from_secs(3600));
    let base = pool.asyncify(|x: u32| x);
    let zero = base.with_rate_limiter(&key).timeout(Duration::ZERO);
    for i in 0..20 {
        assert!(wait(zero.call(i)).unwrap_err().is_timed_out());
    }
    let mut next = base.with_rate_limiter(&key).call(7);
    assert_eq!(
        next.wait_timeout(HANG),
        Some(Ok(7)),
        "a zero timeout spent the token"
    );
}

/// Fifty attempts under `u32::MAX` allowed, an hour's deadline: every attempt sees the same
/// deadline, the call's.
#[test]
fn every_attempt_sees_one_deadline() {
    let pool = WorkerPool::new(2);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let p = pool
        .asyncify(move |_: u32| {
            let mut s = s.lock().unwrap();
            s.push(deadline());
            s.len()
        })
        .retry(
            Retry::new(u32::MAX)
                .backoff(Duration::ZERO, Duration::from_micros(10))
                .retry_if(|n: &usize| *n < 50),
        )
        .timeout(Duration::from_secs(3600));
    assert_eq!(wait(p.call(0)), Ok(50));
    assert_eq!(p.stats().attempts, 50);
    let seen = seen.lock().unwrap();
    assert!(seen[0].is_some());
    assert!(
        seen.iter().all(|d| *d == seen[0]),
        "deadlines moved: {seen:?}"
    );
}

/// An input that counts its clones and drops.
#[derive(Debug)]
struct Counted(Arc<AtomicUsize>, Arc<AtomicUsize>);

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, SeqCst);
        Counted(Arc::clone(&self.0), Arc::clone(&self.1))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.1.fetch_add(1, SeqCst);
    }
}

/// "The input is cloned for each attempt but the last": `Retry::new(0)` and `(1)` never
/// clone it, `(3)` twice when all three run, on the short way and on the gated one (a limit
/// and a rate the first attempt waits for); every copy and the original are dropped once.
#[test]
fn input_clones_at_the_attempt_extremes() {
    let pool = WorkerPool::new(2);
    for gated in [false, true] {
        for (attempts, runs, clones) in [(0u32, 1u64, 0usize), (1, 1, 0), (2, 2, 1), (3, 3, 2)] {
            let n = counter();
            let c = Arc::clone(&n);
            let mut p = pool
                .asyncify(move |_: Counted| c.fetch_add(1, SeqCst))
                .retry(
                    Retry::new(attempts)
                        .backoff(Duration::ZERO, Duration::ZERO)
                        .retry_if(|_| true),
                );
            if gated {
                p = p
                    .concurrency_limit(usize::MAX)
                    .rate_limit(1, Duration::from_millis(1));
            }
            let (cloned, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let got = wait(p.call(Counted(Arc::clone(&cloned), Arc::clone(&dropped))));
            let case = format!("Retry::new({attempts}), gated: {gated}");
            assert_eq!(got, Ok(runs - 1), "{case}");
            assert_eq!(n.load(SeqCst), runs, "{case}");
            assert_eq!(cloned.load(SeqCst), clones, "{case}");
            spin_until("every copy dropped", || dropped.load(SeqCst) == clones + 1);
        }
    }
}

/// Inside a job of a one-thread pool, a call whose 1 ns deadline has passed is not run by
/// its waiter (a nested wait runs queued jobs itself), with `wait()` or a zero
/// `wait_timeout`, with or without an endless retry policy.
#[test]
fn a_nested_wait_never_runs_an_expired_call() {
    let pool = WorkerPool::new(1);
    let runs = counter();
    let r = Arc::clone(&runs);
    let p = pool
        .asyncify(move |x: u32| {
            r.fetch_add(1, SeqCst);
            x
        })
        .timeout(Duration::from_nanos(1));
    let retried = p.retry(
        Retry::new(u32::MAX)
            .backoff(Duration::ZERO, Duration::ZERO)
            .retry_if(|_| true),
    );
    let (a, b) = (p.clone(), retried.clone());
    let (plain, endless) = wait(pool.spawn(move || {
        let plain = a.call(1).wait();
        let mut h = b.call(2);
        let endless = h
            .wait_timeout(Duration::ZERO)
            .or_else(|| h.wait_timeout(HANG));
        (plain, endless)
    }))
    .unwrap();
    assert!(plain.unwrap_err().is_timed_out());
    assert!(endless.expect("not answered").unwrap_err().is_timed_out());
    assert_eq!(runs.load(SeqCst), 0);
}
