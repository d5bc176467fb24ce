//! What `program.call(i)` costs, the API users call, next to `pool.spawn`, the floor and the
//! peers, at 2 threads (this machine's cores) and 8 (the default `async_max_workers`), in one
//! process, interleaved round by round.
//!
//! For each thread count `n` it builds, side by side:
//!
//! * `floor`: `n` bare threads on one crossbeam unbounded channel of boxed closures, each
//!   answering through a `oneshot` (`floor.rs`). The others are read as ratios to it.
//! * `asyncify_call`: `program.call(i)` on `let program = pool.asyncify(Echo)` with
//!   `pool = WorkerPool::new(n)` (`Echo` returns its input, like `|x: u64| x`): what users call.
//!   Each call clones the program's `Arc`, captures settings and tracing, and returns a
//!   `JobHandle`.
//! * `asyncify_with_call`: `program.call(i)` on `pool.asyncify_with(|| 0, ..)`, a program with
//!   a per-worker state (a counter it bumps): what the state's take and put-back cost a call.
//! * `asyncify_spawn`: `pool.spawn(move || i)` on the same pool: the `spawn` rows of `pool.rs`.
//! * `tokio_spawn_blocking`: `tokio::task::spawn_blocking` on the driving runtime, built with
//!   `max_blocking_threads(n)` (and a one-hour keep-alive).
//! * `blocking_unblock`: `blocking::unblock` after `blocking::set_max_blocking_threads(n)`.
//!   `blocking` has one global pool per process (raised or lowered per thread count here),
//!   grown on demand; its idle threads exit after 500 ms, which a round here stays well below.
//! * `rayon_oneshot`: a rayon `ThreadPool` of `n` threads, `spawn` plus a `oneshot`.
//!
//! Every job is [`job`]: it returns `black_box(i)` (or, for the `pickup` and `back` groups, the
//! time it started). Groups, all in ns per call:
//!
//! * `round_trip`: [`ROUND_TRIPS`] sequential calls, each awaited before the next, from a tokio
//!   current-thread runtime (as `pool.rs` and the A/B harness await).
//! * `burst<B>` (B = 64 and 256 by default): bursts of B calls in flight, then all awaited in
//!   order, repeated to about [`BURST_CALLS`] calls per chunk, from the same current-thread
//!   runtime.
//! * `multi<K>` (K = 2 and 4 by default): a tokio multi-thread runtime with 2 workers (and
//!   `max_blocking_threads(n)` for the tokio contender) runs K tasks at once, each making
//!   [`ROUND_TRIPS`] sequential round trips: several submitters calling at once. Wall time of
//!   the chunk divided by all its calls.
//!
//! * `pickup` and `back`: the round trip split at the moment the job starts (a monotonic clock
//!   read by the job and by the caller): `pickup` is submit → job start (hand-off to a worker,
//!   how fast an idle worker notices), `back` is job start → the awaiting task resumes
//!   (completion, wake-up, the caller's thread scheduled). Each chunk gives the median over its
//!   [`ROUND_TRIPS`] calls; two separate chunks per round, so they do not add up exactly to
//!   `round_trip`.
//!
//! Each round measures one chunk of every contender back to back, the starting contender
//! rotating; round 0 is a warm-up and is not counted. Each row gives the median over the
//! counted rounds (p10, p90), the median of the per-round ratios to the floor of the same round
//! with their p10-p90, and the median per-round ratio of `asyncify_call` to that contender
//! (below 1: `program.call` is ahead). Only the ratios are meant to be read on a shared machine.
//!
//! ```sh
//! cargo bench --bench call                                      # about 40 s on 2 cores
//! ASYNCIFY_BENCH_INTERLEAVED=25 cargo bench --bench call        # more rounds (default 15)
//! ASYNCIFY_BENCH_THREADS=2 ASYNCIFY_BENCH_GROUPS=round_trip \
//!   ASYNCIFY_BENCH_ONLY=asyncify_call cargo bench --bench call  # one row, e.g. under perf
//! ```
//!
//! Environment: `ASYNCIFY_BENCH_INTERLEAVED` (rounds, default 15), `ASYNCIFY_BENCH_THREADS`
//! (default `2,8`), `ASYNCIFY_BENCH_GROUPS` (names or prefixes, e.g. `round_trip,burst,multi4`),
//! `ASYNCIFY_BENCH_ONLY` (contender names; name `floor` too for the ratio column),
//! `ASYNCIFY_BENCH_ROUND_TRIPS` (default 2000), `ASYNCIFY_BENCH_BURSTS` (default `64,256`),
//! `ASYNCIFY_BENCH_BURST_CALLS` (default 16384), `ASYNCIFY_BENCH_SUBMITTERS` (default `2,4`).
//! Under `cargo test` (no `--bench` argument) it runs one tiny round of everything, as a smoke
//! test.

