//! Bad input and misuse: each gives a clear error or a documented panic, and the pool lives on.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use asyncify_pool::settings::{self, Overrides, SettingsError};
use asyncify_pool::{JobError, PoolError, WorkerPool};
use common::{in_child, quiet_planned_panics, wait, PoisonPayload, HANG};

#[test]
#[should_panic(expected = "WorkerPool::new(0): a pool needs at least one thread")]
fn zero_threads_is_a_documented_panic() {
    let _ = WorkerPool::new(0);
}

#[test]
fn zero_threads_in_the_builder_means_one_per_cpu() {
    let pool = WorkerPool::builder().threads(0).build().unwrap();
    assert_eq!(pool.threads(), num_cpus::get());
    assert_eq!(wait(pool.spawn(|| 1)), Ok(1));
}

#[test]
fn set_threads_zero_is_an_error_and_changes_nothing() {
    let pool = WorkerPool::new(3);
    let err = pool.set_threads(0).unwrap_err();
    assert!(matches!(err, PoolError::ZeroThreads));
    assert_eq!(err.to_string(), "a worker pool needs at least one thread");
    assert_eq!(pool.threads(), 3);
    assert_eq!(pool.stats().threads, 3);
    assert_eq!(wait(pool.spawn(|| "still works")), Ok("still works"));

    pool.shutdown();
    assert!(matches!(pool.set_threads(0), Err(PoolError::ZeroThreads)));
    assert!(matches!(pool.set_threads(2), Err(PoolError::ShutDown)));
}

#[test]
fn shutdown_twice_and_from_several_threads_at_once() {
    let pool = WorkerPool::new(2);
    let queued: Vec<_> = (0..200u32).map(|i| pool.spawn(move || i * 2)).collect();
    let closers: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            std::thread::spawn(move || pool.shutdown())
        })
        .collect();
    pool.shutdown();
    for closer in closers {
        closer.join().unwrap();
    }
    pool.shutdown();
    assert_eq!(pool.shutdown_timeout(Duration::ZERO), Ok(()));
    assert!(pool.is_shut_down());

    // Everything accepted before the first shutdown ran, exactly once, in order of results.
    let results: Vec<_> = queued.into_iter().map(|h| wait(h).unwrap()).collect();
    assert_eq!(results, (0..200).map(|i| i * 2).collect::<Vec<_>>());
    let err = wait(pool.spawn(|| ())).unwrap_err();
    assert!(err.is_shut_down(), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the pool was shut down before the job could run"
    );
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.queued, stats.running), (200, 0, 0));
    assert_eq!(stats.live_threads, 0);
}

#[test]
fn shutdown_from_inside_a_job_closes_without_deadlock() {
    // One thread: the worst case, the job that shuts down is the only worker.
    let pool = WorkerPool::new(1);
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let inner = pool.clone();
    let closer = pool.spawn(move || {
        go_rx.recv_timeout(HANG).expect("the test never said go");
        inner.shutdown();
        let again = inner.shutdown_timeout(Duration::ZERO);
        let refused = inner.spawn(|| ()).wait();
        (inner.is_shut_down(), again, refused)
    });
    // Accepted before the shutdown: they must still run.
    let behind: Vec<_> = (0..20u32).map(|i| pool.spawn(move || i)).collect();
    go_tx.send(()).unwrap();

    let (closed, again, refused) = wait(closer).unwrap();
    assert!(closed);
    // A thread of the pool cannot wait for itself: not every thread has left, and
    // `shutdown_timeout` says so at once (this job's own place and thread).
    let again = again.map_err(|e| {
        (
            e.running(),
            e.threads(),
            e.called_on_pool_thread(),
            e.to_string(),
        )
    });
    assert_eq!(
        again,
        Err((
            1,
            1,
            true,
            "shutdown cannot wait on a thread of the pool itself: 1 job(s) still running on 1 \
             thread(s)"
                .to_owned()
        )),
        "shutdown_timeout inside a job returns the error at once"
    );
    assert!(refused.unwrap_err().is_shut_down());
    let results: Vec<_> = behind.into_iter().map(|h| wait(h).unwrap()).collect();
    assert_eq!(results, (0..20).collect::<Vec<_>>());

    // From outside, shutdown joins the worker the job could not join.
    pool.shutdown();
    assert_eq!(pool.stats().live_threads, 0);
    assert!(wait(pool.spawn(|| ())).unwrap_err().is_shut_down());
}

#[test]
fn dropping_the_last_pool_handle_inside_a_job() {
    let pool = WorkerPool::new(1);
    let (tx, rx) = mpsc::channel::<()>();
    let inner = pool.clone();
    let handle = pool.spawn(move || {
        rx.recv_timeout(HANG).expect("the test never said go");
        drop(inner); // the last `WorkerPool`: the pool closes from its own worker
        "dropped"
    });
    let queued = pool.spawn(|| "queued before the close");
    drop(pool);
    tx.send(()).unwrap();
    assert_eq!(wait(handle), Ok("dropped"));
    assert_eq!(wait(queued), Ok("queued before the close"));
}

