//! Every number at its extreme: `Duration::MAX` means "no limit", thread counts above
//! `WorkerPool::MAX_THREADS` are refused (not attempted until the OS gives out), a thread name
//! the OS cannot take is an error, an unusable `async_max_workers` fails the call instead of
//! resizing the default pool, and `usize::MAX` or an empty input are ordinary values.

mod common;

use std::future::{Future, IntoFuture};
use std::panic::catch_unwind;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::Context;
use std::thread;
use std::time::Duration;

use asyncify_pool::settings::{self, Overrides, SettingsError};
use asyncify_pool::{asyncify, default_pool, JobError, PoolError, WorkerPool};
use common::{in_child, wait, within_hang, CountingWaker, Gate, HANG};

// --- Duration::MAX ----------------------------------------------------------------------------

#[test]
fn wait_timeout_of_duration_max_waits_without_limit() {
    let pool = WorkerPool::new(1);
    let go = Gate::new();
    let g = go.clone();
    let mut handle = pool.spawn(move || {
        g.wait();
        "waited"
    });
    let opener = thread::spawn(move || go.open());
    assert_eq!(handle.wait_timeout(Duration::MAX), Some(Ok("waited")));
    opener.join().unwrap();

    // Inside a job too, where the waiting worker runs the job itself.
    let inner = pool.clone();
    let mut outer = pool.spawn(move || inner.spawn(|| 3).wait_timeout(Duration::MAX));
    assert_eq!(outer.wait_timeout(HANG), Some(Ok(Some(Ok(3)))));
}

#[test]
fn shutdown_timeout_of_duration_max_drains_and_returns_ok() {
    let pool = WorkerPool::new(2);
    let queued: Vec<_> = (0..20u32).map(|i| pool.spawn(move || i * 3)).collect();
    let p = pool.clone();
    let drained = within_hang("shutdown_timeout(MAX)", move || {
        p.shutdown_timeout(Duration::MAX)
    });
    assert_eq!(drained, Ok(()));
    let results: Vec<_> = queued.into_iter().map(|h| wait(h).unwrap()).collect();
    assert_eq!(results, (0..20).map(|i| i * 3).collect::<Vec<_>>());
    assert_eq!(pool.stats().live_threads, 0);
    assert!(pool.is_shut_down());
}

#[test]
fn stragglers_with_a_timeout_of_duration_max_make_no_copies() {
    let pool = WorkerPool::new(2);
    let runs: Arc<Vec<AtomicUsize>> = Arc::new((0..4).map(|_| AtomicUsize::new(0)).collect());
    let (started0, go) = (Gate::new(), Gate::new());
    let program = {
        let (runs, started0, go) = (runs.clone(), started0.clone(), go.clone());
        pool.asyncify(move |x: usize| {
            runs[x].fetch_add(1, SeqCst);
            if x == 0 {
                started0.open();
                go.wait();
            }
            x * 10
        })
    };
    let mut batch = program
        .batch(0..4)
        .stragglers(Duration::MAX, 4)
        .into_future();
    let (_counter, waker) = CountingWaker::new();
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut batch).poll(&mut cx).is_pending());
    // Item 0 is running (its start is reported), every item is submitted and at most 4 are
    // left: the next poll looks for stragglers, and with no time limit finds none.
    started0.wait();
    assert!(Pin::new(&mut batch).poll(&mut cx).is_pending());
    go.open();
    let result = within_hang("the batch", move || pollster::block_on(batch));
    assert_eq!(result.results(), [Ok(0), Ok(10), Ok(20), Ok(30)]);
    let runs: Vec<_> = runs.iter().map(|r| r.load(SeqCst)).collect();
    assert_eq!(runs, [1, 1, 1, 1], "copies were made");
}

// --- thread counts ----------------------------------------------------------------------------

