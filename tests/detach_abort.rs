//! Letting a job go (`JobHandle::detach`) and cancelling it from elsewhere (`AbortHandle`).

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::Arc;
use std::task::{Context, Poll};

use asyncify_pool::{is_cancelled, WorkerPool};
use common::{
    bounded_pool, occupy, quiet_planned_panics, spin_until, wait, within_hang, CountingWaker, Gate,
    Tracked, HANG,
};

#[test]
fn a_detached_job_runs_to_its_end_and_its_output_is_dropped() {
    let pool = WorkerPool::new(1);
    let (gate, _busy) = occupy(&pool, 1);
    let drops = Arc::new(AtomicUsize::new(0));
    let (ran_tx, ran) = mpsc::channel();
    let d = Arc::clone(&drops);
    // Detached while still queued: a dropped handle would cancel it here.
    pool.spawn(move || {
        ran_tx.send(()).unwrap();
        Tracked(d)
    })
    .detach();
    gate.open();
    ran.recv_timeout(HANG).expect("the detached job never ran");
    spin_until("the detached output's drop", || drops.load(SeqCst) == 1);
    assert_eq!(pool.stats().cancelled, 0);
    // Dropped on the worker, which is the only thread that could: the caller never looks.
    let (thread_tx, thread_rx) = mpsc::channel();
    struct NamesItsDropThread(mpsc::Sender<Option<String>>);
    impl Drop for NamesItsDropThread {
        fn drop(&mut self) {
            let _ = self
                .0
                .send(std::thread::current().name().map(str::to_owned));
        }
    }
    pool.spawn(move || NamesItsDropThread(thread_tx)).detach();
    let dropped_on = thread_rx
        .recv_timeout(HANG)
        .expect("the output was never dropped");
    assert_eq!(dropped_on, Some("asyncify-0".to_owned()));
}

/// A detached job that waits for room in a full bounded queue is queued once room frees up,
/// with nobody polling its handle.
#[test]
fn a_detached_job_waiting_for_room_is_queued_when_room_frees() {
    let pool = bounded_pool(1, 1);
    let (gate, _busy) = occupy(&pool, 1);
    let filler = pool.spawn(|| "filler");
    let (ran_tx, ran) = mpsc::channel();
    let waiting = pool.spawn(move || ran_tx.send("detached").unwrap());
    assert!(waiting.is_waiting_for_room());
    waiting.detach();
    gate.open();
    assert_eq!(ran.recv_timeout(HANG), Ok("detached"));
    assert_eq!(wait(filler), Ok("filler"));
}

#[test]
fn a_detached_job_waiting_for_room_at_shutdown_is_dropped_unrun() {
    let pool = bounded_pool(1, 1);
    let (gate, _busy) = occupy(&pool, 1);
    let _filler = pool.spawn(|| ());
    let drops = Arc::new(AtomicUsize::new(0));
    let (d, ran) = (Arc::clone(&drops), Arc::new(AtomicUsize::new(0)));
    let r = Arc::clone(&ran);
    let held = Tracked(d);
    pool.spawn(move || {
        let _held = &held;
        r.fetch_add(1, SeqCst);
    })
    .detach();
    let closer = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.shutdown())
    };
    spin_until("the pool to close", || pool.is_shut_down());
    gate.open();
    closer.join().unwrap();
    // It never entered the queue: it was dropped, not run, and nothing leaked.
    spin_until("the detached job's closure to be dropped", || {
        drops.load(SeqCst) == 1
    });
    assert_eq!(ran.load(SeqCst), 0);
}

#[test]
fn a_detached_job_whose_output_panics_on_drop_costs_no_worker() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    pool.spawn(|| common::PanicOnDrop("a detached output"))
        .detach();
    assert_eq!(wait(pool.spawn(|| 5)), Ok(5));
    common::assert_every_worker_runs(&pool, 1);
}

