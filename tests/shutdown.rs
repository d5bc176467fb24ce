//! `shutdown` stops accepting, runs everything accepted, and joins the threads; later calls
//! resolve at once to `ShutDown`; calling it twice, from several threads, or from inside a job
//! is fine; dropping every handle of a pool lets queued jobs finish; and a call racing with
//! `shutdown` is either run with its result delivered or told `ShutDown`, never both, never hung.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};

use std::time::Duration;

use asyncify_pool::{JobError, JobHandle, Retry, WorkerPool};
use common::{occupy, spin_until, wait, Gate, HANG};

/// A pool whose `on_thread_stop` hook counts the threads that have exited.
fn counted_pool(threads: usize) -> (WorkerPool, Arc<AtomicUsize>) {
    let stopped = Arc::new(AtomicUsize::new(0));
    let s = stopped.clone();
    let pool = WorkerPool::builder()
        .threads(threads)
        .on_thread_stop(move |_| {
            s.fetch_add(1, SeqCst);
        })
        .build()
        .unwrap();
    (pool, stopped)
}

/// Polls once with a waker that does nothing: what a handle says without any waiting.
fn poll_now<T>(handle: &mut JobHandle<T>) -> Poll<Result<T, JobError>> {
    Pin::new(handle).poll(&mut Context::from_waker(futures::task::noop_waker_ref()))
}

#[test]
fn shutdown_runs_everything_accepted_then_joins_the_threads() {
    let (pool, stopped) = counted_pool(2);
    let (gate, blockers) = occupy(&pool, 2);
    let ran = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (0..50usize)
        .map(|i| {
            let ran = ran.clone();
            pool.spawn(move || {
                ran.fetch_add(1, SeqCst);
                i
            })
        })
        .collect();

    let closer = std::thread::spawn({
        let pool = pool.clone();
        move || pool.shutdown()
    });
    spin_until("the pool to close", || pool.is_shut_down());
    // Closed but still draining: a new call is refused at once.
    let mut refused = pool.spawn(|| 0);
    assert!(matches!(
        poll_now(&mut refused),
        Poll::Ready(Err(JobError::ShutDown { .. }))
    ));
    assert_eq!(
        stopped.load(SeqCst),
        0,
        "nobody left while jobs were queued"
    );

    gate.open();
    closer.join().unwrap();
    // `shutdown` has returned: every accepted job ran, every thread exited (its stop hook ran).
    assert_eq!(ran.load(SeqCst), 50);
    assert_eq!(stopped.load(SeqCst), 2);
    assert_eq!(pool.stats().live_threads, 0);
    for b in blockers {
        assert_eq!(wait(b), Ok(()));
    }
    for (i, mut h) in queued.into_iter().enumerate() {
        assert_eq!(
            poll_now(&mut h),
            Poll::Ready(Ok(i)),
            "resolved before shutdown returned"
        );
    }
}

#[test]
fn later_calls_resolve_at_once_to_shut_down() {
    let pool = WorkerPool::new(2);
    let program = pool.asyncify(|x: u32| x + 1);
    assert_eq!(wait(program.call(1)), Ok(2));
    pool.shutdown();

    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let mut spawned = pool.spawn(move || r.store(true, SeqCst));
    assert!(spawned.is_finished());
    assert!(matches!(
        poll_now(&mut spawned),
        Poll::Ready(Err(JobError::ShutDown { .. }))
    ));
    let mut called = program.call(1);
    assert!(called.is_finished());
    assert!(matches!(
        poll_now(&mut called),
        Poll::Ready(Err(JobError::ShutDown { .. }))
    ));
    assert!(pool.try_spawn(|| ()).unwrap_err().is_shut_down());
    assert!(program.try_call(5).unwrap_err().is_shut_down());
    // Awaited on an executor and waited on a thread: the same answer, at once.
    let err = pollster::block_on(program.call(3)).unwrap_err();
    assert!(err.is_shut_down(), "{err}");
    assert!(pool.spawn(|| ()).wait().unwrap_err().is_shut_down());
    assert!(!ran.load(SeqCst), "a refused job never runs");
}

#[test]
fn shutdown_twice_and_from_several_threads_each_return_after_the_join() {
    let (pool, stopped) = counted_pool(3);
    let queued: Vec<_> = (0..100u32).map(|i| pool.spawn(move || i)).collect();
    let closers: Vec<_> = (0..4)
        .map(|_| {
            let (pool, stopped) = (pool.clone(), stopped.clone());
            std::thread::spawn(move || {
                pool.shutdown();
                stopped.load(SeqCst)
            })
        })
        .collect();
    pool.shutdown();
    assert_eq!(stopped.load(SeqCst), 3);
    for c in closers {
        assert_eq!(
            c.join().unwrap(),
            3,
            "this shutdown returned before every thread was gone"
        );
    }
    pool.shutdown();
    assert_eq!(stopped.load(SeqCst), 3, "stop hooks ran once each");
    for (i, h) in (0..100u32).zip(queued) {
        assert_eq!(wait(h), Ok(i));
    }
}

