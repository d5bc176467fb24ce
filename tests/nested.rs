//! `wait()` on a handle from inside a job of the same pool never deadlocks, even when every
//! worker is waiting: a waiting worker runs the awaited job itself if no worker has started it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use asyncify_pool::WorkerPool;
use common::{depth, wait};

#[test]
fn waiting_inside_a_job_on_a_one_thread_pool() {
    let pool = WorkerPool::new(1);
    let inner = pool.clone();
    let outer = pool.spawn(move || {
        let me = std::thread::current().id();
        // The only worker waits on a job queued behind its own; it runs it itself.
        let (value, ran_on) = inner
            .spawn(move || (21, std::thread::current().id()))
            .wait()
            .unwrap();
        (value * 2, ran_on == me)
    });
    assert_eq!(wait(outer), Ok((42, true)));
}

#[test]
fn recursion_five_deep_on_a_one_thread_pool() {
    let pool = WorkerPool::new(1);
    let inner = pool.clone();
    assert_eq!(wait(pool.spawn(move || depth(inner, 5))), Ok(5));
    // And a call that waits, from inside a program, through `AsyncProgram`.
    let p = pool.clone();
    let program = pool.asyncify(move |n: u32| depth(p.clone(), n));
    assert_eq!(wait(program.call(5)), Ok(5));
}

#[test]
fn every_worker_waits_on_many_nested_jobs() {
    let pool = WorkerPool::new(2);
    let inner_runs = Arc::new(AtomicUsize::new(0));
    // More outer jobs than threads, each fanning out and waiting on every child: at times
    // both workers are waiting, and only the jobs they run while waiting make progress.
    let outers: Vec<_> = (0..16u64)
        .map(|o| {
            let (inner, runs) = (pool.clone(), inner_runs.clone());
            pool.spawn(move || {
                let children: Vec<_> = (0..8u64)
                    .map(|c| {
                        let runs = runs.clone();
                        inner.spawn(move || {
                            runs.fetch_add(1, SeqCst);
                            o * 100 + c
                        })
                    })
                    .collect();
                children.into_iter().map(|h| h.wait().unwrap()).sum::<u64>()
            })
        })
        .collect();
    for (o, h) in (0..16u64).zip(outers) {
        assert_eq!(wait(h), Ok(o * 800 + 28));
    }
    assert_eq!(inner_runs.load(SeqCst), 128);
}

#[test]
fn awaiting_inside_a_job_works_when_another_thread_is_free() {
    // Documented: a job that runs its own executor blocks its worker until the handle resolves,
    // so it needs a free thread for the awaited job (here the second one).
    let pool = WorkerPool::new(2);
    let inner = pool.clone();
    let outer = pool.spawn(move || pollster::block_on(inner.spawn(|| "awaited")));
    assert_eq!(wait(outer), Ok(Ok("awaited")));
}

#[test]
fn waiting_on_a_job_of_another_pool() {
    // The waiting worker runs nothing meanwhile; the other pool runs the awaited job.
    let a = WorkerPool::new(1);
    let b = WorkerPool::new(1);
    let outer = a.spawn(move || b.spawn(|| 7).wait());
    assert_eq!(wait(outer), Ok(Ok(7)));
}
