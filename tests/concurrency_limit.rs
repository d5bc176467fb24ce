//! `concurrency_limit` and `adaptive_concurrency`: at most `n` of a program's attempts in the
//! pool, gauged as the pool's own limit is; other programs' jobs pass the waiting ones; an
//! abandoned attempt keeps its place until it returns; an adaptive limit converges to a
//! simulated backend's capacity and follows it when it changes.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use asyncify_pool::{Overload, WorkerPool};
use common::{wait, Gate, Gauge, HANG};

#[test]
fn at_most_n_run_at_once() {
    for limit in [1, 3] {
        let pool = WorkerPool::new(8);
        let gauge = Gauge::new();
        let g = Arc::clone(&gauge);
        let p = pool
            .asyncify(move |_: usize| g.hold())
            .concurrency_limit(limit);
        let handles: Vec<_> = (0..12).map(|i| p.call(i)).collect();
        gauge.drive(12, limit);
        for h in handles {
            wait(h).unwrap();
        }
        assert_eq!(gauge.state().max, limit, "limit {limit}");
        assert_eq!(p.stats().in_flight, 0);
    }
}

/// A limited program's waiting calls sit outside the pool: a plain job submitted after them
/// runs while they wait.
#[test]
fn other_programs_pass_the_waiting_calls() {
    let pool = WorkerPool::new(2);
    let gate = Gate::new();
    let (started_tx, started_rx) = mpsc::channel();
    let (g, tx) = (Arc::clone(&gate), Mutex::new(started_tx));
    let slow = pool
        .asyncify(move |i: usize| {
            tx.lock().unwrap().send(i).unwrap();
            g.wait();
        })
        .concurrency_limit(1);
    let handles: Vec<_> = (0..10).map(|i| slow.call(i)).collect();
    assert_eq!(started_rx.recv_timeout(HANG).unwrap(), 0);
    assert_eq!(
        pool.stats().queued,
        0,
        "the other nine wait outside the queue"
    );
    assert_eq!(wait(pool.spawn(|| "passed")), Ok("passed"));
    assert_eq!(slow.stats().in_flight, 1);
    gate.open();
    for h in handles {
        wait(h).unwrap();
    }
    let order: Vec<usize> = started_rx.try_iter().collect();
    assert_eq!(
        order,
        (1..10).collect::<Vec<_>>(),
        "in the order of the calls"
    );
    assert_eq!(slow.stats().waited_for_slot, 9);
}

/// Calls that leave the line (dropped, nine in ten) have their entries taken out while it
/// waits, in prunes: the calls still in it keep their places, and each runs once, in order.
#[test]
fn the_calls_left_in_a_pruned_line_keep_their_order() {
    let pool = WorkerPool::new(2);
    let gate = Gate::new();
    let (started_tx, started_rx) = mpsc::channel();
    let (g, tx) = (Arc::clone(&gate), Mutex::new(started_tx));
    let slow = pool
        .asyncify(move |i: usize| {
            tx.lock().unwrap().send(i).unwrap();
            if i == 0 {
                g.wait();
            }
        })
        .concurrency_limit(1);
    let first = slow.call(0);
    assert_eq!(started_rx.recv_timeout(HANG).unwrap(), 0);
    let kept: Vec<_> = (1..1_000)
        .filter_map(|i| {
            let h = slow.call(i);
            (i % 10 == 0).then_some(h)
        })
        .collect();
    gate.open();
    wait(first).unwrap();
    for h in kept {
        wait(h).unwrap();
    }
    let order: Vec<usize> = started_rx.try_iter().collect();
    assert_eq!(order, (1..100).map(|i| i * 10).collect::<Vec<_>>());
}

