//! Dropping a `JobHandle`: before its job starts, the job never runs; after it started, the job
//! runs on, its result is discarded, and `is_cancelled()` turns true inside it. A
//! `tokio::time::timeout` around a call therefore abandons it cleanly. And the cancel path is
//! memory-safe: a handle polled once and dropped while its job completes, many times over.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::time::Duration;

use asyncify_pool::{is_cancelled, WorkerPool};
use common::{env_or, occupy, spin_until, wait, CountingWaker, Gate, Tracked, HANG};

#[test]
fn dropped_before_it_starts_the_job_never_runs() {
    let pool = WorkerPool::new(1);
    let (gate, mut blockers) = occupy(&pool, 1);
    let runs = Arc::new(AtomicUsize::new(0));
    let inputs_dropped = Arc::new(AtomicUsize::new(0));

    // Never polled.
    let (r, input) = (runs.clone(), Tracked(inputs_dropped.clone()));
    let never_polled = pool.spawn(move || {
        let _input = &input;
        r.fetch_add(1, SeqCst);
    });
    // Polled once (a waker is registered), then dropped.
    let r = runs.clone();
    let mut polled = pool.spawn(move || {
        r.fetch_add(1, SeqCst);
    });
    let (_wakes, waker) = CountingWaker::new();
    assert!(Pin::new(&mut polled)
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    // Queued behind them, kept: it must still run.
    let r = runs.clone();
    let kept = pool.spawn(move || r.fetch_add(1, SeqCst));

    drop(never_polled);
    drop(polled);
    // The job (and the input it owns) is dropped by the caller's drop, not when a worker
    // reaches it.
    assert_eq!(inputs_dropped.load(SeqCst), 1);

    gate.open();
    wait(blockers.pop().unwrap()).unwrap();
    assert_eq!(wait(kept), Ok(0), "the kept job runs first of the three");
    pool.shutdown();
    assert_eq!(runs.load(SeqCst), 1, "only the kept job ran");
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.cancelled), (2, 2));
}

#[test]
fn dropped_after_it_started_the_result_is_discarded_and_is_cancelled_turns_true() {
    let pool = WorkerPool::new(1);
    let outputs_dropped = Arc::new(AtomicUsize::new(0));
    let (started_tx, started) = mpsc::channel();
    let (noticed_tx, noticed) = mpsc::channel();
    let dropped = outputs_dropped.clone();
    let handle = pool.spawn(move || {
        started_tx.send(is_cancelled()).unwrap();
        spin_until("the caller to drop the handle", is_cancelled);
        noticed_tx.send(()).unwrap();
        Tracked(dropped)
    });
    assert_eq!(
        started.recv_timeout(HANG),
        Ok(false),
        "not cancelled while the handle lives"
    );
    drop(handle);
    noticed
        .recv_timeout(HANG)
        .expect("the job saw is_cancelled()");

    // The next job on the same (only) worker: the discarded output is gone by then, and the
    // flag belonged to the cancelled job only.
    let dropped = outputs_dropped.clone();
    let after = wait(pool.spawn(move || (is_cancelled(), dropped.load(SeqCst))));
    assert_eq!(after, Ok((false, 1)));
    assert!(!is_cancelled(), "false outside jobs");
    pool.shutdown();
    assert_eq!(outputs_dropped.load(SeqCst), 1, "dropped exactly once");
}

