//! One timer serves every wait for time of a pool (deadlines, backoffs, rate limits, batch
//! stragglers): one thread, whatever the number of waits, and asleep without a timeout once
//! nothing waits; what comes due rings on one ringer thread. (Linux: threads are read from
//! /proc.)
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use asyncify_pool::{Retry, WorkerPool};
use common::{occupy, wait};

/// The process's threads called `name`: (tid, CPU ticks used so far).
fn threads_named(name: &str) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis: state is the 1st, utime the 12th,
        // stime the 13th.
        let rest = stat.rsplit_once(')').map_or("", |r| r.1);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = fields
            .get(11)
            .and_then(|u| u.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
        found.push((task.file_name().to_string_lossy().into_owned(), ticks));
    }
    found
}

/// Asserts that `prefix` has one timer thread. A ringer is started by the timer thread and has
/// its name until it names itself, so a thread seen with the timer's name counts only if it
/// keeps it: each other one must show the ringers' name soon (a second timer thread never
/// would).
fn assert_one_timer_thread(prefix: &str) {
    let timer = format!("{prefix}-timer");
    // A new thread names itself once it runs.
    common::spin_until("the timer thread", || !threads_named(&timer).is_empty());
    let seen = threads_named(&timer);
    let comm = |tid: &str| {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default()
    };
    common::spin_until(
        "every thread but one named as the timer to name itself",
        || {
            seen.iter()
                .filter(|(tid, _)| comm(tid).trim_end() == timer)
                .count()
                <= 1
        },
    );
    let kept = seen
        .iter()
        .filter(|(tid, _)| comm(tid).trim_end() == timer)
        .count();
    assert_eq!(
        kept,
        1,
        "{} threads named {timer}, {kept} kept it",
        seen.len()
    );
}

#[test]
fn one_timer_thread_serves_every_wait_and_sleeps_when_nothing_waits() {
    let pool = WorkerPool::builder()
        .threads(2)
        .thread_name("tq")
        .build()
        .unwrap();
    assert!(
        threads_named("tq-timer").is_empty(),
        "no timer before anything waits"
    );
    let (gate, blockers) = occupy(&pool, 2);
    let timed = pool.asyncify(|x: u32| x).timeout(Duration::from_secs(3600));
    let limited = pool
        .asyncify(|x: u32| x)
        .rate_limit(1000, Duration::from_secs(1));
    let retried = pool.asyncify(|_: u32| 503u16).retry(
        Retry::new(3)
            .backoff(Duration::from_millis(5), Duration::from_millis(20))
            .retry_if(|s: &u16| *s == 503),
    );
    let mut handles = Vec::new();
    for i in 0..200 {
        handles.push(timed.call(i));
        handles.push(limited.call(i));
    }
    let backing_off: Vec<_> = (0..50).map(|i| retried.call(i)).collect();
    assert_one_timer_thread("tq"); // for 450 waits
    gate.open();
    let mut ringers = 0;
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(wait(h), Ok(i as u32 / 2));
        ringers = ringers.max(threads_named("tq-ring").len());
    }
    for h in backing_off {
        assert_eq!(wait(h), Ok(503));
        ringers = ringers.max(threads_named("tq-ring").len());
    }
    for b in blockers {
        wait(b).unwrap();
    }
    assert_eq!(retried.stats().attempts, 150);
    // The tokens and the backoffs rang on a ringer thread, one for all of them: another
    // starts only if a ringer spends 10 ms in one ring (stuck in user code, or on a loaded
    // machine preempted in the middle of one), never one per wait.
    assert!(
        (1..=3).contains(&ringers),
        "{ringers} ringers for 250 rings"
    );
    // Every deadline is an hour off, but their entries left with their calls: the timer
    // sleeps without a timeout after at most one more look, and uses no CPU.
    assert_one_timer_thread("tq");
    std::thread::sleep(Duration::from_millis(100));
    let before = threads_named("tq-timer")[0].1;
    std::thread::sleep(Duration::from_millis(500));
    let after = threads_named("tq-timer")[0].1;
    assert_eq!(before, after, "an idle timer used CPU");
    // It leaves with the pool, and so does the ringer.
    common::assert_shutdown_returns(&pool);
    common::spin_until("the timer thread to leave", || {
        threads_named("tq-timer").is_empty()
    });
    common::spin_until("the ringer to leave", || {
        threads_named("tq-ring").is_empty()
    });
}

/// After the close, a running call keeps its deadline on the timer; once that call ends, the
/// timer thread leaves, without waiting for the (hour-long) deadline.
#[test]
fn the_timer_leaves_once_the_last_kept_deadline_is_gone() {
    let pool = WorkerPool::builder()
        .threads(1)
        .thread_name("tk")
        .build()
        .unwrap();
    let gate = common::Gate::new();
    let (started_tx, started) = std::sync::mpsc::channel();
    let g = std::sync::Arc::clone(&gate);
    let started_tx = std::sync::Mutex::new(started_tx);
    let p = pool
        .asyncify(move |_: ()| {
            started_tx.lock().unwrap().send(()).unwrap();
            g.wait();
        })
        .timeout(Duration::from_secs(3600));
    let h = p.call(());
    started.recv_timeout(common::HANG).unwrap();
    common::spin_until("the timer thread", || !threads_named("tk-timer").is_empty());
    drop(pool.shutdown_async()); // closes now; the running call keeps its deadline
    assert_one_timer_thread("tk"); // the deadline is still served
    gate.open();
    wait(h).unwrap();
    common::spin_until("the timer thread to leave", || {
        threads_named("tk-timer").is_empty()
    });
}
