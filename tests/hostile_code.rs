//! User code that panics where the pool does not expect it (a destructor, a panic payload's
//! destructor, a hook, a waker, a batch callback) must never cost a worker, a permit or an
//! answer. After each attack the pool must still run a job on every worker at once, and
//! `shutdown()` must return.

mod common;

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::task::Context;
use std::time::{Duration, Instant};

use asyncify_pool::settings::{self, Overrides};
use asyncify_pool::{JobError, WorkerPool};
use common::{
    assert_every_worker_runs, assert_shutdown_returns, in_child, occupy, panicking_waker,
    quiet_planned_panics, wait, within_hang, CountingWaker, Gate, PanicOnDrop, PoisonPayload, HANG,
};
use futures::Stream;

/// A value whose destructor panics with a [`PoisonPayload`]: whoever catches that panic and
/// drops what it caught panics once more.
#[derive(Debug)]
struct DropPanicsWithPoison;

impl Drop for DropPanicsWithPoison {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            std::panic::panic_any(PoisonPayload);
        }
    }
}

fn whole_after_attack(pool: &WorkerPool, threads: usize) {
    assert_every_worker_runs(pool, threads);
    assert_shutdown_returns(pool);
    assert_eq!(pool.stats().live_threads, 0);
}

// --- a. panic payloads ------------------------------------------------------------------------

#[test]
fn a_program_panicking_with_a_poisoned_payload() {
    quiet_planned_panics();
    let pool = WorkerPool::new(2);
    for _ in 0..4 {
        let err = wait(pool.spawn(|| -> u8 { std::panic::panic_any(PoisonPayload) })).unwrap_err();
        assert!(err.is_panic(), "{err:?}");
    }
    let program = pool.asyncify(|x: u32| {
        if x % 3 == 0 {
            std::panic::panic_any(PoisonPayload);
        }
        x
    });
    let result = within_hang("the batch", move || {
        program.batch(0..9).max_errors(9).wait()
    });
    assert_eq!((result.done(), result.failed()), (6, 3));
    assert!(result.results()[3].as_ref().unwrap_err().is_panic());
    whole_after_attack(&pool, 2);
    assert_eq!(pool.stats().panicked, 7);
}

// --- b. outputs thrown away by the worker -----------------------------------------------------

/// Runs `make` on the only busy worker after its caller has dropped the handle, so the worker
/// itself throws the output away.
fn abandoned_output<T: Send + 'static>(pool: &WorkerPool, make: fn() -> T) {
    let (started_tx, started_rx) = mpsc::channel();
    let go = Gate::new();
    let g = go.clone();
    let abandoned = pool.spawn(move || {
        started_tx.send(()).unwrap();
        g.wait();
        make()
    });
    started_rx
        .recv_timeout(HANG)
        .expect("no worker took the job: an earlier attack cost a worker");
    drop(abandoned);
    go.open();
}

#[test]
fn an_abandoned_output_whose_drop_panics() {
    quiet_planned_panics();
    let pool = WorkerPool::new(2);
    for _ in 0..3 {
        abandoned_output(&pool, || PanicOnDrop("an abandoned output"));
    }
    whole_after_attack(&pool, 2);
}

#[test]
fn an_abandoned_output_whose_drop_panics_with_a_poisoned_payload() {
    quiet_planned_panics();
    let pool = WorkerPool::new(2);
    for _ in 0..3 {
        abandoned_output(&pool, || DropPanicsWithPoison);
    }
    whole_after_attack(&pool, 2);
}

// --- c. inputs dropped unrun ------------------------------------------------------------------

#[test]
fn an_input_whose_drop_panics_in_a_job_cancelled_before_it_starts() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let (gate, busy) = occupy(&pool, 1);
    let input = PanicOnDrop("a cancelled job's input");
    let cancelled = pool.spawn(move || drop(input));
    // The caller's thread drops it: the panic must not escape the handle's drop.
    let dropped = catch_unwind(AssertUnwindSafe(move || drop(cancelled)));
    assert!(dropped.is_ok(), "dropping the handle panicked");
    gate.open();
    for h in busy {
        assert_eq!(wait(h), Ok(()));
    }
    whole_after_attack(&pool, 1);
    assert_eq!(pool.stats().cancelled, 1);
}