#[test]
fn thread_counts_above_max_threads_are_refused() {
    let max = WorkerPool::MAX_THREADS;
    assert_eq!(max, 1024);
    for requested in [max + 1, usize::MAX] {
        match WorkerPool::builder().threads(requested).build() {
            Err(PoolError::TooManyThreads {
                requested: r,
                max: m,
                ..
            }) => {
                assert_eq!((r, m), (requested, max))
            }
            other => panic!("builder().threads({requested}): {other:?}"),
        }
    }

    let pool = WorkerPool::new(2);
    for requested in [max + 1, usize::MAX] {
        match pool.set_threads(requested) {
            Err(PoolError::TooManyThreads {
                requested: r,
                max: m,
                ..
            }) => {
                assert_eq!((r, m), (requested, max))
            }
            other => panic!("set_threads({requested}): {other:?}"),
        }
    }
    assert_eq!(pool.threads(), 2, "a refused resize changes nothing");
    assert_eq!(pool.stats().live_threads, 2);
    assert_eq!(wait(pool.spawn(|| "still works")), Ok("still works"));

    let panicked = catch_unwind(|| WorkerPool::new(max + 1)).expect_err("new(MAX_THREADS + 1)");
    let message = panicked
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panicked.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        message.contains("MAX_THREADS") || message.contains("at most"),
        "{message}"
    );
}

/// A stack size below the pool's minimum (0, 1 byte, a page) is raised to it: the pool builds,
/// and nested waits on it, however deep, neither overflow nor abort. Below the OS's own
/// minimum the size the half-stack check used was not the stack the thread had, every nested
/// wait went to a spare thread on a stack too small for the hand-off, and one aborted.
#[test]
fn a_stack_size_of_zero_is_raised_to_the_minimum_and_survives_nested_waits() {
    in_child(
        "a_stack_size_of_zero_is_raised_to_the_minimum_and_survives_nested_waits",
        || {
            for stack in [0, 1, 4096] {
                let pool = WorkerPool::builder()
                    .threads(1)
                    .stack_size(stack)
                    .build()
                    .expect("a tiny stack size is raised, not refused");
                assert_eq!(wait(pool.spawn(|| 1)), Ok(1), "a plain job, stack {stack}");
                let inner = pool.clone();
                let nested = pool.spawn(move || inner.spawn(|| 2).wait());
                assert_eq!(wait(nested), Ok(Ok(2)), "one nested wait, stack {stack}");
                assert_eq!(common::depth(pool.clone(), 500), 500, "stack {stack}");
                pool.shutdown();
            }
        },
    );
}

#[test]
fn a_thread_name_with_a_nul_is_an_error() {
    let built = catch_unwind(|| WorkerPool::builder().threads(1).thread_name("a\0b").build());
    match built {
        Ok(Err(PoolError::InvalidThreadName { .. })) => {}
        Ok(other) => panic!("thread_name(\"a\\0b\"): {other:?}"),
        Err(_) => panic!("thread_name(\"a\\0b\"): build() panicked"),
    }
}

// --- async_max_workers ------------------------------------------------------------------------

#[test]
fn an_unusable_async_max_workers_fails_the_call_and_keeps_the_default_pool() {
    in_child(
        "an_unusable_async_max_workers_fails_the_call_and_keeps_the_default_pool",
        || {
            let program = asyncify(|x: u32| x + 1);
            assert_eq!(wait(program.call(1)), Ok(2));
            let threads = default_pool().threads();
            let live = default_pool().stats().live_threads;
            let unusable = [
                Overrides::new().with("async_max_workers", 0usize),
                Overrides::new().with("async_max_workers", "eight"),
                Overrides::new().with("async_max_workers", 8u32),
                Overrides::new().with("async_max_workers", WorkerPool::MAX_THREADS + 1),
                Overrides::new().with("async_max_workers", usize::MAX),
            ];
            for overrides in unusable {
                let what = format!(
                    "{overrides:?} = {:?}",
                    overrides.get::<usize>("async_max_workers")
                );
                let handle = settings::context(overrides, || program.call(1));
                let err = wait(handle).expect_err(&what);
                assert!(err.is_invalid_setting(), "{what}: {err:?}");
                assert!(matches!(err, JobError::InvalidSetting { .. }), "{what}");
                assert_eq!(default_pool().threads(), threads, "{what}");
                assert_eq!(default_pool().stats().live_threads, live, "{what}");
            }
            // A usable value still resizes the default pool.
            let handle =
                settings::context(Overrides::new().with("async_max_workers", 3usize), || {
                    program.call(1)
                });
            assert_eq!(wait(handle), Ok(2));
            assert_eq!(default_pool().threads(), 3);
        },
    );
}