#[test]
fn non_string_panic_payloads_and_panicking_destructors() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let worker = wait(pool.spawn(|| std::thread::current().id())).unwrap();

    // A payload that is not a string.
    let err = wait(pool.spawn(|| -> u8 { std::panic::panic_any(42u32) })).unwrap_err();
    let JobError::Panicked { message, .. } = &err else {
        panic!("expected Panicked, got {err:?}");
    };
    assert!(message.contains("not a string"), "{message}");
    assert!(err.to_string().starts_with("the job panicked"), "{err}");

    // A `String` payload keeps its text.
    let err = wait(pool.spawn(|| -> u8 { panic!("planned: {}", 7) })).unwrap_err();
    assert!(
        matches!(&err, JobError::Panicked { message, .. } if message == "planned: 7"),
        "{err:?}"
    );

    // A payload whose destructor panics too: the worker drops it without dying.
    let err = wait(pool.spawn(|| -> u8 { std::panic::panic_any(PoisonPayload) })).unwrap_err();
    assert!(err.is_panic(), "{err:?}");

    // An output whose destructor panics, thrown away because its caller left while it ran.
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let abandoned = pool.spawn(move || {
        started_tx.send(()).unwrap();
        go_rx.recv_timeout(HANG).expect("the test never said go");
        PoisonPayload
    });
    started_rx.recv_timeout(HANG).unwrap();
    drop(abandoned);
    go_tx.send(()).unwrap();

    // The one worker survived all of it, and is the same thread.
    assert_eq!(wait(pool.spawn(|| std::thread::current().id())), Ok(worker));
    let stats = pool.stats();
    assert_eq!((stats.panicked, stats.live_threads), (3, 1));
    assert_eq!(
        (stats.completed, stats.abandoned),
        (2, 1),
        "two probes, and the job whose caller left"
    );
}

#[test]
fn a_job_that_never_returns_blocks_only_its_own_thread() {
    let (stopped_tx, stopped_rx) = mpsc::channel();
    let pool = WorkerPool::builder()
        .threads(2)
        .on_thread_stop(move |i| {
            let _ = stopped_tx.send(i);
        })
        .build()
        .unwrap();

    // The stuck job waits on a channel nobody sends to until the very end of the test.
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel();
    let stuck = pool.spawn(move || {
        started_tx.send(std::thread::current().id()).unwrap();
        release_rx
            .recv_timeout(HANG)
            .expect("the test never released the job");
        "released"
    });
    let stuck_thread = started_rx.recv_timeout(HANG).unwrap();

    // The others still run, all on the other thread.
    let others: Vec<_> = (0..200u32)
        .map(|i| pool.spawn(move || (i, std::thread::current().id())))
        .collect();
    for (i, h) in others.into_iter().enumerate() {
        let (n, thread) = wait(h).unwrap();
        assert_eq!(n as usize, i);
        assert_ne!(thread, stuck_thread);
    }

    // Shrink to one thread: the free worker retires, the stuck one holds the only permit.
    pool.set_threads(1).unwrap();
    stopped_rx
        .recv_timeout(HANG)
        .expect("the free worker never retired");
    let ran = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (0..10)
        .map(|_| {
            let ran = Arc::clone(&ran);
            pool.spawn(move || ran.fetch_add(1, SeqCst))
        })
        .collect();
    assert_eq!(pool.stats().queued, 10);

    let err = pool
        .shutdown_timeout(Duration::from_millis(50))
        .unwrap_err();
    assert_eq!((err.running(), err.threads()), (1, 1));
    assert!(!err.called_on_pool_thread(), "time ran out");
    assert_eq!(
        err.to_string(),
        "shutdown timed out with 1 job(s) still running on 1 thread(s)"
    );
    assert!(pool.is_shut_down());
    assert!(wait(pool.spawn(|| 0)).unwrap_err().is_shut_down());

    // The jobs still queued when the time ran out will not run, and their callers are told
    // `ShutDown` now, while the stuck job still holds its thread.
    for h in queued {
        let err = wait(h).unwrap_err();
        assert!(err.is_shut_down(), "{err:?}");
    }
    assert_eq!(pool.stats().queued, 0);

    // Release the stuck job: it delivers its result, and nothing queued ran after it.
    release_tx.send(()).unwrap();
    assert_eq!(wait(stuck), Ok("released"));
    pool.shutdown();
    assert_eq!(
        ran.load(SeqCst),
        0,
        "a queued job ran after shutdown_timeout"
    );
    assert_eq!(pool.stats().live_threads, 0);
}