#[test]
fn an_input_whose_drop_panics_in_a_job_abandoned_at_shutdown() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let (gate, busy) = occupy(&pool, 1);
    let mut queued: Vec<_> = (0..3)
        .map(|i| {
            let input = PanicOnDrop("an abandoned job's input");
            pool.spawn(move || {
                drop(input);
                i
            })
        })
        .collect();
    let (counter, waker) = CountingWaker::new();
    assert!(Pin::new(&mut queued[1])
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    let timed_out = catch_unwind(AssertUnwindSafe(|| pool.shutdown_timeout(Duration::ZERO)));
    let timed_out = timed_out.expect("shutdown_timeout panicked dropping the abandoned queue");
    assert_eq!(timed_out.unwrap_err().running(), 1);
    assert!(
        counter.count() >= 1,
        "the abandoned job's caller was never woken"
    );
    for h in queued {
        assert!(wait(h).unwrap_err().is_shut_down());
    }
    gate.open();
    for h in busy {
        assert_eq!(wait(h), Ok(()));
    }
    assert_shutdown_returns(&pool);
}

#[test]
fn an_input_whose_drop_panics_with_a_poisoned_payload_in_a_job_abandoned_at_shutdown() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let (gate, busy) = occupy(&pool, 1);
    let mut queued: Vec<_> = (0..3)
        .map(|i| {
            let input = DropPanicsWithPoison;
            pool.spawn(move || {
                drop(input);
                i
            })
        })
        .collect();
    let counters: Vec<_> = queued
        .iter_mut()
        .map(|h| {
            let (counter, waker) = CountingWaker::new();
            assert!(Pin::new(h)
                .poll(&mut Context::from_waker(&waker))
                .is_pending());
            counter
        })
        .collect();
    let timed_out = catch_unwind(AssertUnwindSafe(|| pool.shutdown_timeout(Duration::ZERO)));
    let timed_out = timed_out.expect("shutdown_timeout panicked dropping the abandoned queue");
    assert!(timed_out.is_err());
    for (i, counter) in counters.iter().enumerate() {
        assert!(
            counter.count() >= 1,
            "the caller of abandoned job {i} was never woken"
        );
    }
    for h in queued {
        assert!(wait(h).unwrap_err().is_shut_down());
    }
    gate.open();
    for h in busy {
        assert_eq!(wait(h), Ok(()));
    }
    assert_shutdown_returns(&pool);
}

// --- d. overrides released on the worker ------------------------------------------------------

#[test]
fn an_override_whose_drop_panics_released_on_the_worker() {
    quiet_planned_panics();
    let pool = WorkerPool::new(2);
    for _ in 0..3 {
        let (started_tx, started_rx) = mpsc::channel();
        let go = Gate::new();
        let g = go.clone();
        let overrides = Overrides::new().with("hostile", Arc::new(PanicOnDrop("an override")));
        let handle = settings::context(overrides, || {
            pool.spawn(move || {
                assert!(settings::current().contains_key("hostile"));
                started_tx.send(()).unwrap();
                g.wait();
            })
        });
        // The context has ended and the caller lets go while the job runs: the job's captured
        // overrides are the last reference, and the worker releases them.
        started_rx
            .recv_timeout(HANG)
            .expect("no worker took the job: an earlier attack cost a worker");
        drop(handle);
        go.open();
    }
    whole_after_attack(&pool, 2);
}

// --- e. hooks ---------------------------------------------------------------------------------

#[test]
fn on_thread_start_panicking_with_a_poisoned_payload() {
    quiet_planned_panics();
    let pool = WorkerPool::builder()
        .threads(2)
        .on_thread_start(|_| std::panic::panic_any(PoisonPayload))
        .build()
        .unwrap();
    whole_after_attack(&pool, 2);
}