#[test]
fn aborting_a_queued_job_means_it_never_runs() {
    let pool = WorkerPool::new(1);
    let (gate, _busy) = occupy(&pool, 1);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&ran);
    let queued = pool.spawn(move || r.fetch_add(1, SeqCst));
    let abort = queued.abort_handle();
    assert!(!abort.is_finished());
    // From another thread, through a shared reference.
    let shared = Arc::new(abort);
    let s = Arc::clone(&shared);
    std::thread::spawn(move || s.abort()).join().unwrap();
    assert!(wait(queued).unwrap_err().is_cancelled());
    assert!(shared.is_finished());
    gate.open();
    assert_eq!(wait(pool.spawn(|| 1)), Ok(1));
    assert_eq!(ran.load(SeqCst), 0);
    assert_eq!(pool.stats().cancelled, 1);
}

/// A running job: the handle resolves at once (while the job still runs), the job sees
/// `is_cancelled()`, and its output is discarded when it returns.
#[test]
fn aborting_a_running_job_resolves_its_handle_at_once_and_discards_the_output() {
    let pool = WorkerPool::new(1);
    let release = Gate::new();
    let (started_tx, started) = mpsc::channel();
    let (saw_tx, saw) = mpsc::channel();
    let drops = Arc::new(AtomicUsize::new(0));
    let (r, d) = (Arc::clone(&release), Arc::clone(&drops));
    let handle = pool.spawn(move || {
        started_tx.send(()).unwrap();
        spin_until("the abort to reach the job", is_cancelled);
        r.wait();
        saw_tx.send(is_cancelled()).unwrap();
        Tracked(d)
    });
    started.recv_timeout(HANG).unwrap();
    let abort = handle.abort_handle();
    abort.abort();
    // The job is still inside (held by `release`), and yet the handle answers.
    assert!(wait(handle).unwrap_err().is_cancelled());
    assert!(!abort.is_finished(), "the job still runs");
    release.open();
    assert_eq!(saw.recv_timeout(HANG), Ok(true));
    spin_until("the discarded output's drop", || drops.load(SeqCst) == 1);
    spin_until("the job to finish", || abort.is_finished());
}

/// An executor awaiting the handle is woken by the abort.
#[test]
fn an_abort_wakes_the_task_that_awaits_the_handle() {
    let pool = WorkerPool::new(1);
    let release = Gate::new();
    let r = Arc::clone(&release);
    let mut handle = pool.spawn(move || r.wait());
    let (counter, waker) = CountingWaker::new();
    let mut cx = Context::from_waker(&waker);
    assert!(std::pin::Pin::new(&mut handle).poll(&mut cx).is_pending());
    handle.abort_handle().abort();
    spin_until("the abort's wake-up", || counter.count() >= 1);
    assert!(matches!(
        std::pin::Pin::new(&mut handle).poll(&mut cx),
        Poll::Ready(Err(e)) if e.is_cancelled()
    ));
    release.open();
}

#[test]
fn aborting_a_finished_job_keeps_its_result() {
    let pool = WorkerPool::new(1);
    let done = pool.spawn(|| 9);
    let abort = done.abort_handle();
    spin_until("the job to finish", || abort.is_finished());
    abort.abort();
    abort.abort();
    assert_eq!(wait(done), Ok(9));
}

/// A job waiting for room in a full bounded queue: aborted, its handle resolves without
/// waiting for the room, and it never runs.
#[test]
fn aborting_a_job_waiting_for_room_resolves_without_waiting_for_room() {
    let pool = bounded_pool(1, 1);
    let (gate, _busy) = occupy(&pool, 1);
    let filler = pool.spawn(|| 1);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&ran);
    let waiting = pool.spawn(move || r.fetch_add(1, SeqCst));
    assert!(waiting.is_waiting_for_room());
    waiting.abort_handle().abort();
    // The queue is still full (the worker is blocked), and yet it answers.
    assert!(wait(waiting).unwrap_err().is_cancelled());
    gate.open();
    assert_eq!(wait(filler), Ok(1));
    assert_eq!(wait(pool.spawn(|| 2)), Ok(2));
    assert_eq!(ran.load(SeqCst), 0);
}

