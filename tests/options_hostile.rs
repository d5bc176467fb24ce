//! Attacks on the options' promises at the edges: a pool that closes under waiting and
//! running calls, limiters at extreme periods or shared by two pools, user code that blocks
//! where the pool's one timer would run it, timeouts as an overload signal and in a batch's
//! error budget, and a long line let go at once. Each failed on the first version of the
//! options.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use asyncify_pool::{
    is_cancelled, AsyncProgram, JobHandle, Overload, RateLimiter, Retry, WorkerPool,
};

const BOUND: Duration = Duration::from_secs(5);

fn close(pool: &WorkerPool) {
    drop(pool.shutdown_async()); // closes now, does not wait for the workers
}

/// the pool's close rings the deadline entry early (a no-op for a running attempt) and
/// removes it: the deadline never fires afterwards, the job never sees is_cancelled.
#[test]
fn a_running_calls_deadline_still_fires_after_the_pool_closes() {
    let pool = WorkerPool::new(1);
    let started = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&started);
    let p = pool
        .asyncify(move |_: ()| {
            s.store(true, SeqCst);
            while !is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            1
        })
        .timeout(Duration::from_millis(300));
    let mut h = p.call(());
    while !started.load(SeqCst) {
        std::thread::yield_now();
    }
    close(&pool);
    let got = h.wait_timeout(BOUND);
    assert!(
        matches!(&got, Some(Err(e)) if e.is_timed_out()),
        "deadline 300ms, closed pool: {got:?} after {BOUND:?}"
    );
}

/// a call waiting for a token that never comes (1 per Duration::MAX) is not ended by the
/// pool's shutdown.
#[test]
fn shutdown_ends_a_wait_for_a_token_that_never_comes() {
    let pool = WorkerPool::new(2);
    let p = pool
        .asyncify(|x: u32| x)
        .with_rate_limiter(&RateLimiter::new(1, Duration::MAX));
    assert_eq!(p.call(1).wait_timeout(BOUND), Some(Ok(1)));
    let mut second = p.call(2);
    pool.shutdown();
    let got = second.wait_timeout(BOUND);
    assert!(
        matches!(&got, Some(Err(e)) if e.is_shut_down()),
        "after shutdown: {got:?}"
    );
}

/// a burst is lost when interval * (burst - 1) overflows: with_burst(1, MAX, 3) allows
/// one start, not three.
#[test]
fn a_burst_with_the_longest_period_still_goes_at_once() {
    let pool = WorkerPool::new(2);
    let p = pool
        .asyncify(|x: u32| x)
        .with_rate_limiter(&RateLimiter::with_burst(1, Duration::MAX, 3));
    let hs: Vec<_> = (0..3).map(|i| p.call(i)).collect();
    for (i, mut h) in hs.into_iter().enumerate() {
        assert_eq!(
            h.wait_timeout(BOUND),
            Some(Ok(i as u32)),
            "start {i} of a burst of 3"
        );
    }
}

/// a limiter shared by two pools: pool B's waiter behind pool A's head is not let go at
/// B's close (it waits for the next token, an hour away).
#[test]
fn a_shared_limiter_lets_a_closed_pools_calls_go_at_once() {
    let a = WorkerPool::new(1);
    let b = WorkerPool::new(1);
    let key = RateLimiter::new(1, Duration::from_secs(3600));
    let pa = a.asyncify(|x: u32| x).with_rate_limiter(&key);
    let pb = b.asyncify(|x: u32| x).with_rate_limiter(&key);
    assert_eq!(pa.call(1).wait_timeout(BOUND), Some(Ok(1)));
    let _a2 = pa.call(2); // the line's head, armed on A's timer
    let mut b1 = pb.call(3);
    b.shutdown();
    let got = b1.wait_timeout(BOUND);
    assert!(
        matches!(&got, Some(Err(e)) if e.is_shut_down()),
        "after B's shutdown: {got:?}"
    );
}

