//! Calls with options that pass their gates at once go the short way: the caller's handle is
//! on the attempt itself. These tests hold that way to the options' promises where it differs
//! from a call that had to wait: a detached call keeps its deadline, an abort and a deadline
//! count once between them, a retry takes over from the first attempt without losing an abort
//! or a deadline that comes meanwhile, and a full bounded queue still times out.

mod common;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use asyncify_pool::{is_cancelled, Retry, WorkerPool};
use common::{bounded_pool, occupy, spin_until, wait, Gate, HANG};

/// A detached call with a deadline: its running attempt still sees `is_cancelled()` at the
/// deadline, with nobody holding the handle.
#[test]
fn a_detached_calls_deadline_still_cuts_it_off() {
    let pool = WorkerPool::new(1);
    let (tx, rx) = mpsc::channel();
    let (started_tx, started_rx) = mpsc::channel();
    let slow = pool
        .asyncify(move |_: ()| {
            started_tx.send(()).unwrap();
            let start = Instant::now();
            while !is_cancelled() && start.elapsed() < HANG {
                std::thread::sleep(Duration::from_millis(1));
            }
            tx.send(is_cancelled()).unwrap();
        })
        .timeout(Duration::from_millis(50));
    slow.call(()).detach();
    started_rx.recv_timeout(HANG).unwrap();
    assert!(
        rx.recv_timeout(HANG).unwrap(),
        "the detached call's attempt never saw is_cancelled()"
    );
    spin_until("the timed-out call counted", || slow.stats().timed_out == 1);
}

/// An abort of a running timed call resolves it to `Cancelled` at once; the deadline that
/// comes later changes nothing, and the call is not counted as timed out.
#[test]
fn an_abort_before_the_deadline_wins_and_is_not_a_timeout() {
    let pool = WorkerPool::new(1);
    let release = Gate::new();
    let (started_tx, started_rx) = mpsc::channel();
    let rel = Arc::clone(&release);
    let slow = pool
        .asyncify(move |_: ()| {
            started_tx.send(()).unwrap();
            rel.wait();
            1
        })
        .timeout(Duration::from_millis(30));
    let handle = slow.call(());
    let abort = handle.abort_handle();
    started_rx.recv_timeout(HANG).unwrap();
    abort.abort();
    let err = wait(handle).unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    std::thread::sleep(Duration::from_millis(60)); // past the deadline
    release.open();
    spin_until("the aborted attempt returns", || abort.is_finished());
    assert_eq!(slow.stats().timed_out, 0);
    assert_eq!(slow.stats().attempts, 1);
}

/// A deadline that cuts off a queued attempt and one that cuts off a running attempt each
/// count once, and the queued one never runs.
#[test]
fn each_deadline_counts_once_and_a_queued_attempt_never_runs() {
    let pool = WorkerPool::new(1);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let release = Gate::new();
    let rel = Arc::clone(&release);
    let (started_tx, started_rx) = mpsc::channel();
    let program = pool
        .asyncify(move |block: bool| {
            r.fetch_add(1, SeqCst);
            if block {
                started_tx.send(()).unwrap();
                rel.wait();
            }
        })
        .timeout(Duration::from_millis(40));
    let running = program.call(true);
    started_rx.recv_timeout(HANG).unwrap();
    let queued = program.call(false);
    assert!(wait(running).unwrap_err().is_timed_out());
    assert!(wait(queued).unwrap_err().is_timed_out());
    release.open();
    wait(pool.spawn(|| ())).unwrap();
    assert_eq!(
        runs.load(SeqCst),
        1,
        "the queued attempt ran after its deadline"
    );
    let stats = program.stats();
    assert_eq!((stats.calls, stats.attempts, stats.timed_out), (2, 2, 2));
}

/// A first attempt that the policy retries hands over to a driven call: the second attempt
/// runs, both are counted, and the answer is the second's.
#[test]
fn a_retried_first_attempt_hands_over() {
    let pool = WorkerPool::new(2);
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let program = pool
        .asyncify(move |x: u32| x + c.fetch_add(1, SeqCst))
        .timeout(Duration::from_secs(600))
        .retry(Retry::new(3).retry_if(|out: &u32| *out == 10));
    assert_eq!(wait(program.call(10)).unwrap(), 11);
    let stats = program.stats();
    assert_eq!((stats.attempts, stats.retries, stats.timed_out), (2, 1, 0));
}