/// Waited on from inside a job of the same pool while another worker runs it, an aborted job
/// releases its waiter at once. (A job the waiter started itself runs on the waiter's own
/// stack, so the waiter returns when that job does: the abort reaches it as `is_cancelled()`.)
#[test]
fn an_abort_releases_a_waiter_inside_the_pool() {
    let pool = WorkerPool::new(2);
    let release = Gate::new();
    let (abort_tx, abort_rx) = mpsc::channel();
    let (p, r) = (pool.clone(), Arc::clone(&release));
    let outer = pool.spawn(move || {
        let (started_tx, started) = mpsc::channel();
        let inner = p.spawn(move || {
            started_tx.send(()).unwrap();
            r.wait();
        });
        // Started by the other worker, not by this waiter.
        started.recv_timeout(HANG).unwrap();
        abort_tx.send(inner.abort_handle()).unwrap();
        inner.wait()
    });
    abort_rx.recv_timeout(HANG).unwrap().abort();
    assert!(wait(outer).unwrap().unwrap_err().is_cancelled());
    release.open();
}

/// A waker that panics when the abort wakes it costs the aborting thread nothing.
#[test]
fn a_panicking_waker_woken_by_an_abort_is_contained() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let release = Gate::new();
    let r = Arc::clone(&release);
    let mut handle = pool.spawn(move || r.wait());
    let waker = common::panicking_waker();
    let _ = std::pin::Pin::new(&mut handle).poll(&mut Context::from_waker(&waker));
    handle.abort_handle().abort();
    release.open();
    let out = within_hang("the aborted handle", move || handle.wait());
    assert!(out.unwrap_err().is_cancelled());
    common::assert_every_worker_runs(&pool, 1);
}

/// Aborted while it runs, and the job returns before the caller looks: the caller still finds
/// `Cancelled` (the cell once closed itself then, and the handle's next poll panicked).
#[test]
fn a_handle_polled_after_its_aborted_job_returned_finds_cancelled() {
    let pool = WorkerPool::new(1);
    let release = Gate::new();
    let (started_tx, started) = mpsc::channel();
    let r = Arc::clone(&release);
    let handle = pool.spawn(move || {
        started_tx.send(()).unwrap();
        r.wait();
        "discarded"
    });
    started.recv_timeout(HANG).unwrap();
    let abort = handle.abort_handle();
    abort.abort();
    release.open();
    spin_until("the aborted job to return", || abort.is_finished());
    assert!(wait(handle).unwrap_err().is_cancelled());
}

/// A job its waiter runs itself (out of line, on its own stack) and that is aborted meanwhile:
/// the waiter's `wait` returns `Cancelled` when the job returns (it once got a panic).
#[test]
fn an_aborted_job_its_waiter_runs_itself_gives_the_waiter_cancelled() {
    let pool = WorkerPool::new(1);
    let (abort_tx, abort_rx) = mpsc::channel();
    let (running_tx, running) = mpsc::channel();
    let p = pool.clone();
    let outer = pool.spawn(move || {
        let inner = p.spawn(move || {
            running_tx.send(()).unwrap();
            spin_until("the abort", is_cancelled);
            "discarded"
        });
        abort_tx.send(inner.abort_handle()).unwrap();
        // The only worker waits: it runs `inner` itself, on its own stack.
        inner.wait()
    });
    let abort = abort_rx.recv_timeout(HANG).unwrap();
    running.recv_timeout(HANG).unwrap();
    abort.abort();
    assert!(wait(outer).unwrap().unwrap_err().is_cancelled());
}

/// Polled while it waits for room (its waker then sits in the room), then aborted: the task
/// is woken, and a blocked `wait()` returns, although the queue stays full.
#[test]
fn an_abort_wakes_a_polled_job_waiting_for_room() {
    let pool = bounded_pool(1, 1);
    let (gate, _busy) = occupy(&pool, 1);
    let _filler = pool.spawn(|| ());
    let mut polled = pool.spawn(|| ());
    assert!(polled.is_waiting_for_room());
    let (counter, waker) = CountingWaker::new();
    assert!(std::pin::Pin::new(&mut polled)
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    polled.abort_handle().abort();
    spin_until("the abort's wake-up", || counter.count() >= 1);
    assert!(matches!(
        std::pin::Pin::new(&mut polled).poll(&mut Context::from_waker(&waker)),
        Poll::Ready(Err(e)) if e.is_cancelled()
    ));

    let blocked = pool.spawn(|| ());
    let abort = blocked.abort_handle();
    let (out_tx, out) = mpsc::channel();
    let waiter = std::thread::spawn(move || out_tx.send(blocked.wait()).unwrap());
    abort.abort();
    let got = out
        .recv_timeout(HANG)
        .expect("wait() was not released by the abort");
    assert!(got.unwrap_err().is_cancelled());
    waiter.join().unwrap();
    gate.open();
}

/// A detached job's output is dropped when the job ends, even while an `AbortHandle` keeps
/// the job's cell alive.
#[test]
fn an_abort_handle_does_not_keep_a_detached_output_alive() {
    let pool = WorkerPool::new(1);
    let drops = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&drops);
    let handle = pool.spawn(move || Tracked(d));
    let abort = handle.abort_handle();
    handle.detach();
    spin_until("the detached output's drop", || drops.load(SeqCst) == 1);
    assert!(abort.is_finished());
}

