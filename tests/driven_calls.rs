//! Calls that drive their attempts (waiting at a concurrency limit, a rate limiter, a
//! backoff, or retrying panics), attacked at each waiting point: aborts, drops and detaches,
//! all three shutdowns, classifiers and clones that panic, block or call back, and callers'
//! wakers that panic, abort other calls or shut down again while `shutdown_timeout` abandons
//! the queue. Each call gets exactly one answer, every input is dropped, and the stats agree
//! with what ran. (A hostile tester's attacks, kept as regression tests.)
#![allow(clippy::type_complexity)]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use asyncify_pool::{AbortHandle, JobError, JobHandle, Overload, RateLimiter, Retry, WorkerPool};
use common::{occupy, spin_until, Gate};

/// Every wait here is bounded by this (a hang becomes a failure).
const BOUND: Duration = Duration::from_secs(20);

fn w<T>(mut h: JobHandle<T>) -> Result<T, JobError> {
    h.wait_timeout(BOUND).expect("a call hung")
}

fn poll_now<T>(h: &mut JobHandle<T>, waker: &Waker) -> Poll<Result<T, JobError>> {
    Pin::new(h).poll(&mut Context::from_waker(waker))
}

/// Opens `gate` and waits for the jobs it held.
fn release(gate: &Gate, held: Vec<JobHandle<()>>) {
    gate.open();
    for h in held {
        w(h).unwrap();
    }
}

fn noop() -> Waker {
    futures::task::noop_waker()
}

/// Polls until the handle has used up its yields (so that it has registered its waker with the
/// call and waits for a real wake-up).
fn register<T: std::fmt::Debug>(h: &mut JobHandle<T>, waker: &Waker) {
    for _ in 0..40 {
        assert!(poll_now(h, waker).is_pending());
    }
}

/// An input that counts its drops, optionally running `on_drop` first.
struct Counted {
    drops: Arc<AtomicUsize>,
    on_drop: Option<Box<dyn FnOnce() + Send>>,
}

impl Counted {
    fn new(drops: &Arc<AtomicUsize>) -> Self {
        Counted {
            drops: Arc::clone(drops),
            on_drop: None,
        }
    }
    fn with(drops: &Arc<AtomicUsize>, f: impl FnOnce() + Send + 'static) -> Self {
        Counted {
            drops: Arc::clone(drops),
            on_drop: Some(Box::new(f)),
        }
    }
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        Counted::new(&self.drops)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
        self.drops.fetch_add(1, SeqCst);
    }
}

/// A waker that records its wake-ups and runs `f` on the first.
struct FnWaker {
    armed: AtomicBool,
    woken: AtomicUsize,
    f: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl FnWaker {
    fn new(f: impl FnOnce() + Send + 'static) -> Arc<Self> {
        Arc::new(FnWaker {
            armed: AtomicBool::new(false),
            woken: AtomicUsize::new(0),
            f: Mutex::new(Some(Box::new(f))),
        })
    }
}

impl Wake for FnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.armed.load(SeqCst) {
            return; // a handle's own yields, before the test arms it
        }
        self.woken.fetch_add(1, SeqCst);
        let f = common::lock(&self.f).take();
        if let Some(f) = f {
            f();
        }
    }
}

/// A program on a one-thread pool whose calls are driven (`retry_panics`), each blocking on
/// `gate` and counting its runs.
fn gated(
    pool: &WorkerPool,
    gate: &Arc<Gate>,
    runs: &Arc<AtomicUsize>,
) -> asyncify_pool::BoxProgram<Counted, u32> {
    let (gate, runs) = (Arc::clone(gate), Arc::clone(runs));
    pool.asyncify(move |_: Counted| {
        runs.fetch_add(1, SeqCst);
        gate.wait();
        7u32
    })
    .retry(Retry::new(3).retry_panics(true))
    .boxed()
}

/// A driven call of [`gated`] on a one-thread pool, its attempt running (held by `gate`).
struct Running {
    pool: WorkerPool,
    gate: Arc<Gate>,
    p: asyncify_pool::BoxProgram<Counted, u32>,
    drops: Arc<AtomicUsize>,
    h: JobHandle<u32>,
}

fn a_running_driven_call() -> Running {
    let pool = WorkerPool::new(1);
    let gate = Gate::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let p = gated(&pool, &gate, &runs);
    let drops = Arc::new(AtomicUsize::new(0));
    let h = p.call(Counted::new(&drops));
    spin_until("running", || runs.load(SeqCst) == 1);
    Running {
        pool,
        gate,
        p,
        drops,
        h,
    }
}

// ---------------------------------------------------------------------------------------------
// AbortHandle::is_finished after the JobHandle is dropped while the attempt runs.

/// The docs of `AbortHandle::is_finished`: "True once the job is over: it returned (an aborted
/// job that was running counts once it returns ...)". A plain job's handle dropped while the
/// job runs: is_finished stays false until it returns. The same for calls of each path.
fn dropped_while_running_is_not_finished(kind: &str) {
    let pool = WorkerPool::new(2);
    let gate = Gate::new();
    let (started_tx, started) = mpsc::channel();
    let g = Arc::clone(&gate);
    let base = pool.asyncify(move |_: u32| {
        started_tx.send(()).unwrap();
        g.wait();
        1u32
    });
    let handle = match kind {
        "plain" => base.call(0),
        "timed" => base.timeout(Duration::from_secs(3600)).call(0),
        "direct" => base.retry(Retry::new(2)).call(0),
        "driven_retry_panics" => base.retry(Retry::new(2).retry_panics(true)).call(0),
        _ => unreachable!(),
    };
    started.recv_timeout(BOUND).expect("the job started");
    let abort = handle.abort_handle();
    assert!(!abort.is_finished());
    drop(handle);
    let finished_while_running = abort.is_finished();
    gate.open();
    spin_until("the job returned", || abort.is_finished());
    assert!(
        !finished_while_running,
        "{kind}: AbortHandle::is_finished was true after the handle was dropped, while the \
         attempt still ran"
    );
}

#[test]
fn plain_dropped_while_running_is_not_finished() {
    dropped_while_running_is_not_finished("plain");
}

#[test]
fn timed_dropped_while_running_is_not_finished() {
    dropped_while_running_is_not_finished("timed");
}

#[test]
fn direct_dropped_while_running_is_not_finished() {
    dropped_while_running_is_not_finished("direct");
}

