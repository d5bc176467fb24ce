//! Threads are separate from the concurrency limit: `set_threads` moves the limit at once, and a
//! thread above the target leaves only once it has had no job for the pool's keep-alive
//! (`Builder::keep_alive`). So a limit that goes up and down reuses living threads instead of
//! starting and stopping them on every change, while the limit itself holds at once.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use asyncify_pool::WorkerPool;
use common::{assert_every_worker_runs, spin_until, wait, within_hang, Gauge, HANG};

/// A keep-alive no test run gets near: surplus threads stay for the whole test.
const LONG: Duration = Duration::from_secs(3600);

/// A pool of `threads` with `keep_alive`, and the number of its threads started and stopped.
fn counted_pool(
    threads: usize,
    keep_alive: Duration,
) -> (WorkerPool, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let started = Arc::new(AtomicUsize::new(0));
    let stopped = Arc::new(AtomicUsize::new(0));
    let (s, t) = (started.clone(), stopped.clone());
    let pool = WorkerPool::builder()
        .threads(threads)
        .keep_alive(keep_alive)
        .on_thread_start(move |_| {
            s.fetch_add(1, SeqCst);
        })
        .on_thread_stop(move |_| {
            t.fetch_add(1, SeqCst);
        })
        .build()
        .unwrap();
    (pool, started, stopped)
}

/// Gives idle workers time to stop spinning and fall asleep without a deadline, the case a
/// shrink must wake (no assertion depends on it: a spinning worker notices a shrink anyway).
fn fall_asleep() {
    std::thread::sleep(Duration::from_millis(100));
}

#[test]
fn alternating_set_threads_starts_no_thread_after_the_first_growth() {
    let (pool, started, stopped) = counted_pool(2, LONG);
    pool.set_threads(16).unwrap();
    // Hooks run on the new threads, after `set_threads` returned.
    spin_until("16 threads to start", || started.load(SeqCst) == 16);
    for round in 0..50u32 {
        for n in [2, 16] {
            pool.set_threads(n).unwrap();
            assert_eq!(pool.threads(), n);
            assert_eq!(wait(pool.spawn(move || round)), Ok(round));
        }
    }
    // Every thread is still there and usable: 16 jobs meet at once. Each living thread ran its
    // start hook before its job, and every thread that left had run its hooks: so the count
    // below is every thread ever started.
    assert_every_worker_runs(&pool, 16);
    assert_eq!(started.load(SeqCst), 16, "threads were started again");
    assert_eq!(stopped.load(SeqCst), 0, "threads were stopped");
    assert_eq!(pool.stats().live_threads, 16);
}

#[test]
fn growing_again_within_the_keep_alive_starts_only_the_missing_threads() {
    let (pool, started, _) = counted_pool(4, LONG);
    pool.set_threads(1).unwrap();
    for i in 0..20u32 {
        assert_eq!(wait(pool.spawn(move || i)), Ok(i));
    }
    assert_eq!(pool.stats().live_threads, 4);
    pool.set_threads(6).unwrap();
    assert_eq!(pool.stats().live_threads, 6);
    assert_every_worker_runs(&pool, 6);
    assert_eq!(started.load(SeqCst), 6, "4 living threads and 2 new ones");
}

#[test]
fn after_a_shrink_at_most_n_jobs_run_at_once_while_surplus_threads_live() {
    let (pool, _, stopped) = counted_pool(8, LONG);
    assert_every_worker_runs(&pool, 8);
    pool.set_threads(2).unwrap();
    let gauge = Gauge::new();
    let handles: Vec<_> = (0..12)
        .map(|_| {
            let gauge = gauge.clone();
            pool.spawn(move || gauge.hold())
        })
        .collect();
    gauge.drive(12, 2);
    for h in handles {
        assert!(wait(h).unwrap() <= 2);
    }
    assert_eq!(gauge.state().max, 2);
    let stats = pool.stats();
    assert_eq!((stats.threads, stats.live_threads), (2, 8), "{stats:?}");
    assert_eq!(stopped.load(SeqCst), 0);
}

/// Jobs queued while the pool is at its limit, then the limit raised: the jobs start on the
/// living surplus threads at once, even though those sleep until their keep-alive ends.
#[test]
fn raising_the_limit_wakes_surplus_threads_for_queued_jobs() {
    let (pool, started, _) = counted_pool(4, LONG);
    assert_every_worker_runs(&pool, 4);
    pool.set_threads(1).unwrap();
    // Four jobs that can only finish together: with the limit at 1 only one starts.
    let barrier = common::Barrier::new(4);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let barrier = barrier.clone();
            pool.spawn(move || barrier.wait())
        })
        .collect();
    spin_until("one job to start", || pool.stats().running == 1);
    fall_asleep(); // the surplus threads, with a deadline: raising the limit must wake them
    pool.set_threads(4).unwrap();
    for h in handles {
        wait(h).expect("the four jobs met");
    }
    assert_eq!(started.load(SeqCst), 4, "no thread was started for them");
}

