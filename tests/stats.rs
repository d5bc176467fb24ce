//! What `stats()` measures: how long jobs waited in the queue and ran (percentiles over a recent
//! window), and what became of every job a worker took (completed, panicked, cancelled before
//! it started, or abandoned by its caller while it ran), adding up once the pool is quiet.
//!
//! The durations asserted are lower bounds the test itself caused (a sleep, a blocker), and
//! upper bounds only as loose as "well under a hang": no test depends on the machine's speed.
//!
//! Only a sample of the calls is timed: each calling thread's first, then one in
//! [`TIMING_SAMPLE`]. Each test makes its calls on a thread of its own, so which calls are
//! timed is known exactly, and asserted.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use asyncify_pool::{is_cancelled, Stats, WorkerPool};
use common::{occupy, quiet_planned_panics, spin_until, wait, Gate, HANG};

/// The library's sampling rate, as `Stats` documents it.
const TIMING_SAMPLE: u64 = 8;

/// How many of a fresh thread's first `calls` calls are timed.
fn timed(calls: u64) -> u64 {
    calls.div_ceil(TIMING_SAMPLE)
}

/// Runs `f` on a thread of its own, whose call count (and so which calls are timed) starts
/// afresh; its panic is this thread's.
fn on_a_new_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| s.spawn(f).join()).unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// The jobs taken off the queue (or run by their waiter) that the counts account for.
fn accounted(stats: &Stats) -> u64 {
    stats.completed + stats.panicked + stats.cancelled + stats.abandoned
}

/// Waits until the pool has accounted for `jobs` jobs, and returns its stats then.
fn quiet(pool: &WorkerPool, jobs: u64) -> Stats {
    spin_until("the pool to account for every job", || {
        let stats = pool.stats();
        accounted(&stats) >= jobs && stats.running == 0
    });
    pool.stats()
}

#[test]
fn run_time_percentiles_cover_a_known_sleep() {
    const SLEEP: Duration = Duration::from_millis(20);
    const CALLS: u64 = 10;
    let pool = WorkerPool::new(2);
    on_a_new_thread(|| {
        let handles: Vec<_> = (0..CALLS)
            .map(|_| pool.spawn(|| std::thread::sleep(SLEEP)))
            .collect();
        for h in handles {
            wait(h).unwrap();
        }
    });
    let stats = pool.stats();
    assert_eq!(stats.completed, CALLS, "{stats:?}");
    let run = stats.run_time;
    assert_eq!(run.count, timed(CALLS), "the first and the ninth: {run:?}");
    // Reported values are never below the true ones (a bucket's upper bound, at most the max).
    assert!(run.p50 >= SLEEP, "{run:?}");
    assert!(
        run.p50 <= run.p90 && run.p90 <= run.p99 && run.p99 <= run.max,
        "{run:?}"
    );
    // Not wildly above: a sleep overshoots, a loaded machine more, but not by a hang.
    assert!(run.max < SLEEP + HANG, "{run:?}");
}

#[test]
fn queue_waits_cover_the_time_spent_behind_a_blocker() {
    // The blocker is call 0; calls 8 and 16 are the timed ones of the 16 queued behind it.
    const BEHIND: u64 = 2 * TIMING_SAMPLE;
    let pool = WorkerPool::new(1);
    let blocked = on_a_new_thread(|| {
        let (gate, blockers) = occupy(&pool, 1);
        let queued: Vec<_> = (0..BEHIND).map(|_| pool.spawn(|| ())).collect();
        let blocked_from = Instant::now();
        std::thread::sleep(Duration::from_millis(30));
        let blocked = blocked_from.elapsed();
        gate.open();
        for h in blockers.into_iter().chain(queued) {
            wait(h).unwrap();
        }
        blocked
    });
    let waits = pool.stats().queue_wait;
    assert_eq!(
        waits.count,
        timed(1 + BEHIND),
        "the blocker and two of those behind it: {waits:?}"
    );
    // Two of the three waited at least as long as the blocker held the only worker.
    assert!(waits.p50 >= blocked, "{waits:?} (blocked {blocked:?})");
    assert!(waits.max >= blocked, "{waits:?}");
    assert!(waits.max < blocked + HANG, "{waits:?}");
}

