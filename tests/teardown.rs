//! Teardown must not deadlock on itself. When the last worker leaves a closed pool, whatever is
//! still queued (calls that slipped in behind the `Stop`s) is dropped, and dropping a queued job
//! drops its closure. A closure may own the last `WorkerPool` handle; dropping that handle
//! closes the pool, which takes the pool's control lock. If the worker drops the queue while
//! holding that lock, it waits on itself forever.
//!
//! A call slips in behind the `Stop`s when it passed the "still open?" check before the close
//! and put its job in the queue after it. To make that window wide, every closure here carries
//! half a megabyte of ballast, which the call copies into the job's allocation (inside the
//! window) in debug builds several times over. Each round counts the closures released; a
//! teardown that deadlocks leaves one unreleased and the round fails.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use asyncify_pool::{JobHandle, WorkerPool};
use common::{in_child, wait, Gate, HANG};

const BALLAST: usize = 512 * 1024;

/// What each queued closure owns: a pool handle (maybe the last one), released on drop, and
/// the count of released handles bumped only once that release has returned.
struct Owned {
    pool: Option<WorkerPool>,
    released: Arc<AtomicUsize>,
    ballast: [u8; BALLAST],
}

impl Drop for Owned {
    fn drop(&mut self) {
        drop(self.pool.take());
        self.released.fetch_add(1, SeqCst);
    }
}

/// How the pool gets closed while a spawner is mid-call.
#[derive(Clone, Copy)]
enum Close {
    /// The running job calls `shutdown()` from inside; the jobs queued before it still run.
    FromInsideAJob,
    /// `shutdown_timeout(ZERO)` from outside while the only worker is busy: the queue is
    /// abandoned, and a call that lands after that sits behind the `Stop` alone.
    TimeoutFromOutside,
}

/// One round; returns how many calls landed behind the `Stop` (queued, never run, resolved
/// `ShutDown`).
fn round(close: Close) -> usize {
    // Big stacks: a ballasted closure is moved around on the stack in debug builds.
    let pool = WorkerPool::builder()
        .threads(1)
        .stack_size(64 << 20)
        .build()
        .unwrap();
    let released = Arc::new(AtomicUsize::new(0));

    // The only worker runs this job until told to close, then until told to finish.
    let (started_tx, started_rx) = mpsc::channel();
    let (closed_tx, closed_rx) = mpsc::channel();
    let (close_now, finish) = (Gate::new(), Gate::new());
    let busy = {
        let inner = pool.clone();
        let (close_now, finish) = (close_now.clone(), finish.clone());
        pool.spawn(move || {
            started_tx.send(()).unwrap();
            close_now.wait();
            if let Close::FromInsideAJob = close {
                inner.shutdown();
            }
            drop(inner);
            closed_tx.send(()).unwrap();
            finish.wait();
        })
    };
    started_rx.recv_timeout(HANG).unwrap();

    // The spawner queues ballasted closures, each owning a pool handle, until it is refused.
    let spawned = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let spawner = {
        let (pool, released, spawned, stop) = (
            pool.clone(),
            released.clone(),
            spawned.clone(),
            stop.clone(),
        );
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || {
                let mut accepted: Vec<JobHandle<usize>> = Vec::new();
                while !stop.load(SeqCst) {
                    let owned = Owned {
                        pool: Some(pool.clone()),
                        released: released.clone(),
                        ballast: [1; BALLAST],
                    };
                    // `let` moves all of `owned` in (naming only the `Copy` ballast would
                    // capture just a copy of it).
                    let handle = pool.spawn(move || {
                        let owned = owned;
                        owned.ballast.len()
                    });
                    spawned.fetch_add(1, SeqCst);
                    if handle.is_finished() {
                        break; // refused: the pool is closed
                    }
                    accepted.push(handle);
                }
                drop(pool); // from now on the queued closures own the only handles
                accepted
            })
            .unwrap()
    };
    let deadline = Instant::now() + HANG;
    while spawned.load(SeqCst) < 3 {
        assert!(Instant::now() < deadline, "the spawner never got going");
        std::thread::sleep(Duration::from_micros(200));
    }

    close_now.open();
    match close {
        Close::FromInsideAJob => closed_rx.recv_timeout(HANG).unwrap(),
        Close::TimeoutFromOutside => {
            closed_rx.recv_timeout(HANG).unwrap();
            assert!(
                pool.shutdown_timeout(Duration::ZERO).is_err(),
                "the worker is busy"
            );
        }
    }
    stop.store(true, SeqCst);
    let accepted = spawner.join().unwrap();
    // Nothing can resolve a queued call while the worker is busy: those unfinished now were
    // queued, ahead of the `Stop` (they will run) or behind it (they never will).
    let queued: Vec<bool> = accepted.iter().map(|h| !h.is_finished()).collect();
    drop(pool);
    // Let the worker go: it runs what was queued ahead of the `Stop`, takes the `Stop`, and as
    // the last worker drops what is behind it, including the closure with the last handle.
    finish.open();

    let total = accepted.len();
    let deadline = Instant::now() + HANG;
    while released.load(SeqCst) < total {
        assert!(
            Instant::now() < deadline,
            "teardown hung: {} of {total} queued closures released their pool handle; \
             the last worker deadlocked dropping the queue",
            released.load(SeqCst)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(wait(busy), Ok(()));
    let mut behind = 0;
    for (handle, was_queued) in accepted.into_iter().zip(queued) {
        match wait(handle) {
            Ok(n) => assert_eq!(n, BALLAST),
            Err(e) => {
                assert!(e.is_shut_down(), "{e:?}");
                behind += usize::from(was_queued);
            }
        }
    }
    behind
}

/// Rounds until a few calls have landed behind the `Stop` (or a cap: a pool that closes the
/// window entirely never lets one land, and that is fine too).
fn rounds(close: Close) {
    // On a big stack too: a job's cell holds the ballasted closure inline, and debug builds
    // move it around on the stack of whoever polls or drops the job.
    let run = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            let mut landed = 0;
            for _ in 0..40 {
                landed += round(close);
                if landed >= 5 {
                    break;
                }
            }
            landed
        });
    let landed = run
        .unwrap()
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    eprintln!("{landed} calls landed behind the Stop");
}

#[test]
fn last_handle_in_a_job_queued_behind_an_inside_shutdown() {
    in_child(
        "last_handle_in_a_job_queued_behind_an_inside_shutdown",
        || rounds(Close::FromInsideAJob),
    );
}

#[test]
fn last_handle_in_a_job_queued_behind_a_timed_out_shutdown() {
    in_child(
        "last_handle_in_a_job_queued_behind_a_timed_out_shutdown",
        || rounds(Close::TimeoutFromOutside),
    );
}