/// A pool of 4 with `keep_alive`, all its threads asleep, shrunk to 1: returns once the 3
/// surplus threads have retired.
fn shrink_idle_pool_until_retired(keep_alive: Duration) -> (WorkerPool, Arc<AtomicUsize>) {
    let (pool, _, stopped) = counted_pool(4, keep_alive);
    assert_every_worker_runs(&pool, 4);
    fall_asleep();
    pool.set_threads(1).unwrap();
    spin_until("three surplus threads to retire", || {
        stopped.load(SeqCst) == 3
    });
    assert_eq!(pool.stats().live_threads, 1);
    (pool, stopped)
}

#[test]
fn surplus_threads_retire_after_the_keep_alive() {
    let (pool, stopped) = shrink_idle_pool_until_retired(Duration::from_millis(20));
    assert_every_worker_runs(&pool, 1);
    // A thread that is not surplus stays, however long it idles: still one after a while.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(stopped.load(SeqCst), 3);
    assert_eq!(pool.stats().live_threads, 1);
}

#[test]
fn surplus_threads_that_ran_jobs_after_the_shrink_retire_too() {
    let (pool, _, stopped) = counted_pool(4, Duration::from_millis(20));
    pool.set_threads(2).unwrap();
    for i in 0..100u32 {
        assert_eq!(wait(pool.spawn(move || i)), Ok(i));
    }
    spin_until("two surplus threads to retire", || {
        stopped.load(SeqCst) == 2
    });
    assert_eq!(pool.stats().live_threads, 2);
    assert_every_worker_runs(&pool, 2);
}

#[test]
fn a_zero_keep_alive_retires_surplus_threads_at_once() {
    let (pool, _) = shrink_idle_pool_until_retired(Duration::ZERO);
    assert_every_worker_runs(&pool, 1);
}

/// Shuts `pool` down with `shut` (on a helper thread, bounded by `HANG`), then checks that
/// all its `threads` stopped.
fn assert_all_stop(
    pool: &WorkerPool,
    stopped: &AtomicUsize,
    threads: usize,
    shut: impl FnOnce(WorkerPool) + Send + 'static,
) {
    let p = pool.clone();
    within_hang("the shutdown", move || shut(p));
    assert_eq!(stopped.load(SeqCst), threads);
    assert_eq!(pool.stats().live_threads, 0);
}

#[test]
fn a_max_keep_alive_keeps_surplus_threads_until_shutdown() {
    let (pool, _, stopped) = counted_pool(6, Duration::MAX);
    pool.set_threads(2).unwrap();
    // Jobs wake sleeping threads one by one; none of them leaves.
    for i in 0..200u32 {
        assert_eq!(wait(pool.spawn(move || i)), Ok(i));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(stopped.load(SeqCst), 0);
    assert_eq!(pool.stats().live_threads, 6);
    assert_all_stop(&pool, &stopped, 6, |p| p.shutdown());
}

#[test]
fn shutdown_with_surplus_threads_returns_promptly() {
    let (pool, _, stopped) = counted_pool(8, LONG);
    assert_every_worker_runs(&pool, 8);
    fall_asleep();
    pool.set_threads(1).unwrap();
    assert_all_stop(&pool, &stopped, 8, |p| p.shutdown());
}

#[test]
fn shutdown_timeout_and_shutdown_async_do_not_wait_for_the_keep_alive() {
    let (pool, _, stopped) = counted_pool(4, LONG);
    pool.set_threads(1).unwrap();
    assert_all_stop(&pool, &stopped, 4, |p| p.shutdown_timeout(HANG).unwrap());

    let (pool, _, stopped) = counted_pool(4, LONG);
    pool.set_threads(1).unwrap();
    assert_all_stop(&pool, &stopped, 4, |p| {
        pollster::block_on(p.shutdown_async())
    });
}

#[test]
fn dropping_the_last_handle_ends_surplus_threads_at_once() {
    let (pool, _, stopped) = counted_pool(4, LONG);
    assert_every_worker_runs(&pool, 4);
    pool.set_threads(1).unwrap();
    drop(pool);
    spin_until("every thread to stop", || stopped.load(SeqCst) == 4);
}