/// An attempt abandoned while it runs (its deadline passed) keeps its slot until it returns:
/// the next call does not start beside it.
#[test]
fn an_abandoned_attempt_keeps_its_slot_until_it_returns() {
    let pool = WorkerPool::new(4);
    let gate = Gate::new();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (g, r, m) = (Arc::clone(&gate), Arc::clone(&running), Arc::clone(&most));
    let p = pool
        .asyncify(move |first: bool| {
            let now = r.fetch_add(1, SeqCst) + 1;
            m.fetch_max(now, SeqCst);
            if first {
                g.wait();
            }
            r.fetch_sub(1, SeqCst);
        })
        .concurrency_limit(1);
    let timed = p.timeout(Duration::from_millis(20));
    assert!(wait(timed.call(true)).unwrap_err().is_timed_out());
    let next = p.call(false);
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !next.is_finished(),
        "the next call ran beside the abandoned attempt"
    );
    gate.open();
    wait(next).unwrap();
    assert_eq!(most.load(SeqCst), 1);
}

/// Programs made from a limited one by further options share its limit.
#[test]
fn derived_programs_share_the_limit() {
    let pool = WorkerPool::new(8);
    let gauge = Gauge::new();
    let g = Arc::clone(&gauge);
    let base = pool.asyncify(move |_: usize| g.hold()).concurrency_limit(2);
    let timed = base.timeout(Duration::from_secs(3600));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            if i % 2 == 0 {
                base.call(i)
            } else {
                timed.call(i)
            }
        })
        .collect();
    gauge.drive(8, 2);
    for h in handles {
        wait(h).unwrap();
    }
    assert_eq!(gauge.state().max, 2);
}

#[test]
#[should_panic(expected = "concurrency limit of 0")]
fn a_limit_of_zero_is_refused() {
    let pool = WorkerPool::new(1);
    let _ = pool.asyncify(|x: u8| x).concurrency_limit(0);
}

/// A simulated LLM backend: it serves `capacity` requests at once (each takes a few
/// milliseconds) and answers 429 at once beyond that.
struct Backend {
    capacity: AtomicUsize,
    in_flight: AtomicUsize,
    served: AtomicUsize,
    rejected: AtomicUsize,
}

impl Backend {
    fn call(&self) -> u16 {
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        let status = if now > self.capacity.load(SeqCst) {
            self.rejected.fetch_add(1, SeqCst);
            429
        } else {
            std::thread::sleep(Duration::from_millis(4));
            self.served.fetch_add(1, SeqCst);
            200
        };
        self.in_flight.fetch_sub(1, SeqCst);
        status
    }
}

/// Drives `calls` calls, `window` outstanding at a time, and returns the limits seen after
/// each of the last quarter of them.
fn drive(
    p: &asyncify_pool::AsyncProgram<impl asyncify_pool::Program<(), Output = u16> + ?Sized>,
    calls: usize,
    window: usize,
) -> Vec<usize> {
    let mut outstanding = std::collections::VecDeque::new();
    let mut seen = Vec::new();
    for i in 0..calls {
        if outstanding.len() == window {
            let h: asyncify_pool::JobHandle<u16> = outstanding.pop_front().unwrap();
            wait(h).unwrap();
        }
        outstanding.push_back(p.call(()));
        if i >= calls * 3 / 4 {
            seen.push(p.stats().concurrency_limit.unwrap());
        }
    }
    for h in outstanding {
        wait(h).unwrap();
    }
    seen
}

fn median(mut v: Vec<usize>) -> usize {
    v.sort_unstable();
    v[v.len() / 2]
}

