//! Waiting inside a job: neither the worker's stack nor the pool's thread count may grow with
//! the number of jobs queued behind the waiting one. A waiting worker that helps by running
//! the next queued job on its own stack, whatever that job is, nests one frame per queued job
//! that itself waits: enough of them and the stack overflows, which aborts the process. So
//! these scenarios run in a child process, where an abort fails the test.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use asyncify_pool::WorkerPool;
use common::{depth, in_child, wait, HANG};

/// The process's OS thread count, from /proc/self/status (0 where there is no procfs).
fn os_threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `jobs` independent jobs, each spawning one child on the same pool and `wait`ing on it. All
/// the outer jobs are queued before any child, so a worker that helps with "the next queued
/// job" while waiting runs another outer job, which waits in turn: one frame per queued job.
/// Returns the most OS threads the process had while the children ran.
fn fan_of_nested_waits(pool: &WorkerPool, jobs: u64) -> usize {
    let most_threads = Arc::new(AtomicUsize::new(0));
    let outers: Vec<_> = (0..jobs)
        .map(|i| {
            let (inner, most) = (pool.clone(), most_threads.clone());
            pool.spawn(move || {
                let child = inner.spawn(move || {
                    if i % 1000 == 0 {
                        most.fetch_max(os_threads(), SeqCst);
                    }
                    i * 2
                });
                child.wait().unwrap() + 1
            })
        })
        .collect();
    for (i, outer) in (0..jobs).zip(outers) {
        assert_eq!(wait(outer), Ok(i * 2 + 1), "outer job {i}");
    }
    most_threads.load(SeqCst)
}

#[test]
fn breadth_100_000_nested_waits_on_a_256k_stack() {
    in_child("breadth_100_000_nested_waits_on_a_256k_stack", || {
        let pool = WorkerPool::builder()
            .threads(2)
            .stack_size(256 * 1024)
            .build()
            .unwrap();
        let most_threads = fan_of_nested_waits(&pool, 100_000);
        // Threads do not grow with the queue either: no compensating thread per waiting job.
        let stats = pool.stats();
        assert_eq!(stats.live_threads, 2, "{stats:?}");
        assert_eq!(stats.completed, 200_000, "{stats:?}");
        assert!(
            most_threads < 64,
            "the process ran {most_threads} OS threads for a 2-thread pool"
        );
    });
}

#[test]
fn breadth_5_000_nested_waits_on_the_default_stack() {
    in_child("breadth_5_000_nested_waits_on_the_default_stack", || {
        let pool = WorkerPool::new(2);
        let most_threads = fan_of_nested_waits(&pool, 5_000);
        assert_eq!(pool.stats().live_threads, 2);
        assert!(most_threads < 64, "{most_threads} OS threads");
    });
}

#[test]
fn depth_1_000_nested_waits_on_one_thread_with_a_1m_stack() {
    in_child(
        "depth_1_000_nested_waits_on_one_thread_with_a_1m_stack",
        || {
            let pool = common::one_thread_with_a_1m_stack();
            assert_eq!(depth(pool.clone(), 1000), 1000);
            assert_eq!(pool.stats().live_threads, 1);
        },
    );
}

/// Deep nesting on a small stack: past half of it, each level goes to a spare thread, and the
/// hand-off must fit in the half that is left. It once built the new thread's counters there
/// (10 KB of histograms, copied a few times over in a debug build), and 2,000 nested waits on
/// one thread with a 96 KiB stack overflowed it and aborted; 120 KiB was enough.
#[test]
fn depth_2_000_nested_waits_on_one_thread_with_a_96k_stack() {
    in_child(
        "depth_2_000_nested_waits_on_one_thread_with_a_96k_stack",
        || {
            let pool = WorkerPool::builder()
                .threads(1)
                .stack_size(96 << 10)
                .build()
                .expect("the OS takes a 96 KiB stack");
            assert_eq!(depth(pool.clone(), 2000), 2000);
            assert_eq!(pool.stats().live_threads, 1, "spare threads are no workers");
        },
    );
}

