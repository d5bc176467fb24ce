//! Service-shaped latency: a tokio multi-thread runtime (2 workers) running 32 concurrent tasks,
//! each issuing calls with a short blocking body in a loop, every call's latency (submit to
//! result, as the task sees it) recorded in an HDR histogram per contender. Interleaved: each
//! round runs every contender for a short chunk, the starting contender rotating; round 0 is a
//! warm-up and is not counted.
//!
//! Contenders, for each pool size `n` in `TAIL_POOLS` (default 2 and 8):
//!
//! * `asyncify_call_<n>`: `program.call(i)` on `WorkerPool::new(n).asyncify(body)`.
//! * `floor_<n>`: `n` bare threads on one crossbeam channel with a `oneshot` each (`floor.rs`),
//!   for what the design itself costs at this load.
//! * `spawn_blocking_sem_<n>`: `tokio::sync::Semaphore::new(n)`, a permit awaited before
//!   `tokio::task::spawn_blocking(body)` and held until it returns: the tokio way to bound a
//!   blocking section to `n`.
//!
//! and once:
//!
//! * `spawn_blocking`: plain `tokio::task::spawn_blocking(body)` on the runtime, default
//!   `max_blocking_threads` (512): up to one thread per task, so 32 threads share 2 cores.
//!   The reference of the ratio columns.
//! * `blocking_unblock`: `blocking::unblock(body)`, on `blocking`'s own global pool (default
//!   limit 500 threads; idle threads exit after 500 ms, so between its chunks it shrinks and
//!   grows again during the chunk's warm-up).
//!
//! The body is a fixed amount of CPU work (`TAIL_BODY=cpu`, default: a xorshift loop calibrated
//! at start to `TAIL_WORK_US` µs, default 50, standing in for a small sqlite query), or a spin
//! until `TAIL_WORK_US` of wall time passed (`spin`: a preempted spin still ends on time, which
//! flatters oversubscription), or `thread::sleep` (`sleep`, blocking I/O).
//!
//! Per contender: p50, p99, p99.9 and max over all counted rounds (one merged histogram), the
//! median calls per second over rounds, the process's CPU time per call (from `/proc/self/stat`,
//! 10 ms ticks) and context switches per call (summed over `/proc/self/task/*/status`: threads
//! that exited during the chunk, `blocking`'s, are missed), and the medians of the per-round
//! ratios to `spawn_blocking` of the same round (for latency below 1 is better, for calls/s
//! above 1 is better). Only ratios are meant to be read on a shared machine.
//!
//! ```sh
//! cargo bench --bench tail                          # about 50 s
//! TAIL_ROUNDS=20 TAIL_SECS=1 cargo bench --bench tail
//! TAIL_TASKS=4 TAIL_BODY=sleep cargo bench --bench tail
//! TAIL_ONLY=asyncify_call_2 TAIL_ROUNDS=40 cargo bench --bench tail   # one contender, for perf
//! ```
//!
//! Environment: `TAIL_ROUNDS` (10), `TAIL_SECS` (0.5, recorded seconds per chunk),
//! `TAIL_WARMUP_MS` (50, run but not recorded at the start of each chunk), `TAIL_TASKS` (32),
//! `TAIL_WORK_US` (50), `TAIL_BODY` (`cpu`), `TAIL_WORKERS` (2, runtime workers), `TAIL_POOLS`
//! (`2,8`), `TAIL_ONLY` (contender names). Under `cargo test` (no `--bench` argument) it runs
//! one tiny round as a smoke test.

use std::future::IntoFuture;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod floor;
mod stats;
use floor::Floor;
use stats::{loadavg, median};

use asyncify_pool::{AsyncProgram, Program, WorkerPool};
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

/// What each call runs on the blocking side.
#[derive(Clone, Copy)]
enum Body {
    /// A fixed number of xorshift rounds (calibrated to the wanted time).
    Cpu { iters: u64 },
    /// Spin until this much wall time passed.
    Spin(Duration),
    /// Sleep.
    Sleep(Duration),
}