#[test]
fn shutdown_from_inside_a_job_closes_and_returns_and_the_queue_still_drains() {
    for threads in [1, 2] {
        let stops = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, stop_rx) = mpsc::channel();
        let stop_tx = Mutex::new(stop_tx);
        let s = stops.clone();
        let pool = WorkerPool::builder()
            .threads(threads)
            .on_thread_stop(move |i| {
                s.lock().unwrap().push(i);
                stop_tx.lock().unwrap().send(()).unwrap();
            })
            .build()
            .unwrap();
        let (gate, blockers) = occupy(&pool, threads);
        let inner = pool.clone();
        let closer = pool.spawn(move || {
            inner.shutdown(); // returns without joining: it runs on a worker
            let refused = inner.spawn(|| ()).wait();
            (inner.is_shut_down(), refused)
        });
        let behind: Vec<_> = (0..20u32).map(|i| pool.spawn(move || i)).collect();
        gate.open();
        let (closed, refused) = wait(closer).unwrap();
        assert!(closed);
        assert!(refused.unwrap_err().is_shut_down());
        for (i, h) in (0..20u32).zip(behind) {
            assert_eq!(
                wait(h),
                Ok(i),
                "accepted before the shutdown: it still runs"
            );
        }
        for b in blockers {
            wait(b).unwrap();
        }
        // Nobody called shutdown from outside, yet every thread exits by itself.
        for _ in 0..threads {
            stop_rx.recv_timeout(HANG).expect("a worker never exited");
        }
        // And a later shutdown from outside joins them and returns.
        pool.shutdown();
        assert_eq!(stops.lock().unwrap().len(), threads);
    }
}

#[test]
fn dropping_every_pool_handle_lets_queued_jobs_finish() {
    let (stop_tx, stop_rx) = mpsc::channel();
    let stop_tx = Mutex::new(stop_tx);
    let pool = WorkerPool::builder()
        .threads(1)
        .on_thread_stop(move |_| stop_tx.lock().unwrap().send(()).unwrap())
        .build()
        .unwrap();
    let (gate, mut blockers) = occupy(&pool, 1);
    let program = pool.asyncify(|i: u32| i * 10);
    let queued: Vec<_> = (0..20u32).map(|i| program.call(i)).collect();
    let spawned = pool.spawn(|| "spawned");
    // An `AsyncProgram` holds the pool too; drop both.
    drop(program);
    drop(pool);
    assert!(
        stop_rx.try_recv().is_err(),
        "the busy worker cannot have exited yet"
    );
    gate.open();
    wait(blockers.pop().unwrap()).unwrap();
    for (i, h) in (0..20u32).zip(queued) {
        assert_eq!(wait(h), Ok(i * 10));
    }
    assert_eq!(pollster::block_on(spawned), Ok("spawned"));
    stop_rx
        .recv_timeout(HANG)
        .expect("the worker exits once the queue is empty");
}

