//! What `stats()` measures: how long jobs waited in the queue and ran (percentiles over a recent
//! window), and what became of every job a worker took (completed, panicked, cancelled before
//! it started, or abandoned by its caller while it ran), adding up once the pool is quiet.
//!
//! The durations asserted are lower bounds the test itself caused (a sleep, a blocker), and
//! upper bounds only as loose as "well under a hang": no test depends on the machine's speed.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use asyncify_pool::{is_cancelled, Stats, WorkerPool};
use common::{occupy, quiet_planned_panics, spin_until, wait, Gate, HANG};

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
    let pool = WorkerPool::new(2);
    let handles: Vec<_> = (0..10)
        .map(|_| pool.spawn(|| std::thread::sleep(SLEEP)))
        .collect();
    for h in handles {
        wait(h).unwrap();
    }
    let run = pool.stats().run_time;
    assert_eq!(run.count, 10, "{run:?}");
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
    let pool = WorkerPool::new(1);
    let (gate, blockers) = occupy(&pool, 1);
    let queued: Vec<_> = (0..5).map(|_| pool.spawn(|| ())).collect();
    let blocked_from = Instant::now();
    std::thread::sleep(Duration::from_millis(30));
    let blocked = blocked_from.elapsed();
    gate.open();
    for h in blockers.into_iter().chain(queued) {
        wait(h).unwrap();
    }
    let waits = pool.stats().queue_wait;
    assert_eq!(
        waits.count, 6,
        "the blocker and the five behind it: {waits:?}"
    );
    // Five of six waited at least as long as the blocker held the only worker.
    assert!(waits.p50 >= blocked, "{waits:?} (blocked {blocked:?})");
    assert!(waits.max >= blocked, "{waits:?}");
    assert!(waits.max < blocked + HANG, "{waits:?}");
}

#[test]
fn a_caller_that_has_its_result_finds_it_counted_and_timed() {
    let pool = WorkerPool::new(2);
    for i in 1..=200u64 {
        wait(pool.spawn(|| ())).unwrap();
        let stats = pool.stats();
        assert_eq!(stats.completed, i, "{stats:?}");
        assert_eq!(stats.run_time.count, i, "{stats:?}");
        assert_eq!(stats.queue_wait.count, i, "{stats:?}");
    }
}

#[test]
fn a_handle_dropped_before_the_start_is_cancelled_and_after_it_abandoned() {
    let pool = WorkerPool::new(1);
    let (started_tx, started_rx) = mpsc::channel();
    let gate = Gate::new();
    let g = gate.clone();
    let running = pool.spawn(move || {
        started_tx.send(()).unwrap();
        g.wait();
        "discarded"
    });
    let never_started = pool.spawn(|| "never runs");
    started_rx.recv_timeout(HANG).unwrap();
    drop(never_started);
    drop(running);
    gate.open();
    let stats = quiet(&pool, 2);
    assert_eq!(
        (stats.completed, stats.cancelled, stats.abandoned),
        (0, 1, 1),
        "{stats:?}"
    );
    // The abandoned job ran: it is timed; the cancelled one never started.
    assert_eq!(
        (stats.run_time.count, stats.queue_wait.count),
        (1, 1),
        "{stats:?}"
    );
}

#[test]
fn an_aborted_running_job_is_abandoned() {
    let pool = WorkerPool::new(1);
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
    let stats = quiet(&pool, 1);
    assert_eq!(
        (stats.completed, stats.cancelled, stats.abandoned),
        (0, 0, 1),
        "{stats:?}"
    );
}

#[test]
fn the_counts_add_up_to_the_jobs_taken_once_the_pool_is_quiet() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
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
    // Every job that ran is timed, and each started from the queue.
    let ran = stats.completed + stats.panicked + stats.abandoned;
    assert_eq!(stats.run_time.count, ran, "{stats:?}");
    assert_eq!(stats.queue_wait.count, ran, "{stats:?}");
}

#[test]
fn a_job_its_waiter_starts_out_of_line_is_timed_but_has_no_queue_wait() {
    let pool = WorkerPool::new(1);
    let inner = pool.clone();
    // The only worker waits on a job queued behind it, and runs it itself.
    let outer = pool.spawn(move || inner.spawn(|| 1).wait().unwrap() + 1);
    assert_eq!(wait(outer), Ok(2));
    let stats = quiet(&pool, 2);
    assert_eq!(stats.completed, 2, "{stats:?}");
    assert_eq!(stats.run_time.count, 2, "{stats:?}");
    assert_eq!(
        stats.queue_wait.count, 1,
        "only the outer job left the queue: {stats:?}"
    );
}

#[test]
fn a_retired_threads_times_stay_in_the_pools() {
    let pool = WorkerPool::new(2);
    let (gate, blockers) = occupy(&pool, 2);
    gate.open();
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
