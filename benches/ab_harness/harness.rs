//! A/B benchmark of two revisions of asyncify-pool in one process, interleaved round by round.
//!
//! `benches/ab.sh` builds this file as the `src/main.rs` of a scratch crate that depends on two
//! copies of the library: `before` (a base revision, by default `04c4150`, the code before the
//! core rebuild) and `after` (by default `HEAD`, or `WORKTREE` for the work tree). Both run in
//! the same binary, on the same machine state, so a neighbour's build lands on both alike.
//!
//! For each thread count in [2, 8] (this machine's cores; the default `async_max_workers`) it
//! builds `before::WorkerPool::new(n)`, `after::WorkerPool::new(n)`, and a floor: `n` bare
//! threads pulling boxed closures from one crossbeam unbounded channel, each answering through
//! a `oneshot` (no cancellation, panic handling, context or counting). Everything is awaited
//! from one tokio current-thread runtime. Groups, all in ns per call:
//!
//! * `round_trip/spawn`: 2,000 sequential `pool.spawn(noop)`, each awaited before the next.
//! * `round_trip/call`: 2,000 sequential `program.call(i)` on `pool.asyncify(|x: u64| x)`.
//! * `throughput/spawn`: `ASYNCIFY_BENCH_CALLS` (default 100,000) spawns in flight, then all
//!   awaited.
//! * `throughput/call`: the same with `program.call(i)`.
//!
//! In the `call` groups the floor runs `move || i`, so it returns the same `u64`.
//!
//! Each round measures one chunk of every contender back to back, the starting contender
//! rotating from round to round; round 0 is a warm-up and is not counted. Per row: the median
//! over the counted rounds, p10 and p90, the median of the per-round ratios to the floor of the
//! same round, and for `after` the median (p10–p90) of the per-round ratios after/before.
//!
//! With `AB_OPTIONS=1` (both revisions must have the program options), each `call` group runs
//! three times more: through `.timeout(60 s)` (`timeout`), through a rate limit that never
//! triggers (`rate`), and through a deadline, a retry policy, a rate limit and an adaptive
//! limit that never trigger (`all`), as in `benches/options.rs`.
//!
//! With `AB_TRACING=1`, last, a global `tracing_subscriber::registry()` is set and each `call`
//! group runs twice more under it: outside any span (`global`), and inside one (`in_span`).
//! `AB_TRACING=only` runs only these.
//!
//! With `AB_BOUNDED=1` (or `only`), each thread count also runs `bounded16/64tasks`: 64 tasks
//! on the runtime, each making `ASYNCIFY_BENCH_CALLS / 64` calls one after the other, on pools
//! built with `queue_capacity(AB_CAPACITY)` (default 16): most calls wait for room and are
//! woken when a worker makes some (the floor's queue stays unbounded).
//!
//! Run: `bash benches/ab.sh [BASE_REV] [NEW_REV]` (`AB_ROUNDS`, default 15,
//! `ASYNCIFY_BENCH_CALLS` and `AB_OPTIONS` pass through). The output is a Markdown table.

use std::future::Future;
use std::hint::black_box;
use std::time::Instant;

mod floor;
mod stats;
use stats::{env_usize, loadavg, median, ratios, spread};
use floor::Floor;

/// Sequential calls in one round-trip chunk.
const ROUND_TRIPS: u64 = 2_000;
/// The thread counts: this machine's 2 cores, and the default `async_max_workers`.
const THREAD_COUNTS: [usize; 2] = [2, 8];


fn noop() {}

