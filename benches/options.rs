//! What a program's options cost when none of them triggers: `program.call(i)` on a plain
//! program next to the same program with a deadline, a retry policy, a rate limit and an
//! adaptive concurrency limit that never bind, one by one and all together, at the thread
//! counts users run (this machine's cores, and 8), interleaved round by round in one process.
//!
//! Contenders, all on one `WorkerPool::new(n)` and one program that returns its input:
//!
//! * `plain`: `pool.asyncify(echo)`.
//! * `timeout`: `.timeout(60 s)`: a deadline entry on the pool's timer per call.
//! * `retry`: `.retry(Retry::new(3).retry_if(|_| false))`: the input is copied for the first
//!   attempt, the classifier runs once.
//! * `rate_limit`: `.with_rate_limiter(RateLimiter::with_burst(u32::MAX, 1 s, u32::MAX))`:
//!   a token per call that is always there.
//! * `adaptive`: `.adaptive_concurrency(4096, 4096, Overload::when(|_| false))`: a slot per
//!   call, never short.
//! * `all`: every option above at once.
//! * `paced`: `plain` with an `Instant::now()` on the caller's thread before each call, what a
//!   rate limit's token adds to submission without the token: it shows how much of a burst's
//!   ratio comes from the pace at which calls are submitted (the caller parks less often when
//!   the workers keep ahead).
//!
//! Groups, in ns per call: `round_trip` (sequential calls, each awaited before the next, from a
//! tokio current-thread runtime) and `burst64` (64 calls in flight, then all awaited). Each
//! round measures one chunk of every contender back to back, the starting contender rotating;
//! round 0 is a warm-up. Each row gives the median over the counted rounds with (p10, p90), and
//! the median per-round ratio to `plain` with its p10-p90: the figure to read on a shared
//! machine.
//!
//! ```sh
//! cargo bench --bench options                                # about a minute on 2 cores
//! ASYNCIFY_BENCH_INTERLEAVED=25 cargo bench --bench options  # more rounds (default 15)
//! ```
//!
//! Environment: `ASYNCIFY_BENCH_INTERLEAVED` (default 15), `ASYNCIFY_BENCH_ROUND_TRIPS`
//! (default 2000), `ASYNCIFY_BENCH_THREADS` (default: the cores, and 8),
//! `ASYNCIFY_BENCH_ONLY` (a contender's name: that one alone, as under a profiler; no ratios).
//! Under `cargo test` it runs one tiny round, as a smoke test.

use std::hint::black_box;
use std::time::{Duration, Instant};

mod stats;
use stats::{env_usize, loadavg, median, ratios, spread};

use asyncify_pool::{AsyncProgram, Overload, Program, RateLimiter, Retry, WorkerPool};

struct Echo;

impl Program<u64> for Echo {
    type Output = u64;
    fn run(&self, x: u64) -> u64 {
        black_box(x)
    }
}

#[derive(Clone, Copy)]
enum Group {
    RoundTrip,
    Burst(usize),
}

impl Group {
    fn name(self) -> String {
        match self {
            Group::RoundTrip => "round_trip".to_owned(),
            Group::Burst(b) => format!("burst{b}"),
        }
    }
}

fn contenders(pool: &WorkerPool) -> Vec<(&'static str, AsyncProgram<Echo>)> {
    let plain = pool.asyncify(Echo);
    let timeout = |p: &AsyncProgram<Echo>| p.timeout(Duration::from_secs(60));
    let retry = |p: &AsyncProgram<Echo>| p.retry(Retry::new(3).retry_if(|_: &u64| false));
    let unlimited = RateLimiter::with_burst(u32::MAX, Duration::from_secs(1), u32::MAX);
    let rate = |p: &AsyncProgram<Echo>| p.with_rate_limiter(&unlimited);
    let adaptive = |p: &AsyncProgram<Echo>| {
        p.adaptive_concurrency(4096, 4096, Overload::when(|_: &u64| false))
    };
    let all = adaptive(&rate(&retry(&timeout(&plain))));
    vec![
        ("timeout", timeout(&plain)),
        ("retry", retry(&plain)),
        ("rate_limit", rate(&plain)),
        ("adaptive", adaptive(&plain)),
        ("all", all),
        ("paced", plain.clone()),
        ("plain", plain),
    ]
}

/// One chunk of `group` through `program`: ns per call.
fn measure(
    rt: &tokio::runtime::Runtime,
    (name, program): &(&str, AsyncProgram<Echo>),
    group: Group,
    calls: usize,
) -> f64 {
    let paced = *name == "paced";
    let call = |i: u64| {
        if paced {
            black_box(Instant::now());
        }
        program.call(i)
    };
    rt.block_on(async {
        let start = Instant::now();
        match group {
            Group::RoundTrip => {
                for i in 0..calls as u64 {
                    black_box(call(i).await.expect("a call"));
                }
            }
            Group::Burst(b) => {
                let mut in_flight = Vec::with_capacity(b);
                for _ in 0..(calls / b).max(1) {
                    in_flight.extend((0..b as u64).map(call));
                    for h in in_flight.drain(..) {
                        black_box(h.await.expect("a call"));
                    }
                }
            }
        }
        start.elapsed().as_nanos() as f64 / calls as f64
    })
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let rounds = if smoke {
        1
    } else {
        env_usize("ASYNCIFY_BENCH_INTERLEAVED", 15)
    };
    let calls = if smoke {
        64
    } else {
        env_usize("ASYNCIFY_BENCH_ROUND_TRIPS", 2_000)
    };
    let mut threads: Vec<usize> = match std::env::var("ASYNCIFY_BENCH_THREADS") {
        Ok(list) => list
            .split(',')
            .filter_map(|x| x.trim().parse().ok())
            .collect(),
        Err(_) => vec![num_threads(), 8],
    };
    threads.dedup();
    if smoke {
        threads.truncate(1);
    }
    println!(
        "# options bench: {rounds} rounds of {calls} calls; load average {}",
        loadavg()
    );
    println!("| threads | group | contender | median ns | p10 | p90 | to plain (p10-p90) |");
    println!("|---|---|---|---:|---:|---:|---|");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    for n in threads {
        let pool = WorkerPool::new(n);
        let mut entries = contenders(&pool);
        if let Ok(only) = std::env::var("ASYNCIFY_BENCH_ONLY") {
            entries.retain(|(name, _)| *name == only);
            assert!(!entries.is_empty(), "no contender named {only}");
        }
        for group in [Group::RoundTrip, Group::Burst(64)] {
            let mut times = vec![Vec::with_capacity(rounds); entries.len()];
            for round in 0..=rounds {
                for k in 0..entries.len() {
                    let at = (k + round) % entries.len();
                    let t = measure(&rt, &entries[at], group, calls);
                    if round > 0 {
                        times[at].push(t);
                    }
                }
            }
            let plain = entries.len() - 1;
            for (i, (name, program)) in entries.iter().enumerate() {
                let (p10, p90) = spread(&times[i]);
                let r = ratios(&times[i], &times[plain]);
                let (lo, hi) = spread(&r);
                println!(
                    "| {n} | {} | {name} | {:.0} | {p10:.0} | {p90:.0} | x{:.3} ({lo:.3}-{hi:.3}) |",
                    group.name(),
                    median(&times[i]),
                    median(&r),
                );
                let stats = program.stats();
                assert_eq!(
                    stats.retries + stats.timed_out + stats.waited_for_rate + stats.waited_for_slot,
                    0,
                    "{name}: an option triggered"
                );
            }
        }
    }
}

fn num_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
