//! `AsyncProgram::timeout`: a job not started by its deadline never starts, the caller gets
//! `TimedOut` at the deadline with no async runtime's timer, a running job sees `is_cancelled()`,
//! and `deadline()` tells the job its deadline.

mod common;

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use asyncify_pool::{deadline, is_cancelled, settings, settings::Overrides, WorkerPool};
use common::{occupy, wait, Gate, HANG};

/// The only worker is busy past the deadline: the timed call's job never starts, and its caller
/// hears `TimedOut` while the worker is still busy.
#[test]
fn a_job_not_started_by_its_deadline_never_starts() {
    let pool = WorkerPool::new(1);
    let (gate, blockers) = occupy(&pool, 1);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let counted = pool
        .asyncify(move |x: u32| {
            r.fetch_add(1, SeqCst);
            x
        })
        .timeout(Duration::from_millis(30));
    let handle = counted.call(1);
    let err = wait(handle).unwrap_err();
    assert!(err.is_timed_out(), "{err:?}");
    // The worker is still blocked: the answer came from the pool's timer.
    assert_eq!(pool.stats().running, 1);
    gate.open();
    for b in blockers {
        wait(b).unwrap();
    }
    // Everything queued before this has left the queue on the only worker.
    wait(pool.spawn(|| ())).unwrap();
    assert_eq!(runs.load(SeqCst), 0, "the timed-out job started");
    assert_eq!(counted.stats().timed_out, 1);
    assert_eq!(counted.stats().attempts, 1);
}

/// A job that runs past its deadline: the caller gets `TimedOut` at the deadline, while the job
/// still runs, and the job sees `is_cancelled()` turn true.
#[test]
fn a_running_job_sees_is_cancelled_and_its_caller_does_not_wait_for_it() {
    let pool = WorkerPool::new(1);
    let release = Gate::new();
    let (noticed_tx, noticed_rx) = mpsc::channel();
    let returned = Arc::new(AtomicBool::new(false));
    let (rel, ret) = (Arc::clone(&release), Arc::clone(&returned));
    let slow = pool
        .asyncify(move |_: ()| {
            let start = Instant::now();
            while !is_cancelled() && start.elapsed() < HANG {
                std::thread::sleep(Duration::from_millis(1));
            }
            noticed_tx.send(is_cancelled()).unwrap();
            rel.wait();
            ret.store(true, SeqCst);
            "late"
        })
        .timeout(Duration::from_millis(40));
    let err = wait(slow.call(())).unwrap_err();
    assert!(err.is_timed_out());
    assert!(
        noticed_rx.recv_timeout(HANG).unwrap(),
        "the job never saw is_cancelled()"
    );
    assert!(
        !returned.load(SeqCst),
        "the caller waited for the job to return"
    );
    release.open();
    wait(pool.spawn(|| ())).unwrap();
    assert!(returned.load(SeqCst));
}

/// Awaited on an executor with no timer at all (pollster), the deadline still fires.
#[test]
fn the_deadline_needs_no_async_runtime() {
    let pool = WorkerPool::new(1);
    let (gate, _blockers) = occupy(&pool, 1);
    let p = pool.asyncify(|x: u8| x).timeout(Duration::from_millis(20));
    let out = common::within_hang("a timed call under pollster", move || {
        pollster::block_on(p.call(3))
    });
    assert!(out.unwrap_err().is_timed_out());
    gate.open();
}

/// Inside the job, `deadline()` is the call's deadline; outside any call it is `None`, and a
/// program without a timeout sees none.
#[test]
fn deadline_tells_the_job_its_deadline() {
    let pool = WorkerPool::new(2);
    let seen = pool.asyncify(|_: ()| deadline());
    let before = Instant::now();
    let got = wait(seen.timeout(Duration::from_secs(30)).call(()))
        .unwrap()
        .expect("a deadline inside a timed call");
    let after = Instant::now();
    assert!(got >= before + Duration::from_secs(30) && got <= after + Duration::from_secs(30));
    assert_eq!(wait(seen.call(())).unwrap(), None);
    assert_eq!(deadline(), None);
}