use std::future::IntoFuture;
use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod floor;
mod stats;
use floor::Floor;
use stats::{env_usize, loadavg, median, ratios, spread};

use asyncify_pool::{AsyncProgram, JobHandle, Program, WorkerPool};
use tokio::runtime::Runtime;

/// Sequential calls per round-trip chunk (and per task in the `multi` groups), by default.
const ROUND_TRIPS: usize = 2_000;
/// Calls per burst chunk, by default: bursts of B, repeated `BURST_CALLS / B` times.
const BURST_CALLS: usize = 16_384;
/// Worker threads of the multi-thread runtime that drives the `multi` groups.
const MULTI_WORKERS: usize = 2;

/// The program of `asyncify_call`: returns its input, as `|x: u64| x` would (zero-sized, like
/// a closure that captures nothing).
struct Echo;

impl Program<u64> for Echo {
    type Output = u64;
    fn run(&self, x: u64) -> u64 {
        job(x)
    }
}

/// The high bit of a call's input asks its job for the time it started instead of its input.
const STAMP: u64 = 1 << 63;

/// Every contender's job: `black_box(i)`, or with [`STAMP`] set the time it started.
fn job(i: u64) -> u64 {
    if i & STAMP != 0 {
        now_ns()
    } else {
        black_box(i)
    }
}

/// Nanoseconds since the first call, on the monotonic clock every thread shares.
fn now_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Something that takes calls: `submit(i)` queues a call that returns `i`, at once, and gives
/// back what to await for its end.
trait Contender: Send + Sync + 'static {
    type Fut: IntoFuture + Send + 'static;
    fn submit(&self, i: u64) -> Self::Fut;
    /// The job's `u64` out of what awaiting gave.
    fn value(out: <Self::Fut as IntoFuture>::Output) -> u64;
}

struct OnFloor(Floor);
impl Contender for OnFloor {
    type Fut = oneshot::Receiver<u64>;
    fn submit(&self, i: u64) -> Self::Fut {
        self.0.call(move || job(i))
    }
    fn value(out: <Self::Fut as IntoFuture>::Output) -> u64 {
        out.expect("floor job")
    }
}

struct Call<P>(AsyncProgram<P>);
impl<P: Program<u64, Output = u64>> Contender for Call<P> {
    type Fut = JobHandle<u64>;
    fn submit(&self, i: u64) -> Self::Fut {
        self.0.call(i)
    }
    fn value(out: <Self::Fut as IntoFuture>::Output) -> u64 {
        out.expect("call")
    }
}

struct Spawn(WorkerPool);
impl Contender for Spawn {
    type Fut = JobHandle<u64>;
    fn submit(&self, i: u64) -> Self::Fut {
        self.0.spawn(move || job(i))
    }
    fn value(out: <Self::Fut as IntoFuture>::Output) -> u64 {
        out.expect("spawned job")
    }
}

/// `spawn_blocking` on whichever runtime drives the chunk (each built with
/// `max_blocking_threads(n)`).
struct Tokio;
impl Contender for Tokio {
    type Fut = tokio::task::JoinHandle<u64>;
    fn submit(&self, i: u64) -> Self::Fut {
        tokio::task::spawn_blocking(move || job(i))
    }
    fn value(out: <Self::Fut as IntoFuture>::Output) -> u64 {
        out.expect("spawn_blocking task")
    }
}

struct Unblock;
impl Contender for Unblock {
    type Fut = blocking::Task<u64>;
    fn submit(&self, i: u64) -> Self::Fut {
        blocking::unblock(move || job(i))
    }
    fn value(out: <Self::Fut as IntoFuture>::Output) -> u64 {
        out
    }
}