#[test]
fn driven_dropped_while_running_is_not_finished() {
    dropped_while_running_is_not_finished("driven_retry_panics");
}

/// The same after a driven call's handle is dropped, its attempt running after a wait in the
/// limit line.
#[test]
fn driven_from_a_limit_line_dropped_while_running_is_not_finished() {
    let pool = WorkerPool::new(2);
    let (gate_a, gate_b) = (Gate::new(), Gate::new());
    let (started_tx, started) = mpsc::channel();
    let (ga, gb) = (Arc::clone(&gate_a), Arc::clone(&gate_b));
    let limited = pool
        .asyncify(move |which: u32| {
            started_tx.send(which).unwrap();
            if which == 0 {
                ga.wait()
            } else {
                gb.wait()
            }
            which
        })
        .concurrency_limit(1);
    let a = limited.call(0);
    assert_eq!(started.recv_timeout(BOUND), Ok(0));
    let b = limited.call(1);
    assert_eq!(limited.stats().waited_for_slot, 1, "b is driven");
    gate_a.open();
    assert_eq!(w(a), Ok(0));
    assert_eq!(started.recv_timeout(BOUND), Ok(1));
    let abort = b.abort_handle();
    drop(b);
    let finished_while_running = abort.is_finished();
    gate_b.open();
    spin_until("b's attempt returned", || abort.is_finished());
    spin_until("slot back", || limited.stats().in_flight == 0);
    assert!(
        !finished_while_running,
        "a driven call's AbortHandle said finished while its attempt still ran"
    );
}

/// Abort (not drop) while running: is_finished false until the attempt returns.
#[test]
fn driven_aborted_while_running_is_finished_only_after_return() {
    let Running {
        pool: _pool,
        gate,
        p,
        drops,
        h,
    } = a_running_driven_call();
    let abort = h.abort_handle();
    abort.abort();
    let out = w(h);
    assert!(matches!(&out, Err(e) if e.is_cancelled()), "{out:?}");
    assert!(!abort.is_finished(), "finished while the attempt runs");
    gate.open();
    spin_until("returned", || abort.is_finished());
    let s = p.stats();
    assert_eq!((s.calls, s.attempts, s.retries, s.timed_out), (1, 1, 0, 0));
    spin_until("inputs dropped", || drops.load(SeqCst) == 2);
}

// ---------------------------------------------------------------------------------------------
// Aborts, drops and detaches at each waiting point.

/// A program with concurrency_limit(1) whose first call holds the slot until `gate` opens.
fn held_limit(
    pool: &WorkerPool,
) -> (
    asyncify_pool::BoxProgram<Counted, u32>,
    JobHandle<u32>,
    Arc<Gate>,
    Arc<AtomicUsize>,
) {
    let gate = Gate::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let (started_tx, started) = mpsc::channel();
    let (g, r) = (Arc::clone(&gate), Arc::clone(&runs));
    let first = Arc::new(AtomicBool::new(true));
    let limited = pool
        .asyncify(move |_: Counted| {
            r.fetch_add(1, SeqCst);
            if first.swap(false, SeqCst) {
                started_tx.send(()).unwrap();
                g.wait();
            }
            1u32
        })
        .concurrency_limit(1)
        .boxed();
    let holder = limited.call(Counted::new(&Arc::default()));
    started.recv_timeout(BOUND).unwrap();
    (limited, holder, gate, runs)
}

#[test]
fn abort_in_a_limit_line() {
    let pool = WorkerPool::new(2);
    let (limited, holder, gate, runs) = held_limit(&pool);
    let drops = Arc::new(AtomicUsize::new(0));
    let h = limited.call(Counted::new(&drops));
    let later = limited.call(Counted::new(&drops));
    h.abort_handle().abort();
    let out = w(h);
    assert!(out.is_err_and(|e| e.is_cancelled()));
    assert_eq!(drops.load(SeqCst), 1, "input dropped with the answer");
    gate.open();
    assert_eq!(w(holder), Ok(1));
    assert_eq!(w(later), Ok(1));
    assert_eq!(runs.load(SeqCst), 2, "the aborted call never ran");
    let s = limited.stats();
    assert_eq!(
        (s.calls, s.attempts, s.waited_for_slot, s.in_flight),
        (3, 2, 2, 0)
    );
}

#[test]
fn drop_in_a_limit_line_then_detach_in_a_limit_line() {
    let pool = WorkerPool::new(2);
    let (limited, holder, gate, runs) = held_limit(&pool);
    let drops = Arc::new(AtomicUsize::new(0));
    let dropped = limited.call(Counted::new(&drops));
    drop(dropped);
    assert_eq!(drops.load(SeqCst), 1, "input dropped with the handle");
    let detached = limited.call(Counted::new(&drops));
    detached.detach();
    let later = limited.call(Counted::new(&drops));
    gate.open();
    assert_eq!(w(holder), Ok(1));
    assert_eq!(w(later), Ok(1));
    spin_until("all inputs dropped", || drops.load(SeqCst) == 3);
    assert_eq!(runs.load(SeqCst), 3, "holder, the detached call, later");
    let s = limited.stats();
    assert_eq!((s.calls, s.attempts, s.in_flight), (4, 3, 0));
}

#[test]
fn abort_and_drop_in_a_rate_line() {
    let pool = WorkerPool::new(1);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let limiter = RateLimiter::new(1, Duration::from_secs(3600));
    let p = pool
        .asyncify(move |_: Counted| {
            r.fetch_add(1, SeqCst);
            1u32
        })
        .retry(Retry::new(2).retry_if(|_: &u32| false))
        .with_rate_limiter(&limiter);
    let drops = Arc::new(AtomicUsize::new(0));
    assert_eq!(w(p.call(Counted::new(&drops))), Ok(1));
    let a = p.call(Counted::new(&drops));
    let b = p.call(Counted::new(&drops));
    let c = p.call(Counted::new(&drops));
    assert_eq!(limiter.waiting(), 3);
    a.abort_handle().abort();
    assert!(w(a).is_err_and(|e| e.is_cancelled()));
    drop(b);
    c.detach();
    assert_eq!(
        drops.load(SeqCst),
        2 + 2 + 2,
        "the aborted and the dropped calls' inputs"
    );
    pool.shutdown();
    spin_until("the detached call's inputs", || drops.load(SeqCst) == 8);
    assert_eq!(runs.load(SeqCst), 1);
    let s = p.stats();
    assert_eq!((s.calls, s.attempts, s.waited_for_rate), (4, 1, 3));
    assert_eq!(limiter.waiting(), 0);
}

