//! Rate limits: starts spaced by the limit (checked against the time of the calls, which no
//! delay in the pool can make look earlier), never more than the burst at once, shared between
//! programs, waiting that holds no worker, submission order, and a dropped handle leaving the
//! line.

mod common;

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use asyncify_pool::{RateLimiter, WorkerPool};
use common::{wait, HANG};

/// Start times recorded by the program, in the order they happened.
#[derive(Default)]
struct Starts(Mutex<Vec<(usize, Instant)>>);

impl Starts {
    fn record(&self, i: usize) {
        self.0.lock().unwrap().push((i, Instant::now()));
    }

    fn sorted(&self) -> Vec<(usize, Instant)> {
        let mut v = self.0.lock().unwrap().clone();
        v.sort_by_key(|s| s.1);
        v
    }
}

/// The calls' indices in the order they started: each call started, once, and in the order
/// of the calls but for neighbours a late worker may have swapped (their tokens came in order,
/// an interval apart; the workers that ran them need not keep it on a loaded machine).
fn assert_in_call_order(starts: &[(usize, Instant)], calls: usize) {
    let order: Vec<usize> = starts.iter().map(|s| s.0).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..calls).collect::<Vec<_>>(),
        "each call started once"
    );
    let far = order
        .iter()
        .enumerate()
        .filter(|(k, i)| k.abs_diff(**i) > 1)
        .count();
    assert_eq!(far, 0, "calls started out of order: {order:?}");
}

/// Start `k` (0-based) may come no earlier than `(k + 1 − burst)` intervals after the first
/// call was made. A start comes after its token, so this holds however late the pool runs it.
fn assert_within_rate(starts: &[(usize, Instant)], t0: Instant, interval: Duration, burst: u32) {
    for (k, (_, at)) in starts.iter().enumerate() {
        let tokens_before = (k as u32 + 1).saturating_sub(burst);
        let earliest = t0 + interval * tokens_before;
        assert!(
            *at >= earliest,
            "start {k} came {:?} before its token",
            earliest - *at
        );
    }
}

#[test]
fn fifty_per_second_over_two_hundred_calls() {
    let pool = WorkerPool::new(4);
    let starts = Arc::new(Starts::default());
    let s = Arc::clone(&starts);
    let p = pool
        .asyncify(move |i: usize| {
            s.record(i);
            i
        })
        .rate_limit(50, Duration::from_secs(1));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..200).map(|i| p.call(i)).collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(wait(h), Ok(i));
    }
    let took = t0.elapsed();
    let starts = starts.sorted();
    assert_eq!(starts.len(), 200);
    assert_within_rate(&starts, t0, Duration::from_millis(20), 1);
    // 199 intervals of 20 ms after the first: about 4 s, and not much more on a quiet machine.
    assert!(took >= Duration::from_millis(3_980), "{took:?}");
    assert!(took < HANG, "{took:?}");
    // One line, one order: calls start in the order they were made.
    assert_in_call_order(&starts, 200);
    assert!(p.stats().waited_for_rate >= 199);
}

#[test]
fn a_burst_goes_at_once_and_no_more() {
    let pool = WorkerPool::new(8);
    let starts = Arc::new(Starts::default());
    let s = Arc::clone(&starts);
    let limit = RateLimiter::with_burst(50, Duration::from_secs(1), 8);
    let p = pool
        .asyncify(move |i: usize| s.record(i))
        .with_rate_limiter(&limit);
    let t0 = Instant::now();
    let handles: Vec<_> = (0..40).map(|i| p.call(i)).collect();
    for h in handles {
        wait(h).unwrap();
    }
    assert!(t0.elapsed() >= Duration::from_millis(20 * 32));
    assert_within_rate(&starts.sorted(), t0, Duration::from_millis(20), 8);
}

/// Two programs handed one limiter share its rate: together they start no faster than it.
#[test]
fn programs_with_one_limiter_share_it() {
    let pool = WorkerPool::new(4);
    let starts = Arc::new(Starts::default());
    let (s1, s2) = (Arc::clone(&starts), Arc::clone(&starts));
    let key = RateLimiter::new(100, Duration::from_secs(1));
    let a = pool
        .asyncify(move |i: usize| s1.record(i))
        .with_rate_limiter(&key);
    let b = pool
        .asyncify(move |i: usize| s2.record(i))
        .with_rate_limiter(&key.clone());
    let t0 = Instant::now();
    let handles: Vec<_> = (0..30)
        .map(|i| if i % 2 == 0 { a.call(i) } else { b.call(i) })
        .collect();
    for h in handles {
        wait(h).unwrap();
    }
    let starts = starts.sorted();
    assert_within_rate(&starts, t0, Duration::from_millis(10), 1);
    assert!(t0.elapsed() >= Duration::from_millis(290));
    let order: Vec<usize> = starts.iter().map(|s| s.0).collect();
    assert_eq!(
        order,
        (0..30).collect::<Vec<_>>(),
        "one line across both programs"
    );
}

