//! At most `threads()` jobs run at once, jobs start in submission order, results go back to
//! the caller that made the call, and `set_threads` changes the bound at run time: growing
//! starts threads at once, shrinking never interrupts a running job and bounds every job that
//! starts after it returns.
//!
//! Concurrency is measured with a gauge that holds every job until the test lets it go, so the
//! tests know how many jobs run together without timing assumptions.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};

use asyncify_pool::WorkerPool;
use common::{wait, Barrier, Gate, Gauge, HANG};

#[test]
fn at_most_threads_jobs_run_at_once() {
    for threads in [1, 3] {
        let pool = WorkerPool::new(threads);
        let gauge = Gauge::new();
        let jobs = 12;
        let handles: Vec<_> = (0..jobs)
            .map(|_| {
                let gauge = gauge.clone();
                pool.spawn(move || gauge.hold())
            })
            .collect();
        gauge.drive(jobs, threads);
        for h in handles {
            let inside = wait(h).unwrap();
            assert!(
                inside <= threads,
                "{inside} jobs inside on {threads} threads"
            );
        }
        assert_eq!(gauge.state().max, threads, "{threads} threads");
    }
}

#[test]
fn jobs_start_in_submission_order() {
    let pool = WorkerPool::new(1);
    let gate = Gate::new();
    let held = gate.clone();
    let blocker = pool.spawn(move || held.wait());
    let order = Arc::new(Mutex::new(Vec::new()));
    // Calls and one-off spawns share the one FIFO queue.
    let record = {
        let order = order.clone();
        pool.asyncify(move |i: usize| order.lock().unwrap().push(i))
    };
    let handles: Vec<_> = (0..100)
        .map(|i| {
            if i % 2 == 0 {
                record.call(i)
            } else {
                let order = order.clone();
                pool.spawn(move || order.lock().unwrap().push(i))
            }
        })
        .collect();
    gate.open();
    wait(blocker).unwrap();
    for h in handles {
        wait(h).unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..100).collect::<Vec<_>>());
}

#[test]
fn results_return_to_the_right_caller() {
    let pool = WorkerPool::new(3);
    let program = pool.asyncify(|(caller, i): (u64, u64)| (caller, i, caller * 1_000_000 + i * i));
    // Blocking callers on their own threads.
    let threads: Vec<_> = (0..6u64)
        .map(|caller| {
            let program = program.clone();
            std::thread::spawn(move || {
                let handles: Vec<_> = (0..200u64).map(|i| program.call((caller, i))).collect();
                for (i, h) in (0..200u64).zip(handles) {
                    assert_eq!(wait(h), Ok((caller, i, caller * 1_000_000 + i * i)));
                }
            })
        })
        .collect();
    // Async callers, many tasks at once on a multi-thread runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (100..164u64)
            .map(|caller| {
                let program = program.clone();
                tokio::spawn(async move {
                    for i in 0..20u64 {
                        let got = program.call((caller, i)).await;
                        assert_eq!(got, Ok((caller, i, caller * 1_000_000 + i * i)));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn growing_starts_threads_at_once() {
    let pool = WorkerPool::new(1);
    // The one worker is busy; growing must start three more that can all run together.
    let gate = Gate::new();
    let held = gate.clone();
    let busy = pool.spawn(move || held.wait());
    pool.set_threads(4).unwrap();
    assert_eq!(pool.threads(), 4);
    let three = Barrier::new(3);
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let three = three.clone();
            pool.spawn(move || three.wait())
        })
        .collect();
    for h in handles {
        wait(h).expect("three new threads met at the barrier");
    }
    gate.open();
    wait(busy).unwrap();

    // And all four at once.
    let four = Barrier::new(4);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let four = four.clone();
            pool.spawn(move || four.wait())
        })
        .collect();
    for h in handles {
        wait(h).expect("four threads met at the barrier");
    }
}

#[test]
fn after_set_threads_returns_no_more_than_n_jobs_start_at_once() {
    let pool = WorkerPool::new(4);
    pool.set_threads(2).unwrap();
    assert_eq!(pool.threads(), 2);
    let gauge = Gauge::new();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let gauge = gauge.clone();
            pool.spawn(move || gauge.hold())
        })
        .collect();
    gauge.drive(8, 2);
    for h in handles {
        wait(h).unwrap();
    }
    assert_eq!(gauge.state().max, 2);
}

#[test]
fn shrinking_never_interrupts_running_jobs() {
    let (stopped_tx, stopped) = mpsc::channel::<usize>();
    let stopped_tx = Mutex::new(stopped_tx);
    let pool = WorkerPool::builder()
        .threads(4)
        .on_thread_stop(move |i| stopped_tx.lock().unwrap().send(i).unwrap())
        .build()
        .unwrap();
    let gauge = Gauge::new();
    let finished = Arc::new(AtomicUsize::new(0));
    let running: Vec<_> = (0..4u32)
        .map(|i| {
            let (gauge, finished) = (gauge.clone(), finished.clone());
            pool.spawn(move || {
                gauge.hold();
                finished.fetch_add(1, SeqCst);
                i
            })
        })
        .collect();
    gauge.wait_for("four jobs running", |s| s.current == 4);

    // Queued behind them, before the shrink: they start under the new bound.
    let queued_gauge = Gauge::new();
    let queued: Vec<_> = (0..8)
        .map(|_| {
            let (all, queued_gauge) = (gauge.clone(), queued_gauge.clone());
            pool.spawn(move || {
                // How many jobs of either kind run as this one starts; the four old ones
                // leave the gauge before they give back their permit, so this never
                // overcounts.
                let inside = all.enter();
                queued_gauge.hold();
                all.leave();
                inside
            })
        })
        .collect();

    pool.set_threads(1).unwrap();
    assert_eq!(pool.threads(), 1);
    assert_eq!(
        gauge.state().current,
        4,
        "set_threads did not wait for or stop them"
    );

    gauge.release(4);
    for (i, h) in (0..4u32).zip(running) {
        assert_eq!(wait(h), Ok(i), "a running job finished normally");
    }
    assert_eq!(finished.load(SeqCst), 4);
    queued_gauge.drive(8, 1);
    for h in queued {
        assert_eq!(wait(h), Ok(1), "a job started while another ran");
    }
    assert_eq!(queued_gauge.state().max, 1);

    // Three surplus workers retire at their next job boundary.
    for _ in 0..3 {
        stopped
            .recv_timeout(HANG)
            .expect("a surplus worker retired");
    }
    pool.shutdown();
    assert!(
        stopped.recv_timeout(HANG).is_ok(),
        "the last worker stopped"
    );
    assert_eq!(pool.stats().live_threads, 0);
}