/// A job handed to a spare thread (a deep nested wait) and aborted there: its waiter keeps its
/// place in the pool until the spare is done, so a one-thread pool never runs two jobs.
#[test]
fn an_abort_of_a_job_on_a_spare_thread_keeps_the_bound() {
    use std::sync::atomic::AtomicBool;
    static CHILD_RUNNING: AtomicBool = AtomicBool::new(false);
    #[inline(never)]
    fn deep(
        pool: &WorkerPool,
        levels: usize,
        abort_tx: &mpsc::Sender<asyncify_pool::AbortHandle>,
        release: &Arc<Gate>,
    ) -> Result<(), asyncify_pool::JobError> {
        let pad = [0u8; 16 * 1024];
        std::hint::black_box(&pad);
        if levels > 0 {
            return deep(pool, levels - 1, abort_tx, release);
        }
        let r = Arc::clone(release);
        let child = pool.spawn(move || {
            CHILD_RUNNING.store(true, SeqCst);
            r.wait();
            CHILD_RUNNING.store(false, SeqCst);
        });
        abort_tx.send(child.abort_handle()).unwrap();
        child.wait()
    }
    let pool = common::one_thread_with_a_1m_stack();
    let release = Gate::new();
    let (abort_tx, abort_rx) = mpsc::channel();
    let (p, r) = (pool.clone(), Arc::clone(&release));
    let mut outer = pool.spawn(move || deep(&p, 40, &abort_tx, &r));
    let abort = abort_rx.recv_timeout(HANG).unwrap();
    spin_until("the child to run on the spare", || {
        CHILD_RUNNING.load(SeqCst)
    });
    abort.abort();
    let next = pool.spawn(|| CHILD_RUNNING.load(SeqCst));
    // While the spare runs the child, the waiter must not return (nor free its place).
    assert!(
        outer
            .wait_timeout(std::time::Duration::from_millis(200))
            .is_none(),
        "the waiter returned while its spare still ran the aborted job"
    );
    release.open();
    assert!(wait(outer).unwrap().unwrap_err().is_cancelled());
    assert_eq!(wait(next), Ok(false), "a second job ran beside the spare");
}

/// A dropped handle's job that still runs is not finished, whichever way its call goes: a
/// plain call, a call with a deadline, one with a retry policy on the short way, and one
/// driven by its call (a policy that retries panics). `AbortHandle::is_finished` turns true
/// only once the program returns.
#[test]
fn a_running_job_whose_handle_was_dropped_is_not_finished_until_it_returns() {
    for kind in ["call", "timeout", "retry", "driven"] {
        let pool = WorkerPool::new(1);
        let release = Gate::new();
        let (started_tx, started) = mpsc::channel();
        let started_tx = std::sync::Mutex::new(started_tx);
        let r = Arc::clone(&release);
        let program = pool.asyncify(move |_: u32| {
            started_tx.lock().unwrap().send(()).unwrap();
            r.wait();
        });
        let handle = match kind {
            "call" => program.call(0),
            "timeout" => program.timeout(HANG).call(0),
            "retry" => program.retry(asyncify_pool::Retry::new(2)).call(0),
            _ => program
                .retry(asyncify_pool::Retry::new(2).retry_panics(true))
                .call(0),
        };
        started.recv_timeout(HANG).unwrap();
        let abort = handle.abort_handle();
        drop(handle);
        let early = abort.is_finished();
        release.open();
        assert!(!early, "{kind}: finished while the program still ran");
        spin_until("the job to finish", || abort.is_finished());
    }
}