#[test]
fn a_huge_input_is_moved_not_copied() {
    const LEN: usize = 64 << 20;
    let pool = WorkerPool::new(2);
    let program = pool.asyncify(|v: Vec<u8>| (v.as_ptr() as usize, v.len(), v[LEN - 1], v));
    let mut input = vec![0u8; LEN];
    input[LEN - 1] = 0xAB;
    let address = input.as_ptr() as usize;
    let (seen_address, len, last, back) = wait(program.call(input)).unwrap();
    assert_eq!((len, last), (LEN, 0xAB));
    assert_eq!(
        seen_address, address,
        "the input reached the worker without a copy"
    );
    assert_eq!(back.as_ptr() as usize, address, "and came back without one");
}

#[test]
fn settings_get_with_the_wrong_type() {
    let o = Overrides::new().with("misuse.n", 5u32);
    settings::context(o, || {
        assert_eq!(settings::get::<u32>("misuse.n"), Some(5));
        assert_eq!(settings::get::<String>("misuse.n"), None);
        let err = settings::try_get::<String>("misuse.n").unwrap_err();
        assert_eq!(
            err,
            SettingsError::WrongType {
                key: "misuse.n".to_owned(),
                expected: std::any::type_name::<String>(),
                found: "u32",
            }
        );
        assert_eq!(
            err.to_string(),
            "setting `misuse.n` holds a `u32`, not the `alloc::string::String` asked for"
        );
        // Inside a job, the same answers.
        let pool = WorkerPool::new(1);
        let seen = pool
            .spawn(|| {
                (
                    settings::get::<u32>("misuse.n"),
                    settings::get::<i64>("misuse.n"),
                    settings::try_get::<i64>("misuse.n").is_err(),
                )
            })
            .wait();
        assert_eq!(seen, Ok((Some(5), None, true)));
    });
    assert_eq!(settings::try_get::<u32>("misuse.n"), Ok(None));

    // The library's own settings refuse a value of another type, and nothing changes.
    let err = settings::configure(Overrides::new().with("async_max_workers", 4u32)).unwrap_err();
    assert!(
        matches!(err, SettingsError::WrongType { found: "u32", .. }),
        "{err:?}"
    );
    assert_eq!(settings::get::<usize>("async_max_workers"), Some(8));
}

#[test]
fn configure_from_inside_a_job_is_refused() {
    let pool = WorkerPool::new(1);
    let inner = pool.clone();
    let (outer, nested) = pool
        .spawn(move || {
            let outer = settings::configure(Overrides::new().with("misuse.global", 1u8));
            // Also from a job that a waiting worker runs on its own stack.
            let nested = inner
                .spawn(|| settings::configure(Overrides::new().with("misuse.global", 2u8)))
                .wait()
                .unwrap();
            (outer, nested)
        })
        .wait()
        .unwrap();
    assert_eq!(outer, Err(SettingsError::InsideJob));
    assert_eq!(nested, Err(SettingsError::InsideJob));
    assert!(SettingsError::InsideJob
        .to_string()
        .contains("use settings::context"));
    assert_eq!(
        settings::get::<u8>("misuse.global"),
        None,
        "nothing was configured"
    );

    // Outside jobs it works, and a job sees it.
    settings::configure(Overrides::new().with("misuse.global", 3u8)).unwrap();
    assert_eq!(
        pool.spawn(|| settings::get::<u8>("misuse.global")).wait(),
        Ok(Some(3))
    );
}

#[test]
#[should_panic(expected = "JobHandle polled after it returned its result")]
fn polling_a_handle_after_its_result_panics_clearly() {
    use std::future::Future;
    use std::task::Context;

    let pool = WorkerPool::new(1);
    let mut handle = pool.spawn(|| 1);
    assert_eq!(handle.wait_timeout(HANG), Some(Ok(1)));
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    let _ = std::pin::Pin::new(&mut handle).poll(&mut cx);
}

// --- calls from a thread-local's destructor ----------------------------------------------------

/// Makes a call and waits on it when dropped, and sends what it got.
struct CallsOnExit(mpsc::Sender<Result<u32, JobError>>, WorkerPool);

impl Drop for CallsOnExit {
    fn drop(&mut self) {
        let out = self.1.spawn(|| 3u32).wait();
        let _ = self.0.send(out);
    }
}

/// What a thread-local's destructor read of the library, and a handle it polled.
type ReadOnExit = (
    Option<usize>,
    bool,
    bool,
    Option<usize>,
    Option<Result<u32, JobError>>,
);

/// Reads a setting, the overrides in force, `is_cancelled` and `worker_index` when dropped, and
/// polls a handle by hand, as an executor would (futures' `block_on` keeps a thread-local of
/// its own, which a destructor cannot use).
struct ReadsOnExit(mpsc::Sender<ReadOnExit>, WorkerPool);

