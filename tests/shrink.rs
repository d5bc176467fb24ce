//! Shrinking (or shutting down) a pool from inside a job that then waits on its children must
//! not deadlock. The classic trap: after `set_threads(1)` the waiting job holds the only
//! permit, an idle worker takes a child off the queue and sleeps waiting for a permit, and the
//! waiting job can never reach that child to run it itself.

mod common;

use asyncify_pool::{JobError, WorkerPool};
use common::{assert_every_worker_runs, in_child, wait};

#[test]
fn shrinking_to_one_inside_a_job_that_waits_on_its_children() {
    in_child(
        "shrinking_to_one_inside_a_job_that_waits_on_its_children",
        || {
            for round in 0..200 {
                let pool = WorkerPool::new(8);
                // Every worker up and idle in `recv`, ready to grab the children.
                assert_every_worker_runs(&pool, 8);
                let inner = pool.clone();
                let outer = pool.spawn(move || {
                    let children: Vec<_> = (0..7u64).map(|i| inner.spawn(move || i)).collect();
                    inner.set_threads(1).unwrap();
                    children.into_iter().map(|h| h.wait().unwrap()).sum::<u64>()
                });
                assert_eq!(wait(outer), Ok(21), "round {round}");
                assert_eq!(pool.threads(), 1);
                assert_every_worker_runs(&pool, 1);
                pool.shutdown();
                assert_eq!(pool.stats().live_threads, 0, "round {round}");
            }
        },
    );
}

#[test]
fn shutdown_inside_a_job_while_other_jobs_wait_on_nested_children() {
    in_child(
        "shutdown_inside_a_job_while_other_jobs_wait_on_nested_children",
        || {
            for round in 0..50 {
                let pool = WorkerPool::new(4);
                assert_every_worker_runs(&pool, 4);
                // Waiters fan out and wait on children, some of which fan out and wait again,
                // while one job shuts the pool down from inside. Every child either ran (its
                // value) or was refused (`ShutDown`); nothing hangs.
                let waiters: Vec<_> = (0..6u64)
                    .map(|w| {
                        let inner = pool.clone();
                        pool.spawn(move || {
                            let children: Vec<_> = (0..6u64)
                                .map(|c| {
                                    let nested = inner.clone();
                                    inner.spawn(move || {
                                        let grandchild = nested.spawn(move || w * 100 + c);
                                        grandchild.wait()
                                    })
                                })
                                .collect();
                            let mut ran = 0;
                            for (c, h) in (0..6u64).zip(children) {
                                match h.wait() {
                                    Ok(Ok(v)) => {
                                        assert_eq!(v, w * 100 + c);
                                        ran += 1;
                                    }
                                    Ok(Err(e)) | Err(e) => {
                                        assert!(e.is_shut_down(), "child {w}/{c}: {e:?}")
                                    }
                                }
                            }
                            ran
                        })
                    })
                    .collect();
                let inner = pool.clone();
                let closer = pool.spawn(move || inner.shutdown());
                let late = pool.spawn(|| "accepted or refused");
                assert_eq!(wait(closer), Ok(()), "round {round}");
                for (w, h) in waiters.into_iter().enumerate() {
                    let ran = wait(h).unwrap_or_else(|e| panic!("round {round} waiter {w}: {e:?}"));
                    assert!(ran <= 6);
                }
                match wait(late) {
                    Ok(v) => assert_eq!(v, "accepted or refused"),
                    Err(e) => assert!(matches!(e, JobError::ShutDown { .. }), "{e:?}"),
                }
                pool.shutdown();
                assert_eq!(pool.stats().live_threads, 0, "round {round}");
            }
        },
    );
}