#[test]
fn tokio_timeout_abandons_a_call_cleanly() {
    let pool = WorkerPool::new(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();

    // A running call: the timeout fires while its job waits at the gate.
    let gate = Gate::new();
    let held = gate.clone();
    let (started_tx, started) = mpsc::channel();
    let (seen_tx, seen) = mpsc::channel();
    let running = pool.spawn(move || {
        started_tx.send(()).unwrap();
        held.wait();
        seen_tx.send(is_cancelled()).unwrap();
        "discarded"
    });
    started.recv_timeout(HANG).unwrap();
    // A queued call behind it: abandoned before it starts, so it never runs.
    let queued_runs = Arc::new(AtomicUsize::new(0));
    let r = queued_runs.clone();
    let queued = pool.spawn(move || r.fetch_add(1, SeqCst));

    let (a, b) = rt.block_on(async {
        let a = tokio::time::timeout(Duration::from_millis(20), running).await;
        let b = tokio::time::timeout(Duration::from_millis(1), queued).await;
        (a, b)
    });
    assert!(a.is_err() && b.is_err(), "both calls timed out");
    gate.open();
    assert_eq!(
        seen.recv_timeout(HANG),
        Ok(true),
        "the job learned it was abandoned"
    );

    // The pool is unharmed, and a call that finishes in time is delivered through the timeout.
    let ok = rt.block_on(async { tokio::time::timeout(HANG, pool.spawn(|| 42)).await });
    assert_eq!(ok.expect("hung"), Ok(42));
    pool.shutdown();
    assert_eq!(
        queued_runs.load(SeqCst),
        0,
        "the abandoned queued call never ran"
    );
}

/// faern/oneshot#87 is a use-after-free when a receiver that was polled once is dropped while
/// the sender completes. This drives exactly that: each round polls a handle once (registering
/// a real, reference-counted waker), lets the job finish, and drops the handle after a delay
/// that sweeps from 0 to 63 spins, so that the drop lands before, during and after the worker's
/// completion. Most rounds wait for the job to be running first; every fourth does not, so the
/// drop also races the worker taking the job. Set `ASYNCIFY_STRESS_ROUNDS` for a longer run
/// (e.g. 200000 with `--release`).
#[test]
fn dropping_a_polled_handle_while_its_job_completes_is_memory_safe() {
    let rounds: usize = env_or("ASYNCIFY_STRESS_ROUNDS", 100_000);
    let pool = WorkerPool::new(1);
    let started = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(AtomicUsize::new(0));
    let ran = Arc::new(AtomicUsize::new(0));
    let outputs_dropped = Arc::new(AtomicUsize::new(0));
    let (wakes, waker) = CountingWaker::new();
    let mut pending_first_polls = 0usize;

    for round in 1..=rounds {
        let (s, g, r, d) = (
            started.clone(),
            go.clone(),
            ran.clone(),
            outputs_dropped.clone(),
        );
        let mut handle = pool.spawn(move || {
            s.store(round, SeqCst);
            while g.load(SeqCst) < round {
                std::hint::spin_loop();
            }
            r.fetch_add(1, SeqCst);
            // A heap value, so a use-after-free or double drop of the result has teeth.
            (Box::new(round), Tracked(d))
        });
        let wait_for_start = round % 4 != 0;
        if wait_for_start {
            spin_until("the job to start", || started.load(SeqCst) >= round);
        }
        let first = Pin::new(&mut handle).poll(&mut Context::from_waker(&waker));
        if wait_for_start {
            assert!(first.is_pending(), "the job is held until `go`");
        }
        pending_first_polls += usize::from(first.is_pending());
        go.store(round, SeqCst);
        for _ in 0..round % 64 {
            std::hint::spin_loop();
        }
        drop(handle);
    }
    pool.shutdown();

    let ran = ran.load(SeqCst);
    let stats = pool.stats();
    eprintln!(
        "{rounds} rounds: {ran} ran, {} skipped, {pending_first_polls} first polls pending, \
         {} wakes",
        stats.cancelled,
        wakes.count()
    );
    assert!(ran >= rounds - rounds / 4, "every job waited for ran");
    assert_eq!(
        (stats.completed + stats.abandoned) as usize,
        ran,
        "the pool counted what ran (abandoned if its handle was gone before it ended)"
    );
    assert_eq!(
        ran + stats.cancelled as usize,
        rounds,
        "each job ran or was skipped"
    );
    assert_eq!(
        outputs_dropped.load(SeqCst),
        ran,
        "each output dropped once"
    );
    // Each pending first poll wakes the waker once itself (the handle's yield before it
    // waits), and the worker at most once more.
    assert!(wakes.count() <= 2 * pending_first_polls);
}

/// The same race through a real executor: many `select`-style abandonments of calls whose jobs
/// finish at that very moment, on tokio's multi-thread runtime.
#[test]
fn abandoning_calls_on_a_multi_thread_runtime_loses_nothing() {
    let pool = WorkerPool::new(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(AtomicUsize::new(0));
    rt.block_on(async {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (pool, ran, delivered) = (pool.clone(), ran.clone(), delivered.clone());
                tokio::spawn(async move {
                    for i in 0..500u32 {
                        let r = ran.clone();
                        let mut handle = pool.spawn(move || {
                            r.fetch_add(1, SeqCst);
                            i
                        });
                        // Poll once through the runtime's waker, yield so the job can finish,
                        // then give up on it unless it is already done.
                        let first = futures::future::poll_fn(|cx| {
                            Poll::Ready(Pin::new(&mut handle).poll(cx))
                        })
                        .await;
                        match first {
                            Poll::Ready(v) => {
                                assert_eq!(v, Ok(i));
                                delivered.fetch_add(1, SeqCst);
                            }
                            Poll::Pending => {
                                tokio::task::yield_now().await;
                                drop(handle);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    pool.shutdown();
    let stats = pool.stats();
    let ran = ran.load(SeqCst);
    assert_eq!(ran as u64, stats.completed + stats.abandoned);
    assert_eq!(ran + stats.cancelled as usize, 2000);
    // A delivered result was not abandoned.
    assert!(delivered.load(SeqCst) as u64 <= stats.completed);
}