/// The `[floor, before, after]` contenders of a `call` group: `program.call(i)` on the two
/// programs, `move || i` on the floor.
macro_rules! calls {
    ($rt:expr, $shape:expr, $calls:expr, $floor:expr, $bprog:expr, $aprog:expr) => {{
        let (rt, shape, calls, floor, bprog, aprog) = ($rt, $shape, $calls, $floor, $bprog, $aprog);
        let entries: [(&str, Measure<'_>); 3] = [
            (
                "floor",
                Box::new(move || {
                    chunk(rt, shape, calls, |i| {
                        let rx = floor.call(move || black_box(i));
                        async move {
                            black_box(rx.await.expect("floor job"));
                        }
                    })
                }),
            ),
            (
                "before",
                Box::new(move || {
                    chunk(rt, shape, calls, |i| {
                        let h = bprog.call(i);
                        async move {
                            black_box(h.await.expect("before call"));
                        }
                    })
                }),
            ),
            (
                "after",
                Box::new(move || {
                    chunk(rt, shape, calls, |i| {
                        let h = aprog.call(i);
                        async move {
                            black_box(h.await.expect("after call"));
                        }
                    })
                }),
            ),
        ];
        entries
    }};
}

/// `$program` (of the library `$lib`) with a deadline, a retry policy, a rate limit and an
/// adaptive limit, none of which triggers (`AB_OPTIONS=1`).
#[cfg(feature = "options")]
macro_rules! with_all_options {
    ($lib:ident, $program:expr) => {{
        let unlimited =
            $lib::RateLimiter::with_burst(u32::MAX, std::time::Duration::from_secs(1), u32::MAX);
        $program
            .timeout(NEVER)
            .retry($lib::Retry::new(3).retry_if(|_: &u64| false))
            .with_rate_limiter(&unlimited)
            .adaptive_concurrency(4096, 4096, $lib::Overload::when(|_: &u64| false))
    }};
}

/// `$program` (of the library `$lib`) with only a rate limit that never triggers.
#[cfg(feature = "options")]
macro_rules! with_rate_limit {
    ($lib:ident, $program:expr) => {{
        let unlimited =
            $lib::RateLimiter::with_burst(u32::MAX, std::time::Duration::from_secs(1), u32::MAX);
        $program.with_rate_limiter(&unlimited)
    }};
}

/// A deadline that never comes.
#[cfg(feature = "options")]
const NEVER: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// `ROUND_TRIPS` calls, each awaited before the next.
    RoundTrip,
    /// `calls` calls in flight, then all awaited.
    Throughput,
}

/// One chunk: ns per call. `submit(i)` queues call `i` at once and returns a future of its end.
fn chunk<Fut, S>(
    runtime: &tokio::runtime::Runtime,
    shape: Shape,
    calls: usize,
    mut submit: S,
) -> f64
where
    Fut: Future<Output = ()>,
    S: FnMut(u64) -> Fut,
{
    runtime.block_on(async move {
        match shape {
            Shape::RoundTrip => {
                let start = Instant::now();
                for i in 0..ROUND_TRIPS {
                    submit(i).await;
                }
                start.elapsed().as_nanos() as f64 / ROUND_TRIPS as f64
            }
            Shape::Throughput => {
                let mut in_flight = Vec::with_capacity(calls);
                let start = Instant::now();
                in_flight.extend((0..calls as u64).map(&mut submit));
                for call in in_flight.drain(..) {
                    call.await;
                }
                start.elapsed().as_nanos() as f64 / calls as f64
            }
        }
    })
}

type Measure<'a> = Box<dyn Fn() -> f64 + 'a>;

/// The tasks of a `bounded` group.
const TASKS: usize = 64;

/// [`TASKS`] tasks spawned on `runtime`, each making `calls / TASKS` calls one after the other
/// (`task(n)`: a task of `n` calls): ns per call.
fn tasks<T, Fut>(runtime: &tokio::runtime::Runtime, calls: usize, task: T) -> f64
where
    T: Fn(u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let per_task = (calls / TASKS).max(1) as u64;
    runtime.block_on(async move {
        let start = Instant::now();
        let spawned: Vec<_> = (0..TASKS).map(|_| tokio::spawn(task(per_task))).collect();
        for handle in spawned {
            handle.await.expect("a task");
        }
        start.elapsed().as_nanos() as f64 / (per_task * TASKS as u64) as f64
    })
}