fn xorshift(seed: u64, iters: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..black_box(iters) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

impl Body {
    fn run(self, i: u64) -> u64 {
        match self {
            Body::Cpu { iters } => black_box(xorshift(i, iters)),
            Body::Spin(d) => {
                let start = Instant::now();
                let mut x = i;
                while start.elapsed() < d {
                    x = black_box(xorshift(x, 64));
                }
                x
            }
            Body::Sleep(d) => {
                std::thread::sleep(d);
                i
            }
        }
    }

    fn describe(self, us: u64) -> String {
        match self {
            Body::Cpu { iters } => format!("cpu: {iters} xorshift rounds (~{us} µs)"),
            Body::Spin(_) => format!("spin: {us} µs of wall time"),
            Body::Sleep(_) => format!("sleep: {us} µs"),
        }
    }
}

/// ns per xorshift round: the best of a few timings (the least disturbed on a busy machine).
fn calibrate() -> f64 {
    let iters = 200_000;
    (0..9)
        .map(|_| {
            let start = Instant::now();
            black_box(xorshift(7, iters));
            start.elapsed().as_nanos() as f64 / iters as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// The program behind `asyncify_call_<n>`.
struct Work(Body);

impl Program<u64> for Work {
    type Output = u64;
    fn run(&self, i: u64) -> u64 {
        self.0.run(i)
    }
}

enum Kind {
    Call(AsyncProgram<Work>),
    Floor(Arc<Floor>),
    SpawnBlocking,
    Semaphore(Arc<Semaphore>),
    Unblock,
}

struct Contender {
    name: String,
    kind: Kind,
}

/// When a chunk's tasks record, and when they stop issuing calls.
#[derive(Clone, Copy)]
struct Window {
    record_from: Instant,
    until: Instant,
}

/// What one task saw.
struct Tally {
    hist: Histogram<u64>,
    calls: u64,
}

fn histogram() -> Histogram<u64> {
    // 1 ns to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// One task: calls in a loop until the window closes, recording those that start in it.
async fn task_loop<F, Fut>(w: Window, mut submit: F) -> Tally
where
    F: FnMut(u64) -> Fut,
    Fut: IntoFuture,
{
    let mut hist = histogram();
    let mut calls = 0;
    let mut i = 0u64;
    let mut now = Instant::now();
    while now < w.until {
        let start = now;
        black_box(submit(i).await);
        now = Instant::now();
        if start >= w.record_from {
            hist.saturating_record((now - start).as_nanos() as u64);
            calls += 1;
        }
        i += 1;
    }
    Tally { hist, calls }
}

impl Contender {
    fn spawn_task(&self, body: Body, w: Window) -> tokio::task::JoinHandle<Tally> {
        match &self.kind {
            Kind::Call(program) => {
                let program = program.clone();
                tokio::spawn(task_loop(w, move |i| program.call(i)))
            }
            Kind::Floor(floor) => {
                let floor = Arc::clone(floor);
                tokio::spawn(task_loop(w, move |i| floor.call(move || body.run(i))))
            }
            Kind::SpawnBlocking => tokio::spawn(task_loop(w, move |i| {
                tokio::task::spawn_blocking(move || body.run(i))
            })),
            Kind::Semaphore(sem) => {
                let sem = Arc::clone(sem);
                tokio::spawn(task_loop(w, move |i| {
                    let sem = Arc::clone(&sem);
                    async move {
                        let _permit = sem.acquire().await.expect("never closed");
                        tokio::task::spawn_blocking(move || body.run(i)).await
                    }
                }))
            }
            Kind::Unblock => tokio::spawn(task_loop(w, move |i| {
                blocking::unblock(move || body.run(i))
            })),
        }
    }
}

/// One chunk of one contender.
struct Chunk {
    hist: Histogram<u64>,
    calls_per_sec: f64,
    cpu_us_per_call: f64,
    switches_per_call: f64,
}

impl Chunk {
    fn pct(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64
    }
}

/// The process's CPU time in clock ticks (utime + stime, dead threads included; Linux's
/// `USER_HZ` is 100).
fn cpu_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the `(comm)`, which may contain spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|s| s.parse::<u64>().ok());
    field(14).unwrap_or(0) + field(15).unwrap_or(0)
}

const TICK_US: f64 = 10_000.0;

/// Voluntary plus involuntary context switches of the threads alive now.
fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

struct Params {
    rounds: usize,
    secs: f64,
    warmup: Duration,
    tasks: usize,
    work_us: u64,
    body: Body,
    workers: usize,
    pools: Vec<usize>,
    only: Option<Vec<String>>,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

impl Params {
    fn from_env(smoke: bool) -> Self {
        let work_us: u64 = if smoke { 5 } else { env("TAIL_WORK_US", 50) };
        let work = Duration::from_micros(work_us);
        let body = match std::env::var("TAIL_BODY").as_deref() {
            Ok("spin") => Body::Spin(work),
            Ok("sleep") => Body::Sleep(work),
            _ => Body::Cpu {
                iters: ((work_us as f64 * 1e3) / calibrate()).round().max(1.0) as u64,
            },
        };
        let pools = std::env::var("TAIL_POOLS")
            .ok()
            .map(|s| {
                s.split(',')
                    .filter_map(|x| x.trim().parse().ok())
                    .filter(|&x: &usize| x > 0)
                    .collect::<Vec<_>>()
            })
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| vec![2, 8]);
        let only = std::env::var("TAIL_ONLY").ok().map(|s| {
            s.split(',')
                .map(|x| x.trim().to_owned())
                .filter(|x| !x.is_empty())
                .collect()
        });
        if smoke {
            return Params {
                rounds: 1,
                secs: 0.02,
                warmup: Duration::from_millis(5),
                tasks: 4,
                work_us,
                body,
                workers: 2,
                pools: vec![2],
                only: None,
            };
        }
        Params {
            rounds: env("TAIL_ROUNDS", 10usize).max(1),
            secs: env("TAIL_SECS", 0.5f64).max(0.01),
            warmup: Duration::from_millis(env("TAIL_WARMUP_MS", 50u64)),
            tasks: env("TAIL_TASKS", 32usize).max(1),
            work_us,
            body,
            workers: env("TAIL_WORKERS", 2usize).max(1),
            pools,
            only,
        }
    }
}

fn contenders(p: &Params) -> (Vec<Contender>, Vec<WorkerPool>) {
    let mut all = Vec::new();
    let mut pools = Vec::new();
    for &n in &p.pools {
        let pool = WorkerPool::new(n);
        all.push(Contender {
            name: format!("asyncify_call_{n}"),
            kind: Kind::Call(pool.asyncify(Work(p.body))),
        });
        pools.push(pool);
    }
    all.push(Contender {
        name: "spawn_blocking".into(),
        kind: Kind::SpawnBlocking,
    });
    for &n in &p.pools {
        all.push(Contender {
            name: format!("spawn_blocking_sem_{n}"),
            kind: Kind::Semaphore(Arc::new(Semaphore::new(n))),
        });
    }
    all.push(Contender {
        name: "blocking_unblock".into(),
        kind: Kind::Unblock,
    });
    for &n in &p.pools {
        all.push(Contender {
            name: format!("floor_{n}"),
            kind: Kind::Floor(Arc::new(Floor::new(n))),
        });
    }
    if let Some(only) = &p.only {
        all.retain(|c| only.contains(&c.name));
    }
    (all, pools)
}

fn run_chunk(rt: &tokio::runtime::Runtime, c: &Contender, p: &Params) -> Chunk {
    let secs = Duration::from_secs_f64(p.secs);
    let (ticks0, switches0) = (cpu_ticks(), context_switches());
    let (hist, calls) = rt.block_on(async {
        let record_from = Instant::now() + p.warmup;
        let w = Window {
            record_from,
            until: record_from + secs,
        };
        let tasks: Vec<_> = (0..p.tasks).map(|_| c.spawn_task(p.body, w)).collect();
        let mut hist = histogram();
        let mut calls = 0;
        for task in tasks {
            let tally = task.await.expect("a calling task");
            hist.add(&tally.hist).expect("same bounds");
            calls += tally.calls;
        }
        (hist, calls)
    });
    let (ticks1, switches1) = (cpu_ticks(), context_switches());
    let per_call = |x: f64| if calls == 0 { 0.0 } else { x / calls as f64 };
    Chunk {
        hist,
        calls_per_sec: calls as f64 / p.secs,
        // Over the whole chunk, warm-up included: a slight overstatement, alike for everyone.
        cpu_us_per_call: per_call((ticks1 - ticks0) as f64 * TICK_US)
            * (p.secs / (p.secs + p.warmup.as_secs_f64())),
        switches_per_call: per_call(switches1.saturating_sub(switches0) as f64)
            * (p.secs / (p.secs + p.warmup.as_secs_f64())),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: a smoke run then.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let p = Params::from_env(smoke);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(p.workers)
        // Between two chunks of `spawn_blocking` the others run for a few seconds: keep its
        // threads (the default keep-alive is 10 s).
        .thread_keep_alive(Duration::from_secs(120))
        .build()
        .expect("tokio multi-thread runtime");
    let (contenders, pools) = contenders(&p);
    let started = Instant::now();
    println!(
        "tail bench, interleaved: {} rounds (+1 warm-up) x {} contenders x {:.2} s (+{} ms \
         warm-up); {} tasks on a {}-worker runtime; body {}{}; loadavg at start {}",
        p.rounds,
        contenders.len(),
        p.secs,
        p.warmup.as_millis(),
        p.tasks,
        p.workers,
        p.body.describe(p.work_us),
        match p.body {
            Body::Cpu { .. } =>
                format!(", at most {:.0} calls/s on 2 cores", 2e6 / p.work_us as f64),
            _ => String::new(),
        },
        loadavg()
    );

    let mut chunks: Vec<Vec<Chunk>> = contenders.iter().map(|_| Vec::new()).collect();
    for round in 0..=p.rounds {
        let mut this_round: Vec<Option<Chunk>> = contenders.iter().map(|_| None).collect();
        for i in 0..contenders.len() {
            let at = (i + round) % contenders.len();
            this_round[at] = Some(run_chunk(&rt, &contenders[at], &p));
        }
        if round > 0 {
            for (all, chunk) in chunks.iter_mut().zip(this_round) {
                all.push(chunk.expect("every contender ran"));
            }
        }
    }

    let base = contenders
        .iter()
        .position(|c| c.name == "spawn_blocking")
        .unwrap_or(0);
    let ratio = |i: usize, f: &dyn Fn(&Chunk) -> f64| {
        let r: Vec<f64> = chunks[i]
            .iter()
            .zip(&chunks[base])
            .map(|(c, b)| f(c) / f(b))
            .collect();
        format!("x{:.2}", median(&r))
    };
    println!();
    println!(
        "| contender | p50 µs | p99 µs | p99.9 µs | max µs | calls/s | CPU µs/call | cs/call | \
         p50 /{0} | p99 /{0} | p99.9 /{0} | calls/s /{0} |",
        contenders[base].name
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, c) in contenders.iter().enumerate() {
        let mut merged = histogram();
        for chunk in &chunks[i] {
            merged.add(&chunk.hist).expect("same bounds");
        }
        let us = |q: f64| merged.value_at_quantile(q) as f64 / 1e3;
        let med = |f: &dyn Fn(&Chunk) -> f64| median(&chunks[i].iter().map(f).collect::<Vec<_>>());
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} | {} | {} | {} | {} |",
            c.name,
            us(0.5),
            us(0.99),
            us(0.999),
            merged.max() as f64 / 1e3,
            med(&|c| c.calls_per_sec),
            med(&|c| c.cpu_us_per_call),
            med(&|c| c.switches_per_call),
            ratio(i, &|c| c.pct(0.5)),
            ratio(i, &|c| c.pct(0.99)),
            ratio(i, &|c| c.pct(0.999)),
            ratio(i, &|c| c.calls_per_sec),
        );
    }
    println!();
    println!(
        "total {:.1} s; loadavg at end {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    drop(contenders);
    for pool in pools {
        pool.shutdown();
    }
}