#[test]
fn abort_drop_detach_during_a_backoff() {
    for what in ["abort", "drop", "detach"] {
        let pool = WorkerPool::new(1);
        let runs = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&runs);
        let p = pool
            .asyncify(move |_: Counted| {
                r.fetch_add(1, SeqCst);
                503u32
            })
            .retry(
                Retry::new(3)
                    .backoff(Duration::from_secs(3600), Duration::from_secs(3600))
                    .retry_if(|s: &u32| *s == 503),
            );
        let drops = Arc::new(AtomicUsize::new(0));
        let h = p.call(Counted::new(&drops));
        spin_until("first attempt", || runs.load(SeqCst) == 1);
        spin_until("in the backoff", || drops.load(SeqCst) == 1); // the copy ran and went
        match what {
            "abort" => {
                h.abort_handle().abort();
                assert!(w(h).is_err_and(|e| e.is_cancelled()));
                assert_eq!(drops.load(SeqCst), 2);
            }
            "drop" => {
                drop(h);
                // (If the worker is still handing the first attempt over to the call that
                // backs off, that hand-over lets go of the input as it finds the drop.)
                spin_until("the dropped call's input", || drops.load(SeqCst) == 2);
            }
            _ => {
                h.detach();
                assert_eq!(drops.load(SeqCst), 1, "a detached call keeps waiting");
                pool.shutdown();
                spin_until("the detached call let go", || drops.load(SeqCst) == 2);
            }
        }
        assert_eq!(runs.load(SeqCst), 1, "{what}");
        let s = p.stats();
        assert_eq!((s.attempts, s.retries, s.timed_out), (1, 0, 0), "{what}");
    }
}

/// Abort while the attempt is queued (the only worker busy): it never runs, its slot goes back.
#[test]
fn abort_with_the_attempt_queued_after_a_limit_line() {
    let pool = WorkerPool::new(2);
    let (limited, holder, gate, runs) = held_limit(&pool);
    let drops = Arc::new(AtomicUsize::new(0));
    let h = limited.call(Counted::new(&drops));
    // Occupy the other worker and queue a blocker, then free the slot: the holder's worker
    // takes the blocker, and h's attempt is queued behind it.
    let (busy_gate, mut busy) = occupy(&pool, 1);
    let bg = Arc::clone(&busy_gate);
    busy.push(pool.spawn(move || bg.wait()));
    gate.open();
    assert_eq!(w(holder), Ok(1));
    spin_until("h's attempt queued", || {
        pool.stats().queued == 1 && pool.stats().running == 2
    });
    assert_eq!(limited.stats().in_flight, 1);
    h.abort_handle().abort();
    assert!(w(h).is_err_and(|e| e.is_cancelled()));
    assert_eq!(drops.load(SeqCst), 1, "input dropped with the answer");
    release(&busy_gate, busy);
    spin_until("slot back", || limited.stats().in_flight == 0);
    assert_eq!(w(limited.call(Counted::new(&drops))), Ok(1));
    assert_eq!(runs.load(SeqCst), 2, "the aborted attempt never ran");
}

/// Under concurrency_limit(1): an aborted or timed-out running attempt keeps its slot until it
/// returns, so the call waiting in the line does not start beside it.
#[test]
fn a_cut_off_running_attempt_keeps_its_slot() {
    for cut in ["abort", "deadline"] {
        let pool = WorkerPool::new(2);
        let gate = Gate::new();
        let inside = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let (g, i, m) = (Arc::clone(&gate), Arc::clone(&inside), Arc::clone(&max));
        let first = Arc::new(AtomicBool::new(true));
        let p = pool
            .asyncify(move |_: u32| {
                let now = i.fetch_add(1, SeqCst) + 1;
                m.fetch_max(now, SeqCst);
                if first.swap(false, SeqCst) {
                    g.wait();
                }
                i.fetch_sub(1, SeqCst);
                1u32
            })
            .timeout(Duration::from_millis(if cut == "abort" {
                3_600_000
            } else {
                100
            }))
            .retry(Retry::new(2).retry_panics(true))
            .concurrency_limit(1);
        let a = p.call(0);
        spin_until("a runs", || inside.load(SeqCst) == 1);
        let b = p.call(1);
        if cut == "abort" {
            a.abort_handle().abort();
        }
        let out = w(a);
        assert!(
            out.is_err_and(|e| e.is_cancelled() || e.is_timed_out()),
            "{cut}"
        );
        // b cannot start while a's job runs.
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(max.load(SeqCst), 1, "{cut}");
        assert_eq!(p.stats().in_flight, 1, "{cut}: a's slot is still taken");
        gate.open();
        let out = w(b);
        if cut == "abort" {
            assert_eq!(out, Ok(1));
        } else {
            // (b's own deadline may have come while a ran.)
            assert!(out == Ok(1) || out.as_ref().is_err_and(JobError::is_timed_out));
        }
        assert_eq!(max.load(SeqCst), 1, "{cut}: two attempts ran at once");
        spin_until("slot back", || p.stats().in_flight == 0);
    }
}

/// A deadline while the driven call's attempt is queued: it never starts; counted once.
#[test]
fn a_driven_attempt_queued_past_its_deadline_never_starts() {
    let pool = WorkerPool::new(1);
    let (busy_gate, busy) = occupy(&pool, 1);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let p = pool
        .asyncify(move |_: u32| {
            r.fetch_add(1, SeqCst);
        })
        .timeout(Duration::from_millis(50))
        .retry(Retry::new(3).retry_panics(true))
        .concurrency_limit(4);
    let handles: Vec<_> = (0..4).map(|i| p.call(i)).collect();
    for h in handles {
        assert!(w(h).is_err_and(|e| e.is_timed_out()));
    }
    release(&busy_gate, busy);
    // Let the worker go through the queue.
    assert_eq!(w(pool.spawn(|| ())), Ok(()));
    assert_eq!(runs.load(SeqCst), 0, "a job past its deadline started");
    let s = p.stats();
    assert_eq!((s.calls, s.timed_out, s.in_flight), (4, 4, 0));
    assert_eq!(s.attempts, 4, "one attempt each, queued");
}

// ---------------------------------------------------------------------------------------------
// Classifiers.

