//! A `JobHandle` is a plain future woken by the worker: the same awaited call works on tokio
//! (current-thread and multi-thread), smol's executor, `futures::executor`, pollster, and on a plain
//! thread with `wait()`.
//!
//! Every scenario makes the first call provably pending when it is first polled (its job waits
//! for a gate the test opens only after that poll), so the result can only arrive through the
//! worker waking the executor's waker, not by luck of timing.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};

use asyncify_pool::settings::{self, Overrides};
use asyncify_pool::WorkerPool;
use common::{within_hang, Gate};

const CALLS: u32 = 8;

/// Polls the inner future exactly once and reports what it said.
struct PollOnce<'a, F>(&'a mut F);

impl<F: Future + Unpin> Future for PollOnce<'_, F> {
    type Output = Poll<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Pin::new(&mut *self.0).poll(cx))
    }
}

/// `CALLS` calls made under an override naming the executor, awaited together. Call 0 is held
/// at a gate until it has been polled once and found pending.
async fn scenario(pool: WorkerPool, executor: &'static str) -> Vec<String> {
    let gate = Gate::new();
    let held = gate.clone();
    let program = pool.asyncify(move |i: u32| {
        if i == 0 {
            held.wait();
        }
        let seen = settings::get::<&str>("executor").unwrap_or("none");
        format!("{seen}:{i}")
    });
    let mut handles: Vec<_> =
        settings::context(Overrides::new().with("executor", executor), || {
            (0..CALLS).map(|i| program.call(i)).collect()
        });
    let first = PollOnce(&mut handles[0]).await;
    assert!(first.is_pending(), "call 0 waits for the gate");
    gate.open();
    futures::future::join_all(handles)
        .await
        .into_iter()
        .map(|r| r.expect("the call succeeds"))
        .collect()
}

fn expected(executor: &str) -> Vec<String> {
    (0..CALLS).map(|i| format!("{executor}:{i}")).collect()
}

#[test]
fn tokio_current_thread() {
    let pool = WorkerPool::new(2);
    let out = within_hang("the executor", move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // Awaited directly by `block_on`, and from a spawned task on the same runtime.
        let direct = rt.block_on(scenario(pool.clone(), "tokio-ct"));
        let spawned = rt
            .block_on(async move { tokio::spawn(scenario(pool, "tokio-ct-task")).await.unwrap() });
        (direct, spawned)
    });
    assert_eq!(out.0, expected("tokio-ct"));
    assert_eq!(out.1, expected("tokio-ct-task"));
}

#[test]
fn tokio_multi_thread() {
    let pool = WorkerPool::new(2);
    let out = within_hang("the executor", move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async move {
            let names = ["mt-a", "mt-b", "mt-c", "mt-d"];
            let tasks: Vec<_> = names
                .iter()
                .map(|&name| tokio::spawn(scenario(pool.clone(), name)))
                .collect();
            let mut out = Vec::new();
            for task in tasks {
                out.push(task.await.unwrap());
            }
            out
        })
    });
    for (got, name) in out.iter().zip(["mt-a", "mt-b", "mt-c", "mt-d"]) {
        assert_eq!(got, &expected(name));
    }
}

/// smol's executor (`async-executor`) and `block_on` (`futures-lite`), the pieces `smol::spawn`
/// and `smol::block_on` are made of.
#[test]
fn smol() {
    let pool = WorkerPool::new(2);
    let out = within_hang("the executor", move || {
        let direct = futures_lite::future::block_on(scenario(pool.clone(), "smol"));
        let executor = async_executor::Executor::new();
        let task = executor.spawn(scenario(pool, "smol-task"));
        let spawned = futures_lite::future::block_on(executor.run(task));
        (direct, spawned)
    });
    assert_eq!(out.0, expected("smol"));
    assert_eq!(out.1, expected("smol-task"));
}

#[test]
fn futures_executor() {
    let pool = WorkerPool::new(2);
    let out = within_hang("the executor", move || {
        futures::executor::block_on(scenario(pool, "futures"))
    });
    assert_eq!(out, expected("futures"));
}

#[test]
fn pollster() {
    let pool = WorkerPool::new(2);
    let out = within_hang("the executor", move || {
        pollster::block_on(scenario(pool, "pollster"))
    });
    assert_eq!(out, expected("pollster"));
}

#[test]
fn plain_thread_with_wait() {
    let pool = WorkerPool::new(2);
    let out = within_hang("the executor", move || {
        let gate = Gate::new();
        let held = gate.clone();
        let program = pool.asyncify(move |i: u32| {
            if i == 0 {
                held.wait();
            }
            format!(
                "{}:{i}",
                settings::get::<&str>("executor").unwrap_or("none")
            )
        });
        let mut handles: Vec<_> =
            settings::context(Overrides::new().with("executor", "thread"), || {
                (0..CALLS).map(|i| program.call(i)).collect()
            });
        // A bounded wait on the held call gives up and keeps the handle; then `wait` blocks
        // this thread until the worker unparks it.
        assert_eq!(handles[0].wait_timeout(std::time::Duration::ZERO), None);
        gate.open();
        handles
            .into_iter()
            .map(|h| h.wait().expect("the call succeeds"))
            .collect::<Vec<_>>()
    });
    assert_eq!(out, expected("thread"));
}

#[test]
fn handles_and_programs_can_go_anywhere_and_the_program_is_held_once() {
    fn send_sync_clone<T: Send + Sync + Clone + 'static>(_: &T) {}
    fn send_unpin_future<F: Future + Send + Unpin + 'static>(_: &F) {}

    /// Not `Clone`: calls cannot be cloning it.
    struct Model(Arc<AtomicUsize>);
    impl Drop for Model {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    let dropped = Arc::new(AtomicUsize::new(0));
    let pool = WorkerPool::new(2);
    send_sync_clone(&pool);
    let model = Model(dropped.clone());
    let program = pool.asyncify(move |x: u32| {
        let _ = &model;
        x + 1
    });
    send_sync_clone(&program);
    let handle = program.call(1);
    send_unpin_future(&handle);
    let copies: Vec<_> = (0..4).map(|_| program.clone()).collect();
    let results: Vec<_> = copies.iter().map(|p| p.call(2)).collect();
    assert_eq!(within_hang("the executor", move || handle.wait()), Ok(2));
    for r in results {
        assert_eq!(common::wait(r), Ok(3));
    }
    drop(copies);
    assert_eq!(dropped.load(SeqCst), 0, "still held by `program`");
    drop(program);
    assert_eq!(dropped.load(SeqCst), 1, "one program, dropped once");
}
