//! `worker_index()`: which thread of its pool a job runs on.

mod common;

use std::sync::{Arc, Mutex};

use asyncify_pool::{worker_index, WorkerPool};
use common::{lock, probe_every_worker, wait};

#[test]
fn every_worker_of_a_new_pool_has_its_own_index_from_zero() {
    let pool = WorkerPool::new(3);
    let mut seen: Vec<_> = probe_every_worker(&pool, worker_index)
        .into_iter()
        .map(|(index, met)| {
            assert!(met, "the probes did not all meet");
            index
        })
        .collect();
    seen.sort();
    assert_eq!(seen, [Some(0), Some(1), Some(2)]);
}

#[test]
fn the_index_matches_the_thread_name_and_the_hooks() {
    let started = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&started);
    let pool = WorkerPool::builder()
        .threads(2)
        .thread_name("idx")
        .on_thread_start(move |i| lock(&s).push((i, worker_index())))
        .build()
        .unwrap();
    let (index, name) = wait(pool.spawn(|| {
        (
            worker_index(),
            std::thread::current().name().map(String::from),
        )
    }))
    .unwrap();
    assert_eq!(name, Some(format!("idx-{}", index.unwrap())));
    pool.shutdown();
    let mut started = lock(&started).clone();
    started.sort();
    assert_eq!(started, [(0, Some(0)), (1, Some(1))]);
}

/// Threads started later take numbers never used in the pool, so no two threads share one.
#[test]
fn a_grown_pool_numbers_its_new_threads_after_the_old_ones() {
    let pool = WorkerPool::new(1);
    pool.set_threads(3).unwrap();
    let mut seen: Vec<_> = probe_every_worker(&pool, worker_index)
        .into_iter()
        .map(|(index, _)| index.unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, [0, 1, 2]);
    pool.set_threads(1).unwrap();
    common::spin_until("the surplus workers to retire", || {
        pool.stats().live_threads == 1
    });
    pool.set_threads(2).unwrap();
    let mut again: Vec<_> = probe_every_worker(&pool, worker_index)
        .into_iter()
        .map(|(index, _)| index.unwrap())
        .collect();
    again.sort();
    assert_eq!(again.len(), 2);
    assert_eq!(again[1], 3, "the new thread takes the next unused number");
}

#[test]
fn a_nested_job_its_waiter_runs_sees_the_waiters_index() {
    let pool = WorkerPool::new(1);
    let p = pool.clone();
    let (outer, inner) = wait(pool.spawn(move || {
        let inner = p.spawn(worker_index).wait().unwrap();
        (worker_index(), inner)
    }))
    .unwrap();
    assert_eq!(outer, Some(0));
    assert_eq!(inner, Some(0));
}

#[test]
fn off_the_pools_threads_there_is_no_index() {
    assert_eq!(worker_index(), None);
    let spawned = std::thread::spawn(worker_index).join().unwrap();
    assert_eq!(spawned, None);
}

/// Each level of `levels` nested waits records the index its job saw and the name of its
/// thread, deepest last.
type Seen = Arc<Mutex<Vec<(usize, String, std::thread::ThreadId)>>>;

fn nested_indexes(pool: WorkerPool, levels: u32, seen: Seen) {
    let index = worker_index().expect("a job runs on a pool thread");
    let this = std::thread::current();
    lock(&seen).push((index, this.name().unwrap_or("").to_owned(), this.id()));
    if levels > 0 {
        let inner = pool.clone();
        pool.spawn(move || nested_indexes(inner, levels - 1, seen))
            .wait()
            .unwrap();
    }
}

/// Deep nested waits on a small stack run their deeper levels on spare threads: each spare
/// takes a number never used in the pool (not the worker's 0, not another spare's), its
/// thread's name says that number, and a thread grown after them takes the next one.
#[test]
fn spare_threads_of_deep_nested_waits_take_unused_numbers() {
    common::in_child(
        "spare_threads_of_deep_nested_waits_take_unused_numbers",
        || {
            let pool = WorkerPool::builder()
                .threads(1)
                .stack_size(96 << 10)
                .thread_name("deep")
                .build()
                .expect("the OS takes a 96 KiB stack");
            let seen: Seen = Arc::default();
            let (inner, s) = (pool.clone(), Arc::clone(&seen));
            wait(pool.spawn(move || nested_indexes(inner, 400, s))).unwrap();
            let seen = lock(&seen).clone();
            assert_eq!(seen.len(), 401);
            for (index, name, _) in &seen {
                assert_eq!(name, &format!("deep-{index}"), "the name says the index");
            }
            // One number per thread, and one thread per number.
            let by_thread: std::collections::BTreeMap<_, _> = seen
                .iter()
                .map(|(index, _, thread)| (format!("{thread:?}"), *index))
                .collect();
            for (index, _, thread) in &seen {
                assert_eq!(
                    by_thread[&format!("{thread:?}")],
                    *index,
                    "a thread's number moved"
                );
            }
            let mut numbers: Vec<usize> = by_thread.values().copied().collect();
            numbers.sort();
            numbers.dedup();
            assert_eq!(
                by_thread.len(),
                numbers.len(),
                "a number went to two threads"
            );
            assert_eq!(seen[0].0, 0, "the worker runs the first levels");
            assert!(
                numbers.len() > 2,
                "fewer than two spare threads: {numbers:?}"
            );
            let highest = *numbers.last().unwrap();
            assert_eq!(pool.stats().live_threads, 1, "spare threads are no workers");
            pool.set_threads(2).unwrap();
            let mut grown: Vec<_> = common::probe_every_worker(&pool, worker_index)
                .into_iter()
                .map(|(index, _)| index.unwrap())
                .collect();
            grown.sort();
            assert_eq!(
                grown,
                [0, highest + 1],
                "the grown thread takes the next unused number"
            );
        },
    );
}
