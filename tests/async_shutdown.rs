//! `WorkerPool::shutdown_async`: the pool closes at once, the future resolves when its threads
//! are gone, and the executor that awaits it is never blocked.

mod common;

use std::sync::Arc;
use std::task::Context;

use asyncify_pool::WorkerPool;
use common::{quiet_planned_panics, spin_until, wait, within_hang, Gate};

/// The attack a blocking shutdown fails: the pool's last job waits for a message that another
/// task on the *same* single-threaded executor sends. A `shutdown()` there would block the
/// executor, the message would never be sent, and the pool would never finish.
#[test]
fn it_does_not_block_the_executor_it_is_awaited_on() {
    let pool = WorkerPool::new(1);
    let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
    let job = pool.spawn(move || rx.blocking_recv().unwrap() * 2);
    let out = within_hang("shutdown_async on a current-thread runtime", move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async move {
            let sender = tokio::spawn(async move {
                tokio::task::yield_now().await;
                tx.send(21).unwrap();
            });
            pool.shutdown_async().await;
            sender.await.unwrap();
            assert_eq!(pool.stats().live_threads, 0);
            job.await
        })
    });
    assert_eq!(out, Ok(42));
}

#[test]
fn it_closes_at_once_and_runs_everything_accepted() {
    let pool = WorkerPool::new(2);
    let (gate, busy) = common::occupy(&pool, 2);
    let queued: Vec<_> = (0..6u32).map(|i| pool.spawn(move || i + 100)).collect();
    let closing = pool.shutdown_async();
    assert!(pool.is_shut_down(), "closed before the future is polled");
    assert!(wait(pool.spawn(|| 0)).unwrap_err().is_shut_down());
    gate.open();
    within_hang("shutdown_async", move || pollster::block_on(closing));
    for (i, h) in queued.into_iter().enumerate() {
        assert_eq!(wait(h), Ok(i as u32 + 100));
    }
    for h in busy {
        wait(h).unwrap();
    }
    assert_eq!(pool.stats().live_threads, 0);
}

/// Several futures, polled before the end and dropped early: every one still polled resolves,
/// a dropped one leaves the pool closing in the background, and a blocking `shutdown` after it
/// still returns.
#[test]
fn several_waiters_and_an_early_drop() {
    let pool = WorkerPool::new(2);
    let (gate, _busy) = common::occupy(&pool, 2);
    let queued = pool.spawn(|| "ran after the early drop");
    let mut early = pool.shutdown_async();
    assert!(std::pin::Pin::new(&mut early)
        .poll_unpin_with(&mut Context::from_waker(std::task::Waker::noop()))
        .is_pending());
    drop(early);
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let closing = pool.shutdown_async();
            std::thread::spawn(move || pollster::block_on(closing))
        })
        .collect();
    gate.open();
    for w in waiters {
        within_hang("a shutdown_async waiter", move || w.join().unwrap());
    }
    assert_eq!(wait(queued), Ok("ran after the early drop"));
    within_hang("a blocking shutdown after the async one", move || {
        pool.shutdown()
    });
}

/// Made inside a job of the pool, it resolves at once, as `shutdown` returns at once there:
/// waiting for the threads would wait for the caller's own.
#[test]
fn inside_a_job_of_the_pool_it_resolves_at_once() {
    let pool = WorkerPool::new(1);
    let p = pool.clone();
    let inside = pool.spawn(move || pollster::block_on(p.shutdown_async()));
    assert_eq!(
        within_hang("shutdown_async inside a job", move || inside.wait()),
        Ok(())
    );
    spin_until("the pool's threads to leave", || {
        pool.stats().live_threads == 0
    });
}

/// Made off the pool but awaited inside one of its jobs: it resolves there (waiting would wait
/// for the polling worker itself), and a blocking `shutdown` elsewhere still returns.
#[test]
fn made_off_the_pool_and_awaited_inside_a_job_it_resolves() {
    let pool = WorkerPool::new(2);
    let (tx, rx) = std::sync::mpsc::channel::<asyncify_pool::ShutdownFuture>();
    let inside = pool.spawn(move || pollster::block_on(rx.recv().unwrap()));
    tx.send(pool.shutdown_async()).unwrap();
    assert_eq!(
        within_hang("the future inside the job", move || inside.wait()),
        Ok(())
    );
    within_hang("a blocking shutdown", move || pool.shutdown());
}

/// A waker that shuts the pool down (blocking) when woken: it is woken as the last thread
/// leaves, on that thread, which must not try to join itself.
#[test]
fn a_waker_that_shuts_down_again_when_woken_is_fine() {
    struct ShutsDown(WorkerPool, std::sync::mpsc::Sender<bool>);
    impl std::task::Wake for ShutsDown {
        fn wake(self: Arc<Self>) {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.0.shutdown()));
            let _ = self.1.send(ok.is_ok());
        }
    }
    let pool = WorkerPool::new(1);
    let (gate, _busy) = common::occupy(&pool, 1);
    let (tx, rx) = std::sync::mpsc::channel();
    let waker = std::task::Waker::from(Arc::new(ShutsDown(pool.clone(), tx)));
    let mut closing = pool.shutdown_async();
    assert!(std::pin::Pin::new(&mut closing)
        .poll_unpin_with(&mut Context::from_waker(&waker))
        .is_pending());
    drop(waker);
    gate.open();
    assert_eq!(
        rx.recv_timeout(common::HANG),
        Ok(true),
        "its shutdown panicked"
    );
}

/// Polled again and again with new wakers, a future keeps only its latest one, and a dropped
/// future keeps none.
#[test]
fn repolls_with_new_wakers_keep_only_the_latest() {
    struct Noop(#[allow(dead_code)] Arc<()>);
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let pool = WorkerPool::new(1);
    let (gate, _busy) = common::occupy(&pool, 1);
    let live = Arc::new(());
    let mut closing = pool.shutdown_async();
    for _ in 0..1_000 {
        let waker = std::task::Waker::from(Arc::new(Noop(Arc::clone(&live))));
        let _ = std::pin::Pin::new(&mut closing).poll_unpin_with(&mut Context::from_waker(&waker));
    }
    assert_eq!(Arc::strong_count(&live), 2, "only the latest waker is kept");
    drop(closing);
    assert_eq!(
        Arc::strong_count(&live),
        1,
        "a dropped future keeps no waker"
    );
    gate.open();
    within_hang("shutdown", move || pool.shutdown());
}

/// A waker that panics when the last thread leaves costs nothing: the thread still leaves.
#[test]
fn a_panicking_waker_is_contained() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let gate = Gate::new();
    let g = Arc::clone(&gate);
    let _busy = pool.spawn(move || g.wait());
    let mut closing = pool.shutdown_async();
    let waker = common::panicking_waker();
    assert!(std::pin::Pin::new(&mut closing)
        .poll_unpin_with(&mut Context::from_waker(&waker))
        .is_pending());
    gate.open();
    // The last thread wakes the panicking waker as it leaves, and still leaves.
    spin_until("the pool's threads to leave", || {
        pool.stats().live_threads == 0
    });
    within_hang("the shutdown future, polled again", move || {
        pollster::block_on(closing)
    });
}

/// `Pin::poll` with a given context, for the tests above.
trait PollWith {
    fn poll_unpin_with(self, cx: &mut Context<'_>) -> std::task::Poll<()>;
}

impl PollWith for std::pin::Pin<&mut asyncify_pool::ShutdownFuture> {
    fn poll_unpin_with(self, cx: &mut Context<'_>) -> std::task::Poll<()> {
        std::future::Future::poll(self, cx)
    }
}