/// The extremes: `Duration::ZERO` times every call out without running it; `Duration::MAX`
/// means no deadline.
#[test]
fn zero_and_max_timeouts() {
    let pool = WorkerPool::new(1);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let p = pool.asyncify(move |_: ()| {
        r.fetch_add(1, SeqCst);
        deadline()
    });
    for _ in 0..20 {
        assert!(wait(p.timeout(Duration::ZERO).call(()))
            .unwrap_err()
            .is_timed_out());
    }
    wait(pool.spawn(|| ())).unwrap();
    assert_eq!(runs.load(SeqCst), 0);
    assert_eq!(wait(p.timeout(Duration::MAX).call(())), Ok(None));
}

/// The caller's overrides are in force in a timed call, as in a plain one.
#[test]
fn a_timed_call_runs_under_the_callers_overrides() {
    let pool = WorkerPool::new(1);
    let p = pool
        .asyncify(|_: ()| settings::get::<&str>("tenant"))
        .timeout(Duration::from_secs(30));
    let h = settings::context(Overrides::new().with("tenant", "acme"), || p.call(()));
    assert_eq!(wait(h), Ok(Some("acme")));
}

/// Many calls that finish in time, dropped handles and panics: none times out, each gets its
/// own answer, and the timer lets go of every entry (the program's stats agree).
#[test]
fn calls_that_finish_in_time_are_untouched() {
    common::quiet_planned_panics();
    let pool = WorkerPool::new(2);
    let p = pool
        .asyncify(|x: u64| {
            if x % 7 == 3 {
                panic!("planned: a timed program panics");
            }
            x * 2
        })
        .timeout(Duration::from_secs(60));
    let handles: Vec<_> = (0..500u64).map(|x| (x, p.call(x))).collect();
    for (x, h) in handles {
        if x % 5 == 0 {
            drop(h);
            continue;
        }
        match wait(h) {
            Ok(v) => assert_eq!(v, x * 2),
            Err(e) => assert!(e.is_panic() && x % 7 == 3, "{x}: {e:?}"),
        }
    }
    assert_eq!(p.stats().timed_out, 0);
    assert_eq!(p.stats().calls, 500);
}

/// At shutdown a call waiting for its deadline is like any other: it runs, or its caller hears
/// `ShutDown`; a call made after the shutdown is refused at once.
#[test]
fn shutdown_with_timed_calls() {
    let pool = WorkerPool::new(1);
    let p = pool.asyncify(|x: u32| x).timeout(Duration::from_secs(3600));
    let handles: Vec<_> = (0..50).map(|x| p.call(x)).collect();
    common::assert_shutdown_returns(&pool);
    for (x, h) in handles.into_iter().enumerate() {
        match wait(h) {
            Ok(v) => assert_eq!(v as usize, x),
            Err(e) => assert!(e.is_shut_down(), "{e:?}"),
        }
    }
    assert!(wait(p.call(1)).unwrap_err().is_shut_down());
}

/// A batch item's deadline works as a call's: items of a timed program that would run past it
/// fail with `TimedOut` and the others deliver, in input order. (Each item's deadline counts
/// from its submission: with fewer threads than items, one queued behind the slow ones would
/// time out too.)
#[test]
fn a_batch_items_deadline() {
    let pool = WorkerPool::new(5);
    let p = pool
        .asyncify(|ms: u64| {
            let start = Instant::now();
            while !is_cancelled() && start.elapsed() < Duration::from_millis(ms) {
                std::thread::sleep(Duration::from_millis(1));
            }
            ms
        })
        .timeout(Duration::from_millis(200));
    let inputs = vec![1, 5_000, 2, 5_000, 3];
    let result = common::within_hang("a timed batch", move || {
        p.batch(inputs).max_errors(10).wait()
    });
    let results = result.results();
    assert_eq!(results[0], Ok(1));
    assert_eq!(results[2], Ok(2));
    assert_eq!(results[4], Ok(3));
    for i in [1, 3] {
        assert!(
            results[i].as_ref().unwrap_err().is_timed_out(),
            "{:?}",
            results[i]
        );
    }
}