/// "a call that timed out always counts as [an overload]": not when its attempt was
/// running at the deadline (the attempt's end is never sampled).
#[test]
fn a_deadline_that_cuts_a_running_attempt_lowers_an_adaptive_limit() {
    let pool = WorkerPool::new(4);
    let done = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&done);
    let p = pool
        .asyncify(move |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            d.fetch_add(1, SeqCst);
            ms
        })
        .adaptive_concurrency(1, 10, Overload::when(|_: &u64| false))
        .timeout(Duration::from_millis(50));
    for _ in 0..10 {
        p.call(0).wait_timeout(BOUND).unwrap().unwrap();
    }
    let before = p.stats().concurrency_limit.unwrap();
    assert!(before >= 2, "grew to {before}");
    let e = p.call(400).wait_timeout(BOUND).unwrap().unwrap_err();
    assert!(e.is_timed_out());
    while done.load(SeqCst) < 11 {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    let after = p.stats().concurrency_limit.unwrap();
    assert!(
        after < before,
        "a timeout while running: limit {before} -> {after}"
    );
}

/// user Clone runs on the pool's one timer thread (a retry after a backoff): while it
/// blocks, no other call's deadline fires.
#[test]
fn a_blocking_clone_after_a_backoff_stalls_no_deadline() {
    static CLONES: AtomicUsize = AtomicUsize::new(0);
    static GATE: Mutex<()> = Mutex::new(());
    struct Blocky;
    impl Clone for Blocky {
        fn clone(&self) -> Self {
            if CLONES.fetch_add(1, SeqCst) == 1 {
                drop(GATE.lock().unwrap()); // the second copy blocks until the test lets go
            }
            Blocky
        }
    }
    let pool = WorkerPool::new(2);
    let held = GATE.lock().unwrap();
    let a = pool.asyncify(|_: Blocky| 503u16).retry(
        Retry::new(3)
            .backoff(Duration::from_millis(10), Duration::from_millis(10))
            .retry_if(|s: &u16| *s == 503),
    );
    let _ha = a.call(Blocky);
    while CLONES.load(SeqCst) < 2 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let b = pool
        .asyncify(|_: ()| {
            while !is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .timeout(Duration::from_millis(50));
    let t0 = Instant::now();
    let got = b.call(()).wait_timeout(Duration::from_secs(3));
    let waited = t0.elapsed();
    drop(held);
    assert!(
        matches!(&got, Some(Err(e)) if e.is_timed_out()),
        "{got:?} after {waited:?}"
    );
}

/// a batch item that ran and timed out counts as "not started": it spends none of the
/// error budget (max_errors(0) should stop the batch at the first timeout).
#[test]
fn a_timed_out_batch_item_spends_the_error_budget() {
    let pool = WorkerPool::new(1);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let p = pool
        .asyncify(move |_: u32| {
            r.fetch_add(1, SeqCst);
            while !is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .timeout(Duration::from_millis(20));
    let result = p.batch(0..5u32).max_errors(0).concurrency(1).wait();
    let timed_out = result
        .results()
        .iter()
        .filter(|r| matches!(r, Err(e) if e.is_timed_out()))
        .count();
    assert_eq!(
        (runs.load(SeqCst), timed_out),
        (1, 1),
        "max_errors(0) and every item times out"
    );
}

/// At the close, a hundred thousand calls waiting in a concurrency limit's line are let go one
/// after another, not one inside the other: the stack does not grow with the line (it
/// overflowed and aborted the process). In a child process, since a failure aborts.
#[test]
fn a_long_limit_line_is_let_go_at_the_close_without_growing_the_stack() {
    common::in_child(
        "a_long_limit_line_is_let_go_at_the_close_without_growing_the_stack",
        || {
            let pool = WorkerPool::new(1);
            let (tx, rx) = mpsc::channel::<()>();
            let rx = Mutex::new(rx);
            let p = pool
                .asyncify(move |first: bool| {
                    if first {
                        let _ = rx.lock().unwrap().recv();
                    }
                })
                .concurrency_limit(1);
            let mut first = p.call(true);
            let waiters: Vec<_> = (0..100_000).map(|_| p.call(false)).collect();
            close(&pool);
            tx.send(()).unwrap();
            assert_eq!(first.wait_timeout(common::HANG), Some(Ok(())));
            for mut w in waiters {
                let r = w.wait_timeout(common::HANG).expect("hung");
                assert!(r.unwrap_err().is_shut_down());
            }
        },
    );
}

/// An input whose `Clone` makes a call on the same pool and waits for it.
struct ReentrantClone(WorkerPool);

impl Clone for ReentrantClone {
    fn clone(&self) -> Self {
        assert_eq!(self.0.spawn(|| 1).wait(), Ok(1));
        ReentrantClone(self.0.clone())
    }
}

/// The retry policy's copy of the input (user code) runs while the call holds no place in a
/// bounded queue: an input whose `Clone` waits for a job on the same pool does not wait for
/// the place its own call would hold (a queue of one place).
#[test]
fn a_reentrant_clone_of_the_input_does_not_deadlock_a_bounded_queue() {
    let pool = common::bounded_pool(1, 1);
    let program = pool
        .asyncify(|_: ReentrantClone| 7u32)
        .timeout(Duration::from_secs(3600))
        .retry(Retry::new(2).retry_if(|_: &u32| false));
    let (tx, rx) = mpsc::channel();
    let p = pool.clone();
    std::thread::spawn(move || {
        let _ = tx.send(program.call(ReentrantClone(p)).wait());
    });
    match rx.recv_timeout(common::HANG) {
        Ok(out) => assert_eq!(out, Ok(7)),
        Err(_) => panic!("the call hung: its input's Clone waited for the place the call held"),
    }
}

/// What the inner call of a [`CloneCallsBack`] got within [`BOUND`] (`None`: nothing).
type Got = Option<Result<u32, asyncify_pool::JobError>>;

/// An input whose first `Clone` (the retry policy's copy) makes a call of the same program
/// and records what it got.
#[derive(Default)]
struct CloneCallsBack {
    program: Arc<Mutex<Option<asyncify_pool::BoxProgram<CloneCallsBack, u32>>>>,
    got: Arc<Mutex<Option<Got>>>,
}

impl Clone for CloneCallsBack {
    fn clone(&self) -> Self {
        if let Some(program) = common::lock(&self.program).take() {
            let mut handle = program.call(CloneCallsBack::default());
            *common::lock(&self.got) = Some(handle.wait_timeout(BOUND));
        }
        CloneCallsBack::default()
    }
}

/// Calls `limited` with an input whose copy calls `limited` again: what that inner call got.
fn a_call_whose_clone_calls_back(limited: asyncify_pool::BoxProgram<CloneCallsBack, u32>) -> Got {
    let input = CloneCallsBack::default();
    *common::lock(&input.program) = Some(limited.clone());
    let got = Arc::clone(&input.got);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(limited.call(input).wait());
    });
    match rx.recv_timeout(common::HANG) {
        Ok(out) => assert_eq!(out, Ok(1)),
        Err(_) => panic!("the outer call hung"),
    }
    let inner = common::lock(&got).take();
    inner.expect("the input's Clone ran")
}

/// The retry policy's copy of the input is made before the call takes its concurrency slot,
/// so a `Clone` that calls the same program does not wait for the one slot its own call holds
/// (it did, on the caller's thread, before the call even had a handle).
#[test]
fn a_reentrant_clone_does_not_wait_for_the_slot_its_own_call_holds() {
    let pool = WorkerPool::new(2);
    let limited = pool
        .asyncify(|_: CloneCallsBack| 1u32)
        .retry(Retry::new(2).retry_if(|_: &u32| false))
        .concurrency_limit(1)
        .boxed();
    assert_eq!(
        a_call_whose_clone_calls_back(limited),
        Some(Ok(1)),
        "the Clone's call waited for the slot held by the call copying it"
    );
}

/// The same for a rate limit's token: with one start an hour, the `Clone`'s call gets the
/// token, and its own call waits for the next (before, the `Clone`'s call waited an hour for a
/// token its own call held unspent).
#[test]
fn a_reentrant_clone_does_not_wait_for_the_token_its_own_call_holds() {
    let pool = WorkerPool::new(2);
    let limited = pool
        .asyncify(|_: CloneCallsBack| 1u32)
        .retry(Retry::new(2).retry_if(|_: &u32| false))
        .rate_limit(1, Duration::from_secs(3600))
        .boxed();
    let input = CloneCallsBack::default();
    *common::lock(&input.program) = Some(limited.clone());
    let got = Arc::clone(&input.got);
    let mut outer = limited.call(input);
    assert_eq!(
        common::lock(&got).take().expect("the input's Clone ran"),
        Some(Ok(1)),
        "the Clone's call waited for the token held by the call copying it"
    );
    // The outer call waits in the line for the next token, an hour away.
    assert_eq!(outer.wait_timeout(Duration::from_millis(50)), None);
    assert_eq!(limited.stats().waited_for_rate, 1);
}

/// An input whose `Clone` panics and whose `Drop` makes a call on the same pool and waits
/// for it.
struct CloneFailsDropWaits(Option<WorkerPool>);

impl Clone for CloneFailsDropWaits {
    fn clone(&self) -> Self {
        panic!("planned: the input's Clone panics")
    }
}

impl Drop for CloneFailsDropWaits {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            assert_eq!(pool.spawn(|| 1).wait(), Ok(1));
        }
    }
}