/// A classifier that aborts its own driven call.
#[test]
fn a_classifier_that_aborts_its_own_driven_call() {
    let pool = WorkerPool::new(1);
    let slot: Arc<Mutex<Option<AbortHandle>>> = Arc::default();
    let s = Arc::clone(&slot);
    let p = pool
        .asyncify(|_: u32| 503u32)
        .retry(Retry::new(3).retry_panics(true).retry_if(move |_: &u32| {
            if let Some(a) = common::lock(&s).take() {
                a.abort();
            }
            true
        }));
    let gate = Gate::new();
    let g = Arc::clone(&gate);
    let blocker = pool.spawn(move || g.wait());
    let h = p.call(1);
    *common::lock(&slot) = Some(h.abort_handle());
    gate.open();
    w(blocker).unwrap();
    let out = w(h);
    assert!(out.as_ref().is_err_and(JobError::is_cancelled), "{out:?}");
    let s = p.stats();
    assert_eq!((s.calls, s.attempts), (1, 1));
}

/// A classifier that shuts its own pool down (on the worker: returns at once) and one that
/// calls the program again and waits for it (on a one-thread pool, under a limit of one).
#[test]
fn a_classifier_that_shuts_the_pool_down_or_calls_back() {
    common::quiet_planned_panics();
    // Shutdown from the classifier.
    let pool = WorkerPool::new(1);
    let p2 = pool.clone();
    let p = pool
        .asyncify(|_: u32| 503u32)
        .retry(Retry::new(3).retry_panics(true).retry_if(move |_: &u32| {
            p2.shutdown();
            true
        }));
    let out = w(p.call(1));
    assert_eq!(out, Ok(503), "no retry after the close: the last output");
    assert_eq!(p.stats().attempts, 1);
    pool.shutdown();

    // A classifier that calls the program again (once) and waits.
    let pool = WorkerPool::new(1);
    let again: Arc<Mutex<Option<asyncify_pool::BoxProgram<u32, u32>>>> = Arc::default();
    let inner: Arc<Mutex<Option<Result<u32, JobError>>>> = Arc::default();
    let (a, i) = (Arc::clone(&again), Arc::clone(&inner));
    let p = pool
        .asyncify(|x: u32| x)
        .retry(Retry::new(2).retry_panics(true).retry_if(move |out: &u32| {
            if *out == 1 {
                if let Some(p) = common::lock(&a).take() {
                    let mut h = p.call(2);
                    *common::lock(&i) = h.wait_timeout(Duration::from_secs(5));
                }
            }
            false
        }))
        .concurrency_limit(1)
        .boxed();
    *common::lock(&again) = Some(p.clone());
    assert_eq!(w(p.call(1)), Ok(1));
    assert_eq!(
        *common::lock(&inner),
        Some(Ok(2)),
        "the classifier's nested call"
    );
    let s = p.stats();
    assert_eq!((s.calls, s.attempts, s.in_flight), (2, 2, 0));
}

/// A classifier that panics, and one that blocks for a while, on a driven call with a limit:
/// the panic counts as "no retry"; the block holds no slot.
#[test]
fn a_panicking_or_blocking_classifier_on_a_driven_call() {
    common::quiet_planned_panics();
    let pool = WorkerPool::new(2);
    let p = pool
        .asyncify(|x: u32| x)
        .retry(Retry::new(3).retry_panics(true).retry_if(|x: &u32| {
            if *x == 0 {
                panic!("planned: classifier")
            }
            false
        }))
        .concurrency_limit(1);
    assert_eq!(w(p.call(0)), Ok(0));
    let s = p.stats();
    assert_eq!((s.attempts, s.retries, s.in_flight), (1, 0, 0));

    let gate = Gate::new();
    let entered = Arc::new(AtomicBool::new(false));
    let (g, e) = (Arc::clone(&gate), Arc::clone(&entered));
    let p = pool
        .asyncify(|x: u32| x)
        .retry(Retry::new(3).retry_panics(true).retry_if(move |x: &u32| {
            if *x == 0 {
                e.store(true, SeqCst);
                g.wait();
            }
            false
        }))
        .concurrency_limit(1);
    let blocked = p.call(0);
    spin_until("classifier entered", || entered.load(SeqCst));
    // The other worker runs another call of the program: the slot was given back.
    let other = p.call(5);
    let out = w(other);
    gate.open();
    assert_eq!(out, Ok(5));
    assert_eq!(w(blocked), Ok(0));
}

// ---------------------------------------------------------------------------------------------
// Shutdown at each moment.

