//! Attacks on the timer's ringers at a pool's close, where user code runs on them: a waker
//! that waits for a call of another pool, and a rate limiter's whole line of inputs whose
//! `Drop` blocks. Both failed on the code that handed every admission made on a ringer to the
//! ringers as a task of its own: the first was parked behind the waker that waited for it, and
//! the second took every ringer, so that a running call's deadline stopped.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use asyncify_pool::{JobHandle, WorkerPool};
use common::*;

struct Hostile {
    /// A queued call on pool Q that holds Q's only concurrency slot.
    holder: Mutex<Option<JobHandle<u32>>>,
    /// A call on pool Q waiting in the limit's line for that slot.
    waiter: Mutex<Option<JobHandle<u32>>>,
    q_gate: Arc<Gate>,
    report: Mutex<mpsc::Sender<Option<u32>>>,
}

impl Wake for Hostile {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let name = std::thread::current().name().unwrap_or("").to_string();
        if !name.ends_with("-ring") {
            return; // (a wake-up elsewhere: the test polls again)
        }
        let Some(holder) = lock(&self.holder).take() else {
            return;
        };
        // Let the closed pool's timer thread see it has nothing left and leave.
        std::thread::sleep(Duration::from_millis(200));
        // Dropping the holder frees the slot: the waiter is admitted (this is a ringer now).
        drop(holder);
        self.q_gate.open();
        let mut waiter = lock(&self.waiter).take().unwrap();
        // A user waker that waits for another call (bounded here so the test ends).
        let got = waiter
            .wait_timeout(Duration::from_secs(5))
            .map(|r| r.unwrap());
        let _ = lock(&self.report).send(got);
    }
}

#[test]
fn an_admission_from_a_waker_on_a_closed_pools_ringer_is_not_parked() {
    let p = WorkerPool::new(1);
    let q = WorkerPool::new(1);
    let (q_gate, _blockers) = occupy(&q, 1);
    let limited = q.asyncify(|x: u32| x).concurrency_limit(1);
    let holder = limited.call(1); // takes the slot, queued behind the blocker
    let waiter = limited.call(2); // waits in the limit's line
    let (tx, rx) = mpsc::channel();
    let hostile = Arc::new(Hostile {
        holder: Mutex::new(Some(holder)),
        waiter: Mutex::new(Some(waiter)),
        q_gate: Arc::clone(&q_gate),
        report: Mutex::new(tx),
    });
    let p_gate = Gate::new();
    let pg = Arc::clone(&p_gate);
    let (started_tx, started) = mpsc::channel();
    let timed = p
        .asyncify(move |_: u32| {
            started_tx.send(()).unwrap();
            pg.wait();
        })
        .timeout(Duration::from_millis(300));
    let mut d = timed.call(0);
    started.recv_timeout(HANG).unwrap();
    let waker = Waker::from(Arc::clone(&hostile));
    // (A handle yields a few times before it leaves the waker with the job.)
    for _ in 0..32 {
        assert!(Pin::new(&mut d)
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
    }
    // Close P while D runs: D's deadline is kept, and rings on a ringer at its time.
    drop(p.shutdown_async());
    let got = rx.recv_timeout(HANG).expect("the waker never ran");
    p_gate.open();
    assert_eq!(
        got,
        Some(2),
        "the call admitted from the waker did not run while the waker waited for it"
    );
}

struct BlockOnDrop(Arc<Gate>);

impl Drop for BlockOnDrop {
    fn drop(&mut self) {
        self.0.wait();
    }
}

#[test]
fn a_rate_line_of_blocking_drops_at_the_close_does_not_stop_every_deadline() {
    let pool = WorkerPool::new(2);
    let drops = Gate::new();
    let limited = pool
        .asyncify(std::mem::forget::<BlockOnDrop>)
        .rate_limit(1, Duration::from_secs(3600));
    // The first takes the only token; the other 17 wait in the line.
    let handles: Vec<_> = (0..18)
        .map(|_| limited.call(BlockOnDrop(Arc::clone(&drops))))
        .collect();
    let run_gate = Gate::new();
    let rg = Arc::clone(&run_gate);
    let (started_tx, started) = mpsc::channel();
    let timed = pool
        .asyncify(move |_: u32| {
            started_tx.send(()).unwrap();
            rg.wait();
        })
        .timeout(Duration::from_millis(500));
    let mut d = timed.call(0);
    started.recv_timeout(HANG).unwrap();
    drop(pool.shutdown_async());
    let got = d.wait_timeout(Duration::from_secs(5));
    drops.open();
    run_gate.open();
    drop(handles);
    assert!(
        matches!(&got, Some(Err(e)) if e.is_timed_out()),
        "a running call's 500 ms deadline had not come 5 s later: {got:?}"
    );
}