/// An abort that comes during the backoff after the first attempt reaches the call that took
/// over: the handle resolves to `Cancelled` at once and no second attempt runs.
#[test]
fn an_abort_during_the_backoff_reaches_the_call_that_took_over() {
    let pool = WorkerPool::new(1);
    let runs = Arc::new(AtomicU32::new(0));
    let r = Arc::clone(&runs);
    let program = pool.asyncify(move |_: ()| r.fetch_add(1, SeqCst)).retry(
        Retry::new(2)
            .backoff(HANG, HANG)
            .jitter(false)
            .retry_if(|_: &u32| true),
    );
    let mut handle = program.call(());
    let abort = handle.abort_handle();
    spin_until("the first attempt ran", || runs.load(SeqCst) == 1);
    // The handle must look at the first attempt's outcome to hand over: poll it once.
    assert!(handle.wait_timeout(Duration::from_millis(20)).is_none());
    let before = Instant::now();
    abort.abort();
    let err = wait(handle).unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert!(before.elapsed() < HANG, "the abort waited for the backoff");
    assert_eq!(runs.load(SeqCst), 1);
}

/// The deadline that comes during the second attempt, made by the call that took over from the
/// first, cuts that attempt off: the caller gets `TimedOut` at once and the attempt sees
/// `is_cancelled()`.
#[test]
fn the_deadline_reaches_the_attempts_of_the_call_that_took_over() {
    let pool = WorkerPool::new(1);
    let attempts = Arc::new(AtomicU32::new(0));
    let a = Arc::clone(&attempts);
    let (saw_tx, saw_rx) = mpsc::channel();
    let program = pool
        .asyncify(move |_: ()| {
            if a.fetch_add(1, SeqCst) == 0 {
                return 503u16;
            }
            let start = Instant::now();
            while !is_cancelled() && start.elapsed() < HANG {
                std::thread::sleep(Duration::from_millis(1));
            }
            saw_tx.send(is_cancelled()).unwrap();
            200
        })
        .timeout(Duration::from_millis(60))
        .retry(
            Retry::new(2)
                .backoff(Duration::from_millis(5), Duration::from_millis(5))
                .jitter(false)
                .retry_if(|s: &u16| *s == 503),
        );
    let err = wait(program.call(())).unwrap_err();
    assert!(err.is_timed_out(), "{err:?}");
    assert!(
        saw_rx.recv_timeout(HANG).unwrap(),
        "the second attempt ran on"
    );
    let stats = program.stats();
    assert_eq!((stats.attempts, stats.retries, stats.timed_out), (2, 1, 1));
}

/// A timed call whose first attempt finds a full bounded queue still gets `TimedOut` at its
/// deadline, while waiting for room.
#[test]
fn a_timed_call_waiting_for_room_still_times_out() {
    let pool = bounded_pool(1, 1);
    let (gate, _held) = occupy(&pool, 1);
    let _filler = pool.spawn(|| ()); // the queue's one place
    let program = pool.asyncify(|x: u8| x).timeout(Duration::from_millis(40));
    let err = wait(program.call(1)).unwrap_err();
    assert!(err.is_timed_out(), "{err:?}");
    gate.open();
    assert_eq!(wait(program.call(2)), Ok(2));
}

/// A call with a retry policy and a deadline whose first attempt finds a full bounded queue
/// waits for room, then makes its attempts: the input reaches both, and the retry is counted.
#[test]
fn a_retried_call_waiting_for_room_makes_its_attempts() {
    let pool = bounded_pool(1, 1);
    let (gate, held) = occupy(&pool, 1);
    let filler = pool.spawn(|| ()); // the queue's one place
    let runs = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&runs);
    let program = pool
        .asyncify(move |x: u32| x + counted.fetch_add(1, SeqCst))
        .timeout(HANG)
        .retry(Retry::new(3).retry_if(|out: &u32| *out == 10));
    let handle = program.call(10);
    assert_eq!(
        runs.load(SeqCst),
        0,
        "an attempt ran with no room in the queue"
    );
    gate.open();
    assert_eq!(wait(handle), Ok(11), "the second attempt's output");
    assert_eq!(runs.load(SeqCst), 2);
    let stats = program.stats();
    assert_eq!((stats.attempts, stats.retries), (2, 1));
    drop((held, filler));
}

