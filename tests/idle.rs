//! An idle pool uses no CPU: once its work is done, none of its threads (the workers, and the
//! timer thread that deadlines started) wakes up at all, which `/proc` shows as context switches
//! that stop counting (a thread that wakes, however briefly, switches out again when it sleeps).
//! Linux only: it reads `/proc/self/task`.
#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use asyncify_pool::WorkerPool;
use common::HANG;

/// One thread of the process, as `/proc/self/task/<tid>` shows it.
#[derive(Debug, PartialEq)]
struct Task {
    name: String,
    /// The scheduler's state letter: `S` for sleeping, `R` for running.
    state: char,
    /// Voluntary and involuntary context switches, added up.
    switches: u64,
}

/// The threads of this process whose names start with `prefix`, by thread id.
fn tasks(prefix: &str) -> BTreeMap<u64, Task> {
    let mut found = BTreeMap::new();
    for entry in fs::read_dir("/proc/self/task").expect("Linux /proc/self/task") {
        let dir = entry.expect("a task entry").path();
        let read = |file: &str| fs::read_to_string(dir.join(file)).unwrap_or_default();
        let name = read("comm").trim().to_owned();
        if !name.starts_with(prefix) {
            continue;
        }
        let stat = read("stat");
        // The name (field 2) may hold spaces: the state is the first field after its ')'.
        let Some(state) = stat.rfind(')').and_then(|i| stat[i + 2..].chars().next()) else {
            continue; // the thread ended meanwhile
        };
        let switches = read("status")
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        let tid = dir.file_name().unwrap().to_string_lossy().parse().unwrap();
        found.insert(
            tid,
            Task {
                name,
                state,
                switches,
            },
        );
    }
    found
}

/// Waits until every thread named `prefix…` sleeps, and `count` of them exist.
fn all_asleep(prefix: &str, count: usize) -> BTreeMap<u64, Task> {
    let deadline = Instant::now() + HANG;
    loop {
        let now = tasks(prefix);
        if now.len() == count && now.values().all(|t| t.state == 'S') {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the pool's threads did not all sleep: {now:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn an_idle_pools_threads_do_not_wake() {
    let pool = WorkerPool::builder()
        .threads(4)
        .thread_name("idlepool")
        .build()
        .unwrap();
    let plain = pool.asyncify(|x: u64| x + 1);
    // Deadlines start the pool's timer thread; these calls, one at a time, end long before
    // theirs, so nothing rings and no ringer thread starts.
    let timed = plain.timeout(Duration::from_millis(500));
    for i in 0..1_000 {
        let program = if i % 2 == 0 { &plain } else { &timed };
        assert_eq!(program.call(i).wait(), Ok(i + 1));
    }
    let last_deadline = Instant::now() + Duration::from_millis(500);
    // A call that ends takes its deadline off the timer without waking the timer thread (a
    // wake-up per call would cost every call a system call); so the thread, which sleeps
    // until the earliest deadline it saw, may wake once at that time, find nothing due and
    // sleep for good. The window starts after that, and after whatever a worker does right
    // after its last job (a spin, a short park).
    thread::sleep(last_deadline.saturating_duration_since(Instant::now()));
    thread::sleep(Duration::from_millis(200));
    // Four workers and the timer thread.
    let before = all_asleep("idlepool", 5);
    thread::sleep(Duration::from_millis(1_000));
    let after = tasks("idlepool");
    assert_eq!(
        after, before,
        "threads of an idle pool woke up (their context switches went on counting)"
    );
    drop(plain);
    drop(timed);
    pool.shutdown();
}