#[test]
fn configure_refuses_async_max_workers_above_max_threads() {
    in_child(
        "configure_refuses_async_max_workers_above_max_threads",
        || {
            for n in [WorkerPool::MAX_THREADS + 1, usize::MAX] {
                let refused = settings::configure(Overrides::new().with("async_max_workers", n));
                assert!(
                    matches!(refused, Err(SettingsError::InvalidValue { .. })),
                    "configure(async_max_workers = {n}): {refused:?}"
                );
                assert_eq!(settings::get::<usize>("async_max_workers"), Some(8));
            }
            let max = WorkerPool::MAX_THREADS;
            assert_eq!(
                settings::configure(Overrides::new().with("async_max_workers", max)),
                Ok(())
            );
        },
    );
}

// --- usize::MAX and nothing at all ------------------------------------------------------------

#[test]
fn a_queue_capacity_of_usize_max() {
    let pool = WorkerPool::builder()
        .threads(2)
        .queue_capacity(usize::MAX)
        .build()
        .unwrap();
    let handles: Vec<_> = (0..200u32).map(|i| pool.spawn(move || i)).collect();
    assert!(handles.iter().all(|h| !h.is_waiting_for_room()));
    let tried = pool.try_spawn(|| 7).expect("room in a queue of usize::MAX");
    for (i, h) in (0..200u32).zip(handles) {
        assert_eq!(wait(h), Ok(i));
    }
    assert_eq!(wait(tried), Ok(7));
    let p = pool.clone();
    within_hang("shutdown", move || p.shutdown());
    assert_eq!(pool.stats().completed, 201);
}

#[test]
fn batch_concurrency_and_max_errors_of_usize_max() {
    let pool = WorkerPool::new(2);
    let program = pool.asyncify(|x: u32| x);
    let result = within_hang("the batch", move || {
        program
            .batch(0..50)
            .concurrency(usize::MAX)
            .max_errors(usize::MAX)
            .fail_if(|x| x % 2 == 0)
            .wait()
    });
    assert_eq!(
        (result.done(), result.failed(), result.not_started()),
        (25, 25, 0)
    );
    assert!(!result.is_stopped());
    assert_eq!(result.results()[49], Ok(49));
}

#[test]
fn an_empty_batch_completes_every_way() {
    let pool = WorkerPool::new(1);
    let program = pool.asyncify(|x: u32| x);

    let p = program.clone();
    let waited = within_hang("wait", move || p.batch(Vec::<u32>::new()).wait());
    assert_eq!(
        (waited.total(), waited.done(), waited.results().len()),
        (0, 0, 0)
    );
    assert!(!waited.is_stopped());

    let p = program.clone();
    let awaited = within_hang(".await", move || {
        pollster::block_on(p.batch(Vec::<u32>::new()).into_future())
    });
    assert_eq!((awaited.total(), awaited.results().len()), (0, 0));

    let p = program.clone();
    within_hang("completions()", move || {
        let mut items = p.batch(Vec::<u32>::new()).completions().into_iter();
        assert!(items.next().is_none());
        assert_eq!(items.get_ref().progress().total, 0);
    });

    within_hang("completions() as a stream", move || {
        let mut stream = program.batch(Vec::<u32>::new()).completions();
        assert!(pollster::block_on(futures::StreamExt::next(&mut stream)).is_none());
    });
    assert_eq!(pool.stats().completed, 0);
}