/// A batch item resolves to `TimedOut` at its deadline also while its run is stuck in code
/// that never looks at `is_cancelled()` (a hung backend): by every way of taking a batch's
/// results, the batch does not wait for the run (it did: the item waited for its job to leave
/// the pool).
#[test]
fn a_batch_item_times_out_while_its_run_is_stuck() {
    for way in ["wait", "await", "completions", "a stream"] {
        let pool = WorkerPool::new(2);
        let gate = Gate::new();
        let g = Arc::clone(&gate);
        let program = pool
            .asyncify(move |_: u32| g.wait())
            .timeout(Duration::from_millis(20));
        let batch = program.batch([0]);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let results: Vec<Result<(), asyncify_pool::JobError>> = match way {
                "wait" => batch.wait().into_results(),
                "await" => pollster::block_on(batch.into_future()).into_results(),
                "completions" => batch.completions().into_iter().map(|(_, r)| r).collect(),
                _ => {
                    use futures::StreamExt;
                    pollster::block_on(batch.completions().map(|(_, r)| r).collect())
                }
            };
            tx.send(results)
        });
        let got = rx.recv_timeout(Duration::from_secs(10));
        gate.open();
        let got = got.unwrap_or_else(|_| panic!("{way}: no result 10 s after a 20 ms deadline"));
        assert!(
            matches!(got.as_slice(), [Err(e)] if e.is_timed_out()),
            "{way}: {got:?}"
        );
    }
}

/// An item that timed out while its run goes on still counts against the batch's
/// `concurrency` until the run ends: with `concurrency(1)`, the next item does not start
/// beside the stuck one.
#[test]
fn a_timed_out_item_counts_against_concurrency_until_its_run_ends() {
    let pool = WorkerPool::new(2);
    let gate = Gate::new();
    let g = Arc::clone(&gate);
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (Arc::clone(&running), Arc::clone(&most));
    let program = pool
        .asyncify(move |i: u32| {
            m.fetch_max(r.fetch_add(1, SeqCst) + 1, SeqCst);
            if i == 0 {
                g.wait(); // stuck past its deadline, blind to is_cancelled()
            }
            r.fetch_sub(1, SeqCst);
            i
        })
        .timeout(Duration::from_millis(50));
    let mut items = program
        .batch(0..3)
        .concurrency(1)
        .max_errors(3)
        .completions()
        .into_iter();
    let (tx, rx) = mpsc::channel();
    let taker = std::thread::spawn(move || {
        for item in items.by_ref() {
            tx.send(item).unwrap();
        }
    });
    let first = rx.recv_timeout(HANG).expect("item 0's result");
    assert!(
        matches!(&first, (0, Err(e)) if e.is_timed_out()),
        "{first:?}"
    );
    // The batch is asked for its next item while item 0 still runs: nothing else may start.
    let next = rx.recv_timeout(Duration::from_millis(300));
    assert!(next.is_err(), "{next:?} came while item 0 still ran");
    assert_eq!(running.load(SeqCst), 1, "only item 0 runs");
    gate.open();
    let rest: Vec<_> = (0..2).map(|_| rx.recv_timeout(HANG).unwrap()).collect();
    assert_eq!(rest, [(1, Ok(1)), (2, Ok(2))]);
    taker.join().unwrap();
    assert_eq!(most.load(SeqCst), 1, "two items ran at once");
}

/// An abort that races a worker finding the deadline passed as it takes the job (queued behind
/// a job that ends at the deadline, before the timer rings): the timeouts counted are the calls
/// that answered `TimedOut`, never one more (a worker counted it, then the abort's cut made the
/// answer `Cancelled`). The abort comes a little later each round, to sweep that window.
#[test]
fn an_abort_racing_an_expired_start_counts_only_the_timeouts_answered() {
    let pool = WorkerPool::new(1);
    let program = pool.asyncify(|x: u32| x).timeout(Duration::from_millis(1));
    let (mut timed_out, mut cancelled) = (0u64, 0u64);
    for round in 0..1500u32 {
        let release = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&release);
        let blocker = pool.spawn(move || {
            while !r.load(SeqCst) {
                std::hint::spin_loop();
            }
        });
        let handle = program.call(round);
        // Read after the call's own clock read: the blocker ends past the deadline.
        let due = Instant::now() + Duration::from_millis(1);
        let abort = handle.abort_handle();
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        release.store(true, SeqCst);
        for _ in 0..round % 300 {
            std::hint::spin_loop();
        }
        abort.abort();
        match wait(handle) {
            Err(e) if e.is_timed_out() => timed_out += 1,
            Err(e) if e.is_cancelled() => cancelled += 1,
            other => panic!("round {round}: a call past its deadline answered {other:?}"),
        }
        wait(blocker).unwrap();
    }
    assert_eq!(timed_out + cancelled, 1500);
    assert_eq!(
        program.stats().timed_out,
        timed_out,
        "timeouts counted against calls answered TimedOut ({cancelled} answered Cancelled)"
    );
}
