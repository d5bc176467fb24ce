//! Program options at their extreme values: each gives its documented meaning, or the
//! documented panic. (A hostile tester's attacks; see also `extremes.rs` for the pool's own.)

mod common;

use std::panic::catch_unwind;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use asyncify_pool::{deadline, Overload, RateLimiter, Retry, WorkerPool};
use common::{wait, Gauge};

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