#[test]
fn on_thread_stop_panicking_with_a_poisoned_payload() {
    quiet_planned_panics();
    let stopped = Arc::new(AtomicUsize::new(0));
    let s = stopped.clone();
    let pool = WorkerPool::builder()
        .threads(2)
        .on_thread_stop(move |_| {
            s.fetch_add(1, SeqCst);
            std::panic::panic_any(PoisonPayload);
        })
        .build()
        .unwrap();
    // A retiring worker runs the hook too.
    pool.set_threads(3).unwrap();
    assert_every_worker_runs(&pool, 3);
    pool.set_threads(2).unwrap();
    whole_after_attack(&pool, 2);
    assert_eq!(stopped.load(SeqCst), 3);
}

// --- f. wakers of handles waiting for room in a full bounded queue ----------------------------

#[test]
fn a_panicking_waker_waiting_for_room_when_room_frees() {
    quiet_planned_panics();
    let pool = WorkerPool::builder()
        .threads(2)
        .queue_capacity(1)
        .build()
        .unwrap();
    let (gate, busy) = occupy(&pool, 2);
    let queued = pool.spawn(|| 1);
    let mut hostile = pool.spawn(|| 2);
    assert!(hostile.is_waiting_for_room());
    assert!(Pin::new(&mut hostile)
        .poll(&mut Context::from_waker(&panicking_waker()))
        .is_pending());
    let mut counted = pool.spawn(|| 3);
    let (counter, waker) = CountingWaker::new();
    assert!(Pin::new(&mut counted)
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    // Another waiter, blocked in `wait` on a thread of its own.
    let blocked = pool.spawn(|| 4);
    let waiter = std::thread::spawn(move || wait(blocked));

    gate.open(); // room frees: the panicking waker is woken first
    for h in busy {
        assert_eq!(wait(h), Ok(()));
    }
    assert_eq!(wait(queued), Ok(1), "the job queued before the full queue");
    let deadline = Instant::now() + HANG;
    while counter.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the waker after the panicking one was never woken"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(wait(hostile), Ok(2));
    assert_eq!(wait(counted), Ok(3));
    assert_eq!(waiter.join().unwrap(), Ok(4));
    whole_after_attack(&pool, 2);
}

#[test]
fn a_panicking_waker_waiting_for_room_at_shutdown() {
    quiet_planned_panics();
    let pool = WorkerPool::builder()
        .threads(1)
        .queue_capacity(1)
        .build()
        .unwrap();
    let (gate, busy) = occupy(&pool, 1);
    let queued = pool.spawn(|| 1);
    let mut hostile = pool.spawn(|| 2);
    assert!(Pin::new(&mut hostile)
        .poll(&mut Context::from_waker(&panicking_waker()))
        .is_pending());
    let mut counted = pool.spawn(|| 3);
    let (counter, waker) = CountingWaker::new();
    assert!(Pin::new(&mut counted)
        .poll(&mut Context::from_waker(&waker))
        .is_pending());

    // `shutdown` wakes the handles waiting for room (no room will come); it joins the busy
    // worker, so it runs on a thread of its own.
    let (done_tx, done_rx) = mpsc::channel();
    let closer = pool.clone();
    std::thread::spawn(move || {
        let outcome = catch_unwind(AssertUnwindSafe(|| closer.shutdown()));
        let _ = done_tx.send(outcome.is_ok());
    });
    let deadline = Instant::now() + HANG;
    while counter.count() == 0 {
        if let Ok(returned) = done_rx.try_recv() {
            assert!(
                returned,
                "shutdown panicked on the waker of a handle waiting for room"
            );
            panic!("shutdown returned while a worker was busy");
        }
        assert!(
            Instant::now() < deadline,
            "shutdown never woke the waker after the panicking one"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    gate.open();
    assert_eq!(
        done_rx.recv_timeout(HANG),
        Ok(true),
        "shutdown panicked or hung"
    );
    for h in busy {
        assert_eq!(wait(h), Ok(()));
    }
    assert_eq!(wait(queued), Ok(1), "accepted before the shutdown: it runs");
    assert!(wait(hostile).unwrap_err().is_shut_down());
    assert!(wait(counted).unwrap_err().is_shut_down());
}

// --- g. wakers of ordinary handles ------------------------------------------------------------

#[test]
fn a_panicking_waker_on_a_handle_whose_job_completes() {
    quiet_planned_panics();
    let pool = WorkerPool::new(2);
    for i in 0..4u32 {
        let go = Gate::new();
        let g = go.clone();
        let mut handle = pool.spawn(move || {
            g.wait();
            i
        });
        assert!(Pin::new(&mut handle)
            .poll(&mut Context::from_waker(&panicking_waker()))
            .is_pending());
        go.open();
        assert_eq!(wait(handle), Ok(i));
    }
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.panicked), (4, 0), "{stats:?}");
    whole_after_attack(&pool, 2);
    let stats = pool.stats();
    assert_eq!(
        (stats.completed, stats.panicked, stats.running),
        (4 + 2, 0, 0)
    );
}

#[test]
fn a_panicking_waker_on_an_awaited_batch() {
    quiet_planned_panics();
    let pool = WorkerPool::new(2);
    let go = Gate::new();
    let g = go.clone();
    let program = pool.asyncify(move |x: u32| {
        g.wait();
        x * 10
    });
    let mut batch = program.batch(0..6).into_future();
    // The driver leaves the panicking waker for the first job that reports.
    assert!(Pin::new(&mut batch)
        .poll(&mut Context::from_waker(&panicking_waker()))
        .is_pending());
    go.open();
    // Let the first item report (and meet the panicking waker) before anyone polls again.
    let deadline = Instant::now() + HANG;
    while pool.stats().completed + pool.stats().panicked == 0 {
        assert!(Instant::now() < deadline, "no item finished");
        std::thread::sleep(Duration::from_millis(1));
    }
    let result = within_hang("the awaited batch", move || pollster::block_on(batch));
    let expected: Vec<_> = (0..6).map(|x| Ok(x * 10)).collect();
    assert_eq!(result.results(), expected.as_slice());
    whole_after_attack(&pool, 2);
    let stats = pool.stats();
    assert_eq!(
        (stats.completed, stats.panicked),
        (6 + 2, 0),
        "every item (and the two probes) ran and returned: {stats:?}"
    );
}

// --- h, i. batch callbacks --------------------------------------------------------------------

/// Pulls every item from a blocking completions iterator, catching panics out of `next()`;
/// returns the items by index and the number of panics.
fn drain_catching<I: Iterator<Item = (usize, Result<u32, JobError>)>>(
    items: &mut I,
) -> (BTreeMap<usize, Result<u32, JobError>>, usize) {
    let mut seen = BTreeMap::new();
    let mut panics = 0;
    loop {
        match catch_unwind(AssertUnwindSafe(|| items.next())) {
            Ok(Some((index, result))) => {
                assert!(seen.insert(index, result).is_none(), "item {index} twice");
            }
            Ok(None) => return (seen, panics),
            Err(_) => {
                panics += 1;
                assert!(panics < 20, "next() keeps panicking");
            }
        }
    }
}

#[test]
fn a_fail_if_that_panics_on_one_item() {
    in_child("a_fail_if_that_panics_on_one_item", || {
        quiet_planned_panics();
        let pool = WorkerPool::new(2);
        let program = pool.asyncify(|x: u32| x * 10);
        let mut items = program
            .batch(0..20)
            .fail_if(|out: &u32| {
                assert!(*out != 70, "planned: fail_if panics on one item");
                false
            })
            .completions()
            .into_iter();
        // The panic may come out of `next()` once, or be caught and counted by the batch.
        let (seen, panics) = drain_catching(&mut items);
        assert!(panics <= 1, "{panics} panics");
        for x in (0..20).filter(|x| *x != 7) {
            assert_eq!(seen.get(&(x as usize)), Some(&Ok(x * 10)), "item {x}");
        }
        let progress = items.get_ref().progress();
        assert_eq!(progress.total, 20);
        assert_eq!(progress.finished(), 20, "{progress:?}");
        whole_after_attack(&pool, 2);
    });
}

#[test]
fn an_on_progress_that_panics() {
    in_child("an_on_progress_that_panics", || {
        quiet_planned_panics();
        let pool = WorkerPool::new(2);
        let program = pool.asyncify(|x: u32| x * 10);
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let mut items = program
            .batch(0..20)
            .on_progress(move |_| {
                assert!(
                    c.fetch_add(1, SeqCst) != 0,
                    "planned: on_progress panics once"
                );
            })
            .completions()
            .into_iter();
        // The panic may come out of `next()` once, or be caught by the batch.
        let (seen, panics) = drain_catching(&mut items);
        assert!(panics <= 1, "{panics} panics");
        let expected: BTreeMap<_, _> = (0..20u32).map(|x| (x as usize, Ok(x * 10))).collect();
        assert_eq!(seen, expected);
        assert_eq!(items.get_ref().progress().done, 20);

        // Driven inside a job, the panic fails that job (or is caught), and nothing else.
        let inner = program.clone();
        let outcome = wait(pool.spawn(move || {
            let mut first = true;
            inner
                .batch(0..20)
                .on_progress(move |_| {
                    assert!(!std::mem::take(&mut first), "planned: on_progress in a job");
                })
                .wait()
                .done()
        }));
        match outcome {
            Ok(done) => assert_eq!(done, 20),
            Err(err) => assert!(err.is_panic(), "{err:?}"),
        }
        whole_after_attack(&pool, 2);
    });
}

/// A batch dropped midway still holds inputs it has not submitted: each is dropped through
/// the guard, one at a time, so that inputs whose `Drop` panics neither unwind into the
/// caller's drop of the batch nor, two of them, abort the process. (In a child: a second
/// panic while unwinding from the first aborts.)
#[test]
fn dropping_a_batch_midway_with_unsubmitted_inputs_whose_drop_panics() {
    in_child(
        "dropping_a_batch_midway_with_unsubmitted_inputs_whose_drop_panics",
        || {
            quiet_planned_panics();
            let pool = WorkerPool::new(1);
            let (gate, busy) = occupy(&pool, 1);
            let program = pool.asyncify(std::mem::forget::<PanicOnDrop>);
            let inputs = (0..4)
                .map(|_| PanicOnDrop("a batch input"))
                .collect::<Vec<_>>();
            let mut stream = program.batch(inputs).concurrency(1).completions();
            // One poll: item 0 is submitted (queued behind the busy worker), the rest wait.
            assert!(Pin::new(&mut stream)
                .poll_next(&mut Context::from_waker(std::task::Waker::noop()))
                .is_pending());
            let dropped = catch_unwind(AssertUnwindSafe(move || drop(stream)));
            assert!(dropped.is_ok(), "dropping the batch panicked");
            gate.open();
            for h in busy {
                assert_eq!(wait(h), Ok(()));
            }
            whole_after_attack(&pool, 1);
        },
    );
}

/// `wait()` and `.await` give the batch's result although its callbacks hold values whose
/// `Drop` panics (both of them: in a child, since two panics at once abort).
#[test]
fn a_batch_result_is_not_lost_to_callbacks_dropped_with_the_batch() {
    in_child(
        "a_batch_result_is_not_lost_to_callbacks_dropped_with_the_batch",
        || {
            quiet_planned_panics();
            let pool = WorkerPool::new(2);
            let program = pool.asyncify(|x: u32| x);
            let batch = || {
                let (a, b) = (
                    PanicOnDrop("on_progress's capture"),
                    PanicOnDrop("fail_if's"),
                );
                program
                    .batch(0..5)
                    .on_progress(move |_| {
                        let _ = &a;
                    })
                    .fail_if(move |_: &u32| {
                        let _ = &b;
                        false
                    })
            };
            let waited = catch_unwind(AssertUnwindSafe(|| batch().wait()));
            assert_eq!(waited.expect("wait() panicked").done(), 5);
            let awaited = catch_unwind(AssertUnwindSafe(|| {
                pollster::block_on(async { batch().await })
            }));
            assert_eq!(awaited.expect(".await panicked").done(), 5);
            whole_after_attack(&pool, 2);
        },
    );
}

/// A job waited on from inside another job runs out of line, and its queue entry, popped
/// later, is the last owner of the job's context: a settings value whose `Drop` panics is
/// released there, on the worker.
#[test]
fn a_settings_value_whose_drop_panics_released_by_a_husk() {
    quiet_planned_panics();
    in_child(
        "a_settings_value_whose_drop_panics_released_by_a_husk",
        || {
            let pool = WorkerPool::new(1);
            let p = pool.clone();
            let outer = pool.spawn(move || {
                let hostile = Overrides::new().with("v", Arc::new(PanicOnDrop("planned: husk")));
                settings::context(hostile, || p.spawn(|| 1).wait())
            });
            assert_eq!(wait(outer), Ok(Ok(1)));
            whole_after_attack(&pool, 1);
        },
    );
}

/// The caller takes its result while its handle is the last owner of the job's context, whose
/// settings value panics when dropped: the result is not lost to that panic.
#[test]
fn a_result_is_not_lost_to_a_settings_value_dropped_with_it() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let p = pool.clone();
    let outer = pool.spawn(move || {
        let hostile = Overrides::new().with("v", Arc::new(PanicOnDrop("planned: with result")));
        let child = settings::context(hostile, || p.spawn(|| 41));
        child.wait().map(|x| x + 1)
    });
    assert_eq!(wait(outer), Ok(Ok(42)));
    whole_after_attack(&pool, 1);
}