/// Calls in every driven state at once; then a shutdown of each kind: every caller gets one
/// answer, and the stats agree with the runs.
fn every_state_then(kind: &str) {
    common::quiet_planned_panics();
    let pool = WorkerPool::new(2);
    let drops = Arc::new(AtomicUsize::new(0));
    let runs = Arc::new(AtomicUsize::new(0));
    // 1. A limit line behind a running holder.
    let (limited, holder, hold_gate, lruns) = held_limit(&pool);
    let in_line = limited.call(Counted::new(&drops));
    // 2. A rate line.
    let r = Arc::clone(&runs);
    let rated = pool
        .asyncify(move |_: Counted| {
            r.fetch_add(1, SeqCst);
            1u32
        })
        .retry(Retry::new(2).retry_panics(true))
        .rate_limit(1, Duration::from_secs(3600));
    assert_eq!(w(rated.call(Counted::new(&drops))), Ok(1));
    let in_rate = rated.call(Counted::new(&drops));
    // 3. A backoff.
    let r = Arc::clone(&runs);
    let backing = pool
        .asyncify(move |_: Counted| {
            r.fetch_add(1, SeqCst);
            503u32
        })
        .retry(
            Retry::new(3)
                .backoff(Duration::from_secs(3600), Duration::from_secs(3600))
                .retry_if(|s: &u32| *s == 503),
        );
    let in_backoff = backing.call(Counted::new(&drops));
    spin_until("the backoff", || {
        backing.stats().attempts == 1 && runs.load(SeqCst) == 2
    });
    // 4. The other worker busy; an attempt queued behind it.
    let (busy_gate, busy) = occupy(&pool, 1);
    let r = Arc::clone(&runs);
    let queued_p = pool
        .asyncify(move |_: Counted| {
            r.fetch_add(1, SeqCst);
            1u32
        })
        .retry(Retry::new(2).retry_panics(true));
    let queued = queued_p.call(Counted::new(&drops));
    spin_until("queued", || pool.stats().queued >= 1);
    let handles = vec![
        ("line", in_line),
        ("rate", in_rate),
        ("backoff", in_backoff),
        ("queued", queued),
    ];
    // Callers wait on threads of their own.
    let (tx, rx) = mpsc::channel();
    for (name, h) in handles {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send((name, w(h)));
        });
    }
    std::thread::sleep(Duration::from_millis(20));
    let closer = {
        let pool = pool.clone();
        let kind = kind.to_owned();
        std::thread::spawn(move || match kind.as_str() {
            "shutdown" => {
                pool.shutdown();
                Ok(())
            }
            "async" => {
                pollster::block_on(pool.shutdown_async());
                Ok(())
            }
            _ => pool
                .shutdown_timeout(Duration::from_millis(30))
                .map_err(|e| e.running()),
        })
    };
    let mut answers: Vec<(&str, Result<u32, JobError>)> = Vec::new();
    // With shutdown()/async, the busy workers hold the close; the waits outside the queue end
    // at once; "queued" runs only once the busy worker is free.
    let told_first = if kind == "timeout" { 4 } else { 3 };
    for _ in 0..told_first {
        answers.push(
            rx.recv_timeout(BOUND)
                .expect("a waiting caller was not told"),
        );
    }
    hold_gate.open();
    busy_gate.open();
    if kind != "timeout" {
        answers.push(
            rx.recv_timeout(BOUND)
                .expect("the last caller was not told"),
        );
    }
    let closed = closer.join().unwrap();
    answers.sort_by_key(|a| a.0);
    for (name, out) in &answers {
        match *name {
            "backoff" => assert_eq!(*out, Ok(503), "{kind}: {name}: the last output"),
            "queued" if kind != "timeout" => assert_eq!(*out, Ok(1), "{kind}: {name}"),
            _ => assert!(
                out.as_ref().is_err_and(JobError::is_shut_down),
                "{kind}: {name}: {out:?}"
            ),
        }
    }
    if kind == "timeout" {
        assert_eq!(closed, Err(2), "{kind}");
    }
    let _ = w(holder);
    for b in busy {
        let _ = w(b);
    }
    pool.shutdown();
    spin_until("every input dropped", || {
        drops.load(SeqCst) == 1 + 2 + 2 + 2 + 2
    });
    let queued_ran = usize::from(kind != "timeout");
    assert_eq!(runs.load(SeqCst), 2 + queued_ran, "{kind}");
    assert_eq!(
        lruns.load(SeqCst),
        1,
        "{kind}: the call in the limit line never ran"
    );
    assert_eq!(rated.stats().attempts, 1, "{kind}");
    assert_eq!(backing.stats().attempts, 1, "{kind}");
    assert_eq!(queued_p.stats().attempts, 1, "{kind}");
    assert_eq!(limited.stats().in_flight, 0, "{kind}");
}

#[test]
fn shutdown_with_driven_calls_in_every_state() {
    every_state_then("shutdown");
}

#[test]
fn shutdown_async_with_driven_calls_in_every_state() {
    every_state_then("async");
}

#[test]
fn shutdown_timeout_with_driven_calls_in_every_state() {
    every_state_then("timeout");
}

// ---------------------------------------------------------------------------------------------
// shutdown_timeout's abandon: wakers and drops.

/// One stuck worker and, behind it, A (a driven call polled by a task whose waker runs
/// `on_wake`) then B (a driven call whose caller waits on a thread of its own).
struct Abandon {
    pool: WorkerPool,
    stuck_gate: Arc<Gate>,
    stuck: Vec<JobHandle<()>>,
    a: JobHandle<u32>,
    /// (Kept alive while the scenario runs.)
    _a_waker: Arc<FnWaker>,
    b_told: mpsc::Receiver<Result<u32, JobError>>,
    b_told_flag: Arc<AtomicBool>,
    drops: Arc<AtomicUsize>,
}

fn abandon_setup(
    on_wake: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    a_input_drop: Option<Box<dyn FnOnce() + Send>>,
) -> Abandon {
    let pool = WorkerPool::new(1);
    let (stuck_gate, stuck) = occupy(&pool, 1);
    let drops = Arc::new(AtomicUsize::new(0));
    let p = pool
        .asyncify(|_: Counted| 1u32)
        .retry(Retry::new(2).retry_panics(true));
    let a_input = match a_input_drop {
        Some(f) => Counted::with(&drops, f),
        None => Counted::new(&drops),
    };
    let mut a = p.call(a_input);
    let b = p.call(Counted::new(&drops));
    let b_told_flag = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&b_told_flag);
    let a_waker = FnWaker::new(move || on_wake(f));
    register(&mut a, &Waker::from(Arc::clone(&a_waker)));
    a_waker.armed.store(true, SeqCst);
    let (tx, b_told) = mpsc::channel();
    let f = Arc::clone(&b_told_flag);
    std::thread::spawn(move || {
        let out = w(b);
        f.store(true, SeqCst);
        let _ = tx.send(out);
    });
    std::thread::sleep(Duration::from_millis(20)); // (b's caller parks)
    Abandon {
        pool,
        stuck_gate,
        stuck,
        a,
        _a_waker: a_waker,
        b_told,
        b_told_flag,
        drops,
    }
}

/// A waker that panics when woken in the abandon: the others are told.
#[test]
fn a_panicking_waker_in_the_abandon() {
    common::quiet_planned_panics();
    let mut set = abandon_setup(|_| panic!("planned: waker"), None);
    let _ = set.pool.shutdown_timeout(Duration::from_millis(20));
    let b = set.b_told.recv_timeout(BOUND).expect("b told");
    assert!(b.is_err_and(|e| e.is_shut_down()));
    assert!(matches!(poll_now(&mut set.a, &noop()), Poll::Ready(Err(e)) if e.is_shut_down()));
    assert_eq!(
        set.drops.load(SeqCst),
        4,
        "every input and copy dropped by the return"
    );
    release(&set.stuck_gate, std::mem::take(&mut set.stuck));
    let _ = set.b_told_flag;
}