#[test]
fn a_caller_that_has_its_result_finds_it_counted_and_timed() {
    let pool = WorkerPool::new(2);
    on_a_new_thread(|| {
        for i in 1..=200u64 {
            wait(pool.spawn(|| ())).unwrap();
            let stats = pool.stats();
            // Every job is counted; one in eight is timed.
            assert_eq!(stats.completed, i, "{stats:?}");
            assert_eq!(stats.run_time.count, timed(i), "{stats:?}");
            assert_eq!(stats.queue_wait.count, timed(i), "{stats:?}");
        }
    });
}

#[test]
fn each_calling_thread_times_its_first_call() {
    const THREADS: u64 = 4;
    const CALLS: u64 = 3;
    let pool = WorkerPool::new(2);
    for _ in 0..THREADS {
        on_a_new_thread(|| {
            for _ in 0..CALLS {
                wait(pool.spawn(|| ())).unwrap();
            }
        });
    }
    let stats = pool.stats();
    assert_eq!(stats.completed, THREADS * CALLS, "{stats:?}");
    // A thread that makes few calls still has one timed: one count per thread, not per pool.
    assert_eq!(
        (stats.run_time.count, stats.queue_wait.count),
        (THREADS * timed(CALLS), THREADS * timed(CALLS)),
        "{stats:?}"
    );
}

#[test]
fn a_handle_dropped_before_the_start_is_cancelled_and_after_it_abandoned() {
    // Calls 1 to 8, dropped before they start, include a timed one (call 8).
    const NEVER_STARTED: u64 = TIMING_SAMPLE;
    let pool = WorkerPool::new(1);
    on_a_new_thread(|| {
        let (started_tx, started_rx) = mpsc::channel();
        let gate = Gate::new();
        let g = gate.clone();
        let running = pool.spawn(move || {
            started_tx.send(()).unwrap();
            g.wait();
            "discarded"
        });
        let never_started: Vec<_> = (0..NEVER_STARTED)
            .map(|_| pool.spawn(|| "never runs"))
            .collect();
        started_rx.recv_timeout(HANG).unwrap();
        drop(never_started);
        drop(running);
        gate.open();
    });
    let stats = quiet(&pool, 1 + NEVER_STARTED);
    assert_eq!(
        (stats.completed, stats.cancelled, stats.abandoned),
        (0, NEVER_STARTED, 1),
        "{stats:?}"
    );
    // The abandoned job (call 0) ran: it is timed; the timed one of the cancelled never
    // started, and has no times.
    assert_eq!(
        (stats.run_time.count, stats.queue_wait.count),
        (1, 1),
        "{stats:?}"
    );
}

#[test]
fn an_aborted_running_job_is_abandoned() {
    let pool = WorkerPool::new(1);
    on_a_new_thread(|| {
        let (started_tx, started_rx) = mpsc::channel();
        let handle = pool.spawn(move || {
            started_tx.send(()).unwrap();
            while !is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            "discarded"
        });
        let abort = handle.abort_handle();
        started_rx.recv_timeout(HANG).unwrap();
        abort.abort();
        assert!(wait(handle).unwrap_err().is_cancelled());
    });
    let stats = quiet(&pool, 1);
    assert_eq!(
        (stats.completed, stats.cancelled, stats.abandoned),
        (0, 0, 1),
        "{stats:?}"
    );
    // The thread's first call: timed, though nobody took its output.
    assert_eq!(stats.run_time.count, 1, "{stats:?}");
}