/// An input that could not be copied for the retries is dropped (user code) while the call
/// holds no place in a bounded queue: the call ends `Panicked`, and the `Drop`'s own call runs.
#[test]
fn a_reentrant_drop_of_an_input_that_could_not_be_copied_does_not_deadlock() {
    common::quiet_planned_panics();
    let pool = common::bounded_pool(1, 1);
    let program = pool
        .asyncify(|_: CloneFailsDropWaits| 7u32)
        .retry(Retry::new(2).retry_if(|_: &u32| false));
    let (tx, rx) = mpsc::channel();
    let p = pool.clone();
    std::thread::spawn(move || {
        let _ = tx.send(program.call(CloneFailsDropWaits(Some(p))).wait());
    });
    match rx.recv_timeout(common::HANG) {
        Ok(out) => assert!(out.unwrap_err().is_panic()),
        Err(_) => panic!("the call hung: its input's Drop waited for the place the call held"),
    }
}

/// An input whose `Drop` asks about, or aborts, the call it was given to (through a slot the
/// test fills with the call's `AbortHandle`).
#[derive(Clone)]
struct AbortsItsCallOnDrop(Arc<Mutex<Option<asyncify_pool::AbortHandle>>>);

impl Drop for AbortsItsCallOnDrop {
    fn drop(&mut self) {
        let handle = self.0.lock().unwrap().clone();
        if let Some(handle) = handle {
            let _ = handle.is_finished();
            handle.abort();
        }
    }
}