/// A waker that, woken in the abandon, aborts another driven call (waiting in a backoff on
/// another pool) and drops a third's handle (queued on this pool, behind A).
#[test]
fn a_waker_that_aborts_and_drops_other_calls_in_the_abandon() {
    let other = WorkerPool::new(1);
    let drops = Arc::new(AtomicUsize::new(0));
    let backing = other.asyncify(|_: Counted| 503u32).retry(
        Retry::new(3)
            .backoff(Duration::from_secs(3600), Duration::from_secs(3600))
            .retry_if(|s: &u32| *s == 503),
    );
    let in_backoff = backing.call(Counted::new(&drops));
    spin_until("backoff", || drops.load(SeqCst) == 1);
    let abort = in_backoff.abort_handle();
    let third_slot: Arc<Mutex<Option<JobHandle<u32>>>> = Arc::default();
    let ts = Arc::clone(&third_slot);
    let mut set = abandon_setup(
        move |_| {
            abort.abort();
            drop(common::lock(&ts).take());
        },
        None,
    );
    let p = set
        .pool
        .asyncify(|_: Counted| 1u32)
        .retry(Retry::new(2).retry_panics(true));
    *common::lock(&third_slot) = Some(p.call(Counted::new(&set.drops)));
    let _ = set.pool.shutdown_timeout(Duration::from_millis(20));
    assert!(set
        .b_told
        .recv_timeout(BOUND)
        .expect("b told")
        .is_err_and(|e| e.is_shut_down()));
    assert!(matches!(poll_now(&mut set.a, &noop()), Poll::Ready(Err(e)) if e.is_shut_down()));
    assert!(common::lock(&third_slot).is_none(), "the waker ran");
    assert!(w(in_backoff).is_err_and(|e| e.is_cancelled()));
    assert_eq!(drops.load(SeqCst), 2);
    assert_eq!(
        set.drops.load(SeqCst),
        6,
        "a, b, the third: input and copy each"
    );
    release(&set.stuck_gate, std::mem::take(&mut set.stuck));
    assert_eq!(p.stats().attempts, 1);
}

/// A's input Drop (run after every caller is told) re-enters: shuts the pool down again
/// (blocking, without a limit) where the stuck job waits for B's answer; and in a second run
/// calls shutdown_timeout on a second pool whose own abandoned callers must be told too.
#[test]
fn an_abandoned_inputs_drop_that_shuts_pools_down() {
    // 1. shutdown() of the same pool from the Drop; the stuck job returns once B is told.
    let pool = WorkerPool::new(1);
    let b_told = Arc::new(AtomicBool::new(false));
    let bt = Arc::clone(&b_told);
    let (started_tx, started) = mpsc::channel();
    let stuck = pool.spawn(move || {
        started_tx.send(()).unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while !bt.load(SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    started.recv_timeout(BOUND).unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let prog = pool
        .asyncify(|_: Counted| 1u32)
        .retry(Retry::new(2).retry_panics(true));
    let p2 = pool.clone();
    let a = prog.call(Counted::with(&drops, move || p2.shutdown()));
    let b = prog.call(Counted::new(&drops));
    let bt = Arc::clone(&b_told);
    let b_thread = std::thread::spawn(move || {
        let out = w(b);
        bt.store(true, SeqCst);
        out
    });
    std::thread::sleep(Duration::from_millis(20));
    let closer = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            pool.shutdown_timeout(Duration::from_millis(20))
                .map_err(|e| e.running())
        })
    };
    assert!(b_thread.join().unwrap().is_err_and(|e| e.is_shut_down()));
    let start = Instant::now();
    while !closer.is_finished() && start.elapsed() < BOUND {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        closer.is_finished(),
        "shutdown_timeout hung in the re-entrant Drop"
    );
    assert_eq!(closer.join().unwrap(), Err(1));
    assert!(w(a).is_err_and(|e| e.is_shut_down()));
    w(stuck).unwrap();
    assert_eq!(drops.load(SeqCst), 4);

    // 2. shutdown_timeout of a second pool with its own stuck worker and abandoned callers.
    let second = WorkerPool::new(1);
    let (gate2, stuck2) = occupy(&second, 1);
    let prog2 = second
        .asyncify(|_: u32| 2u32)
        .retry(Retry::new(2).retry_panics(true));
    let c = prog2.call(0);
    let c_thread = std::thread::spawn(move || w(c));
    let pool = WorkerPool::new(1);
    let (gate1, stuck1) = occupy(&pool, 1);
    let prog = pool
        .asyncify(|_: Counted| 1u32)
        .retry(Retry::new(2).retry_panics(true));
    let s2 = second.clone();
    let inner = Arc::new(Mutex::new(None));
    let i2 = Arc::clone(&inner);
    let a = prog.call(Counted::with(&drops, move || {
        *common::lock(&i2) = Some(
            s2.shutdown_timeout(Duration::from_millis(20))
                .map_err(|e| e.running()),
        );
    }));
    let a_thread = std::thread::spawn(move || w(a));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        pool.shutdown_timeout(Duration::from_millis(20))
            .map_err(|e| e.running()),
        Err(1)
    );
    assert!(a_thread.join().unwrap().is_err_and(|e| e.is_shut_down()));
    assert!(c_thread.join().unwrap().is_err_and(|e| e.is_shut_down()));
    assert_eq!(*common::lock(&inner), Some(Err(1)));
    gate1.open();
    gate2.open();
    for s in stuck1.into_iter().chain(stuck2) {
        w(s).unwrap();
    }
}

/// A detached driven call whose attempt is abandoned: all its values gone by the return.
#[test]
fn a_detached_driven_call_in_the_abandoned_queue_is_let_go_of() {
    let pool = WorkerPool::new(1);
    let (gate, stuck) = occupy(&pool, 1);
    let drops = Arc::new(AtomicUsize::new(0));
    let alive = Arc::new(());
    let al = Arc::clone(&alive);
    let p = pool
        .asyncify(move |_: Counted| {
            let _ = &al;
            1u32
        })
        .retry(Retry::new(2).retry_panics(true))
        .timeout(Duration::from_secs(3600));
    p.call(Counted::new(&drops)).detach();
    let _ = pool.shutdown_timeout(Duration::from_millis(10));
    assert_eq!(drops.load(SeqCst), 2, "the detached call's input and copy");
    release(&gate, stuck);
    drop(p);
    pool.shutdown();
    spin_until("the program freed", || Arc::strong_count(&alive) == 1);
}