/// Runs `rounds` counted rounds (plus warm-up round 0) of `[floor, before, after]`, rotating
/// the starting contender, and prints one table row per contender.
fn interleave(rounds: usize, threads: usize, group: &str, entries: &[(&str, Measure<'_>); 3]) {
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); entries.len()];
    for round in 0..=rounds {
        let mut this_round = [0.0; 3];
        for i in 0..entries.len() {
            let at = (i + round) % entries.len();
            this_round[at] = (entries[at].1)();
        }
        if round > 0 {
            for (t, x) in times.iter_mut().zip(this_round) {
                t.push(x);
            }
        }
    }
    let [floor, before, after] = [&times[0], &times[1], &times[2]];
    for (i, (name, _)) in entries.iter().enumerate() {
        let (p10, p90) = spread(&times[i]);
        let to_floor = if i == 0 {
            "x1.00".to_string()
        } else {
            format!("x{:.2}", median(&ratios(&times[i], floor)))
        };
        let after_before = if i == 2 {
            let r = ratios(after, before);
            let (lo, hi) = spread(&r);
            format!("**x{:.2}** ({lo:.2}-{hi:.2})", median(&r))
        } else {
            String::new()
        };
        println!(
            "| {threads} | {group:<16} | {name:<6} | {:>9.1} | {p10:>9.1} | {p90:>9.1} | {to_floor:>6} | {after_before} |",
            median(&times[i]),
        );
    }
}