#[test]
fn wait_timeout_inside_a_job_helps_like_wait() {
    // The only worker waits, with a bound, on a trivial job queued behind its own. `wait` runs
    // it itself; `wait_timeout` must too, or the bound (any bound) always runs out.
    let pool = WorkerPool::new(1);
    let inner = pool.clone();
    let mut outer = pool.spawn(move || inner.spawn(|| 7).wait_timeout(HANG));
    let result = outer.wait_timeout(HANG * 2).expect("the outer job hung");
    assert_eq!(
        result,
        Ok(Some(Ok(7))),
        "wait_timeout inside a job gave up on a job it could have run"
    );
}

/// A wait with any timeout inside a job first runs the awaited job if no worker has started
/// it, as `wait` does, and only then honours the timeout. A deadline that had passed once
/// ended the wait before that, so a job polling its child with `wait_timeout(ZERO)` on a
/// one-thread pool never got the child run.
#[test]
fn polling_a_child_with_zero_timeouts_inside_a_job_of_a_one_thread_pool_finishes() {
    let pool = WorkerPool::new(1);
    let inner = pool.clone();
    let outer = pool.spawn(move || {
        let mut child = inner.spawn(|| 5u32);
        let deadline = std::time::Instant::now() + HANG;
        loop {
            if let Some(out) = child.wait_timeout(std::time::Duration::ZERO) {
                return Some(out);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::yield_now(); // other work of the job would go here
        }
    });
    assert_eq!(
        wait(outer),
        Ok(Some(Ok(5))),
        "wait_timeout(ZERO) inside a job never ran the child"
    );
}

/// A job waiting on a job of another pool keeps its stack to itself: it runs nothing else
/// meanwhile. A worker that ran its own pool's queued jobs while waiting (as a version of the
/// rebuild did, to break cycles between pools) ran the second job here on top of the first,
/// and the second waits on the first: buried under it, the first could never return.
#[test]
fn a_job_waiting_on_another_pool_runs_nothing_on_top_of_itself() {
    in_child(
        "a_job_waiting_on_another_pool_runs_nothing_on_top_of_itself",
        || {
            let a = WorkerPool::new(1);
            let b = WorkerPool::new(1);
            let first = a.spawn(move || {
                b.spawn(|| std::thread::sleep(std::time::Duration::from_millis(50)))
                    .wait()
                    .map(|()| 1)
            });
            let second = a.spawn(move || first.wait().map(|r| r.map(|x| x + 1)));
            assert_eq!(wait(second), Ok(Ok(Ok(2))));
        },
    );
}

/// Deep in a stack, the awaited job runs on a spare thread under the waiter's place in the
/// pool; a `wait_timeout` then waits for it to end, so that the pool never runs more jobs at
/// once than its threads: the next job may not start while the spare still runs.
#[test]
fn a_wait_timeout_handed_to_a_spare_keeps_the_concurrency_bound() {
    static CHILD_RUNNING: AtomicUsize = AtomicUsize::new(0);
    #[inline(never)]
    fn deep(pool: &WorkerPool, levels: usize) -> Option<Result<(), asyncify_pool::JobError>> {
        let pad = [0u8; 16 * 1024];
        std::hint::black_box(&pad);
        if levels > 0 {
            return deep(pool, levels - 1);
        }
        let mut child = pool.spawn(|| {
            CHILD_RUNNING.store(1, SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(400));
            CHILD_RUNNING.store(0, SeqCst);
        });
        // Long enough that the waiter hands the child on before it runs out even on a loaded
        // machine (a timeout that passes before the hand-over rightly gives up), and well
        // short of the child's run, so that giving up after the hand-over would show.
        child.wait_timeout(std::time::Duration::from_millis(50))
    }
    in_child(
        "a_wait_timeout_handed_to_a_spare_keeps_the_concurrency_bound",
        || {
            let pool = common::one_thread_with_a_1m_stack();
            let p = pool.clone();
            // 40 levels of 16 KiB: past half of the 1 MiB stack, so the child goes to a spare.
            let outer = pool.spawn(move || deep(&p, 40));
            let next = pool.spawn(|| CHILD_RUNNING.load(SeqCst));
            assert_eq!(
                wait(outer),
                Ok(Some(Ok(()))),
                "the wait gave up on a job it handed on"
            );
            assert_eq!(
                wait(next),
                Ok(0),
                "a job started while the spare ran: two at once"
            );
        },
    );
}