struct Rayon(rayon::ThreadPool);
impl Contender for Rayon {
    type Fut = oneshot::Receiver<u64>;
    fn submit(&self, i: u64) -> Self::Fut {
        let (tx, rx) = oneshot::channel();
        self.0.spawn(move || {
            let _ = tx.send(job(i));
        });
        rx
    }
    fn value(out: <Self::Fut as IntoFuture>::Output) -> u64 {
        out.expect("rayon job")
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    RoundTrip,
    Pickup,
    Back,
    Burst(usize),
    Multi(usize),
}

impl Group {
    fn name(self) -> String {
        match self {
            Group::RoundTrip => "round_trip".to_owned(),
            Group::Pickup => "pickup".to_owned(),
            Group::Back => "back".to_owned(),
            Group::Burst(b) => format!("burst{b}"),
            Group::Multi(k) => format!("multi{k}"),
        }
    }
}

struct Params {
    rounds: usize,
    threads: Vec<usize>,
    groups: Vec<Group>,
    only: Option<Vec<String>>,
    round_trips: usize,
    burst_calls: usize,
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|s| {
            s.split(',')
                .filter_map(|x| x.trim().parse().ok())
                .filter(|&x| x > 0)
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn env_names(name: &str) -> Option<Vec<String>> {
    std::env::var(name)
        .ok()
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().to_owned())
                .filter(|x| !x.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
}

impl Params {
    fn from_env(smoke: bool) -> Self {
        let bursts = env_list("ASYNCIFY_BENCH_BURSTS", &[64, 256]);
        let submitters = env_list("ASYNCIFY_BENCH_SUBMITTERS", &[2, 4]);
        let mut groups = vec![Group::RoundTrip, Group::Pickup, Group::Back];
        groups.extend(bursts.into_iter().map(Group::Burst));
        groups.extend(submitters.into_iter().map(Group::Multi));
        if let Some(wanted) = env_names("ASYNCIFY_BENCH_GROUPS") {
            groups.retain(|g| wanted.iter().any(|w| g.name().starts_with(w.as_str())));
        }
        if smoke {
            return Params {
                rounds: 1,
                threads: vec![2],
                groups,
                only: None,
                round_trips: 20,
                burst_calls: 512,
            };
        }
        Params {
            rounds: env_usize("ASYNCIFY_BENCH_INTERLEAVED", 15),
            threads: env_list("ASYNCIFY_BENCH_THREADS", &[2, 8]),
            groups,
            only: env_names("ASYNCIFY_BENCH_ONLY"),
            round_trips: env_usize("ASYNCIFY_BENCH_ROUND_TRIPS", ROUND_TRIPS),
            burst_calls: env_usize("ASYNCIFY_BENCH_BURST_CALLS", BURST_CALLS),
        }
    }
}

/// The drivers of one thread count: a current-thread runtime (round trips and bursts) and a
/// multi-thread one (several submitters), each with `n` blocking threads for the tokio row.
struct Drivers {
    current: Runtime,
    multi: Runtime,
}

impl Drivers {
    fn new(n: usize) -> Self {
        let current = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(n)
            .thread_keep_alive(Duration::from_secs(3600))
            .build()
            .expect("tokio current-thread runtime");
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(MULTI_WORKERS)
            .max_blocking_threads(n)
            .thread_keep_alive(Duration::from_secs(3600))
            .build()
            .expect("tokio multi-thread runtime");
        Drivers { current, multi }
    }
}

/// One chunk of `group` on `c`: ns per call.
fn measure<C>(d: &Drivers, c: &Arc<C>, group: Group, p: &Params) -> f64
where
    C: Contender,
    <C::Fut as IntoFuture>::IntoFuture: Send,
{
    let round_trips = p.round_trips;
    match group {
        Group::RoundTrip => d.current.block_on(async {
            let start = Instant::now();
            for i in 0..round_trips as u64 {
                black_box(c.submit(i).await);
            }
            per_call(start.elapsed(), round_trips)
        }),
        Group::Pickup | Group::Back => d.current.block_on(async {
            let mut split = Vec::with_capacity(round_trips);
            for _ in 0..round_trips {
                let submitted = now_ns();
                let started = C::value(c.submit(STAMP).await);
                let resumed = now_ns();
                split.push(if group == Group::Pickup {
                    started.saturating_sub(submitted)
                } else {
                    resumed.saturating_sub(started)
                } as f64);
            }
            median(&split)
        }),
        Group::Burst(b) => d.current.block_on(async {
            let bursts = (p.burst_calls / b).max(1);
            let mut in_flight = Vec::with_capacity(b);
            let start = Instant::now();
            for _ in 0..bursts {
                in_flight.extend((0..b as u64).map(|i| c.submit(i)));
                for call in in_flight.drain(..) {
                    black_box(call.await);
                }
            }
            per_call(start.elapsed(), bursts * b)
        }),
        Group::Multi(k) => d.multi.block_on(async {
            let start = Instant::now();
            let tasks: Vec<_> = (0..k)
                .map(|_| {
                    let c = Arc::clone(c);
                    tokio::spawn(async move {
                        for i in 0..round_trips as u64 {
                            black_box(c.submit(i).await);
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("a submitting task");
            }
            per_call(start.elapsed(), k * round_trips)
        }),
    }
}

fn per_call(elapsed: Duration, calls: usize) -> f64 {
    elapsed.as_nanos() as f64 / calls as f64
}

type Measure<'a> = Box<dyn Fn(Group) -> f64 + 'a>;

fn entry<'a, C>(d: &'a Drivers, p: &'a Params, c: C) -> Measure<'a>
where
    C: Contender,
    <C::Fut as IntoFuture>::IntoFuture: Send,
{
    let c = Arc::new(c);
    Box::new(move |group| measure(d, &c, group, p))
}

/// Runs `rounds` counted rounds (plus warm-up round 0) of `entries` for `group`, rotating the
/// starting contender, and prints one table row per contender.
fn interleave(rounds: usize, threads: usize, group: Group, entries: &[(&str, Measure<'_>)]) {
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); entries.len()];
    for round in 0..=rounds {
        let mut this_round = vec![0.0; entries.len()];
        for i in 0..entries.len() {
            let at = (i + round) % entries.len();
            this_round[at] = (entries[at].1)(group);
        }
        if round > 0 {
            for (t, x) in times.iter_mut().zip(this_round) {
                t.push(x);
            }
        }
    }
    let floor = entries.iter().position(|(name, _)| *name == "floor");
    let call = entries
        .iter()
        .position(|(name, _)| *name == "asyncify_call");
    for (i, (name, _)) in entries.iter().enumerate() {
        let (p10, p90) = spread(&times[i]);
        let to_floor = match floor {
            Some(f) => {
                let r = ratios(&times[i], &times[f]);
                let (lo, hi) = spread(&r);
                format!("x{:.2} ({lo:.2}-{hi:.2})", median(&r))
            }
            None => "n/a".to_owned(),
        };
        let call_to_this = match call {
            Some(c) if c != i => format!("x{:.2}", median(&ratios(&times[c], &times[i]))),
            _ => String::new(),
        };
        println!(
            "| {threads} | {:<10} | {name:<20} | {:>8.1} | {p10:>8.1} | {p90:>8.1} | {to_floor:<18} | {call_to_this:>6} |",
            group.name(),
            median(&times[i]),
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: a smoke run then.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let p = Params::from_env(smoke);
    let started = Instant::now();
    println!(
        "call bench, interleaved: {} rounds (+1 warm-up), threads {:?}, round trip {} calls, \
         bursts of ~{} calls, multi on {MULTI_WORKERS} runtime workers; ns/call; loadavg at \
         start {}",
        p.rounds,
        p.threads,
        p.round_trips,
        p.burst_calls,
        loadavg()
    );
    println!();
    println!("| threads | group | contender | median | p10 | p90 | /floor (p10-p90) | call/this |");
    println!("|---|---|---|---|---|---|---|---|");
    for &n in &p.threads {
        blocking::set_max_blocking_threads(NonZeroUsize::new(n).expect("non-zero"));
        let drivers = Drivers::new(n);
        let pool = WorkerPool::new(n);
        let d = &drivers;
        let all: Vec<(&str, Measure<'_>)> = vec![
            ("floor", entry(d, &p, OnFloor(Floor::new(n)))),
            ("asyncify_call", entry(d, &p, Call(pool.asyncify(Echo)))),
            (
                "asyncify_with_call",
                entry(
                    d,
                    &p,
                    Call(pool.asyncify_with(
                        || 0u64,
                        |calls: &mut u64, x: u64| {
                            *calls += 1;
                            job(x)
                        },
                    )),
                ),
            ),
            ("asyncify_spawn", entry(d, &p, Spawn(pool.clone()))),
            ("tokio_spawn_blocking", entry(d, &p, Tokio)),
            ("blocking_unblock", entry(d, &p, Unblock)),
            (
                "rayon_oneshot",
                entry(
                    d,
                    &p,
                    Rayon(
                        rayon::ThreadPoolBuilder::new()
                            .num_threads(n)
                            .build()
                            .expect("rayon pool"),
                    ),
                ),
            ),
        ];
        let entries: Vec<_> = all
            .into_iter()
            .filter(|(name, _)| match &p.only {
                None => true,
                Some(only) => only.iter().any(|o| o == name),
            })
            .collect();
        for &group in &p.groups {
            interleave(p.rounds, n, group, &entries);
        }
        drop(entries);
        pool.shutdown();
    }
    println!();
    println!(
        "total {:.1} s; loadavg at end {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}
