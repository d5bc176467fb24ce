//! The `tower` feature: a program as a `tower::Service` whose readiness is the pool's bounded
//! queue, and a layer that runs each request under overrides made from it.
#![cfg(feature = "tower")]

mod common;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

use asyncify_pool::settings::{self, Key, Overrides};
use asyncify_pool::tower::OverridesLayer;
use asyncify_pool::WorkerPool;
use common::{bounded_pool, occupy, spin_until, within_hang, CountingWaker};
use tower_layer::Layer;
use tower_service::Service;

static TENANT: Key<String> = Key::new("tenant");

/// Readiness is the queue: pending while it is full, woken when a worker frees a slot, and
/// the slot taken then is the one the call uses.
#[test]
fn poll_ready_waits_while_the_bounded_queue_is_full_and_is_woken_for_room() {
    let pool = bounded_pool(1, 1);
    let (gate, _busy) = occupy(&pool, 1);
    let filler = pool.spawn(|| "filler");
    let mut service = pool.asyncify(|x: u32| x + 1).service();
    let (counter, waker) = CountingWaker::new();
    let mut cx = Context::from_waker(&waker);
    assert!(service.poll_ready(&mut cx).is_pending());
    // Polled again while still full: still pending, and no second registration is needed.
    assert!(service.poll_ready(&mut cx).is_pending());
    assert_eq!(counter.count(), 0);
    // A `try_spawn` sees the same full queue.
    assert!(pool.try_spawn(|| ()).unwrap_err().is_full());
    gate.open();
    spin_until("the wake-up for room", || counter.count() >= 1);
    assert_eq!(service.poll_ready(&mut cx), Poll::Ready(Ok(())));
    // The slot is this service's: the queue is full again for everyone else.
    assert!(pool.try_spawn(|| ()).unwrap_err().is_full());
    let out = within_hang("the call", move || pollster::block_on(service.call(41)));
    assert_eq!(out, Ok(42));
    assert_eq!(common::wait(filler), Ok("filler"));
}

#[test]
fn an_unbounded_pool_is_always_ready() {
    let pool = WorkerPool::new(1);
    let mut service = pool.asyncify(|s: &'static str| s.len()).service();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    for _ in 0..3 {
        assert_eq!(service.poll_ready(&mut cx), Poll::Ready(Ok(())));
    }
    assert_eq!(pollster::block_on(service.call("four")), Ok(4));
}

/// A slot taken by `poll_ready` belongs to its service: dropping the service frees it, and a
/// clone is not ready until polled itself.
#[test]
fn a_ready_service_dropped_gives_its_slot_back() {
    let pool = bounded_pool(1, 1);
    let (gate, _busy) = occupy(&pool, 1);
    let mut service = pool.asyncify(|x: u8| x).service();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(service.poll_ready(&mut cx).is_ready());
    let mut clone = service.clone();
    assert!(
        clone.poll_ready(&mut cx).is_pending(),
        "the one slot is taken"
    );
    drop(service);
    assert!(clone.poll_ready(&mut cx).is_ready());
    drop(clone);
    let taken = pool.try_spawn(|| 3).expect("the slot was given back");
    gate.open();
    assert_eq!(common::wait(taken), Ok(3));
}

#[test]
fn after_shutdown_poll_ready_fails() {
    let pool = WorkerPool::new(1);
    let mut service = pool.asyncify(|x: u8| x).service();
    pool.shutdown();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match service.poll_ready(&mut cx) {
        Poll::Ready(Err(e)) => assert!(e.is_shut_down()),
        other => panic!("expected a ShutDown error, got {other:?}"),
    }
}

/// Ready before the shutdown, called after it: the call is refused like any later call (the
/// slot it held does not let it in), and `poll_ready` fails from then on.
#[test]
fn a_service_made_ready_before_shutdown_refuses_calls_after_it() {
    let pool = WorkerPool::new(1);
    let (gate, _busy) = occupy(&pool, 1);
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = std::sync::Arc::clone(&ran);
    let mut service = pool
        .asyncify(move |x: u32| {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            x
        })
        .service();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert_eq!(service.poll_ready(&mut cx), Poll::Ready(Ok(())));
    let closing = pool.shutdown_async();
    assert!(pool.is_shut_down());
    let call = service.call(5);
    assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Err(e)) if e.is_shut_down()));
    gate.open();
    assert!(common::wait(call).unwrap_err().is_shut_down());
    within_hang("the shutdown", move || pollster::block_on(closing));
    assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Against tower's contract, a call without `poll_ready` is still queued (as `call` would be).
#[test]
fn a_call_without_poll_ready_is_queued_anyway() {
    let pool = WorkerPool::new(1);
    let mut service = pool.asyncify(|x: u8| x * 3).service();
    assert_eq!(pollster::block_on(service.call(5)), Ok(15));
}

/// The layer's overrides are in force where the program captures them (at `call`), on top of
/// the caller's own, and a dropped response future cancels the call.
#[test]
fn the_layer_runs_each_request_under_its_overrides() {
    let pool = WorkerPool::new(2);
    let program = pool.asyncify(|name: String| {
        format!(
            "{}/{}/{name}",
            TENANT.get().unwrap_or_default(),
            settings::get::<&str>("region").unwrap_or("none"),
        )
    });
    let layer = OverridesLayer::new(|name: &String| {
        Overrides::new().with(&TENANT, format!("t-{}", name.len()))
    });
    let mut service = layer.layer(program.service());
    let outer = Overrides::new().with("region", "eu");
    let out = settings::context(outer, || {
        pollster::block_on(async {
            poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
            let a = service.call("ab".to_owned());
            poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
            let b = service.call("abcd".to_owned());
            (a.await, b.await)
        })
    });
    assert_eq!(out.0.unwrap(), "t-2/eu/ab");
    assert_eq!(out.1.unwrap(), "t-4/eu/abcd");
    assert_eq!(TENANT.get(), None, "nothing leaks to the caller");
}

/// An inner service that reads the settings while its future is polled: the layer's
/// overrides are in force then too, and only then.
#[derive(Clone)]
struct ReadsOnPoll;

impl Service<u8> for ReadsOnPoll {
    type Response = Option<String>;
    type Error = ();
    type Future = Pin<Box<dyn Future<Output = Result<Option<String>, ()>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u8) -> Self::Future {
        Box::pin(async {
            futures_lite::future::yield_now().await;
            Ok(TENANT.get())
        })
    }
}

#[test]
fn the_layer_holds_its_overrides_across_the_futures_polls() {
    let mut service = OverridesLayer::new(|n: &u8| Overrides::new().with(&TENANT, n.to_string()))
        .layer(ReadsOnPoll);
    let future = service.call(7);
    assert_eq!(TENANT.get(), None);
    assert_eq!(pollster::block_on(future), Ok(Some("7".to_owned())));
}