/// The input a call keeps for its retries is dropped (user code) outside the call's lock: an
/// input whose `Drop` reaches its own call does not deadlock on it, whether the call ends with
/// the attempt's output or after an abort.
#[test]
fn a_kept_input_whose_drop_reaches_its_own_call_does_not_deadlock() {
    for abort_first in [false, true] {
        let pool = WorkerPool::new(1);
        let gate = common::Gate::new();
        let g = Arc::clone(&gate);
        // `retry_panics` makes it a driven call, which keeps the input for the next attempt.
        let program = pool
            .asyncify(move |copy: AbortsItsCallOnDrop| {
                // Only the input the call keeps reaches the call from its `Drop`.
                std::mem::forget(copy);
                g.wait();
                7u32
            })
            .retry(Retry::new(3).retry_panics(true).retry_if(|_: &u32| false));
        let slot = Arc::new(Mutex::new(None));
        let handle = program.call(AbortsItsCallOnDrop(Arc::clone(&slot)));
        *slot.lock().unwrap() = Some(handle.abort_handle());
        if abort_first {
            handle.abort_handle().abort();
        }
        gate.open();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(handle.wait());
        });
        let out = rx
            .recv_timeout(common::HANG)
            .unwrap_or_else(|_| panic!("abort_first {abort_first}: the call hung"));
        if abort_first {
            assert!(matches!(&out, Err(e) if e.is_cancelled()), "{out:?}");
        } else {
            // The abort in the `Drop` comes after the answer: it changes nothing.
            assert_eq!(out, Ok(7));
        }
        slot.lock().unwrap().take();
    }
}

/// An input that says (with its number) when it is dropped, if it has somewhere to say it.
struct Told(u32, Option<mpsc::Sender<u32>>);

impl Drop for Told {
    fn drop(&mut self) {
        if let Some(tx) = &self.1 {
            let _ = tx.send(self.0);
        }
    }
}

