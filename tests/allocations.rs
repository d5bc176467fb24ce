//! How many heap allocations a call makes, counted by an instrumented global allocator (which
//! is why this is a test binary of its own: the allocator counts every thread of the process).
//!
//! The README says a call is one allocation: the cell that holds the job, its result and the
//! waiting task's waker, shared by the caller's handle and the worker. Besides it, crossbeam's
//! unbounded queue takes a fresh block of 31 slots every 31 messages, and one call in eight has
//! its queue wait timed for the stats, in a small stamp around its queue entry. So N calls in a
//! steady state make N × (1 + 1/8 + 1/31) allocations, and a second allocation per call (a
//! boxed job, a separate completion channel as `oneshot` would be) would make that 2N.

use std::alloc::System;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use std::time::Duration;

use asyncify_pool::{Overload, Retry, WorkerPool};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CALLS: usize = 31 * 1_000;

/// Allocations made by `CALLS` round trips of `call`, after a warm-up of the same.
fn allocations_per_call(mut call: impl FnMut(u64) -> u64) -> f64 {
    for i in 0..CALLS as u64 {
        assert_eq!(call(i), i + 1);
    }
    let region = Region::new(GLOBAL);
    for i in 0..CALLS as u64 {
        assert_eq!(call(i), i + 1);
    }
    region.change().allocations as f64 / CALLS as f64
}

/// The steady state's allocations per call: one cell, a timing stamp every eighth call, and the
/// queue's block every 31 calls.
const EXPECTED: f64 = 1.0 + 1.0 / 8.0 + 1.0 / 31.0;

fn assert_one_allocation(what: &str, per_call: f64) {
    eprintln!("{what}: {per_call:.4} allocations per call (expected {EXPECTED:.4})");
    // A little slack for what the test harness's own thread may allocate meanwhile, far below
    // a second allocation per call.
    assert!(
        (EXPECTED - 0.01..EXPECTED + 0.05).contains(&per_call),
        "{what}: {per_call:.3} allocations per call, not one (plus {:.3} for stamps and queue)",
        EXPECTED - 1.0
    );
}

/// A waker that does nothing: the loop below polls until the handle is ready.
struct Spin;
impl Wake for Spin {
    fn wake(self: Arc<Self>) {}
}

// One test function: the allocator counts the whole process, so a second test running at the
// same time would count into this one's region.
#[test]
fn a_call_makes_one_allocation_awaited_waited_spawned_or_with_options() {
    awaited();
    waited();
    spawned();
    with_options();
}

fn awaited() {
    let pool = WorkerPool::new(1);
    let next = pool.asyncify(|x: u64| x + 1);
    let waker = Waker::from(Arc::new(Spin));
    let per_call = allocations_per_call(|i| {
        let mut handle = pin!(next.call(i));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(out) = handle.as_mut().poll(&mut cx) {
                return out.unwrap();
            }
        }
    });
    assert_one_allocation("program.call awaited", per_call);
}

fn waited() {
    let pool = WorkerPool::new(2);
    let next = pool.asyncify(|x: u64| x + 1);
    let per_call = allocations_per_call(|i| next.call(i).wait().unwrap());
    assert_one_allocation("program.call waited", per_call);
}

fn spawned() {
    let pool = WorkerPool::new(2);
    let per_call = allocations_per_call(|i| pool.spawn(move || i + 1).wait().unwrap());
    assert_one_allocation("pool.spawn waited", per_call);
}

/// A deadline or a retry policy adds no allocation when the call passes its gates at once (the
/// call keeps them in its job's own allocation, and the deadline's timer entry takes none once
/// the timer has grown to the load), nor does a concurrency (fixed or adaptive) or a rate
/// limit that lets the call in at once, nor all four together.
fn with_options() {
    let pool = WorkerPool::new(2);
    let plain = pool.asyncify(|x: u64| x + 1);
    for (what, program, handles) in [
        ("timeout", plain.timeout(Duration::from_secs(60)), 0.0),
        (
            "retry",
            plain.retry(Retry::new(3).retry_if(|_: &u64| false)),
            0.0,
        ),
        ("concurrency_limit", plain.concurrency_limit(64), 0.0),
        (
            "rate_limit",
            plain.rate_limit(u32::MAX, Duration::from_secs(1)),
            0.0,
        ),
        (
            "adaptive_concurrency",
            plain.adaptive_concurrency(64, 64, Overload::when(|_: &u64| false)),
            0.0,
        ),
        (
            "all four",
            plain
                .timeout(Duration::from_secs(60))
                .retry(Retry::new(3).retry_if(|_: &u64| false))
                .rate_limit(u32::MAX, Duration::from_secs(1))
                .adaptive_concurrency(64, 64, Overload::when(|_: &u64| false)),
            0.0,
        ),
    ] {
        let per_call = allocations_per_call(|i| program.call(i).wait().unwrap());
        eprintln!("{what}: {per_call:.4} allocations per call");
        assert!(
            (EXPECTED + handles - 0.01..EXPECTED + handles + 0.05).contains(&per_call),
            "{what}: {per_call:.3} allocations per call, not {:.3}",
            EXPECTED + handles
        );
    }
}