impl Drop for ReadsOnExit {
    fn drop(&mut self) {
        use std::future::Future;
        use std::task::{Context, Poll};
        let setting = settings::get::<usize>("async_max_workers");
        let nothing_in_force = settings::current().is_empty();
        let cancelled = asyncify_pool::is_cancelled();
        let index = asyncify_pool::worker_index();
        let mut handle = self.1.spawn(|| 4u32);
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let deadline = std::time::Instant::now() + HANG;
        let polled = loop {
            if let Poll::Ready(out) = std::pin::Pin::new(&mut handle).poll(&mut cx) {
                break Some(out);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let _ = self
            .0
            .send((setting, nothing_in_force, cancelled, index, polled));
    }
}

thread_local! {
    static CALLS_ON_EXIT: std::cell::RefCell<Option<CallsOnExit>> =
        const { std::cell::RefCell::new(None) };
    static READS_ON_EXIT: std::cell::RefCell<Option<ReadsOnExit>> =
        const { std::cell::RefCell::new(None) };
}

/// A call and its wait made from a thread-local's destructor, after the library's own
/// thread-locals on that thread are gone, get their answer. Reading them with `with` there
/// aborted the process ("cannot access a Thread Local Storage value during or after
/// destruction"); now that is nothing in force, not a worker, and a fresh waker.
#[test]
fn a_call_from_a_thread_local_destructor_gets_its_answer() {
    in_child(
        "a_call_from_a_thread_local_destructor_gets_its_answer",
        || {
            let pool = WorkerPool::new(1);
            let (tx, rx) = mpsc::channel();
            let p = pool.clone();
            std::thread::spawn(move || {
                // The user's thread-local first, then a first call, which sets up the
                // library's: those are destroyed first, as the thread exits.
                CALLS_ON_EXIT.with(|e| *e.borrow_mut() = Some(CallsOnExit(tx, p.clone())));
                assert_eq!(p.spawn(|| 1u32).wait(), Ok(1));
            })
            .join()
            .unwrap();
            assert_eq!(rx.recv_timeout(HANG), Ok(Ok(3)));
        },
    );
}

/// The same for a settings read and an async poll of a handle from a thread-local's
/// destructor: the global value (nothing is in force there), no job, no worker, and the
/// handle's answer.
#[test]
fn settings_reads_and_a_poll_from_a_thread_local_destructor_get_their_answers() {
    in_child(
        "settings_reads_and_a_poll_from_a_thread_local_destructor_get_their_answers",
        || {
            let pool = WorkerPool::new(1);
            let (tx, rx) = mpsc::channel();
            let p = pool.clone();
            std::thread::spawn(move || {
                READS_ON_EXIT.with(|e| *e.borrow_mut() = Some(ReadsOnExit(tx, p.clone())));
                // Sets up the library's thread-locals on this thread after the user's.
                settings::context(Overrides::new().with("misuse.tls", 1u8), || {
                    assert_eq!(settings::get::<u8>("misuse.tls"), Some(1));
                    assert_eq!(p.spawn(|| 1u32).wait(), Ok(1));
                });
            })
            .join()
            .unwrap();
            let read = rx
                .recv_timeout(HANG)
                .expect("the destructor sent what it read");
            assert_eq!(read, (Some(8), true, false, None, Some(Ok(4))));
        },
    );
}

/// A `max_errors` of another type in force at `batch()` (an `i32` through the string key, the
/// mistake `configure` refuses for it) makes every item fail with `InvalidSetting`, as an
/// unusable `async_max_workers` does for a call; a budget set on the batch takes its place.
/// Before, the batch ran with 10, neither the override nor the configured value. (In a child:
/// it configures the process.)
#[test]
fn a_mistyped_max_errors_in_a_context_fails_the_batch_with_invalid_setting() {
    in_child(
        "a_mistyped_max_errors_in_a_context_fails_the_batch_with_invalid_setting",
        || {
            settings::configure(Overrides::new().with(&settings::MAX_ERRORS, 1)).unwrap();
            let pool = WorkerPool::new(1);
            let fail = pool.asyncify(|_: u32| ());
            let wrong = || Overrides::new().with("max_errors", 0i32);
            let batch = settings::context(wrong(), || fail.batch(0..20).fail_if(|_| true));
            let result = batch.wait();
            assert_eq!(
                (result.done(), result.failed(), result.not_started()),
                (0, 0, 20)
            );
            assert!(result
                .results()
                .iter()
                .all(|r| r.as_ref().is_err_and(JobError::is_invalid_setting)));
            let batch = settings::context(wrong(), || {
                fail.batch(0..20)
                    .fail_if(|_| true)
                    .max_errors(2)
                    .concurrency(1)
            });
            let result = batch.wait();
            assert_eq!((result.failed(), result.not_started()), (3, 17));
        },
    );
}
