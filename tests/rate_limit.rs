//! Rate limits: starts spaced by the limit on a pool with free workers (checked against the
//! time of the calls, which no delay in the pool can make look earlier), never more than the
//! burst at once, shared between programs, waiting that holds no worker, submission order, a
//! dropped handle leaving the line, turns that come by time (a nested wait on a later call),
//! and tokens given back by attempts that never start.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use asyncify_pool::{RateLimiter, Retry, WorkerPool};
use common::{wait, HANG};

/// The bound on a wait that ends at once when the limiter keeps its promise (and in an hour
/// when it does not).
const BOUND: Duration = Duration::from_secs(10);

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

/// An input whose `clone` number `panic_at` (counted from 1, over every clone of the input
/// and its copies) panics.
struct BadClone {
    clones: Arc<AtomicUsize>,
    panic_at: usize,
}

impl BadClone {
    fn new(panic_at: usize) -> Self {
        BadClone {
            clones: Arc::default(),
            panic_at,
        }
    }
}

impl Clone for BadClone {
    fn clone(&self) -> Self {
        if self.clones.fetch_add(1, SeqCst) + 1 == self.panic_at {
            panic!("planned: a Clone that panics");
        }
        BadClone {
            clones: Arc::clone(&self.clones),
            panic_at: self.panic_at,
        }
    }
}

/// A call of `p` (one start an hour) whose input's first copy panics fails `Panicked`, and
/// the call after it starts at once: the token came back.
fn panics_then_starts_at_once<P: asyncify_pool::Program<BadClone, Output = u16>>(
    p: &asyncify_pool::AsyncProgram<P>,
) {
    let got = wait(p.call(BadClone::new(1)));
    assert!(matches!(&got, Err(e) if e.is_panic()), "{got:?}");
    let mut next = p.call(BadClone::new(0));
    assert_eq!(
        next.wait_timeout(BOUND),
        Some(Ok(200)),
        "the hour's first start"
    );
}

/// User code never costs a limiter token: a call whose input's copy for a retry panics (on
/// the caller's thread, at the call, before the call takes a token) starts no attempt, and
/// the next call starts at once, not an hour later.
#[test]
fn a_panicking_clone_costs_no_rate_token() {
    common::quiet_planned_panics();
    let pool = WorkerPool::new(2);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let p = pool
        .asyncify(move |_: BadClone| {
            r.fetch_add(1, SeqCst);
            200u16
        })
        .retry(Retry::new(2).retry_if(|s: &u16| *s == 503))
        .rate_limit(1, Duration::from_secs(3600));
    panics_then_starts_at_once(&p);
    assert_eq!(runs.load(SeqCst), 1, "only the second call started");
}

/// The same for a call that goes the driven way (`retry_panics` always does): its copy for
/// the first attempt is also made at the call, before any gate.
#[test]
fn a_panicking_clone_on_the_driven_path_costs_no_rate_token() {
    common::quiet_planned_panics();
    let pool = WorkerPool::new(2);
    let p = pool
        .asyncify(|_: BadClone| 200u16)
        .retry(Retry::new(2).retry_panics(true))
        .rate_limit(1, Duration::from_secs(3600));
    panics_then_starts_at_once(&p);
}

/// The same for the copy an attempt after a backoff makes on its worker: that attempt never
/// starts the program, and its token comes back. A burst of 3 per hour: the first attempt
/// takes one, the second gives its own back, so two calls after it start at once.
#[test]
fn a_panicking_clone_after_a_backoff_costs_no_rate_token() {
    common::quiet_planned_panics();
    let pool = WorkerPool::new(2);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let p = pool
        .asyncify(move |_: BadClone| {
            // 503 the first time: a retry, after a backoff.
            if r.fetch_add(1, SeqCst) == 0 {
                503u16
            } else {
                200
            }
        })
        .retry(
            Retry::new(3)
                .retry_if(|s: &u16| *s == 503)
                .backoff(Duration::from_millis(1), Duration::from_millis(1)),
        )
        .with_rate_limiter(&RateLimiter::with_burst(1, Duration::from_secs(3600), 3));
    // Clone 1: the first attempt's copy, at the call; clone 2: the second's, on its worker.
    let got = wait(p.call(BadClone::new(2)));
    assert!(matches!(&got, Err(e) if e.is_panic()), "{got:?}");
    assert_eq!(runs.load(SeqCst), 1, "the second attempt did not start");
    let (mut a, mut b) = (p.call(BadClone::new(0)), p.call(BadClone::new(0)));
    assert_eq!(
        (a.wait_timeout(BOUND), b.wait_timeout(BOUND)),
        (Some(Ok(200)), Some(Ok(200))),
        "the burst's last two tokens"
    );
}

/// An attempt dropped while it is queued never starts, and gives its token back: "at most `n`
/// attempts start per period" lets the next call start now.
#[test]
fn a_queued_call_dropped_before_it_starts_costs_no_rate_token() {
    let pool = WorkerPool::new(1);
    let (gate, busy) = common::occupy(&pool, 1);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let p = pool
        .asyncify(move |x: u32| {
            r.fetch_add(1, SeqCst);
            x
        })
        .rate_limit(1, Duration::from_secs(3600));
    drop(p.call(1)); // queued behind the busy worker, dropped: never runs
    gate.open();
    for h in busy {
        wait(h).unwrap();
    }
    let mut next = p.call(2);
    assert_eq!(
        next.wait_timeout(BOUND),
        Some(Ok(2)),
        "the hour's first start"
    );
    assert_eq!(runs.load(SeqCst), 1);
}

/// The same for an attempt whose deadline passes while it is queued: it never starts, its
/// token comes back.
#[test]
fn a_queued_call_that_times_out_before_it_starts_costs_no_rate_token() {
    let pool = WorkerPool::new(1);
    let (gate, busy) = common::occupy(&pool, 1);
    let p = pool
        .asyncify(|x: u32| x)
        .rate_limit(1, Duration::from_secs(3600));
    let timed = p.timeout(Duration::from_millis(1));
    let got = wait(timed.call(1)); // queued behind the busy worker until its deadline
    assert!(got.unwrap_err().is_timed_out());
    gate.open();
    for h in busy {
        wait(h).unwrap();
    }
    let mut next = p.call(2);
    assert_eq!(
        next.wait_timeout(BOUND),
        Some(Ok(2)),
        "the hour's first start"
    );
}
/// A job on a one-thread pool makes rate-limited calls and waits for the last first, while
/// the earlier calls' attempts sit in the queue behind it: the last call's turn comes by time,
/// not when the earlier ones start (a limiter that waited for their starts deadlocks here),
/// and the waiting worker runs it, then the others.
#[test]
fn a_nested_wait_on_a_later_call_lets_the_earlier_ones_start() {
    let pool = WorkerPool::new(1);
    let inner = pool
        .asyncify(|i: u32| i + 1)
        .with_rate_limiter(&RateLimiter::with_burst(100, Duration::from_secs(1), 2));
    let outer = pool.asyncify(move |_: ()| {
        let handles: Vec<_> = (0..4).map(|i| inner.call(i)).collect();
        handles
            .into_iter()
            .rev()
            .map(|h| h.wait().unwrap())
            .sum::<u32>()
    });
    let mut call = outer.call(());
    assert_eq!(call.wait_timeout(BOUND), Some(Ok(10)));
}