/// A's input Drop waits on a call of another pool, and aborts a call of this pool waiting in a
/// limit line (already told ShutDown by the close): no hang, one answer each.
#[test]
fn an_abandoned_inputs_drop_that_waits_and_aborts() {
    let other = WorkerPool::new(1);
    let pool = WorkerPool::new(2);
    let (limited, holder, hold_gate, _) = held_limit(&pool);
    let drops = Arc::new(AtomicUsize::new(0));
    let in_line = limited.call(Counted::new(&drops));
    let abort = in_line.abort_handle();
    let (busy_gate, busy) = occupy(&pool, 1);
    let prog = pool
        .asyncify(|_: Counted| 1u32)
        .retry(Retry::new(2).retry_panics(true));
    let got = Arc::new(Mutex::new(None));
    let g = Arc::clone(&got);
    let o = other.clone();
    let a = prog.call(Counted::with(&drops, move || {
        abort.abort();
        *common::lock(&g) = Some(o.spawn(|| 5).wait());
    }));
    let _ = pool.shutdown_timeout(Duration::from_millis(20));
    assert!(w(a).is_err_and(|e| e.is_shut_down()));
    let out = w(in_line);
    assert!(out.as_ref().is_err_and(|e| e.is_shut_down()), "{out:?}");
    assert_eq!(*common::lock(&got), Some(Ok(5)));
    hold_gate.open();
    busy_gate.open();
    let _ = w(holder);
    for b in busy {
        w(b).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The adaptive limit under timeouts and aborts.

#[test]
fn adaptive_limit_under_aborts_and_line_timeouts() {
    let pool = WorkerPool::new(4);
    let gate = Gate::new();
    let inside = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let (g, i, m) = (Arc::clone(&gate), Arc::clone(&inside), Arc::clone(&max));
    let long = pool
        .asyncify(move |_: u32| {
            let now = i.fetch_add(1, SeqCst) + 1;
            m.fetch_max(now, SeqCst);
            g.wait();
            i.fetch_sub(1, SeqCst);
            200u32
        })
        .adaptive_concurrency(2, 8, Overload::when(|s: &u32| *s == 429))
        .timeout(Duration::from_secs(3600));
    // Derived: shares the limit, with a short deadline.
    let short = long.timeout(Duration::from_millis(50));
    assert_eq!(long.stats().concurrency_limit, Some(2));
    let a = long.call(0);
    let b = long.call(1);
    spin_until("two run", || inside.load(SeqCst) == 2);
    // These wait in the line and time out there: not an overload signal.
    let waiting: Vec<_> = (0..3).map(|i| short.call(10 + i)).collect();
    for h in waiting {
        assert!(w(h).is_err_and(|e| e.is_timed_out()));
    }
    assert_eq!(
        long.stats().concurrency_limit,
        Some(2),
        "timeouts in the line lowered the limit"
    );
    // Abort and drop the running attempts: no signal; their slots stay taken until they return.
    a.abort_handle().abort();
    assert!(w(a).is_err_and(|e| e.is_cancelled()));
    drop(b);
    assert_eq!(long.stats().in_flight, 2);
    let c = long.call(2); // waits in the line: the abandoned attempts still hold the slots
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        inside.load(SeqCst),
        2,
        "a third attempt started beside two abandoned ones"
    );
    gate.open();
    assert_eq!(w(c), Ok(200));
    spin_until("all returned", || long.stats().in_flight == 0);
    assert!(max.load(SeqCst) <= 2);
    assert_eq!(short.stats().timed_out, 3);
    let s = long.stats();
    assert_eq!((s.calls, s.attempts, s.timed_out), (3, 3, 0));
    assert_eq!(s.concurrency_limit, Some(2), "aborts moved the limit");
}

// ---------------------------------------------------------------------------------------------
// Stats consistency under a storm of driven calls.

#[test]
fn stats_agree_with_runs_and_answers_in_a_storm() {
    common::quiet_planned_panics();
    let pool = WorkerPool::new(2);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let p = pool
        .asyncify(move |x: u32| {
            r.fetch_add(1, SeqCst);
            if x % 7 == 0 {
                panic!("planned: storm");
            }
            std::thread::sleep(Duration::from_micros(200 * u64::from(x % 5)));
            if x % 3 == 0 {
                503u32
            } else {
                200
            }
        })
        .timeout(Duration::from_millis(15))
        .retry(
            Retry::new(3)
                .backoff(Duration::from_millis(1), Duration::from_millis(4))
                .retry_panics(true)
                .retry_if(|s: &u32| *s == 503),
        )
        .rate_limit(2_000, Duration::from_secs(1))
        .concurrency_limit(2);
    let mut timed_out = 0;
    let mut answered = 0;
    let mut handles = Vec::new();
    for x in 0..400u32 {
        handles.push(p.call(x));
    }
    for h in handles {
        let out = w(h);
        answered += 1;
        if out.as_ref().is_err_and(JobError::is_timed_out) {
            timed_out += 1;
        }
    }
    let s = p.stats();
    assert_eq!(answered, 400);
    assert_eq!(s.calls, 400);
    assert_eq!(s.timed_out, timed_out, "timed_out vs TimedOut answers");
    spin_until("slots back", || p.stats().in_flight == 0);
    // Let the queue drain (expired attempts are dropped by workers).
    assert_eq!(w(pool.spawn(|| ())), Ok(()));
    assert_eq!(w(pool.spawn(|| ())), Ok(()));
    let ran = runs.load(SeqCst) as u64;
    let s = p.stats();
    assert!(s.attempts >= ran, "attempts {} < runs {ran}", s.attempts);
    assert!(s.retries <= s.attempts);
    assert!(
        s.attempts - s.retries <= 400,
        "first attempts {} > calls",
        s.attempts - s.retries
    );
}

/// A waker woken in the abandon calls shutdown_timeout again, on the same pool (and from
/// there, a nested abandon): no hang, every caller told.
#[test]
fn a_waker_in_the_abandon_that_shuts_down_again() {
    let again = Arc::new(Mutex::new(None));
    let pool_slot: Arc<Mutex<Option<WorkerPool>>> = Arc::default();
    let (ps, ag) = (Arc::clone(&pool_slot), Arc::clone(&again));
    let mut set = abandon_setup(
        move |_| {
            let pool = common::lock(&ps).take().expect("the pool");
            *common::lock(&ag) = Some(
                pool.shutdown_timeout(Duration::from_millis(10))
                    .map_err(|e| e.running()),
            );
        },
        None,
    );
    *common::lock(&pool_slot) = Some(set.pool.clone());
    let _ = set.pool.shutdown_timeout(Duration::from_millis(20));
    assert!(set
        .b_told
        .recv_timeout(BOUND)
        .expect("b told")
        .is_err_and(|e| e.is_shut_down()));
    assert!(matches!(poll_now(&mut set.a, &noop()), Poll::Ready(Err(e)) if e.is_shut_down()));
    assert_eq!(
        *common::lock(&again),
        Some(Err(1)),
        "the waker's shutdown_timeout returned"
    );
    assert_eq!(set.drops.load(SeqCst), 4);
    release(&set.stuck_gate, std::mem::take(&mut set.stuck));
}

/// A driven call detached while its attempt runs, then shutdown_timeout: the attempt runs to
/// its end, its output and inputs are dropped, nothing stays behind.
#[test]
fn detached_while_running_across_a_shutdown_timeout() {
    let Running {
        pool,
        gate,
        p,
        drops,
        h,
    } = a_running_driven_call();
    let abort = h.abort_handle();
    h.detach();
    assert_eq!(
        pool.shutdown_timeout(Duration::from_millis(10))
            .map_err(|e| e.running()),
        Err(1)
    );
    assert!(!abort.is_finished());
    gate.open();
    spin_until("finished", || abort.is_finished());
    spin_until("inputs dropped", || drops.load(SeqCst) == 2);
    pool.shutdown();
    let s = p.stats();
    assert_eq!((s.calls, s.attempts, s.retries), (1, 1, 0));
}

/// Aborts racing shutdown_timeout's abandon, round after round: one answer each (Cancelled or
/// ShutDown), no attempt runs, every input dropped.
#[test]
fn aborts_racing_the_abandon() {
    for round in 0..30 {
        let pool = WorkerPool::new(1);
        let (gate, stuck) = occupy(&pool, 1);
        let runs = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&runs);
        let p = pool
            .asyncify(move |_: Counted| {
                r.fetch_add(1, SeqCst);
                1u32
            })
            .retry(Retry::new(2).retry_panics(true))
            .concurrency_limit(4);
        let drops = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..10).map(|_| p.call(Counted::new(&drops))).collect();
        let aborts: Vec<_> = handles.iter().map(JobHandle::abort_handle).collect();
        let aborter = std::thread::spawn(move || {
            for a in aborts.iter().rev() {
                a.abort();
            }
        });
        let closed = pool.shutdown_timeout(Duration::ZERO);
        aborter.join().unwrap();
        assert!(closed.is_err());
        for h in handles {
            let out = w(h);
            assert!(
                out.as_ref()
                    .is_err_and(|e| e.is_cancelled() || e.is_shut_down()),
                "round {round}: {out:?}"
            );
        }
        release(&gate, stuck);
        pool.shutdown();
        assert_eq!(runs.load(SeqCst), 0, "round {round}");
        spin_until("inputs", || drops.load(SeqCst) == 20);
        let s = p.stats();
        assert_eq!((s.calls, s.in_flight), (10, 0), "round {round}");
    }
}

