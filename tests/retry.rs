//! `AsyncProgram::retry`: attempts counted, backoff that holds no worker, the captured context
//! on every attempt, the deadline over the whole, and the hostile cases.

mod common;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use asyncify_pool::{settings, settings::Overrides, Retry, WorkerPool};
use common::{spin_until, wait, HANG};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A backend that fails its first `failures` calls (503), then answers 200.
fn flaky(failures: u32) -> (Arc<AtomicU32>, impl Fn(u32) -> u16 + Send + Sync + 'static) {
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    (calls, move |_| {
        if c.fetch_add(1, SeqCst) < failures {
            503
        } else {
            200
        }
    })
}

fn on_503(attempts: u32, backoff: Duration) -> Retry<u16> {
    Retry::new(attempts)
        .backoff(backoff, backoff * 4)
        .retry_if(|s: &u16| *s == 503)
}

#[test]
fn retries_until_the_classifier_is_satisfied_and_counts_attempts() {
    let pool = WorkerPool::new(2);
    let (calls, backend) = flaky(2);
    let p = pool.asyncify(backend).retry(on_503(5, ms(1)));
    assert_eq!(wait(p.call(0)), Ok(200));
    assert_eq!(calls.load(SeqCst), 3);
    let stats = p.stats();
    assert_eq!((stats.calls, stats.attempts, stats.retries), (1, 3, 2));
    // Attempts are pool jobs: the pool counts them too.
    assert_eq!(pool.stats().completed, 3);
}

#[test]
fn gives_up_after_its_attempts_with_the_last_output() {
    let pool = WorkerPool::new(1);
    let (calls, backend) = flaky(u32::MAX);
    let p = pool.asyncify(backend).retry(on_503(4, ms(1)));
    assert_eq!(wait(p.call(0)), Ok(503));
    assert_eq!(calls.load(SeqCst), 4);
    assert_eq!(p.stats().attempts, 4);
}

/// On a one-thread pool, while the first program backs off, a second program's job runs: the
/// backoff holds no worker.
#[test]
fn a_backoff_holds_no_worker() {
    let pool = WorkerPool::new(1);
    let (order_tx, order_rx) = mpsc::channel();
    let (tx1, tx2) = (Mutex::new(order_tx.clone()), Mutex::new(order_tx));
    let attempts = AtomicU32::new(0);
    let retried = pool
        .asyncify(move |_: ()| {
            let n = attempts.fetch_add(1, SeqCst);
            tx1.lock().unwrap().send(format!("attempt {n}")).unwrap();
            if n == 0 {
                503
            } else {
                200
            }
        })
        .retry(
            Retry::new(2)
                .backoff(ms(300), ms(300))
                .jitter(false)
                .retry_if(|s: &u16| *s == 503),
        );
    let other = pool.asyncify(move |_: ()| tx2.lock().unwrap().send("other".to_owned()).unwrap());
    let first = retried.call(());
    assert_eq!(order_rx.recv_timeout(HANG).unwrap(), "attempt 0");
    // The first attempt is over and the call backs off for 300 ms: the worker is free.
    let second = other.call(());
    assert_eq!(order_rx.recv_timeout(HANG).unwrap(), "other");
    assert_eq!(order_rx.recv_timeout(HANG).unwrap(), "attempt 1");
    assert_eq!(wait(first), Ok(200));
    wait(second).unwrap();
}