#[test]
fn the_counts_add_up_to_the_jobs_taken_once_the_pool_is_quiet() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    on_a_new_thread(|| {
        let (gate, blockers) = occupy(&pool, 1);
        // Queued behind the blocker: three to complete, two to panic, two cancelled before they
        // start, one detached (it completes with nobody waiting).
        let completing: Vec<_> = (0..3).map(|i| pool.spawn(move || i)).collect();
        let panicking: Vec<_> = (0..2)
            .map(|_| pool.spawn(|| -> u8 { panic!("planned") }))
            .collect();
        for _ in 0..2 {
            drop(pool.spawn(|| unreachable!("cancelled before it starts")));
        }
        let (detached_tx, detached_rx) = mpsc::channel();
        pool.spawn(move || detached_tx.send(()).unwrap()).detach();
        // One abandoned while it runs, and one aborted while it runs.
        let (started_tx, started_rx) = mpsc::channel();
        let mut abandon = Vec::new();
        for _ in 0..2 {
            let started = started_tx.clone();
            let go = Gate::new();
            let g = go.clone();
            let handle = pool.spawn(move || {
                started.send(()).unwrap();
                g.wait();
            });
            abandon.push((handle, go));
        }
        gate.open();
        for h in blockers {
            wait(h).unwrap();
        }
        for h in completing {
            wait(h).unwrap();
        }
        for h in panicking {
            assert!(wait(h).unwrap_err().is_panic());
        }
        detached_rx.recv_timeout(HANG).unwrap();
        let (dropped, go_dropped) = abandon.remove(0);
        started_rx.recv_timeout(HANG).unwrap();
        drop(dropped);
        go_dropped.open();
        let (aborted, go_aborted) = abandon.remove(0);
        started_rx.recv_timeout(HANG).unwrap();
        let abort = aborted.abort_handle();
        abort.abort();
        go_aborted.open();
        drop(aborted);
    });

    // blocker + 3 + 2 + 2 + detached + 2 abandoned.
    let taken = 1 + 3 + 2 + 2 + 1 + 2;
    let stats = quiet(&pool, taken);
    assert_eq!(accounted(&stats), taken, "{stats:?}");
    assert_eq!(
        (
            stats.completed,
            stats.panicked,
            stats.cancelled,
            stats.abandoned
        ),
        (1 + 3 + 1, 2, 2, 2),
        "{stats:?}"
    );
    assert_eq!((stats.queued, stats.running), (0, 0), "{stats:?}");
    // The timed calls, 0 and 8 (the blocker and the detached job), both ran, and each
    // started from the queue.
    assert_eq!(stats.run_time.count, timed(taken), "{stats:?}");
    assert_eq!(stats.queue_wait.count, timed(taken), "{stats:?}");
}

#[test]
fn a_job_its_waiter_starts_out_of_line_is_timed_but_has_no_queue_wait() {
    let pool = WorkerPool::new(1);
    let inner = pool.clone();
    // The only worker waits on jobs queued behind it, and runs them itself. The outer job is
    // its thread's first call, the first inner one the worker's first: timed; the second inner
    // one is not (the waiter reads no clock for it either).
    let outer = move || {
        let first = inner.spawn(|| 1).wait().unwrap();
        first + inner.spawn(|| 2).wait().unwrap()
    };
    assert_eq!(on_a_new_thread(|| wait(pool.spawn(outer))), Ok(3));
    let stats = quiet(&pool, 3);
    assert_eq!(stats.completed, 3, "{stats:?}");
    assert_eq!(stats.run_time.count, 2, "{stats:?}");
    assert_eq!(
        stats.queue_wait.count, 1,
        "only the outer job left the queue: {stats:?}"
    );
}

#[test]
fn a_retired_threads_times_stay_in_the_pools() {
    let pool = WorkerPool::new(2);
    // Each worker runs one timed job: each blocker is its own thread's first call.
    let (gate_a, mut blockers) = on_a_new_thread(|| occupy(&pool, 1));
    let (gate_b, more) = on_a_new_thread(|| occupy(&pool, 1));
    blockers.extend(more);
    gate_a.open();
    gate_b.open();
    for h in blockers {
        wait(h).unwrap();
    }
    assert_eq!(pool.stats().run_time.count, 2);
    pool.set_threads(1).unwrap();
    spin_until("a worker to retire", || pool.stats().live_threads == 1);
    let stats = pool.stats();
    assert_eq!(
        (
            stats.completed,
            stats.run_time.count,
            stats.queue_wait.count
        ),
        (2, 2, 2),
        "{stats:?}"
    );
}