/// Several threads submit as fast as they can while the pool shuts down in the middle. Every
/// call must resolve (bounded wait), and exactly one of: it ran once and its caller got its
/// value, or it never ran and its caller got `ShutDown`.
#[test]
fn a_call_racing_with_shutdown_is_run_or_told_shut_down_never_both_never_hung() {
    let mut totals = (0usize, 0usize);
    for round in 0..30usize {
        let pool = WorkerPool::new(2);
        let program = pool.asyncify(|(ran, id): (Arc<AtomicUsize>, usize)| {
            ran.fetch_add(1, SeqCst);
            id
        });
        let submitted = Arc::new(AtomicUsize::new(0));
        let submitters: Vec<_> = (0..4usize)
            .map(|t| {
                let (pool, program, submitted) = (pool.clone(), program.clone(), submitted.clone());
                std::thread::spawn(move || {
                    let mut calls = Vec::new();
                    let mut after_close = 0;
                    while after_close < 20 {
                        let id = t * 1_000_000 + calls.len();
                        let closed_before = pool.is_shut_down();
                        let ran = Arc::new(AtomicUsize::new(0));
                        let handle = if id % 2 == 0 {
                            program.call((ran.clone(), id))
                        } else {
                            let r = ran.clone();
                            pool.spawn(move || {
                                r.fetch_add(1, SeqCst);
                                id
                            })
                        };
                        calls.push((id, closed_before, ran, handle));
                        submitted.fetch_add(1, SeqCst);
                        after_close += usize::from(closed_before);
                    }
                    calls
                        .into_iter()
                        .map(|(id, closed_before, ran, h)| (id, closed_before, ran, wait(h)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let at = 50 + round * 20;
        spin_until("submissions", || submitted.load(SeqCst) >= at);
        pool.shutdown();
        let (mut delivered, mut refused) = (0, 0);
        for s in submitters {
            for (id, closed_before, ran, result) in s.join().expect("a call hung") {
                match (result, ran.load(SeqCst)) {
                    (Ok(v), 1) if v == id && !closed_before => delivered += 1,
                    (Err(JobError::ShutDown { .. }), 0) => refused += 1,
                    (result, runs) => panic!("call {id}: {result:?} after {runs} run(s)"),
                }
            }
        }
        // The first `at` calls were accepted before `shutdown` began: they all ran. The last
        // 20 of each submitter were made after it saw the close: all refused.
        assert!(
            delivered >= at,
            "{delivered} delivered, {at} accepted before shutdown"
        );
        assert!(refused >= 4 * 20, "{refused} refused");
        let stats = pool.stats();
        assert_eq!(
            stats.completed as usize, delivered,
            "every run was delivered"
        );
        totals.0 += delivered;
        totals.1 += refused;
    }
    eprintln!("{} delivered, {} refused", totals.0, totals.1);
}

/// A job keeps making calls and waiting on them (the waiting worker runs them itself) while
/// the pool shuts down from outside. A call that passed the "still open?" check just before the
/// close lands in the queue behind the workers' stop messages; the waiting worker must still see
/// it resolved (run, or told `ShutDown`) instead of waiting for it forever, and the shutdown
/// must return. The window is a few hundred nanoseconds wide, so this runs many rounds.
#[test]
fn a_nested_call_racing_with_shutdown_never_hangs() {
    let rounds = 3000;
    let mut outcomes = [0usize; 2];
    for round in 0..rounds {
        let threads = 1 + round % 2;
        let (pool, stopped) = counted_pool(threads);
        let (warm_tx, warm) = mpsc::channel();
        let inner = pool.clone();
        let outer = pool.spawn(move || {
            let mut delivered = 0usize;
            loop {
                let ran = Arc::new(AtomicBool::new(false));
                let r = ran.clone();
                match inner.spawn(move || r.store(true, SeqCst)).wait() {
                    Ok(()) => {
                        assert!(ran.load(SeqCst));
                        delivered += 1;
                    }
                    Err(JobError::ShutDown { .. }) => {
                        assert!(!ran.load(SeqCst), "told ShutDown but it ran");
                        return delivered;
                    }
                    Err(e) => panic!("{e}"),
                }
                if delivered == 3 {
                    let _ = warm_tx.send(());
                }
            }
        });
        warm.recv_timeout(HANG)
            .expect("the outer job never got going");
        // Vary where the close lands within the loop.
        for _ in 0..round % 97 {
            std::hint::spin_loop();
        }
        assert_eq!(
            pool.shutdown_timeout(HANG),
            Ok(()),
            "round {round}: shutdown hung behind a waiting worker"
        );
        let delivered = wait(outer).expect("the outer job finished");
        assert!(delivered >= 3);
        assert_eq!(stopped.load(SeqCst), threads);
        outcomes[threads - 1] += 1;
    }
    eprintln!("{outcomes:?} rounds on 1 and 2 threads");
}

/// `shutdown_timeout(Duration::ZERO)` on an idle pool looks once: `Ok` only if every thread had
/// already left (every stop hook has run by then), else the error, after which the threads
/// still leave on their own and a later `shutdown_timeout` waits for them.
#[test]
fn a_zero_shutdown_timeout_on_an_idle_pool_loses_nothing() {
    for _ in 0..20 {
        let (pool, stopped) = counted_pool(2);
        assert_eq!(wait(pool.spawn(|| 1)), Ok(1));
        match pool.shutdown_timeout(std::time::Duration::ZERO) {
            Ok(()) => assert_eq!(stopped.load(SeqCst), 2, "Ok before every thread left"),
            // (A worker looking for its next job holds a place for a moment: `running` may
            // show it.)
            Err(e) => assert!(e.running() <= 2 && e.threads() <= 2, "{e}"),
        }
        assert_eq!(pool.shutdown_timeout(HANG), Ok(()));
        assert_eq!(stopped.load(SeqCst), 2);
        assert_eq!(pool.stats().live_threads, 0);
    }
}

/// An input whose `Drop` says it began, then blocks until its gate opens.
#[derive(Clone)]
struct BlocksOnDrop(Arc<Gate>, Arc<AtomicBool>);

impl Drop for BlocksOnDrop {
    fn drop(&mut self) {
        self.1.store(true, SeqCst);
        self.0.wait();
    }
}

/// When `shutdown_timeout` runs out of time, the queued jobs' callers are told `ShutDown` at
/// once, all of them, even while the `Drop` of one queued job's input blocks: the inputs are
/// dropped after every caller was told, on the thread that shut down, which returns once they
/// are. The blocking input is a plain call's, a call with a deadline's, or one with a retry
/// policy's (whose attempt goes straight to the queue, or is driven by the call, which learns
/// of the shutdown as the pool wakes it and then tells its own caller); behind it wait a
/// plain job and a call with a deadline.
#[test]
fn a_blocking_drop_in_the_abandoned_queue_keeps_no_other_caller_from_being_told() {
    for kind in ["call", "timeout", "retry", "driven"] {
        let pool = WorkerPool::new(1);
        let (stuck_gate, stuck) = occupy(&pool, 1);
        let (drop_gate, dropping) = (Gate::new(), Arc::new(AtomicBool::new(false)));
        let input = BlocksOnDrop(Arc::clone(&drop_gate), Arc::clone(&dropping));
        let program = pool.asyncify(|_: BlocksOnDrop| 1u32);
        let first = match kind {
            "call" => program.call(input),
            "timeout" => program.timeout(Duration::from_secs(3600)).call(input),
            "retry" => program.retry(Retry::new(2)).call(input),
            _ => program.retry(Retry::new(2).retry_panics(true)).call(input),
        };
        let second = pool.spawn(|| 2u32);
        let third = pool
            .asyncify(|x: u32| x)
            .timeout(Duration::from_secs(3600))
            .call(3);
        // Their callers wait on threads of their own, so that telling them takes a wake-up.
        let (told_tx, told_rx) = mpsc::channel();
        for (i, handle) in [(1, second), (2, third)] {
            let told_tx = told_tx.clone();
            std::thread::spawn(move || {
                let _ = told_tx.send((i, handle.wait().map_err(|e| e.is_shut_down())));
            });
        }
        std::thread::sleep(Duration::from_millis(20)); // (so that they are waiting)
        let closer = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.shutdown_timeout(Duration::from_millis(20)))
        };
        spin_until("the blocking drop to begin", || dropping.load(SeqCst));
        // (A quarter of what the gates wait before they call it a hang: they open first.)
        let mut told: Vec<_> = (0..2)
            .filter_map(|_| told_rx.recv_timeout(HANG / 4).ok())
            .collect();
        told.sort();
        let returned_while_blocked = closer.is_finished();
        drop_gate.open();
        stuck_gate.open();
        let shut = closer.join().unwrap();
        for s in stuck {
            wait(s).unwrap();
        }
        assert_eq!(
            told,
            [(1, Err(true)), (2, Err(true))],
            "{kind}: the callers behind a blocking drop were not told"
        );
        assert!(
            !returned_while_blocked,
            "{kind}: returned before the input was dropped"
        );
        assert_eq!(shut.map_err(|e| e.running()), Err(1), "{kind}");
        assert!(wait(first).unwrap_err().is_shut_down(), "{kind}");
    }
}

/// In a thread's stop hook, `shutdown_timeout` cannot wait for that thread: it returns the
/// error at once, even with no limit, and the pool still shuts down.
#[test]
fn shutdown_timeout_in_a_stop_hook_returns_the_error_at_once() {
    let pool_of_hook = Arc::new(std::sync::OnceLock::<WorkerPool>::new());
    let (tx, rx) = mpsc::channel();
    let (of_hook, tx) = (Arc::clone(&pool_of_hook), Mutex::new(tx));
    let pool = WorkerPool::builder()
        .threads(2)
        .on_thread_stop(move |_| {
            if let Some(pool) = of_hook.get() {
                let got = pool.shutdown_timeout(Duration::MAX);
                let _ = tx.lock().unwrap().send(got.is_err());
            }
        })
        .build()
        .unwrap();
    assert!(pool_of_hook.set(pool.clone()).is_ok());
    assert_eq!(wait(pool.spawn(|| 5)), Ok(5));
    let closer = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.shutdown_timeout(HANG))
    };
    for _ in 0..2 {
        assert_eq!(
            rx.recv_timeout(HANG),
            Ok(true),
            "a stop hook's shutdown_timeout"
        );
    }
    assert_eq!(closer.join().unwrap(), Ok(()));
    assert_eq!(pool.stats().live_threads, 0);
}