/// Callers in a limit line whose wakers, when their call is aborted, panic or abort the next
/// call in the line (a chain): one answer each, the line empties, the slot holder's return
/// lets the last caller in.
#[test]
fn wakers_in_a_limit_line_that_panic_or_abort_the_next() {
    common::quiet_planned_panics();
    let pool = WorkerPool::new(2);
    let (limited, holder, gate, runs) = held_limit(&pool);
    let drops = Arc::new(AtomicUsize::new(0));
    let mut calls: Vec<JobHandle<u32>> =
        (0..5).map(|_| limited.call(Counted::new(&drops))).collect();
    let aborts: Vec<AbortHandle> = calls.iter().map(JobHandle::abort_handle).collect();
    let wakers: Vec<Arc<FnWaker>> = (0..4)
        .map(|i| {
            let next = aborts[i + 1].clone();
            FnWaker::new(move || {
                if i == 3 {
                    panic!("planned: a waker in the line");
                }
                // 0 aborts 1, 1 aborts 2, 2 aborts 3; 3 panics; 4 stays.
                if i < 2 {
                    next.abort();
                } else {
                    next.abort();
                    panic!("planned: after aborting the next");
                }
            })
        })
        .collect();
    for (h, wk) in calls.iter_mut().zip(&wakers) {
        register(h, &Waker::from(Arc::clone(wk)));
        wk.armed.store(true, SeqCst);
    }
    aborts[0].abort();
    let mut outs: Vec<_> = Vec::new();
    let last = calls.pop().unwrap();
    for h in calls {
        outs.push(w(h));
    }
    assert!(
        outs.iter()
            .all(|o| o.as_ref().is_err_and(JobError::is_cancelled)),
        "{outs:?}"
    );
    assert_eq!(drops.load(SeqCst), 4);
    for wk in &wakers {
        assert_eq!(wk.woken.load(SeqCst), 1);
    }
    gate.open();
    assert_eq!(w(holder), Ok(1));
    assert_eq!(w(last), Ok(1));
    assert_eq!(runs.load(SeqCst), 2);
    let s = limited.stats();
    assert_eq!((s.calls, s.attempts, s.in_flight), (6, 2, 0));
}

/// An input whose Clone panics on the worker (the copy for a third attempt, after a backoff)
/// under a limit of one: the call answers Panicked, the slot comes back, the next call runs.
#[test]
fn a_panicking_clone_on_the_worker_under_a_limit() {
    common::quiet_planned_panics();
    struct Bad(Arc<AtomicUsize>);
    impl Clone for Bad {
        fn clone(&self) -> Self {
            if self.0.fetch_add(1, SeqCst) == 1 {
                panic!("planned: the second copy");
            }
            Bad(Arc::clone(&self.0))
        }
    }
    let pool = WorkerPool::new(1);
    let p = pool
        .asyncify(|_: Bad| 503u32)
        .retry(
            Retry::new(3)
                .backoff(Duration::from_millis(1), Duration::from_millis(1))
                .retry_if(|s: &u32| *s == 503),
        )
        .concurrency_limit(1);
    let out = w(p.call(Bad(Arc::default())));
    assert!(out.as_ref().is_err_and(JobError::is_panic), "{out:?}");
    spin_until("slot back", || p.stats().in_flight == 0);
    let s = p.stats();
    assert_eq!((s.calls, s.attempts, s.retries), (1, 2, 1));
    let out = w(p.call(Bad(Arc::new(AtomicUsize::new(5)))));
    assert_eq!(out, Ok(503));
}
