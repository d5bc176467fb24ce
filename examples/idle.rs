//! What an idle pool costs: the process's CPU time over one idle second, after a burst of work.
//!
//! A pool of 8 threads runs a burst of jobs, then nothing. The example reads the CPU time of
//! the whole process (`/proc/self/stat`, utime + stime, in clock ticks) and of every thread
//! (`/proc/self/task/*/schedstat`, nanoseconds on the CPU, and the context switches in
//! `/proc/self/task/*/status`) over two windows: the first 10 ms after the last job, when a
//! worker may still spin briefly before it parks, and the following idle second, when parked
//! workers must use nothing at all.
//!
//! Run it with `cargo run --release --example idle` (Linux only: it reads `/proc`).

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use asyncify_pool::WorkerPool;

const THREADS: usize = 8;

#[path = "support/auxv.rs"]
mod support;
use support::auxv;

/// The process's user + system CPU time, from fields 14 and 15 of `/proc/self/stat`.
fn process_cpu() -> Duration {
    const AT_CLKTCK: u64 = 17;
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc/self/stat");
    // The command name (field 2) may hold spaces; the fields after it start past its ')'.
    let after_comm = &stat[stat.rfind(')').expect("comm ends with ')'") + 2..];
    let field = |n: usize| -> u64 {
        after_comm
            .split_whitespace()
            .nth(n - 3)
            .and_then(|s| s.parse().ok())
            .expect("a numeric field")
    };
    let ticks = field(14) + field(15);
    let per_second = auxv(AT_CLKTCK).unwrap_or(100);
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
}

/// One thread's time on the CPU (ns) and context switches (voluntary + involuntary).
#[derive(Clone, Copy, Default)]
struct ThreadCpu {
    on_cpu_ns: u64,
    switches: u64,
}

/// Every thread of the process, by name and id.
fn threads_cpu() -> BTreeMap<(String, u32), ThreadCpu> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/task").expect("Linux /proc/self/task") {
        let dir = entry.expect("a task entry").path();
        let tid: u32 = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .expect("a thread id");
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        let name = read("comm").trim().to_owned();
        let on_cpu_ns = read("schedstat")
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let switches = read("status")
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        out.insert(
            (name, tid),
            ThreadCpu {
                on_cpu_ns,
                switches,
            },
        );
    }
    out
}

/// Per-thread differences between two snapshots, printed; returns the workers' total on-CPU ns.
fn report(
    label: &str,
    from: &BTreeMap<(String, u32), ThreadCpu>,
    to: &BTreeMap<(String, u32), ThreadCpu>,
) -> u64 {
    println!("  {label}:");
    let mut workers_ns = 0;
    for (key, end) in to {
        let start = from.get(key).copied().unwrap_or_default();
        let ns = end.on_cpu_ns - start.on_cpu_ns;
        let switches = end.switches - start.switches;
        if key.0.starts_with("asyncify") {
            workers_ns += ns;
        }
        println!(
            "    {:<12} (tid {:>6}) {:>9.1} µs on CPU, {:>3} context switches",
            key.0,
            key.1,
            ns as f64 / 1e3,
            switches
        );
    }
    workers_ns
}

fn main() {
    let pool = WorkerPool::new(THREADS);

    // A burst: short jobs, all threads busy at once, then a few round trips.
    let burst: Vec<_> = (0..10_000).map(|i| pool.spawn(move || i * 2)).collect();
    for handle in burst {
        handle.wait().expect("a job");
    }
    let sleepers: Vec<_> = (0..THREADS)
        .map(|_| pool.spawn(|| thread::sleep(Duration::from_millis(5))))
        .collect();
    for handle in sleepers {
        handle.wait().expect("a job");
    }
    for _ in 0..100 {
        pool.spawn(|| ()).wait().expect("a job");
    }

    // The last job has just returned: from here on the pool is idle.
    let t0 = Instant::now();
    let cpu0 = process_cpu();
    let threads0 = threads_cpu();
    thread::sleep(Duration::from_millis(10));
    let threads1 = threads_cpu();
    let cpu1 = process_cpu();
    let t1 = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let threads2 = threads_cpu();
    let cpu2 = process_cpu();
    let t2 = Instant::now();

    println!("a pool of {THREADS} threads after a burst of 10,108 jobs, then idle");
    let spin_ns = report(
        &format!(
            "the first {:.0} ms after the last job (spinning before parking)",
            (t1 - t0).as_secs_f64() * 1e3
        ),
        &threads0,
        &threads1,
    );
    let idle_ns = report(
        &format!("the following {:.3} s (idle)", (t2 - t1).as_secs_f64()),
        &threads1,
        &threads2,
    );
    println!(
        "process CPU time (utime + stime, clock-tick resolution): {:.0} ms in the first window, \
         {:.0} ms over the idle second",
        (cpu1 - cpu0).as_secs_f64() * 1e3,
        (cpu2 - cpu1).as_secs_f64() * 1e3
    );
    println!(
        "workers on CPU: {:.1} µs in the first window, {:.1} µs over the idle second",
        spin_ns as f64 / 1e3,
        idle_ns as f64 / 1e3
    );
    println!(
        "(a worker that finds the queue empty spins up to 1,023 pause instructions, yields 10 \
         times and sleeps (the pool's sleep protocol); the main thread's own figures are its \
         /proc reads)"
    );
    pool.shutdown();
}