#[test]
fn adaptive_concurrency_converges_to_the_backend_and_follows_it() {
    let pool = WorkerPool::new(24);
    let backend = Arc::new(Backend {
        capacity: AtomicUsize::new(8),
        in_flight: AtomicUsize::new(0),
        served: AtomicUsize::new(0),
        rejected: AtomicUsize::new(0),
    });
    let b = Arc::clone(&backend);
    let llm = pool.asyncify(move |_: ()| b.call()).adaptive_concurrency(
        1,
        20,
        Overload::when(|s: &u16| *s == 429),
    );
    assert_eq!(llm.stats().concurrency_limit, Some(1));
    let first = median(drive(&llm, 1_500, 40));
    assert!(
        (6..=12).contains(&first),
        "capacity 8: the limit settled at {first}"
    );
    backend.capacity.store(3, SeqCst);
    let second = median(drive(&llm, 1_500, 40));
    assert!(
        (2..=6).contains(&second),
        "capacity 3: the limit settled at {second}"
    );
    backend.capacity.store(12, SeqCst);
    let third = median(drive(&llm, 2_000, 40));
    assert!(
        (9..=17).contains(&third),
        "capacity 12: the limit settled at {third}"
    );
    eprintln!("adaptive limit settled at {first}, {second}, {third} for capacities 8, 3, 12");
    // It worked the backend without drowning it: most answers were served.
    let (served, rejected) = (backend.served.load(SeqCst), backend.rejected.load(SeqCst));
    assert!(
        served > rejected * 4,
        "{served} served, {rejected} rejected"
    );
}

/// A program's stats time a sample of its calls (its first, then one in eight): here calls 0
/// and 8 of nine that run one at a time, 20 ms each, so call 8 waited for the eight before it.
#[test]
fn program_stats_time_the_wait_at_the_limit_and_the_run() {
    let pool = WorkerPool::new(2);
    let p = pool
        .asyncify(|_: usize| std::thread::sleep(Duration::from_millis(20)))
        .concurrency_limit(1);
    let handles: Vec<_> = (0..9).map(|i| p.call(i)).collect();
    for h in handles {
        wait(h).unwrap();
    }
    let stats = p.stats();
    assert_eq!((stats.run_time.count, stats.wait.count), (2, 2));
    assert!(
        stats.run_time.p50 >= Duration::from_millis(20),
        "{:?}",
        stats.run_time
    );
    assert!(
        stats.wait.max >= Duration::from_millis(8 * 20),
        "{:?}",
        stats.wait
    );
    assert!(stats.wait.max < HANG);
}

/// An adaptive limit shrinks on a timeout of an attempt that held a slot, and not on one of a
/// call that timed out waiting for a slot in the program's own line (the limit was too small
/// for that call, not too large for the backend), as its docs say.
#[test]
fn an_adaptive_limit_shrinks_on_a_timed_out_attempt_not_on_a_timeout_in_its_line() {
    let pool = WorkerPool::new(4);
    let (holding, cut) = (Gate::new(), Gate::new());
    let (h, c) = (Arc::clone(&holding), Arc::clone(&cut));
    let p = pool
        .asyncify(move |mode: u8| match mode {
            1 => h.wait(),
            2 => c.wait(),
            _ => {}
        })
        .adaptive_concurrency(1, 10, Overload::when(|_: &()| false));
    assert_eq!(wait(p.call(0)), Ok(()));
    assert_eq!(
        p.stats().concurrency_limit,
        Some(2),
        "one good sample raised it"
    );
    let holders: Vec<_> = (0..2).map(|_| p.call(1)).collect();
    common::spin_until("both slots held", || p.stats().in_flight == 2);
    let timed = p.timeout(Duration::from_millis(5));
    assert!(wait(timed.call(0)).unwrap_err().is_timed_out());
    assert_eq!(
        p.stats().concurrency_limit,
        Some(2),
        "a timeout in the line shrank the limit"
    );
    holding.open();
    for h in holders {
        assert_eq!(wait(h), Ok(()));
    }
    // Now with a slot: the attempt runs, and its deadline cuts it off. The holders' two good
    // answers raised the limit to 3 first; a cut takes a tenth, at least one.
    // (The sample that moves the limit is taken as the answer is given, not before it.)
    common::spin_until(
        "the limit at 3 after the holders' two good answers (it stays lower if the timeout in \
         the line shrank it)",
        || p.stats().concurrency_limit == Some(3),
    );
    assert!(wait(timed.call(2)).unwrap_err().is_timed_out());
    common::spin_until("a timed-out attempt shrinking the limit", || {
        p.stats().concurrency_limit == Some(2)
    });
    cut.open();
}