/// On a one-thread pool with twenty rate-limited calls waiting (two seconds of them), a plain
/// job runs at once: waiting for a token holds no worker.
#[test]
fn waiting_for_a_token_holds_no_worker() {
    let pool = WorkerPool::new(1);
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let limited = pool
        .asyncify(move |i: usize| tx.lock().unwrap().send(i).unwrap())
        .rate_limit(10, Duration::from_secs(1));
    let handles: Vec<_> = (0..20).map(|i| limited.call(i)).collect();
    assert_eq!(rx.recv_timeout(HANG).unwrap(), 0);
    let plain = pool.spawn(|| "plain");
    assert_eq!(wait(plain), Ok("plain"));
    let so_far = rx.try_iter().count();
    assert!(
        so_far < 19,
        "the plain job waited for {so_far} limited calls"
    );
    drop(handles);
}

/// A dropped handle leaves the line at once; the calls after it keep their order, and the
/// dropped ones never run.
#[test]
fn a_dropped_handle_leaves_the_line() {
    let pool = WorkerPool::new(2);
    let starts = Arc::new(Starts::default());
    let s = Arc::clone(&starts);
    let limit = RateLimiter::new(20, Duration::from_secs(1));
    let p = pool
        .asyncify(move |i: usize| s.record(i))
        .with_rate_limiter(&limit);
    let mut handles: Vec<_> = (0..10).map(|i| Some(p.call(i))).collect();
    assert_eq!(limit.waiting(), 9);
    drop(handles[3].take());
    drop(handles[5].take());
    assert_eq!(limit.waiting(), 7);
    for h in handles.into_iter().flatten() {
        wait(h).unwrap();
    }
    let order: Vec<usize> = starts.sorted().iter().map(|s| s.0).collect();
    assert_eq!(order, [0, 1, 2, 4, 6, 7, 8, 9]);
    assert_eq!(limit.waiting(), 0);
}

/// Calls that leave the line (dropped, nine in ten) have their entries taken out while it
/// waits, in prunes: the calls still in it keep their places, and each starts once, in order.
#[test]
fn the_calls_left_in_a_pruned_line_keep_their_order() {
    let pool = WorkerPool::new(2);
    let starts = Arc::new(Starts::default());
    let s = Arc::clone(&starts);
    let limit = RateLimiter::new(200, Duration::from_secs(1));
    let p = pool
        .asyncify(move |i: usize| s.record(i))
        .with_rate_limiter(&limit);
    let kept: Vec<_> = (0..400)
        .filter_map(|i| {
            let h = p.call(i);
            (i % 10 == 0).then_some(h)
        })
        .collect();
    for h in kept {
        wait(h).unwrap();
    }
    // The kept calls, numbered 0 to 39.
    let starts: Vec<_> = starts
        .sorted()
        .into_iter()
        .map(|(i, at)| (i / 10, at))
        .collect();
    assert_in_call_order(&starts, 40);
    assert_eq!(limit.waiting(), 0);
}

/// At shutdown the calls still waiting for a token end at once with `ShutDown`, without waiting
/// for their turn.
#[test]
fn shutdown_ends_the_wait_for_tokens() {
    let pool = WorkerPool::new(1);
    let p = pool
        .asyncify(|i: usize| i)
        .rate_limit(1, Duration::from_secs(3600));
    let first = p.call(0);
    let waiting: Vec<_> = (1..10).map(|i| p.call(i)).collect();
    assert_eq!(wait(first), Ok(0));
    common::assert_shutdown_returns(&pool);
    for h in waiting {
        assert!(wait(h).unwrap_err().is_shut_down());
    }
}

/// Waiting inside a job on a rate-limited call of the same one-thread pool: the waiter runs the
/// attempt itself once it has its token.
#[test]
fn a_nested_wait_on_a_rate_limited_call_does_not_deadlock() {
    let pool = WorkerPool::new(1);
    let inner = pool
        .asyncify(|i: u32| i + 1)
        .rate_limit(20, Duration::from_secs(1));
    let outer =
        pool.asyncify(move |_: ()| (0..5).map(|i| inner.call(i).wait().unwrap()).sum::<u32>());
    assert_eq!(wait(outer.call(())), Ok(15));
}

/// A detached call waiting for its token still runs when its turn comes, with nobody holding
/// its handle.
#[test]
fn a_detached_call_still_runs_in_its_turn() {
    let pool = WorkerPool::new(1);
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let p = pool
        .asyncify(move |i: usize| tx.lock().unwrap().send(i).unwrap())
        .rate_limit(20, Duration::from_secs(1));
    for i in 0..5 {
        p.call(i).detach();
    }
    let got: Vec<usize> = (0..5).map(|_| rx.recv_timeout(HANG).unwrap()).collect();
    assert_eq!(got, [0, 1, 2, 3, 4]);
}