/// A program with a concurrency limit of one, and a call of it (input 0) that holds the slot,
/// running, until the gate opens; it runs when this returns. Other inputs return their number.
fn a_held_slot(
    pool: &WorkerPool,
) -> (
    AsyncProgram<impl Fn(Told) -> u32 + Send + Sync + 'static>,
    JobHandle<u32>,
    Arc<common::Gate>,
) {
    let gate = common::Gate::new();
    let (started_tx, started) = mpsc::channel();
    let (g, started_tx) = (Arc::clone(&gate), Mutex::new(started_tx));
    let p = pool
        .asyncify(move |t: Told| {
            if t.0 == 0 {
                started_tx.lock().unwrap().send(()).unwrap();
                g.wait();
            }
            t.0
        })
        .concurrency_limit(1);
    let holder = p.call(Told(0, None));
    started.recv_timeout(BOUND).expect("the holder runs");
    (p, holder, gate)
}

/// a call waiting in a concurrency limit's line (no deadline) is "a wait outside the queue":
/// at the pool's close it ends at once with `ShutDown`, while the slot's holder still runs
/// (it waited for that slot, which may never come back).
#[test]
fn a_call_in_a_limit_line_ends_at_the_close_while_the_slot_holder_runs() {
    let pool = WorkerPool::new(2);
    let (p, holder, gate) = a_held_slot(&pool);
    let mut second = p.call(Told(1, None));
    assert!(
        pool.shutdown_timeout(Duration::from_millis(10)).is_err(),
        "the holder still runs"
    );
    let got = second.wait_timeout(BOUND);
    gate.open();
    assert_eq!(common::wait(holder), Ok(0));
    assert!(
        matches!(&got, Some(Err(e)) if e.is_shut_down()),
        "a call in the limit's line after the close: {got:?}"
    );
}

/// The same for a detached call in the line, which nobody polls: it ends at the close (its
/// input is let go), not when the holder returns.
#[test]
fn a_detached_call_in_a_limit_line_ends_at_the_close() {
    let pool = WorkerPool::new(2);
    let (p, holder, gate) = a_held_slot(&pool);
    let (dropped_tx, dropped) = mpsc::channel();
    p.call(Told(1, Some(dropped_tx))).detach();
    close(&pool);
    let got = dropped.recv_timeout(BOUND);
    gate.open();
    assert_eq!(common::wait(holder), Ok(0));
    assert_eq!(got, Ok(1), "the detached call's input, let go at the close");
}

/// The same for a batch whose items wait in the line: the batch ends at the close, each item
/// `ShutDown`.
#[test]
fn a_batch_waiting_in_a_limit_line_ends_at_the_close() {
    let pool = WorkerPool::new(2);
    let (p, holder, gate) = a_held_slot(&pool);
    let (done_tx, done) = mpsc::channel();
    let batch = p.batch((1..4).map(|i| Told(i, None)));
    std::thread::spawn(move || drop(done_tx.send(batch.wait().into_results())));
    common::spin_until("the batch's items in the line", || {
        p.stats().waited_for_slot > 0
    });
    close(&pool);
    let got = done.recv_timeout(BOUND);
    gate.open();
    assert_eq!(common::wait(holder), Ok(0));
    let results = got.expect("the batch ends at the close");
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_err_and(|e| e.is_shut_down())),
        "{results:?}"
    );
}

/// Two threads call `call` in a loop while `pool` closes (a pause, varied by `round`, after
/// they start): the calls made, each `Some` of its result if it ended within 2 s of the close.
fn calls_as_the_pool_closes<T: Send + 'static>(
    pool: &WorkerPool,
    round: usize,
    call: impl Fn() -> JobHandle<T> + Clone + Send + 'static,
) -> Vec<Option<Result<T, asyncify_pool::JobError>>> {
    let go = Arc::new(std::sync::Barrier::new(3));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (call, go) = (call.clone(), Arc::clone(&go));
            std::thread::spawn(move || {
                go.wait();
                let mut handles = Vec::new();
                for _ in 0..200_000 {
                    let h = call();
                    let refused = h.is_finished();
                    handles.push(h);
                    if refused {
                        break; // the pool is closed
                    }
                }
                handles
            })
        })
        .collect();
    go.wait();
    std::thread::sleep(Duration::from_micros(200 + (round as u64 % 7) * 100));
    close(pool);
    let handles = callers.into_iter().flat_map(|c| c.join().unwrap());
    handles
        .map(|mut h| h.wait_timeout(Duration::from_secs(2)))
        .collect()
}