// --- j. user code after a job, on its worker, that waits on the pool --------------------------

/// An output whose `Drop` waits on another job of its pool, and sends what it got.
struct WaitsOnDrop(WorkerPool, mpsc::Sender<Result<u32, JobError>>);

impl Drop for WaitsOnDrop {
    fn drop(&mut self) {
        let out = self.0.spawn(|| 7u32).wait();
        let _ = self.1.send(out);
    }
}

/// The worker drops a detached job's output after the job, still in the job's place in the
/// pool; a `Drop` that waits on a job of the one-thread pool gets its answer (the worker runs
/// that job under the same place). It once parked for good: the worker was no longer "in a
/// job", so the wait asked for a place of its own, and the only one was its own.
#[test]
fn a_detached_outputs_drop_that_waits_on_its_pool_does_not_deadlock() {
    let pool = WorkerPool::new(1);
    let (tx, rx) = mpsc::channel();
    let inner = pool.clone();
    pool.spawn(move || WaitsOnDrop(inner, tx)).detach();
    let out = rx.recv_timeout(HANG);
    assert_eq!(
        out,
        Ok(Ok(7)),
        "the output's Drop on the worker never got its answer"
    );
    whole_after_attack(&pool, 1);
}

/// The same for the job's captured overrides, released on the worker because the caller
/// dropped the handle while the job ran: a value whose `Drop` waits on the pool gets its
/// answer.
#[test]
fn an_override_whose_drop_waits_on_its_pool_released_on_the_worker_does_not_deadlock() {
    let pool = WorkerPool::new(1);
    let (tx, rx) = mpsc::channel();
    let (started_tx, started_rx) = mpsc::channel();
    let go = Gate::new();
    let g = go.clone();
    let value = Arc::new(WaitsOnDrop(pool.clone(), tx));
    let handle = settings::context(Overrides::new().with("hostile", value), || {
        pool.spawn(move || {
            started_tx.send(()).unwrap();
            g.wait();
        })
    });
    started_rx.recv_timeout(HANG).unwrap();
    drop(handle); // the job's captured overrides are now released on the worker
    go.open();
    let out = rx.recv_timeout(HANG);
    assert_eq!(
        out,
        Ok(Ok(7)),
        "the override's Drop on the worker never got its answer"
    );
    whole_after_attack(&pool, 1);
}

