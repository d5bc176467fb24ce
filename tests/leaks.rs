//! Leaks: after many calls with contexts, scopes and tracing spans (some dropped, some
//! panicking), resident memory comes back to within a small bound of where it started, and no
//! overrides value is kept alive, neither by an idle worker nor after shutdown.
//!
//! This file is its own test binary (process), with one test at a time, so nothing else moves
//! its resident memory. The default run makes 200 000 calls in a debug build; the issue's full
//! million runs with
//!
//! ```text
//! cargo test --release --test leaks -- --ignored
//! ```
//!
//! and `LEAK_CALLS=<n>` changes the count of the default run.

mod common;
use common::{env_or, HANG};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, Once};
use std::time::Instant;

use asyncify_pool::settings::{self, Overrides};
use asyncify_pool::{JobHandle, WorkerPool};

const SUBMITTERS: usize = 4;
const WARM_UP: usize = 20_000;
/// How much resident memory may grow over the measured calls: a leak of 10 bytes a call (far
/// less than one job cell, overrides map or span) is 2 MB over 200 000 calls. Measured growth
/// is a few tens of KiB.
const RSS_BOUND_KIB: i64 = 2 * 1024;

/// Values of this type that exist right now.
static LIVE: AtomicIsize = AtomicIsize::new(0);

/// An overrides value whose life is counted.
struct Tracked(#[allow(dead_code)] usize);

impl Tracked {
    fn new(n: usize) -> Self {
        LIVE.fetch_add(1, SeqCst);
        Tracked(n)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, SeqCst);
    }
}

/// Resident set size of this process, in KiB.
fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // A real subscriber, so that every call captures a live span and dispatcher, and every
        // event in a job is formatted. Not a bare `registry()`: without a layer on top it never
        // frees closed spans (only `Layered` runs its close guard), which is tracing-subscriber's
        // own growth (~115 bytes a span), not the pool's.
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink));
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other subscriber in this process");
    });
    common::quiet_planned_panics();
}

/// Wrong overrides seen by jobs.
static WRONG: AtomicUsize = AtomicUsize::new(0);

fn program(n: usize) -> usize {
    if settings::get::<usize>("leak.n") != Some(n) || !settings::current().contains_key("leak.t") {
        WRONG.fetch_add(1, SeqCst);
    }
    tracing::info!(n, "inside the job");
    if n % 97 == 0 {
        std::panic::panic_any(format!("planned panic {n}"));
    }
    n
}

/// `calls` calls from `SUBMITTERS` threads, each under a context (or a scope) holding a
/// `Tracked` value and inside a span; a sixteenth dropped, a ninety-seventh panicking.
fn workload(pool: &WorkerPool, calls: usize) {
    let per = calls / SUBMITTERS;
    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|s| {
            let program = pool.asyncify(program);
            std::thread::spawn(move || {
                let mut window: VecDeque<(usize, JobHandle<usize>)> = VecDeque::new();
                for i in 0..per {
                    let n = s * per + i;
                    let span = tracing::info_span!("call", n);
                    let _entered = span.enter();
                    let o = Overrides::new()
                        .with("leak.t", Tracked::new(n))
                        .with("leak.n", n);
                    if n % 5 == 0 {
                        // The async path: a scoped future that awaits the call.
                        let p = program.clone();
                        let out =
                            pollster::block_on(settings::scope(o, async move { p.call(n).await }));
                        check(n, out);
                        continue;
                    }
                    let handle = settings::context(o, || program.call(n));
                    if n % 16 == 1 {
                        drop(handle);
                        continue;
                    }
                    window.push_back((n, handle));
                    if window.len() > 64 {
                        let (n, mut h) = window.pop_front().unwrap();
                        check(n, h.wait_timeout(HANG).expect("a call hung"));
                    }
                }
                for (n, mut h) in window {
                    check(n, h.wait_timeout(HANG).expect("a call hung"));
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().expect("a submitter panicked");
    }
}

fn check(n: usize, out: Result<usize, asyncify_pool::JobError>) {
    match out {
        Ok(v) => assert_eq!(v, n),
        Err(e) => assert!(e.is_panic() && n % 97 == 0, "call {n}: {e}"),
    }
}

/// Runs one job on every worker at once (they meet at a barrier), so that each has finished
/// whatever it ran before; returns whether each saw no overrides.
fn every_worker_idle_and_clean(pool: &WorkerPool) -> Vec<bool> {
    common::probe_every_worker(pool, || settings::current().is_empty())
        .into_iter()
        .map(|(clean, met)| clean && met)
        .collect()
}

fn measure(calls: usize) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    setup();
    let started = Instant::now();
    let pool = WorkerPool::new(4);

    // Warm up: threads, allocator arenas, the span slab and the channel reach their steady size.
    workload(&pool, WARM_UP);
    assert!(every_worker_idle_and_clean(&pool).iter().all(|c| *c));
    assert_eq!(
        LIVE.load(SeqCst),
        0,
        "overrides values alive after the warm-up"
    );
    let before = rss_kib();

    workload(&pool, calls);
    let clean = every_worker_idle_and_clean(&pool);
    assert!(
        clean.iter().all(|c| *c),
        "a worker kept overrides: {clean:?}"
    );
    // Every handle is gone and every worker is between jobs: no value may be alive.
    assert_eq!(
        LIVE.load(SeqCst),
        0,
        "overrides values kept alive by idle workers"
    );
    let after = rss_kib();
    let stats = pool.stats();

    pool.shutdown();
    drop(pool);
    assert_eq!(
        LIVE.load(SeqCst),
        0,
        "overrides values alive after shutdown"
    );
    assert_eq!(WRONG.load(SeqCst), 0, "jobs saw the wrong overrides");

    let grown = after - before;
    eprintln!(
        "leaks: {} measured calls after {WARM_UP} warm-up ({} completed, {} panicked, {} \
         cancelled in all), RSS {before} KiB -> {after} KiB ({grown:+} KiB, bound {RSS_BOUND_KIB} \
         KiB), 0 tracked values alive, {:.1} s",
        calls,
        stats.completed,
        stats.panicked,
        stats.cancelled,
        started.elapsed().as_secs_f64()
    );
    assert!(
        grown <= RSS_BOUND_KIB,
        "resident memory grew by {grown} KiB over {calls} calls (bound {RSS_BOUND_KIB} KiB)"
    );
}

#[test]
fn memory_and_overrides_return_to_baseline_after_200k_calls() {
    measure(env_or("LEAK_CALLS", 200_000));
}

#[test]
#[ignore = "the issue's full million; run with --release -- --ignored"]
fn memory_and_overrides_return_to_baseline_after_a_million_calls() {
    measure(1_000_000);
}