/// A call that joins a limit's line just as the pool closes (it found the pool open, and
/// reaches the line after the close has told the waiters there) ends too, `ShutDown`, never
/// waiting for a slot that its holder keeps. Raced in rounds (`RACE_ROUNDS`).
#[test]
fn a_call_joining_a_limit_line_as_the_pool_closes_is_not_stranded() {
    for round in 0..common::env_or("RACE_ROUNDS", 100usize) {
        let pool = WorkerPool::new(2);
        let (p, holder, gate) = a_held_slot(&pool);
        let ended = calls_as_the_pool_closes(&pool, round, move || p.call(Told(1, None)));
        gate.open();
        assert_eq!(common::wait(holder), Ok(0));
        let stranded = ended.iter().filter(|r| r.is_none()).count();
        assert_eq!(
            stranded,
            0,
            "round {round}: {stranded} of {} calls still wait 2 s after their pool closed",
            ended.len()
        );
        assert!(ended
            .into_iter()
            .flatten()
            .all(|r| r.unwrap_err().is_shut_down()));
    }
}

/// The same for a rate limiter's line: a call that joins it as the pool closes ends, never
/// waiting for a token an hour away. The limiter remembers that its alarm is set on the
/// pool's timer; the close took that entry off and served the line just before the call
/// joined it, and the call, trusting the record, set no alarm, so nothing would serve the line
/// again. Raced in rounds (`RACE_ROUNDS`).
#[test]
fn a_call_joining_a_rate_line_as_the_pool_closes_is_not_stranded() {
    for round in 0..common::env_or("RACE_ROUNDS", 300usize) {
        let pool = WorkerPool::new(1);
        let p = pool
            .asyncify(|x: u32| x)
            .rate_limit(1, Duration::from_secs(3600));
        assert_eq!(common::wait(p.call(0)), Ok(0)); // the hour's token
        let mut first = p.call(0); // waits: the limiter's alarm is set on this pool's timer
        let mut ended = calls_as_the_pool_closes(&pool, round, move || p.call(1));
        ended.push(first.wait_timeout(Duration::from_secs(2)));
        let stranded = ended.iter().filter(|r| r.is_none()).count();
        assert_eq!(
            stranded,
            0,
            "round {round}: {stranded} of {} calls still wait 2 s after their pool closed",
            ended.len()
        );
        assert!(ended
            .into_iter()
            .flatten()
            .all(|r| r.unwrap_err().is_shut_down()));
    }
}