/// A waker that, woken on a worker, waits on a job of its pool and sends what it got (the
/// handle's own yields, on the test's thread, it lets pass).
struct WaitingWaker(
    WorkerPool,
    std::sync::Mutex<Option<mpsc::Sender<Result<u32, JobError>>>>,
);

impl std::task::Wake for WaitingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if asyncify_pool::worker_index().is_none() {
            return;
        }
        if let Some(tx) = self.1.lock().unwrap().take() {
            let _ = tx.send(self.0.spawn(|| 9u32).wait());
        }
    }
}

/// The worker wakes the caller after the job, still in its place: a waker that waits on a job
/// of the one-thread pool there gets its answer.
#[test]
fn a_waker_that_waits_on_the_pool_when_its_job_completes_does_not_deadlock() {
    let pool = WorkerPool::new(1);
    let (tx, rx) = mpsc::channel();
    let go = Gate::new();
    let g = go.clone();
    let mut handle = pool.spawn(move || g.wait());
    let waiting = Arc::new(WaitingWaker(pool.clone(), std::sync::Mutex::new(Some(tx))));
    let waker = std::task::Waker::from(waiting);
    let mut cx = Context::from_waker(&waker);
    // Past the handle's yields, so that the job holds this waker and its worker wakes it.
    for _ in 0..20 {
        assert!(Pin::new(&mut handle).poll(&mut cx).is_pending());
    }
    go.open();
    let out = rx.recv_timeout(HANG);
    assert_eq!(out, Ok(Ok(9)), "the waker's wait never got its answer");
    assert_eq!(wait(handle), Ok(()));
    whole_after_attack(&pool, 1);
}