fn main() {
    let rounds = env_usize("AB_ROUNDS", 15);
    let calls = env_usize("ASYNCIFY_BENCH_CALLS", 100_000);
    let base = std::env::var("AB_BASE_LABEL").unwrap_or_else(|_| "before".into());
    let new = std::env::var("AB_NEW_LABEL").unwrap_or_else(|_| "after".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio current-thread runtime");
    let rt = &runtime;
    let started = Instant::now();

    println!(
        "A/B interleaved: before = {base}, after = {new}; {rounds} rounds (+1 warm-up), \
         round trip {ROUND_TRIPS} sequential calls, throughput {calls} calls in flight; \
         ns/call; loadavg at start {}",
        loadavg()
    );
    println!();
    println!("| threads | group | contender | median | p10 | p90 | /floor | after/before (p10-p90) |");
    println!("|---|---|---|---|---|---|---|---|");

    let tracing = std::env::var("AB_TRACING").unwrap_or_default();
    let only = tracing == "only" || std::env::var("AB_BOUNDED").is_ok_and(|b| b == "only");
    let plain_groups = if only { &[][..] } else { &THREAD_COUNTS[..] };
    for &threads in plain_groups {
        let floor = Floor::new(threads);
        let before_pool = before::WorkerPool::new(threads);
        let after_pool = after::WorkerPool::new(threads);
        let before_prog = before_pool.asyncify(|x: u64| x);
        let after_prog = after_pool.asyncify(|x: u64| x);
        let (floor, bp, ap, bprog, aprog) =
            (&floor, &before_pool, &after_pool, &before_prog, &after_prog);
        #[cfg(feature = "options")]
        let (timed, rated, all) = (
            (bprog.timeout(NEVER), aprog.timeout(NEVER)),
            (with_rate_limit!(before, bprog), with_rate_limit!(after, aprog)),
            (with_all_options!(before, bprog), with_all_options!(after, aprog)),
        );

        for (shape, shape_name) in [
            (Shape::RoundTrip, "round_trip"),
            (Shape::Throughput, "throughput"),
        ] {
            let spawn: [(&str, Measure<'_>); 3] = [
                (
                    "floor",
                    Box::new(move || {
                        chunk(rt, shape, calls, |_| {
                            let rx = floor.call(noop);
                            async move { rx.await.expect("floor job") }
                        })
                    }),
                ),
                (
                    "before",
                    Box::new(move || {
                        chunk(rt, shape, calls, |_| {
                            let h = bp.spawn(noop);
                            async move { h.await.expect("before job") }
                        })
                    }),
                ),
                (
                    "after",
                    Box::new(move || {
                        chunk(rt, shape, calls, |_| {
                            let h = ap.spawn(noop);
                            async move { h.await.expect("after job") }
                        })
                    }),
                ),
            ];
            interleave(rounds, threads, &format!("{shape_name}/spawn"), &spawn);

            let call = calls!(rt, shape, calls, floor, bprog, aprog);
            interleave(rounds, threads, &format!("{shape_name}/call"), &call);
            #[cfg(feature = "options")]
            for (name, (b, a)) in [("timeout", &timed), ("rate", &rated), ("all", &all)] {
                let call = calls!(rt, shape, calls, floor, b, a);
                interleave(rounds, threads, &format!("{shape_name}/{name}"), &call);
            }
        }

        drop((before_prog, after_prog));
        before_pool.shutdown();
        after_pool.shutdown();
    }

    let bounded = std::env::var("AB_BOUNDED").unwrap_or_default();
    if bounded == "1" || bounded == "only" {
        // A bounded queue smaller than the number of tasks calling: most calls wait for room,
        // and a worker that takes a job off the queue has a waiting task woken.
        let capacity = env_usize("AB_CAPACITY", 16);
        for threads in THREAD_COUNTS {
            let floor = std::sync::Arc::new(Floor::new(threads));
            let before_pool = before::WorkerPool::builder()
                .threads(threads)
                .queue_capacity(capacity)
                .build()
                .expect("a bounded pool");
            let after_pool = after::WorkerPool::builder()
                .threads(threads)
                .queue_capacity(capacity)
                .build()
                .expect("a bounded pool");
            let before_prog = before_pool.asyncify(|x: u64| x);
            let after_prog = after_pool.asyncify(|x: u64| x);
            let (floor, bprog, aprog) = (&floor, &before_prog, &after_prog);
            let entries: [(&str, Measure<'_>); 3] = [
                (
                    "floor",
                    Box::new(move || {
                        tasks(rt, calls, |n| {
                            let floor = std::sync::Arc::clone(floor);
                            async move {
                                for i in 0..n {
                                    black_box(floor.call(move || black_box(i)).await.unwrap());
                                }
                            }
                        })
                    }),
                ),
                (
                    "before",
                    Box::new(move || {
                        tasks(rt, calls, |n| {
                            let program = bprog.clone();
                            async move {
                                for i in 0..n {
                                    black_box(program.call(i).await.unwrap());
                                }
                            }
                        })
                    }),
                ),
                (
                    "after",
                    Box::new(move || {
                        tasks(rt, calls, |n| {
                            let program = aprog.clone();
                            async move {
                                for i in 0..n {
                                    black_box(program.call(i).await.unwrap());
                                }
                            }
                        })
                    }),
                ),
            ];
            let group = format!("bounded{capacity}/{TASKS}tasks");
            interleave(rounds, threads, &group, &entries);
            drop(entries);
            drop((before_prog, after_prog));
            before_pool.shutdown();
            after_pool.shutdown();
        }
    }

    if tracing == "1" || tracing == "only" {
        // Last: a global subscriber cannot be unset. Both libraries link the same tracing-core,
        // so both run under it.
        tracing::subscriber::set_global_default(tracing_subscriber::registry())
            .expect("no global subscriber was set before");
        let span = tracing::info_span!("ab_request");
        let span = &span;
        for threads in THREAD_COUNTS {
            let floor = Floor::new(threads);
            let before_pool = before::WorkerPool::new(threads);
            let after_pool = after::WorkerPool::new(threads);
            let before_prog = before_pool.asyncify(|x: u64| x);
            let after_prog = after_pool.asyncify(|x: u64| x);
            let (floor, bprog, aprog) = (&floor, &before_prog, &after_prog);
            for (shape, shape_name) in [
                (Shape::RoundTrip, "round_trip"),
                (Shape::Throughput, "throughput"),
            ] {
                let call = calls!(rt, shape, calls, floor, bprog, aprog);
                interleave(rounds, threads, &format!("{shape_name}/global"), &call);
                let call = calls!(rt, shape, calls, floor, bprog, aprog);
                let in_span = call.map(|(name, measure)| {
                    let measure: Measure<'_> = Box::new(move || span.in_scope(|| measure()));
                    (name, measure)
                });
                interleave(rounds, threads, &format!("{shape_name}/in_span"), &in_span);
            }
            drop((before_prog, after_prog));
            before_pool.shutdown();
            after_pool.shutdown();
        }
    }

    println!();
    println!(
        "total {:.1} s; loadavg at end {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}