/// An input whose `Drop` blocks until a gate opens (the gate is shared by its clones).
struct SlowDrop {
    slow: bool,
    gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl Drop for SlowDrop {
    fn drop(&mut self) {
        if self.slow {
            let (open, cv) = &*self.gate;
            let open = open.lock().unwrap();
            let _ = cv.wait_timeout_while(open, Duration::from_secs(20), |open| !*open);
        }
    }
}

fn open(gate: &(Mutex<bool>, std::sync::Condvar)) {
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
}

/// A call that runs until its deadline cuts it off, after `timeout`.
fn until_cut_off(pool: &WorkerPool, timeout: Duration) -> asyncify_pool::JobHandle<()> {
    let program = pool.asyncify(|_: ()| {
        while !is_cancelled() {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    program.timeout(timeout).call(())
}

/// A call that times out in a rate limiter's line has its input dropped; that `Drop` blocks,
/// and no other deadline of the pool waits for it.
#[test]
fn a_blocking_drop_of_a_timed_out_input_stalls_no_other_deadline() {
    let pool = WorkerPool::new(2);
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let limited = pool
        .asyncify(|_: SlowDrop| ())
        .rate_limit(1, Duration::from_secs(3600))
        .timeout(Duration::from_millis(20));
    let token = limited.call(SlowDrop {
        slow: false,
        gate: Arc::clone(&gate),
    });
    assert_eq!(common::wait(token), Ok(()));
    // No token for an hour: it times out in the line, and its input is dropped.
    let waiting = limited.call(SlowDrop {
        slow: true,
        gate: Arc::clone(&gate),
    });
    std::thread::sleep(Duration::from_millis(100));
    let mut other = until_cut_off(&pool, Duration::from_millis(100));
    let got = other.wait_timeout(BOUND);
    open(&gate);
    drop(waiting);
    assert!(
        matches!(&got, Some(Err(e)) if e.is_timed_out()),
        "a 100 ms deadline gave {got:?}: the timer was stuck in a user Drop"
    );
}

/// A queued attempt cut off by its deadline has its input dropped; that `Drop` blocks, and
/// no other deadline of the pool waits for it.
#[test]
fn a_blocking_drop_of_a_queued_attempts_input_stalls_no_other_deadline() {
    let pool = WorkerPool::new(2);
    let (gate_open, busy) = common::occupy(&pool, 1);
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let one = pool
        .asyncify(|_: SlowDrop| ())
        .timeout(Duration::from_millis(20));
    // The pool's second worker runs a call cut off later; the input below waits in the queue.
    let mut other = until_cut_off(&pool, Duration::from_millis(300));
    let queued = one.call(SlowDrop {
        slow: true,
        gate: Arc::clone(&gate),
    });
    let got = other.wait_timeout(BOUND);
    open(&gate);
    drop(queued);
    gate_open.open();
    for b in busy {
        common::wait(b).unwrap();
    }
    assert!(
        matches!(&got, Some(Err(e)) if e.is_timed_out()),
        "a 300 ms deadline gave {got:?}: the timer was stuck in a user Drop"
    );
}

/// At the close, every call in a rate limiter's line is let go by the ringer that tells the
/// limiter; the first one's input blocks in its `Drop`, and the call behind it is let go all
/// the same (it waited in that ringer's queue of admissions, behind the `Drop`).
#[test]
fn a_blocking_drop_in_a_rate_line_at_the_close_holds_up_no_other_call() {
    let pool = WorkerPool::new(2);
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let p = pool
        .asyncify(|_: SlowDrop| 1u32)
        .rate_limit(1, Duration::from_secs(3600));
    let input = |slow| SlowDrop {
        slow,
        gate: Arc::clone(&gate),
    };
    assert_eq!(common::wait(p.call(input(false))), Ok(1)); // the hour's token
    let slow = p.call(input(true)); // first in the line
    let mut other = p.call(input(false)); // behind it
    let closer = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.shutdown())
    };
    let got = other.wait_timeout(BOUND);
    open(&gate);
    drop(slow);
    closer.join().unwrap();
    assert!(
        matches!(&got, Some(Err(e)) if e.is_shut_down()),
        "the second call in the rate line, {BOUND:?} after the close: {got:?}"
    );
}

/// An input that counts the drops of itself and its copies.
struct CountedDrops(Arc<AtomicUsize>);

impl Clone for CountedDrops {
    fn clone(&self) -> Self {
        CountedDrops(Arc::clone(&self.0))
    }
}

impl Drop for CountedDrops {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// A call with a retry policy waiting in a rate limiter's line holds its input and the copy
/// for its first attempt; dropping its handle lets go of both at once, on the caller's thread,
/// even while an `AbortHandle` keeps the call itself alive (the copy stayed until the call's
/// last reference went: wherever that was, a helper thread of the timer, say).
#[test]
fn a_dropped_call_in_a_rate_line_lets_go_of_its_input_and_its_copy() {
    let pool = WorkerPool::new(1);
    let program = pool
        .asyncify(|_: CountedDrops| 1u32)
        .retry(Retry::new(2).retry_if(|_: &u32| false))
        .rate_limit(1, Duration::from_secs(3600));
    assert_eq!(program.call(CountedDrops(Arc::default())).wait(), Ok(1));
    let drops = Arc::new(AtomicUsize::new(0));
    let waiting = program.call(CountedDrops(Arc::clone(&drops)));
    assert_eq!(program.stats().waited_for_rate, 1);
    let abort = waiting.abort_handle();
    drop(waiting);
    assert_eq!(
        drops.load(SeqCst),
        2,
        "the input and its copy go with the handle"
    );
    drop(abort);
}

/// An input whose `Clone` takes 600 ms.
struct SlowClone;

impl Clone for SlowClone {
    fn clone(&self) -> Self {
        std::thread::sleep(Duration::from_millis(600));
        SlowClone
    }
}

/// The retry policy's copy is made at the call, before the gates, and may take long: the
/// call's time starts after it, so a slow `Clone` takes none of the deadline's time, and the
/// call runs (it took a slot and queued an attempt that its worker found expired).
#[test]
fn a_slow_copy_at_the_call_takes_none_of_the_deadlines_time() {
    let pool = WorkerPool::new(1);
    let program = pool
        .asyncify(|_: SlowClone| 1u32)
        .timeout(Duration::from_millis(500))
        .retry(Retry::new(2).retry_if(|_: &u32| false))
        .concurrency_limit(1);
    // (500 ms is ample for a trivial job on an idle pool, but the copy alone takes 600.)
    assert_eq!(program.call(SlowClone).wait(), Ok(1));
    let stats = program.stats();
    assert_eq!((stats.calls, stats.attempts, stats.timed_out), (1, 1, 0));
    assert_eq!(stats.in_flight, 0);
}

/// A call cut off in the queue by its deadline gives its concurrency slot back before its
/// input is dropped: an input whose `Drop` blocks holds no slot of the program's limit. With
/// a deadline only, and with a retry policy too.
#[test]
fn a_blocking_drop_of_a_cut_off_input_holds_no_slot() {
    for retried in [false, true] {
        let pool = WorkerPool::new(1);
        let (busy_gate, busy) = common::occupy(&pool, 1);
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let dropping = Arc::new(AtomicBool::new(false));
        let mut program = pool
            .asyncify(|_: SignalsDrop| ())
            .concurrency_limit(1)
            .timeout(Duration::from_millis(20));
        if retried {
            program = program.retry(Retry::new(2));
        }
        let queued = program.call(SignalsDrop {
            dropping: Arc::clone(&dropping),
            inner: SlowDrop {
                slow: true,
                gate: Arc::clone(&gate),
            },
        });
        common::spin_until("the cut-off input's drop to begin", || {
            dropping.load(SeqCst)
        });
        let in_flight = program.stats().in_flight;
        open(&gate);
        drop(queued);
        busy_gate.open();
        for b in busy {
            common::wait(b).unwrap();
        }
        assert_eq!(
            in_flight, 0,
            "retried {retried}: the slot waited for the input's Drop"
        );
    }
}

/// A call that holds a slot of its program's limit while it waits in a rate limiter's line,
/// and times out there, gives the slot back before its input is dropped: an input whose `Drop`
/// blocks holds no slot.
#[test]
fn a_blocking_drop_of_an_input_timed_out_in_a_rate_line_holds_no_slot() {
    let pool = WorkerPool::new(1);
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let (release, released) = mpsc::channel::<()>();
    let released = Mutex::new(released);
    // The input: hold the worker until released, or carry a value whose `Drop` blocks.
    let limited = pool
        .asyncify(move |input: Option<SignalsDrop>| {
            if input.is_none() {
                let _ = released.lock().unwrap().recv_timeout(BOUND);
            }
        })
        .concurrency_limit(1)
        .rate_limit(1, Duration::from_secs(3600));
    // The hour's token and the slot, until released: the call behind waits in the limit's
    // line, then, with the slot, in the rate limiter's, until its deadline.
    let first = limited.call(None);
    let dropping = Arc::new(AtomicBool::new(false));
    let timed = limited.timeout(Duration::from_millis(200));
    let behind = timed.call(Some(SignalsDrop {
        dropping: Arc::clone(&dropping),
        inner: SlowDrop {
            slow: true,
            gate: Arc::clone(&gate),
        },
    }));
    drop(release);
    assert_eq!(common::wait(first), Ok(()));
    common::spin_until("the timed-out input's drop to begin", || {
        dropping.load(SeqCst)
    });
    let stats = timed.stats();
    open(&gate);
    let answer = common::wait(behind);
    assert!(matches!(&answer, Err(e) if e.is_timed_out()), "{answer:?}");
    assert_eq!(
        stats.waited_for_rate, 1,
        "it waited in the rate limiter's line"
    );
    assert_eq!(stats.in_flight, 0, "the slot waited for the input's Drop");
}

/// A [`SlowDrop`] that says when its `Drop` begins; its copies (a retried call's attempt
/// gets one) do too.
struct SignalsDrop {
    dropping: Arc<AtomicBool>,
    inner: SlowDrop,
}

impl Clone for SignalsDrop {
    fn clone(&self) -> Self {
        SignalsDrop {
            dropping: Arc::clone(&self.dropping),
            inner: SlowDrop {
                slow: self.inner.slow,
                gate: Arc::clone(&self.inner.gate),
            },
        }
    }
}

impl Drop for SignalsDrop {
    fn drop(&mut self) {
        self.dropping.store(true, SeqCst);
    }
}