/// Hooks may use their pool: an `on_thread_start` hook that waits on a job of its one-thread
/// pool (the only thread that could run it is the hook's), and an `on_thread_stop` hook that
/// shuts the pool down; neither hangs.
#[test]
fn hooks_that_call_back_into_their_pool() {
    in_child("hooks_that_call_back_into_their_pool", || {
        let slot: Arc<std::sync::Mutex<Option<WorkerPool>>> = Arc::default();
        let (start_slot, stop_slot) = (slot.clone(), slot.clone());
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let pool = WorkerPool::builder()
            .threads(1)
            .on_thread_start(move |_| {
                let mut pool = None;
                common::spin_until("the pool in the slot", || {
                    pool = start_slot.lock().unwrap().clone();
                    pool.is_some()
                });
                assert_eq!(pool.unwrap().spawn(|| 5).wait(), Ok(5));
                s.fetch_add(1, SeqCst);
            })
            .on_thread_stop(move |_| {
                let pool = stop_slot.lock().unwrap().clone();
                pool.expect("in the slot").shutdown();
            })
            .build()
            .unwrap();
        *slot.lock().unwrap() = Some(pool.clone());
        assert_eq!(wait(pool.spawn(|| 7)), Ok(7));
        assert_eq!(started.load(SeqCst), 1);
        within_hang(
            "shutdown with a stop hook that shuts the pool down",
            move || pool.shutdown(),
        );
    });
}

/// A settings value whose `Drop` panics, handed to `context` or `scope` and held nowhere else:
/// its last reference goes as the `context` returns or the `Scoped` future is dropped, through
/// the guard, so `f`'s value (here a job's answer) is kept. Before, that release bypassed the
/// guard: the job answered `Panicked`, and outside a job `context` panicked after `f`.
#[test]
fn a_context_or_scope_value_whose_drop_panics_costs_no_answer() {
    common::quiet_planned_panics();
    let hostile = || Overrides::new().with("v", Arc::new(common::PanicOnDrop("context value")));
    let pool = WorkerPool::new(1);
    let job = pool.spawn(move || settings::context(hostile(), || 41));
    assert_eq!(wait(job), Ok(41), "a context's value cost the job's answer");
    let job = pool.spawn(move || pollster::block_on(settings::scope(hostile(), async { 42 })));
    assert_eq!(wait(job), Ok(42), "a scope's value cost the job's answer");
    let out = catch_unwind(move || settings::context(hostile(), || 43));
    assert_eq!(out.ok(), Some(43), "context panicked after f returned");
}
