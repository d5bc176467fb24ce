//! What a call of the free `asyncify` costs when `async_max_workers` changes from call to call:
//! the default pool follows the setting in force at each call, and before its threads were
//! kept alive above the limit every change started or stopped up to 14 threads.
//!
//! Contenders, each a chunk of sequential calls (each awaited before the next, from a tokio
//! current-thread runtime), in ns per call:
//!
//! * `steady_2` / `steady_16`: every call under `settings::context(async_max_workers = n)`.
//! * `alternating`: calls alternate between 2 and 16, so the limit moves at every call.
//! * `churn_reference`: what the default pool did before (for scale): a pool built with
//!   `keep_alive(Duration::ZERO)`, resized with `set_threads` to 2 and 16 alternately before
//!   each `program.call`. Its chunks are a tenth as long (each call starts or stops threads).
//!
//! Each round measures one chunk of every contender, the starting one rotating; round 0 is a
//! warm-up and is not counted. Each row gives the median over the counted rounds (p10, p90);
//! the last lines give the medians of the per-round ratios of `alternating` to each steady
//! value (the goal: within x2).
//!
//! ```sh
//! cargo bench --bench churn                                 # 10 rounds, a few seconds
//! ASYNCIFY_BENCH_INTERLEAVED=20 cargo bench --bench churn   # more rounds
//! ```
//!
//! Environment: `ASYNCIFY_BENCH_INTERLEAVED` (rounds, default 10), `ASYNCIFY_BENCH_CALLS`
//! (calls per chunk, default 2000). Under `cargo test` (no `--bench` argument) it runs one tiny
//! round, as a smoke test.

use std::hint::black_box;
use std::time::{Duration, Instant};

mod stats;
use stats::{env_usize, loadavg, median, ratios, spread};

use asyncify_pool::settings::{self, Overrides};
use asyncify_pool::{asyncify, AsyncProgram, WorkerPool};
use tokio::runtime::Runtime;

/// The two values the limit alternates between (this machine's cores, and more).
const LOW: usize = 2;
const HIGH: usize = 16;

fn echo(x: u64) -> u64 {
    black_box(x)
}

/// One chunk of `calls` sequential calls of the free `asyncify` program, the `i`-th under
/// `async_max_workers = workers(i)`; ns per call.
fn default_pool_chunk(
    rt: &Runtime,
    program: &AsyncProgram<fn(u64) -> u64>,
    calls: usize,
    workers: impl Fn(usize) -> usize,
) -> f64 {
    let low = Overrides::new().with("async_max_workers", LOW);
    let high = Overrides::new().with("async_max_workers", HIGH);
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..calls {
            let overrides = if workers(i) == LOW { &low } else { &high };
            let handle = settings::context(overrides.clone(), || program.call(i as u64));
            assert_eq!(handle.await, Ok(i as u64));
        }
        per_call(start.elapsed(), calls)
    })
}

/// One chunk of the reference: `set_threads` alternating on a pool without a keep-alive.
fn churn_reference_chunk(
    rt: &Runtime,
    pool: &WorkerPool,
    program: &AsyncProgram<fn(u64) -> u64>,
    calls: usize,
) -> f64 {
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..calls {
            pool.set_threads(if i % 2 == 0 { LOW } else { HIGH })
                .expect("resize");
            assert_eq!(program.call(i as u64).await, Ok(i as u64));
        }
        per_call(start.elapsed(), calls)
    })
}

fn per_call(elapsed: Duration, calls: usize) -> f64 {
    elapsed.as_nanos() as f64 / calls as f64
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: a smoke run then.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let rounds = if smoke {
        1
    } else {
        env_usize("ASYNCIFY_BENCH_INTERLEAVED", 10)
    };
    let calls = if smoke {
        20
    } else {
        env_usize("ASYNCIFY_BENCH_CALLS", 2000)
    };
    let reference_calls = (calls / 10).max(2);
    let started = Instant::now();
    println!(
        "churn bench, interleaved: {rounds} rounds (+1 warm-up), {calls} calls per chunk \
         ({reference_calls} for churn_reference); ns/call; loadavg at start {}",
        loadavg()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let program: AsyncProgram<fn(u64) -> u64> = asyncify(echo as fn(u64) -> u64);
    let reference_pool = WorkerPool::builder()
        .threads(LOW)
        .keep_alive(Duration::ZERO)
        .build()
        .expect("the reference pool");
    let reference = reference_pool.asyncify(echo as fn(u64) -> u64);

    type Chunk<'a> = Box<dyn Fn() -> f64 + 'a>;
    let contenders: Vec<(&str, Chunk<'_>)> = vec![
        (
            "steady_2",
            Box::new(|| default_pool_chunk(&rt, &program, calls, |_| LOW)),
        ),
        (
            "steady_16",
            Box::new(|| default_pool_chunk(&rt, &program, calls, |_| HIGH)),
        ),
        (
            "alternating",
            Box::new(|| {
                default_pool_chunk(
                    &rt,
                    &program,
                    calls,
                    |i| if i % 2 == 0 { LOW } else { HIGH },
                )
            }),
        ),
        (
            "churn_reference",
            Box::new(|| churn_reference_chunk(&rt, &reference_pool, &reference, reference_calls)),
        ),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); contenders.len()];
    for round in 0..=rounds {
        let mut this_round = vec![0.0; contenders.len()];
        for i in 0..contenders.len() {
            let at = (i + round) % contenders.len();
            this_round[at] = (contenders[at].1)();
        }
        if round > 0 {
            for (t, x) in times.iter_mut().zip(this_round) {
                t.push(x);
            }
        }
    }
    println!();
    println!("| contender | median | p10 | p90 |");
    println!("|---|---|---|---|");
    for ((name, _), t) in contenders.iter().zip(&times) {
        let (p10, p90) = spread(t);
        println!(
            "| {name:<15} | {:>9.0} | {p10:>9.0} | {p90:>9.0} |",
            median(t)
        );
    }
    println!();
    let position = |name: &str| {
        contenders
            .iter()
            .position(|(n, _)| *n == name)
            .expect("a contender")
    };
    let alternating = &times[position("alternating")];
    for steady in ["steady_2", "steady_16"] {
        let r = ratios(alternating, &times[position(steady)]);
        let (lo, hi) = spread(&r);
        println!(
            "alternating / {steady}: x{:.2} (p10-p90 {lo:.2}-{hi:.2})",
            median(&r)
        );
    }
    drop(contenders);
    reference_pool.shutdown();
    println!(
        "total {:.1} s; loadavg at end {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}