/// Thousands of timed calls that finish in time are none of them timed out, and a later short
/// deadline on the same pool still fires (that no entry stays behind on the timer is checked
/// inside the crate, in `control::direct`'s tests).
#[test]
fn finished_timed_calls_leave_the_timer_clean() {
    let pool = WorkerPool::new(2);
    let program = pool.asyncify(|x: u32| x).timeout(Duration::from_secs(3600));
    let handles: Vec<_> = (0..5_000).map(|i| program.call(i)).collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(wait(h), Ok(i as u32));
    }
    let short = pool
        .asyncify(|_: ()| {
            let start = Instant::now();
            while !is_cancelled() && start.elapsed() < HANG {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .timeout(Duration::from_millis(30));
    assert!(wait(short.call(())).unwrap_err().is_timed_out());
    assert_eq!(program.stats().timed_out, 0);
}

/// A running attempt cut off by its deadline, then its handle detached: the call is counted
/// timed out once.
#[test]
fn a_detach_after_the_deadline_counts_one_timeout() {
    let pool = WorkerPool::new(1);
    let (started_tx, started_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let program = pool
        .asyncify(move |_: ()| {
            started_tx.send(()).unwrap();
            let start = Instant::now();
            while !is_cancelled() && start.elapsed() < HANG {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(20)); // still running after the cut
            done_tx.send(()).unwrap();
        })
        .timeout(Duration::from_millis(20));
    let handle = program.call(());
    started_rx.recv_timeout(HANG).unwrap();
    spin_until("the deadline cut the call off", || handle.is_finished());
    handle.detach();
    done_rx.recv_timeout(HANG).unwrap();
    wait(pool.spawn(|| ())).unwrap();
    assert_eq!(program.stats().timed_out, 1);
}

/// A handle detached while an `AbortHandle` keeps the call alive: the deadline rings once, and
/// the call is counted timed out once.
#[test]
fn a_detach_with_an_abort_handle_held_counts_one_timeout() {
    let pool = WorkerPool::new(1);
    let (done_tx, done_rx) = mpsc::channel();
    let program = pool
        .asyncify(move |_: ()| {
            let start = Instant::now();
            while !is_cancelled() && start.elapsed() < HANG {
                std::thread::sleep(Duration::from_millis(1));
            }
            done_tx.send(is_cancelled()).unwrap();
        })
        .timeout(Duration::from_millis(30));
    let handle = program.call(());
    let abort = handle.abort_handle();
    handle.detach();
    assert!(
        done_rx.recv_timeout(HANG).unwrap(),
        "the deadline never cut it off"
    );
    spin_until("the timed-out call counted", || {
        program.stats().timed_out >= 1
    });
    std::thread::sleep(Duration::from_millis(50)); // a second ring would count by now
    assert_eq!(program.stats().timed_out, 1);
    drop(abort);
}

/// A handle dropped while the retry classifier runs on the worker: no attempt is made for
/// nobody.
#[test]
fn a_handle_dropped_during_the_classifier_gets_no_retry() {
    let pool = WorkerPool::new(2);
    let runs = Arc::new(AtomicU32::new(0));
    let r = Arc::clone(&runs);
    let (in_classifier_tx, in_classifier_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let in_classifier_tx = std::sync::Mutex::new(in_classifier_tx);
    let go_rx = std::sync::Mutex::new(go_rx);
    let program = pool
        .asyncify(move |_: u32| {
            r.fetch_add(1, SeqCst);
            0u32
        })
        .retry(
            Retry::new(3)
                .backoff(Duration::ZERO, Duration::ZERO)
                .retry_if(move |_: &u32| {
                    let _ = in_classifier_tx.lock().unwrap().send(());
                    let _ = go_rx.lock().unwrap().recv_timeout(HANG);
                    true
                }),
        );
    let handle = program.call(1);
    in_classifier_rx.recv_timeout(HANG).unwrap();
    drop(handle);
    go_tx.send(()).unwrap();
    wait(pool.spawn(|| ())).unwrap();
    wait(pool.spawn(|| ())).unwrap();
    let stats = program.stats();
    assert_eq!(
        (runs.load(SeqCst), stats.attempts, stats.retries),
        (1, 1, 0)
    );
}

/// A queued call whose deadline passes is counted timed out at once (by the timer, or by the
/// worker that takes it late), though its caller never polls it in between.
#[test]
fn a_timed_out_queued_call_is_counted_without_a_poll() {
    let pool = WorkerPool::new(1);
    let (gate, _held) = occupy(&pool, 1);
    let program = pool.asyncify(|x: u8| x).timeout(Duration::from_millis(5));
    let mut handle = program.call(1);
    // Late enough that a worker taking it finds the deadline passed: the timer revokes it
    // first, unless the worker gets there in the same instant; either way one count.
    std::thread::sleep(Duration::from_millis(30));
    gate.open();
    wait(pool.spawn(|| ())).unwrap();
    assert!(handle.is_finished());
    assert_eq!(program.stats().timed_out, 1);
    assert!(handle
        .wait_timeout(HANG)
        .unwrap()
        .unwrap_err()
        .is_timed_out());
}

/// An overload classifier that blocks holds no slot: another call of a limit of one runs
/// meanwhile.
#[test]
fn a_blocking_overload_classifier_holds_no_slot() {
    let pool = WorkerPool::new(2);
    let (in_classifier_tx, in_classifier_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let in_classifier_tx = std::sync::Mutex::new(in_classifier_tx);
    let go_rx = std::sync::Mutex::new(go_rx);
    let program = pool.asyncify(|x: u32| x).adaptive_concurrency(
        1,
        1,
        asyncify_pool::Overload::when(move |x: &u32| {
            if *x == 1 {
                let _ = in_classifier_tx.lock().unwrap().send(());
                let _ = go_rx.lock().unwrap().recv_timeout(HANG);
            }
            false
        }),
    );
    let first = program.call(1);
    in_classifier_rx.recv_timeout(HANG).unwrap();
    let mut second = program.call(2);
    let got = second.wait_timeout(Duration::from_secs(10));
    go_tx.send(()).unwrap();
    assert_eq!(
        got,
        Some(Ok(2)),
        "the second call waited for the first's classifier"
    );
    assert_eq!(wait(first), Ok(1));
}

/// A program whose first output the retry classifier holds until the test lets go, counting
/// the classifier's runs and the program's.
struct HeldClassifier {
    in_classifier: mpsc::Receiver<()>,
    go: mpsc::Sender<()>,
    classified: Arc<AtomicU32>,
    runs: Arc<AtomicU32>,
}

fn held_classifier(
    pool: &WorkerPool,
    timeout: Duration,
) -> (
    asyncify_pool::AsyncProgram<impl asyncify_pool::Program<u32, Output = u32>>,
    HeldClassifier,
) {
    let (in_tx, in_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (in_tx, go_rx) = (std::sync::Mutex::new(in_tx), std::sync::Mutex::new(go_rx));
    let classified = Arc::new(AtomicU32::new(0));
    let runs = Arc::new(AtomicU32::new(0));
    let (c, r) = (Arc::clone(&classified), Arc::clone(&runs));
    let program = pool
        .asyncify(move |_: u32| {
            if r.fetch_add(1, SeqCst) == 0 {
                503u32
            } else {
                200
            }
        })
        .timeout(timeout)
        .retry(
            Retry::new(2)
                .backoff(Duration::ZERO, Duration::ZERO)
                .retry_if(move |out: &u32| {
                    if c.fetch_add(1, SeqCst) == 0 {
                        let _ = in_tx.lock().unwrap().send(());
                        let _ = go_rx.lock().unwrap().recv_timeout(HANG);
                    }
                    *out == 503
                }),
        );
    let held = HeldClassifier {
        in_classifier: in_rx,
        go: go_tx,
        classified,
        runs,
    };
    (program, held)
}

/// An abort while the worker classifies the first output: the handle resolves to `Cancelled`,
/// and no second attempt is made.
#[test]
fn an_abort_while_the_first_output_is_classified() {
    let pool = WorkerPool::new(2);
    let (program, held) = held_classifier(&pool, Duration::from_secs(600));
    let handle = program.call(0);
    let abort = handle.abort_handle();
    held.in_classifier.recv_timeout(HANG).unwrap();
    abort.abort();
    held.go.send(()).unwrap();
    assert!(wait(handle).unwrap_err().is_cancelled());
    spin_until("the attempt returned", || abort.is_finished());
    wait(pool.spawn(|| ())).unwrap();
    let stats = program.stats();
    assert_eq!(
        (held.runs.load(SeqCst), stats.attempts, stats.retries),
        (1, 1, 0)
    );
}

/// The deadline while the worker classifies the first output: `TimedOut` at the deadline,
/// counted once, and no second attempt.
#[test]
fn a_deadline_while_the_first_output_is_classified() {
    let pool = WorkerPool::new(2);
    let (program, held) = held_classifier(&pool, Duration::from_millis(30));
    let handle = program.call(0);
    held.in_classifier.recv_timeout(HANG).unwrap();
    assert!(wait(handle).unwrap_err().is_timed_out());
    assert_eq!(
        program.stats().timed_out,
        1,
        "the caller found its timeout uncounted"
    );
    held.go.send(()).unwrap();
    wait(pool.spawn(|| ())).unwrap();
    wait(pool.spawn(|| ())).unwrap();
    let stats = program.stats();
    assert_eq!(
        (held.runs.load(SeqCst), stats.attempts, stats.timed_out),
        (1, 1, 1)
    );
}

/// A detach while the worker classifies the first output: the call that adopts the attempt
/// makes the retry, and no output is classified twice.
#[test]
fn a_detach_while_the_first_output_is_classified() {
    let pool = WorkerPool::new(2);
    let (program, held) = held_classifier(&pool, Duration::from_secs(600));
    let handle = program.call(0);
    held.in_classifier.recv_timeout(HANG).unwrap();
    handle.detach();
    held.go.send(()).unwrap();
    spin_until("the retry ran", || held.runs.load(SeqCst) == 2);
    spin_until("its output classified", || {
        held.classified.load(SeqCst) == 2
    });
    wait(pool.spawn(|| ())).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        held.classified.load(SeqCst),
        2,
        "an output was classified twice"
    );
    let stats = program.stats();
    assert_eq!((stats.attempts, stats.retries), (2, 1));
}

/// An `AbortHandle` taken before a detach reaches the call that adopted the attempt: an abort
/// during that call's backoff makes no more attempts.
#[test]
fn an_abort_reaches_the_call_that_adopted_a_detached_attempt() {
    let pool = WorkerPool::new(1);
    let runs = Arc::new(AtomicU32::new(0));
    let r = Arc::clone(&runs);
    let release = Gate::new();
    let rel = Arc::clone(&release);
    let (started_tx, started_rx) = mpsc::channel();
    let (ended_tx, ended_rx) = mpsc::channel();
    let program = pool
        .asyncify(move |_: ()| {
            if r.fetch_add(1, SeqCst) == 0 {
                started_tx.send(()).unwrap();
                rel.wait();
                ended_tx.send(()).unwrap();
            }
            503u16
        })
        .retry(
            Retry::new(3)
                .backoff(Duration::from_millis(200), Duration::from_millis(200))
                .jitter(false)
                .retry_if(|s: &u16| *s == 503),
        );
    let handle = program.call(());
    let abort = handle.abort_handle();
    started_rx.recv_timeout(HANG).unwrap();
    handle.detach(); // the first attempt still runs: a call adopts it
    release.open();
    ended_rx.recv_timeout(HANG).unwrap();
    // Into the adopting call's backoff (200 ms): the first attempt's cell is done by now.
    std::thread::sleep(Duration::from_millis(50));
    abort.abort();
    spin_until("the call ended", || abort.is_finished());
    std::thread::sleep(Duration::from_millis(400)); // past the backoff
    wait(pool.spawn(|| ())).unwrap();
    assert_eq!(runs.load(SeqCst), 1, "the aborted call kept retrying");
    assert_eq!(program.stats().attempts, 1);
}

/// An input whose `Clone` closes the pool (the retry policy copies it on the caller's thread).
struct Closing(WorkerPool);

impl Clone for Closing {
    fn clone(&self) -> Self {
        drop(self.0.shutdown_async());
        Closing(self.0.clone())
    }
}

/// A call whose input's copy for the retries (user code) closes the pool is refused: the copy
/// is made before the call takes its place in the queue, which finds the pool closed.
#[test]
fn a_call_whose_input_closes_the_pool_is_refused() {
    let pool = WorkerPool::new(1);
    let gate = Gate::new();
    let g = Arc::clone(&gate);
    let busy = pool.spawn(move || g.wait());
    let program = pool
        .asyncify(|_: Closing| {
            let start = Instant::now();
            while !is_cancelled() && start.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(1));
            }
            if is_cancelled() {
                "cut off"
            } else {
                "ran past its deadline"
            }
        })
        .timeout(Duration::from_millis(50))
        .retry(Retry::new(2).retry_if(|_: &&str| false));
    let handle = program.call(Closing(pool.clone()));
    gate.open();
    let out = wait(handle);
    assert!(matches!(&out, Err(e) if e.is_shut_down()), "{out:?}");
    assert_eq!(wait(busy), Ok(()));
}

/// A running call whose handle is detached after its pool closed keeps its deadline: the
/// call that adopts the attempt puts the deadline on the timer again after the handle took
/// its own entry off, when the timer's thread may have left for lack of entries (it ran
/// uncut: the timer refused every entry after the close).
#[test]
fn a_call_detached_after_the_close_keeps_its_deadline() {
    for round in 0..5 {
        let pool = WorkerPool::new(1);
        let (started_tx, started) = mpsc::channel();
        let started_tx = std::sync::Mutex::new(started_tx);
        let (cut_tx, cut) = mpsc::channel();
        let cut_tx = std::sync::Mutex::new(cut_tx);
        let program = pool
            .asyncify(move |_: u32| {
                let _ = started_tx.lock().unwrap().send(());
                let start = Instant::now();
                while !is_cancelled() && start.elapsed() < Duration::from_millis(1500) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let _ = cut_tx.lock().unwrap().send(is_cancelled());
            })
            .timeout(Duration::from_millis(300))
            .retry(Retry::new(2).retry_if(|_: &()| false));
        let handle = program.call(1);
        started.recv_timeout(HANG).expect("the attempt started");
        drop(pool.shutdown_async());
        std::thread::sleep(Duration::from_millis(30)); // the timer has told its entry
        handle.detach();
        assert!(
            cut.recv_timeout(HANG).expect("the attempt ended"),
            "round {round}: the detached attempt ran past its deadline uncut"
        );
    }
}

/// A call whose deadline passed before its job started never runs its program, and the pool
/// counts that job `cancelled`, like one called off in the queue, not `completed`: whether the
/// timer cut it off in the queue or the worker that took it found the deadline passed (with a
/// deadline of a nanosecond on an idle pool, the worker is usually first). With and without a
/// retry policy, whose first attempt goes another way.
#[test]
fn a_job_past_its_deadline_before_it_starts_is_counted_cancelled_not_completed() {
    const CALLS: u64 = 200;
    let plain = |_: u32| -> u32 { panic!("a call past its deadline ran its program") };
    for retried in [false, true] {
        let pool = WorkerPool::new(1);
        let program = pool.asyncify(plain).timeout(Duration::from_nanos(1));
        let program = if retried {
            program.retry(Retry::new(3))
        } else {
            program
        };
        for i in 0..CALLS {
            assert!(wait(program.call(i as u32)).unwrap_err().is_timed_out());
        }
        // Counted as the worker leaves the job (after the caller may have its answer), and a
        // job the timer cut off when a worker takes its entry off the queue.
        spin_until("every job counted", || {
            let s = pool.stats();
            s.completed + s.panicked + s.cancelled == CALLS
        });
        let stats = pool.stats();
        assert_eq!(
            (stats.completed, stats.panicked, stats.cancelled),
            (0, 0, CALLS),
            "retry policy: {retried}"
        );
        assert_eq!(program.stats().timed_out, CALLS, "retry policy: {retried}");
    }
}

/// A detached call with a deadline and a retry policy, adopted by another call while its first
/// attempt runs, lets go of everything once it ends, whether its deadline cuts it off or an
/// `AbortHandle` does: the program (and what it holds) is freed with the pool and the program.
#[test]
fn an_adopted_call_cut_off_by_its_deadline_or_an_abort_leaves_nothing_behind() {
    for abort in [false, true] {
        let alive = Arc::new(());
        let pool = WorkerPool::new(1);
        let (started_tx, started) = mpsc::channel();
        let started_tx = std::sync::Mutex::new(started_tx);
        let held = Arc::clone(&alive);
        let program = pool
            .asyncify(move |_: u32| {
                let _held = &held;
                let _ = started_tx.lock().unwrap().send(());
                let start = Instant::now();
                while !is_cancelled() && start.elapsed() < HANG {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
            .timeout(Duration::from_millis(if abort { 3_600_000 } else { 100 }))
            .retry(Retry::new(2).retry_if(|_: &()| true));
        let handle = program.call(1);
        started.recv_timeout(HANG).expect("the attempt started");
        let aborter = handle.abort_handle();
        handle.detach(); // the attempt runs: a call adopts it
        if abort {
            aborter.abort();
        }
        spin_until("the call finished", || aborter.is_finished());
        drop((aborter, program));
        pool.shutdown();
        spin_until("the program was freed", || Arc::strong_count(&alive) == 1);
    }
}

/// A dropped call with a retry policy lets go of its input's copy at once, not when a worker
/// gets to its place in the queue: the input (whose `Drop` is user code) goes on the caller's
/// thread, with the handle.
#[test]
fn a_dropped_retried_call_in_the_queue_drops_its_inputs_with_the_handle() {
    #[derive(Clone)]
    struct Input(Arc<AtomicUsize>);
    impl Drop for Input {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    let pool = WorkerPool::new(1);
    let (gate, busy) = occupy(&pool, 1);
    let program = pool
        .asyncify(|_: Input| ())
        .timeout(Duration::from_secs(3600))
        .retry(Retry::new(2));
    let dropped = Arc::new(AtomicUsize::new(0));
    let handle = program.call(Input(Arc::clone(&dropped)));
    // The input and its copy for a second attempt are both in the call.
    assert_eq!(dropped.load(SeqCst), 0);
    let me = std::thread::current().id();
    drop(handle);
    assert_eq!(
        dropped.load(SeqCst),
        2,
        "the call's input or its copy outlived the handle on {me:?}"
    );
    gate.open();
    for h in busy {
        assert_eq!(wait(h), Ok(()));
    }
}

/// A retried call that ends while its first attempt is still queued (its deadline came, or an
/// `AbortHandle` aborted it) lets go of its input and the input's copy when its caller has the
/// answer, not when a worker gets to its place in the queue.
#[test]
fn a_retried_call_that_ends_in_the_queue_lets_go_of_its_inputs_with_the_answer() {
    #[derive(Clone)]
    struct Input(Arc<AtomicUsize>);
    impl Drop for Input {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    for abort in [false, true] {
        let pool = WorkerPool::new(1);
        let (gate, busy) = occupy(&pool, 1);
        let program = pool
            .asyncify(|_: Input| ())
            .timeout(Duration::from_millis(if abort { 3_600_000 } else { 50 }))
            .retry(Retry::new(2));
        let dropped = Arc::new(AtomicUsize::new(0));
        let handle = program.call(Input(Arc::clone(&dropped)));
        let aborter = handle.abort_handle();
        if abort {
            aborter.abort();
        }
        let out = wait(handle);
        assert!(
            matches!(&out, Err(e) if e.is_timed_out() || e.is_cancelled()),
            "{out:?}"
        );
        assert_eq!(
            dropped.load(SeqCst),
            2,
            "abort {abort}: the input or its copy outlived the answer"
        );
        drop(aborter);
        gate.open();
        for h in busy {
            assert_eq!(wait(h), Ok(()));
        }
    }
}

/// A caller that has its `TimedOut` finds exactly its own timeout counted in the program's
/// stats, at once: whichever of the timer and the worker that took the job cuts it off counts
/// it, as it wins, and the other counts nothing (before, both counted and the loser took its
/// count back, so a caller could read one too many). With an `AbortHandle` racing the deadline
/// as well, a call answered `Cancelled` is never counted timed out.
#[test]
fn a_timed_out_caller_reads_exactly_the_timeouts_answered() {
    for threads in [1, 2] {
        let pool = WorkerPool::new(threads);
        let program = pool
            .asyncify(|_: u32| -> u32 { panic!("a call past its deadline ran its program") })
            .timeout(Duration::from_nanos(1));
        timeouts_counted_as_answered(
            |i| program.call(i),
            || program.stats().timed_out,
            &format!("timed on {threads} threads"),
        );
    }
}

/// Makes 3,000 calls, a third of them with an abort racing, and checks after each answer that
/// `timed_out()` reads the `TimedOut` answers so far (an `Ok` answer must be 0).
fn timeouts_counted_as_answered(
    call: impl Fn(u32) -> asyncify_pool::JobHandle<u32>,
    timed_out: impl Fn() -> u64,
    what: &str,
) {
    let mut answered = 0;
    for i in 0..3000u32 {
        let handle = call(i);
        if i % 3 == 0 {
            let aborter = handle.abort_handle();
            std::thread::spawn(move || aborter.abort());
        }
        match wait(handle) {
            Ok(out) => assert_eq!(out, 0, "{what}, call {i}"),
            Err(e) if e.is_timed_out() => answered += 1,
            Err(e) => assert!(e.is_cancelled(), "{what}, call {i}: {e:?}"),
        }
        assert_eq!(
            timed_out(),
            answered,
            "{what}, call {i}: not the timeouts answered"
        );
    }
}

/// The same with a retry policy (the call owns its attempts and the alarm is the call's):
/// a caller that has its answer finds exactly the timeouts answered counted, whether the
/// deadline passes before a worker takes the attempt (a 1 ns deadline: the alarm and the
/// worker race to end it) or as the program ends (a deadline about as long as the program:
/// the alarm races the answer), or in a retry the first attempt handed over. Before, the
/// alarm counted first and took its count back when
/// its cut lost, or counted after the worker's `TimedOut` was already visible.
#[test]
fn a_retried_caller_reads_exactly_the_timeouts_answered() {
    for threads in [1, 2] {
        let pool = WorkerPool::new(threads);
        let never: fn(u32) -> u32 = |_| panic!("a call past its deadline ran its program");
        let spin: fn(u32) -> u32 = |_| {
            let end = Instant::now() + Duration::from_micros(20);
            while Instant::now() < end {
                std::hint::spin_loop();
            }
            0
        };
        let expired = pool
            .asyncify(never)
            .timeout(Duration::from_nanos(1))
            .retry(Retry::new(2));
        let racing = pool
            .asyncify(spin)
            .timeout(Duration::from_micros(20))
            .retry(Retry::new(2).retry_if(|_: &u32| false));
        // Every attempt asks for another: the deadline lands in an attempt or a backoff of the
        // call the first attempt hands over to.
        let handed = pool
            .asyncify(spin)
            .timeout(Duration::from_micros(60))
            .retry(
                Retry::new(3)
                    .backoff(Duration::from_micros(10), Duration::from_micros(10))
                    .retry_if(|_: &u32| true),
            );
        for (name, program) in [
            ("expired", &expired),
            ("racing", &racing),
            ("handed over", &handed),
        ] {
            timeouts_counted_as_answered(
                |i| program.call(i),
                || program.stats().timed_out,
                &format!("{name} on {threads} threads"),
            );
        }
    }
}
