//! A handle that is not ready asks its executor to poll it again at once a few times before it
//! waits for its wake-up: a short job's answer is then found on a re-poll, and the executor's
//! thread does not park and get woken (a system call on each side) for it.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use asyncify_pool::WorkerPool;
use common::{panicking_waker, quiet_planned_panics, spin_until, CountingWaker, Gate};

/// Not ready, a handle wakes its task by itself on its first 16 polls, and then only the
/// worker's completion wakes it (once, with the answer).
#[test]
fn a_pending_handle_yields_sixteen_times_then_waits() {
    let pool = WorkerPool::new(1);
    let gate = Gate::new();
    let g = gate.clone();
    let mut handle = pool.spawn(move || {
        g.wait();
        7
    });
    let (count, waker) = CountingWaker::new();
    let mut cx = Context::from_waker(&waker);
    let mut at_once = Vec::new();
    for _ in 0..40 {
        let before = count.count();
        assert!(Pin::new(&mut handle).poll(&mut cx).is_pending());
        at_once.push(count.count() - before);
    }
    assert_eq!(at_once[..16], [1; 16], "{at_once:?}");
    assert_eq!(at_once[16..], [0; 24], "{at_once:?}");
    gate.open();
    spin_until("the worker's wake-up", || count.count() == 17);
    assert_eq!(Pin::new(&mut handle).poll(&mut cx), Poll::Ready(Ok(7)));
}

/// A waker that panics when the handle wakes it costs nothing: the poll says pending, and the
/// answer comes on a later poll.
#[test]
fn a_waker_that_panics_on_the_yield_costs_nothing() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let gate = Gate::new();
    let g = gate.clone();
    let mut handle = pool.spawn(move || {
        g.wait();
        "answer"
    });
    let waker = panicking_waker();
    let mut cx = Context::from_waker(&waker);
    for _ in 0..20 {
        assert!(Pin::new(&mut handle).poll(&mut cx).is_pending());
    }
    gate.open();
    let mut out = Poll::Pending;
    spin_until("the answer", || {
        out = Pin::new(&mut handle).poll(&mut cx);
        out.is_ready()
    });
    assert_eq!(out, Poll::Ready(Ok("answer")));
}
