//! A handle that is not ready asks its executor to poll it again at once a few times before it
//! waits for its wake-up: a short job's answer is then found on a re-poll, and the executor's
//! thread does not park and get woken (a system call on each side) for it.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use asyncify_pool::{Retry, WorkerPool};
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

/// While a handle yields it leaves nothing in the job: no clone of its waker is held, and a
/// job that ends meanwhile is found on the next poll with no wake-up from the worker (the
/// worker and the polling caller do not meet on the job's lock for it). The same for a call
/// with a deadline and a retry policy that do not trigger.
#[test]
fn a_job_that_ends_while_its_handle_yields_costs_no_wake_up() {
    let pool = WorkerPool::new(1);
    let plain = pool.asyncify(|gate: Arc<Gate>| {
        gate.wait();
        11
    });
    let timed = plain.timeout(Duration::from_secs(3600));
    let retried = timed.retry(Retry::new(3).retry_if(|_: &i32| false));
    for (name, program) in [("plain", plain), ("timed", timed), ("retried", retried)] {
        let gate = Gate::new();
        let mut handle = program.call(Arc::clone(&gate));
        let (count, waker) = CountingWaker::new();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut handle).poll(&mut cx).is_pending());
        assert_eq!(count.count(), 1, "{name}: the yield's own wake");
        assert_eq!(
            Arc::strong_count(&count),
            2,
            "{name}: no clone of the waker is left with the job"
        );
        gate.open();
        spin_until("the job's end", || handle.is_finished());
        assert_eq!(
            count.count(),
            1,
            "{name}: the worker woke a yielding handle"
        );
        assert_eq!(
            Pin::new(&mut handle).poll(&mut cx),
            Poll::Ready(Ok(11)),
            "{name}"
        );
    }
}

/// An abort while the handle yields is found on its next poll, at once, as is a deadline's
/// cut: the yields skip no news.
#[test]
fn an_abort_or_a_deadline_while_the_handle_yields_is_found_on_the_next_poll() {
    let pool = WorkerPool::new(1);
    let plain = pool.asyncify(|gate: Arc<Gate>| gate.wait());
    let timed = plain.timeout(Duration::from_secs(3600));
    for (name, program) in [("plain", &plain), ("timed", &timed)] {
        let gate = Gate::new();
        let mut handle = program.call(Arc::clone(&gate));
        let (_count, waker) = CountingWaker::new();
        let mut cx = Context::from_waker(&waker);
        spin_until("the job's start", || pool.stats().running == 1);
        assert!(Pin::new(&mut handle).poll(&mut cx).is_pending());
        handle.abort_handle().abort();
        match Pin::new(&mut handle).poll(&mut cx) {
            Poll::Ready(Err(e)) => assert!(e.is_cancelled(), "{name}: {e:?}"),
            other => panic!("{name}: an aborted handle polled: {other:?}"),
        }
        gate.open();
        spin_until("the job's end", || pool.stats().running == 0);
    }
    let gate = Gate::new();
    let mut handle = plain
        .timeout(Duration::from_millis(20))
        .call(Arc::clone(&gate));
    let (_count, waker) = CountingWaker::new();
    let mut cx = Context::from_waker(&waker);
    spin_until("the job's start", || pool.stats().running == 1);
    assert!(Pin::new(&mut handle).poll(&mut cx).is_pending());
    spin_until("the deadline's cut", || handle.is_finished());
    match Pin::new(&mut handle).poll(&mut cx) {
        Poll::Ready(Err(e)) => assert!(e.is_timed_out(), "{e:?}"),
        other => panic!("a handle cut off by its deadline polled: {other:?}"),
    }
    gate.open();
}

/// A waker that panics once, on the handle's first yield: the job's end still wakes the task
/// (nobody else would: a task whose wake-up panicked is not scheduled again). The same for a
/// call with a deadline.
#[test]
fn a_waker_that_panics_once_on_the_yield_is_still_woken_by_the_job() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let plain = pool.asyncify(|gate: Arc<Gate>| {
        gate.wait();
        5
    });
    let timed = plain.timeout(Duration::from_secs(3600));
    for (name, program) in [("plain", plain), ("timed", timed)] {
        let gate = Gate::new();
        let mut handle = program.call(Arc::clone(&gate));
        let flaky = Arc::new(FlakyWaker::default());
        let waker = Waker::from(Arc::clone(&flaky));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut handle).poll(&mut cx).is_pending());
        gate.open();
        spin_until(&format!("{name}: the job's end to wake the task"), || {
            flaky.woken.load(SeqCst) == 1
        });
        assert_eq!(Pin::new(&mut handle).poll(&mut cx), Poll::Ready(Ok(5)));
    }
}

/// A waker whose `wake_by_ref` always panics but whose `wake` works: the job's end wakes it.
#[test]
fn a_waker_whose_wake_by_ref_panics_is_woken_by_the_job() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let gate = Gate::new();
    let g = Arc::clone(&gate);
    let mut handle = pool.spawn(move || {
        g.wait();
        3
    });
    let by_ref_panics = Arc::new(ByRefPanics::default());
    let waker = Waker::from(Arc::clone(&by_ref_panics));
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut handle).poll(&mut cx).is_pending());
    gate.open();
    spin_until("the job's end to wake the task", || {
        by_ref_panics.woken.load(SeqCst) == 1
    });
    assert_eq!(Pin::new(&mut handle).poll(&mut cx), Poll::Ready(Ok(3)));
}

/// Panics on its first wake-up, by value or by reference, and counts the later ones.
#[derive(Default)]
struct FlakyWaker {
    calls: AtomicUsize,
    woken: AtomicUsize,
}

impl FlakyWaker {
    fn hit(&self) {
        if self.calls.fetch_add(1, SeqCst) == 0 {
            panic!("planned: a waker that panics once");
        }
        self.woken.fetch_add(1, SeqCst);
    }
}

impl Wake for FlakyWaker {
    fn wake(self: Arc<Self>) {
        self.hit();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.hit();
    }
}

/// Counts wake-ups by value; panics on every wake-up by reference.
#[derive(Default)]
struct ByRefPanics {
    woken: AtomicUsize,
}

impl Wake for ByRefPanics {
    fn wake(self: Arc<Self>) {
        self.woken.fetch_add(1, SeqCst);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        panic!("planned: wake_by_ref panics");
    }
}