/// Every attempt runs under the overrides captured at the call, whatever the caller's thread
/// does meanwhile.
#[test]
fn every_attempt_runs_under_the_captured_context() {
    let pool = WorkerPool::new(2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let p = pool
        .asyncify(move |_: ()| {
            let mut seen = s.lock().unwrap();
            seen.push(settings::get::<&str>("tenant"));
            if seen.len() < 3 {
                503u16
            } else {
                200
            }
        })
        .retry(on_503(3, ms(2)));
    let h = settings::context(Overrides::new().with("tenant", "acme"), || p.call(()));
    settings::context(Overrides::new().with("tenant", "other"), || {
        assert_eq!(wait(h), Ok(200));
    });
    assert_eq!(*seen.lock().unwrap(), [Some("acme"); 3]);
}

/// Panics are retried only when asked; the last panic is the answer if all attempts panic.
#[test]
fn panics_are_retried_only_when_asked() {
    common::quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let runs = Arc::new(AtomicU32::new(0));
    let r = Arc::clone(&runs);
    let p = pool.asyncify(move |_: ()| -> u16 {
        if r.fetch_add(1, SeqCst) < 2 {
            panic!("planned: a transient panic");
        }
        200
    });
    let no = p.retry(Retry::new(5).backoff(ms(1), ms(1)));
    assert!(wait(no.call(())).unwrap_err().is_panic());
    assert_eq!(runs.load(SeqCst), 1);
    let yes = p.retry(Retry::new(5).backoff(ms(1), ms(1)).retry_panics(true));
    assert_eq!(wait(yes.call(())), Ok(200));
    assert_eq!(runs.load(SeqCst), 3);
    let always = pool
        .asyncify(|_: ()| -> u16 { panic!("planned: always") })
        .retry(Retry::new(3).backoff(ms(1), ms(1)).retry_panics(true));
    let err = wait(always.call(())).unwrap_err();
    assert!(err.to_string().contains("planned: always"));
    assert_eq!(always.stats().attempts, 3);
}

/// The deadline bounds attempts and backoffs together: a call that would retry for ever ends
/// near its deadline, with the last attempt's output (no backoff past the deadline is begun).
#[test]
fn the_deadline_bounds_the_whole_call() {
    let pool = WorkerPool::new(1);
    let (calls, backend) = flaky(u32::MAX);
    let p = pool
        .asyncify(backend)
        .retry(
            Retry::new(1_000)
                .backoff(ms(20), ms(20))
                .jitter(false)
                .retry_if(|s: &u16| *s == 503),
        )
        .timeout(ms(150));
    let start = Instant::now();
    let out = wait(p.call(0));
    let took = start.elapsed();
    assert!(
        matches!(out, Ok(503)) || matches!(&out, Err(e) if e.is_timed_out()),
        "{out:?}"
    );
    let attempts = calls.load(SeqCst);
    assert!(
        (2..=8).contains(&attempts),
        "{attempts} attempts in {took:?}"
    );
    assert!(took < HANG);
}

/// A handle dropped during a backoff ends the call: no more attempts.
#[test]
fn a_dropped_handle_stops_the_retries() {
    let pool = WorkerPool::new(1);
    let (calls, backend) = flaky(u32::MAX);
    let (first_tx, first_rx) = mpsc::channel();
    let first_tx = Mutex::new(first_tx);
    let p = pool
        .asyncify(move |x| {
            let _ = first_tx.lock().unwrap().send(());
            backend(x)
        })
        .retry(on_503(100, ms(50)));
    let h = p.call(0);
    first_rx.recv_timeout(HANG).unwrap();
    drop(h);
    std::thread::sleep(ms(300));
    wait(pool.spawn(|| ())).unwrap();
    assert!(
        calls.load(SeqCst) <= 2,
        "{} attempts after the drop",
        calls.load(SeqCst)
    );
}

/// A call backing off for an hour when the pool shuts down ends at once, with its last
/// attempt's output; nothing waits for the backoff.
#[test]
fn shutdown_ends_a_backoff_at_once() {
    let pool = WorkerPool::new(1);
    let (calls, backend) = flaky(u32::MAX);
    let p = pool.asyncify(backend).retry(
        Retry::new(3)
            .backoff(Duration::from_secs(3600), Duration::from_secs(3600))
            .retry_if(|s: &u16| *s == 503),
    );
    let h = p.call(0);
    common::spin_until("the first attempt", || calls.load(SeqCst) == 1);
    common::spin_until("the backoff", || p.pool().stats().completed == 1);
    common::assert_shutdown_returns(&pool);
    assert_eq!(wait(h), Ok(503));
    assert_eq!(calls.load(SeqCst), 1);
}

/// Hostile code: a classifier that panics (not retried), an input whose `Clone` panics (the
/// call fails with `Panicked`, the worker lives), and a waker that panics on the retried call.
#[test]
fn hostile_classifier_and_clone() {
    common::quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let p = pool.asyncify(|_: u8| 503u16).retry(
        Retry::new(3)
            .backoff(ms(1), ms(1))
            .retry_if(|_: &u16| panic!("planned: classifier")),
    );
    assert_eq!(wait(p.call(0)), Ok(503));
    assert_eq!(p.stats().attempts, 1);

    struct BadClone(u8);
    impl Clone for BadClone {
        fn clone(&self) -> Self {
            panic!("planned: clone")
        }
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let q = pool
        .asyncify(move |b: BadClone| {
            r.fetch_add(1, SeqCst);
            b.0
        })
        .retry(Retry::new(3).retry_if(|_: &u8| true));
    let err = wait(q.call(BadClone(1))).unwrap_err();
    assert!(
        err.is_panic() && err.to_string().contains("planned: clone"),
        "{err:?}"
    );
    assert_eq!(runs.load(SeqCst), 0);
    assert_eq!(wait(pool.spawn(|| 5)), Ok(5), "the worker lives");

    let (calls, backend) = flaky(1);
    let r = pool.asyncify(backend).retry(on_503(3, ms(5)));
    let mut h = r.call(0);
    let _ = std::pin::Pin::new(&mut h)
        .as_mut()
        .poll(&mut std::task::Context::from_waker(
            &common::panicking_waker(),
        ));
    assert_eq!(wait(h), Ok(200));
    assert_eq!(calls.load(SeqCst), 2);
}

/// Waiting inside a job on a retried call of the same one-thread pool: the waiting worker runs
/// each attempt itself when it is queued, after the backoff.
#[test]
fn a_nested_wait_on_a_retried_call_does_not_deadlock() {
    let pool = WorkerPool::new(1);
    let (calls, backend) = flaky(2);
    let inner = pool.asyncify(backend).retry(on_503(5, ms(10)));
    let outer = pool.asyncify(move |_: ()| inner.call(0).wait());
    assert_eq!(wait(outer.call(())), Ok(Ok(200)));
    assert_eq!(calls.load(SeqCst), 3);
}

/// An error that is no output (the pool shut down) is never retried.
#[test]
fn errors_that_are_not_outputs_are_not_retried() {
    let pool = WorkerPool::new(1);
    let p = pool
        .asyncify(|x: u8| x)
        .retry(Retry::new(5).retry_if(|_: &u8| true).backoff(ms(1), ms(1)));
    pool.shutdown();
    assert!(wait(p.call(1)).unwrap_err().is_shut_down());
}

use std::future::Future;

/// A detached call backing off still makes its next attempt, with nobody holding its handle.
#[test]
fn a_detached_call_still_retries() {
    let pool = WorkerPool::new(1);
    let (calls, backend) = flaky(2);
    let p = pool.asyncify(backend).retry(on_503(5, ms(20)));
    p.call(0).detach();
    common::spin_until("three attempts", || calls.load(SeqCst) == 3);
    assert_eq!(p.stats().attempts, 3);
}

/// An abort that lands as the worker hands a retried call over to its next attempt (after the
/// classifier asked for one) answers `Cancelled`: the call was not finished, so the first
/// attempt's output, which asked for a retry, must not become the answer. The caller aborts
/// right after the classifier returns, a little later each round, to sweep the window between
/// the abort's mark and its cut of the attempt.
#[test]
fn an_abort_as_the_first_attempt_hands_over_answers_cancelled() {
    let pool = WorkerPool::new(1);
    let judged = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&judged);
    let program = pool.asyncify(|_: u32| 503u16).retry(
        Retry::new(5)
            .backoff(ms(150), ms(150))
            .jitter(false)
            .retry_if(move |s: &u16| {
                seen.fetch_add(1, SeqCst);
                *s == 503
            }),
    );
    let mut wrong = Vec::new();
    for round in 0..40_000u32 {
        let before = judged.load(SeqCst);
        let handle = program.call(round);
        let abort = handle.abort_handle();
        spin_until("the classifier", || judged.load(SeqCst) > before);
        for _ in 0..round % 40 {
            std::hint::spin_loop();
        }
        abort.abort();
        match wait(handle) {
            Err(e) if e.is_cancelled() => {}
            other => wrong.push((round, other)),
        }
    }
    assert!(
        wrong.is_empty(),
        "aborted calls that answered otherwise: {wrong:?}"
    );
}

/// A backoff too long for an `Instant` to hold (`Duration::MAX`, or a base of 3·2⁶² s with
/// jitter) waits for ever: the call stays in its backoff, holding no worker, until its pool
/// shuts down, which answers it with its last output. With a deadline, such a backoff is not
/// made (it would end past the deadline): the call answers its last output at once. Before the
/// fix, with no deadline, a backoff of `Duration::MAX` gave up at once while one of 2⁴⁰ s waited,
/// and a jittered one past an `Instant` gave up or waited at random (129 of 200 gave up).
#[test]
fn a_backoff_past_what_an_instant_holds_waits_for_ever() {
    let huge = Duration::from_secs(3 << 62);
    for (name, base, jitter) in [("MAX", Duration::MAX, false), ("3·2⁶² s", huge, true)] {
        let pool = WorkerPool::new(2);
        let policy = || {
            Retry::new(u32::MAX)
                .backoff(base, Duration::MAX)
                .jitter(jitter)
                .retry_if(|_: &u32| true)
        };
        let forever = pool.asyncify(|x: u32| x).retry(policy());
        let handles: Vec<_> = (0..50).map(|i| forever.call(i)).collect();
        spin_until("the first attempts", || pool.stats().completed == 50);
        // (Their retries are decided right after: a call that gave up would be answered now.)
        std::thread::sleep(ms(100));
        let answered = handles.iter().filter(|h| h.is_finished()).count();
        assert_eq!(
            answered, 0,
            "{name}: calls gave up a backoff with no deadline"
        );
        assert_eq!(forever.stats().attempts, 50, "{name}");
        // With a deadline, the backoff is not made: the first output is the answer.
        let bounded = pool.asyncify(|x: u32| x + 1).timeout(HANG).retry(policy());
        for i in 0..50 {
            assert_eq!(wait(bounded.call(i)), Ok(i + 1), "{name}");
        }
        assert_eq!(bounded.stats().retries, 0, "{name}");
        common::assert_shutdown_returns(&pool);
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(
                wait(h),
                Ok(i as u32),
                "{name}: the last output at the close"
            );
        }
    }
}
