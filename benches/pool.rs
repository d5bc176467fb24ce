//! What a call costs on this pool, next to what a user would pick instead, in one process.
//!
//! Every contender runs no-op (or 1 ms sleeping) closures on the same number of threads
//! ([`THREADS`]) and is awaited from the same tokio current-thread runtime, so the only thing
//! that differs is the hand-off to the worker and the result back:
//!
//! * `asyncify_pool`: [`WorkerPool::spawn`], awaiting the [`JobHandle`](asyncify_pool::JobHandle).
//! * `tokio_spawn_blocking`: `tokio::task::spawn_blocking` on the driving runtime, whose blocking
//!   pool is capped with `max_blocking_threads(THREADS)`.
//! * `blocking_unblock`: `blocking::unblock` after `blocking::set_max_blocking_threads(THREADS)`.
//! * `rayon_oneshot`: a rayon `ThreadPool` of `THREADS` threads, `spawn` + a `oneshot` channel.
//! * `floor`: `THREADS` bare threads pulling boxed closures from a crossbeam unbounded channel,
//!   each answering through a `oneshot`. Nothing else: no cancellation, no panic handling, no
//!   context. It is the physical limit of this design; the others are read as ratios to it.
//!
//! Groups:
//!
//! * `round_trip`: one call awaited before the next (latency per call).
//! * `throughput`: [`calls`] calls in flight, then all awaited (time per batch; criterion also
//!   prints calls per second).
//! * `fan_out`: 256 calls that each sleep 1 ms, on 8 threads (ideal 32 ms).
//! * `capture`: this pool's throughput with nothing captured, with 16 settings overrides in
//!   force, and with a tracing span entered under an active subscriber: a thread-scoped one
//!   (`set_default`, as tests use) and then the global default (as services run). It runs
//!   last: once a tracing dispatcher has been set in a process, every later call captures it,
//!   and a global default cannot be unset.
//!
//! Run with `cargo bench --bench pool`; a filter narrows it (`cargo bench --bench pool --
//! round_trip`). `ASYNCIFY_BENCH_CALLS` changes the throughput batch (default 100000).

use std::future::Future;
use std::num::NonZeroUsize;
use std::thread;
use std::time::{Duration, Instant};

mod floor;
mod stats;
use floor::Floor;

use asyncify_pool::settings::{self, Overrides};
use asyncify_pool::WorkerPool;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use tokio::runtime::Runtime;

/// The thread count of every contender (the default of `async_max_workers`).
const THREADS: usize = 8;
/// Calls in the fan-out group, each sleeping [`SLEEP`].
const FAN_OUT_CALLS: usize = 256;
const SLEEP: Duration = Duration::from_millis(1);

/// The throughput batch: `ASYNCIFY_BENCH_CALLS`, or 100,000 as the issue asks.
fn calls() -> usize {
    std::env::var("ASYNCIFY_BENCH_CALLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

/// Everything that takes calls, built once, with the runtime that drives the awaits.
struct Contenders {
    runtime: Runtime,
    pool: WorkerPool,
    rayon: rayon::ThreadPool,
    floor: Floor,
}

impl Contenders {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(THREADS)
            // Idle blocking threads would otherwise exit after 10 s between groups.
            .thread_keep_alive(Duration::from_secs(3600))
            .build()
            .expect("tokio runtime");
        blocking::set_max_blocking_threads(NonZeroUsize::new(THREADS).expect("non-zero"));
        Contenders {
            runtime,
            pool: WorkerPool::new(THREADS),
            rayon: rayon::ThreadPoolBuilder::new()
                .num_threads(THREADS)
                .build()
                .expect("rayon pool"),
            floor: Floor::new(THREADS),
        }
    }
}

// One submitter per contender. Each queues its call at once (not at the first poll), so a batch
// really is in flight before the first await, and returns a future of the result.

fn noop() {}

fn nap() {
    thread::sleep(SLEEP);
}

fn on_pool(c: &Contenders, f: fn()) -> impl Future<Output = ()> {
    let handle = c.pool.spawn(f);
    async move { handle.await.expect("no-op job") }
}

fn on_tokio(_: &Contenders, f: fn()) -> impl Future<Output = ()> {
    let handle = tokio::task::spawn_blocking(f);
    async move { handle.await.expect("no-op task") }
}

fn on_blocking(_: &Contenders, f: fn()) -> impl Future<Output = ()> {
    blocking::unblock(f)
}

fn on_rayon(c: &Contenders, f: fn()) -> impl Future<Output = ()> {
    let (tx, rx) = oneshot::channel();
    c.rayon.spawn(move || {
        f();
        let _ = tx.send(());
    });
    async move { rx.await.expect("rayon job") }
}

fn on_floor(c: &Contenders, f: fn()) -> impl Future<Output = ()> {
    let rx = c.floor.call(f);
    async move { rx.await.expect("floor job") }
}

/// Runs `body` once per contender, in the same order everywhere, floor first.
macro_rules! for_each_contender {
    ($body:ident!($($arg:tt)*)) => {
        $body!($($arg)*, "floor", on_floor);
        $body!($($arg)*, "asyncify_pool", on_pool);
        $body!($($arg)*, "tokio_spawn_blocking", on_tokio);
        $body!($($arg)*, "blocking_unblock", on_blocking);
        $body!($($arg)*, "rayon_oneshot", on_rayon);
    };
}

/// Times `iters` rounds of: submit `n` calls, then await them all.
async fn batches<Fut: Future<Output = ()>>(
    iters: u64,
    n: usize,
    submit: impl FnMut() -> Fut,
) -> Duration {
    batches_under(iters, n, submit, |queue_all| queue_all()).await
}

/// Like [`batches`], with each round's submissions made inside `under` (a settings context, a
/// span), so what is in force there is what every call captures.
async fn batches_under<Fut: Future<Output = ()>>(
    iters: u64,
    n: usize,
    mut submit: impl FnMut() -> Fut,
    mut under: impl FnMut(&mut dyn FnMut()),
) -> Duration {
    let mut in_flight = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..iters {
        under(&mut || in_flight.extend((0..n).map(|_| submit())));
        for call in in_flight.drain(..) {
            call.await;
        }
    }
    start.elapsed()
}

fn round_trip(c: &mut Criterion, k: &Contenders) {
    let mut group = c.benchmark_group("round_trip");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    macro_rules! one {
        ($group:ident, $name:literal, $submit:ident) => {
            $group.bench_function($name, |b| {
                b.to_async(&k.runtime).iter(|| $submit(k, noop));
            });
        };
    }
    for_each_contender!(one!(group));
    group.finish();
}

/// A group whose every iteration is a whole batch of `calls` calls: few samples, flat sampling.
fn batch_group<'a>(
    c: &'a mut Criterion,
    name: &str,
    calls: usize,
    seconds: u64,
) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(seconds))
        .throughput(Throughput::Elements(calls as u64));
    group
}

fn throughput(c: &mut Criterion, k: &Contenders) {
    let n = calls();
    let mut group = batch_group(c, "throughput", n, 4);
    macro_rules! one {
        ($group:ident, $name:literal, $submit:ident) => {
            $group.bench_with_input(BenchmarkId::new($name, n), &n, |b, &n| {
                b.to_async(&k.runtime)
                    .iter_custom(|iters| batches(iters, n, || $submit(k, noop)));
            });
        };
    }
    for_each_contender!(one!(group));
    group.finish();
}

fn fan_out(c: &mut Criterion, k: &Contenders) {
    let mut group = batch_group(c, "fan_out", FAN_OUT_CALLS, 3);
    macro_rules! one {
        ($group:ident, $name:literal, $submit:ident) => {
            $group.bench_function($name, |b| {
                b.to_async(&k.runtime)
                    .iter_custom(|iters| batches(iters, FAN_OUT_CALLS, || $submit(k, nap)));
            });
        };
    }
    for_each_contender!(one!(group));
    group.finish();
}

/// 16 overrides, as a DSPy program with a model, its parameters and a few flags would set.
fn sixteen_overrides() -> Overrides {
    (0..16).fold(Overrides::new(), |o, i| o.with(format!("key{i}"), i))
}

fn capture(c: &mut Criterion, k: &Contenders) {
    let n = calls();
    let mut group = batch_group(c, "capture", n, 4);
    group.bench_function("asyncify_pool/0_overrides", |b| {
        b.to_async(&k.runtime)
            .iter_custom(|iters| batches(iters, n, || on_pool(k, noop)));
    });
    group.bench_function("asyncify_pool/16_overrides", |b| {
        let overrides = sixteen_overrides();
        b.to_async(&k.runtime).iter_custom(|iters| {
            batches_under(
                iters,
                n,
                || on_pool(k, noop),
                |queue_all| settings::context(overrides.clone(), queue_all),
            )
        });
    });
    // Last on purpose: from here on `tracing::dispatcher::has_been_set()` is true for good.
    group.bench_function("asyncify_pool/span_under_scoped_subscriber", |b| {
        b.to_async(&k.runtime).iter_custom(|iters| async move {
            let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
            let span = tracing::info_span!("bench_request", calls = n);
            batches_under(
                iters,
                n,
                || on_pool(k, noop),
                |queue_all| span.in_scope(queue_all),
            )
            .await
        });
    });
    // And a global subscriber, the way services run, which cannot be unset: the very last.
    tracing::subscriber::set_global_default(tracing_subscriber::registry())
        .expect("no global subscriber was set before");
    group.bench_function("asyncify_pool/span_under_global_subscriber", |b| {
        let span = tracing::info_span!("bench_request", calls = n);
        b.to_async(&k.runtime).iter_custom(|iters| {
            batches_under(
                iters,
                n,
                || on_pool(k, noop),
                |queue_all| span.in_scope(queue_all),
            )
        });
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let k = Contenders::new();
    round_trip(c, &k);
    throughput(c, &k);
    fan_out(c, &k);
    capture(c, &k);
}

criterion_group!(pool, benches);

fn main() {
    if let Some(rounds) = std::env::var("ASYNCIFY_BENCH_INTERLEAVED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        interleaved(rounds);
        return;
    }
    pool();
    Criterion::default().configure_from_args().final_summary();
}

// ---------------------------------------------------------------------------------------------
// Interleaved mode (`ASYNCIFY_BENCH_INTERLEAVED=<rounds>`), for a shared, noisy machine.
//
// Criterion measures one contender to the end before it starts the next, so a neighbour's
// build that starts half-way through the run lands on some contenders and not on others. Here
// every round measures one short chunk of every contender back to back, in a rotating order,
// and each contender's time is divided by the floor's time *of the same round*; the medians of
// those per-round ratios are what a noisy machine cannot skew much.

/// What one chunk measures.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// `ROUND_TRIPS` calls, each awaited before the next: ns per call.
    RoundTrip,
    /// One batch of `calls()` in flight: ns per call.
    Throughput,
    /// One batch of 256 sleeping calls: ms per batch.
    FanOut,
}

const ROUND_TRIPS: u32 = 2_000;

fn chunk<Fut: Future<Output = ()>>(
    k: &Contenders,
    shape: Shape,
    submit: impl FnMut() -> Fut,
) -> f64 {
    k.runtime.block_on(async {
        match shape {
            Shape::RoundTrip => {
                let mut submit = submit;
                let start = Instant::now();
                for _ in 0..ROUND_TRIPS {
                    submit().await;
                }
                start.elapsed().as_nanos() as f64 / f64::from(ROUND_TRIPS)
            }
            Shape::Throughput => {
                let n = calls();
                batches(1, n, submit).await.as_nanos() as f64 / n as f64
            }
            Shape::FanOut => batches(1, FAN_OUT_CALLS, submit).await.as_secs_f64() * 1e3,
        }
    })
}

type Measure<'a> = Box<dyn Fn(Shape) -> f64 + 'a>;

fn job_for(shape: Shape) -> fn() {
    if shape == Shape::FanOut {
        nap
    } else {
        noop
    }
}

/// Runs `rounds` rounds of `entries` (the floor first in the list) for `shape`, rotating the
/// order, and prints each entry's median, its spread, and its median per-round ratio to the floor.
fn interleave(rounds: usize, shape: Shape, entries: &[(&str, Measure<'_>)]) {
    let mut times = vec![Vec::new(); entries.len()];
    for round in 0..=rounds {
        let mut this_round = vec![0.0; entries.len()];
        for i in 0..entries.len() {
            let at = (i + round) % entries.len();
            this_round[at] = (entries[at].1)(shape);
        }
        if round > 0 {
            // Round 0 warms every contender up and is not counted.
            for (t, x) in times.iter_mut().zip(this_round) {
                t.push(x);
            }
        }
    }
    let unit = if shape == Shape::FanOut {
        "ms/batch"
    } else {
        "ns/call"
    };
    for (i, (name, _)) in entries.iter().enumerate() {
        let (p10, p90) = stats::spread(&times[i]);
        println!(
            "  {name:<40} median {:>10.1} {unit}  (p10 {p10:>10.1}, p90 {p90:>10.1})  x{:.2} floor",
            stats::median(&times[i]),
            stats::median(&stats::ratios(&times[i], &times[0])),
        );
    }
}

fn interleaved(rounds: usize) {
    let k = Contenders::new();
    let k = &k;
    macro_rules! entry {
        ($name:literal, $submit:ident) => {
            (
                $name,
                Box::new(move |shape| chunk(k, shape, || $submit(k, job_for(shape))))
                    as Measure<'_>,
            )
        };
    }
    let peers = [
        entry!("floor", on_floor),
        entry!("asyncify_pool", on_pool),
        entry!("tokio_spawn_blocking", on_tokio),
        entry!("blocking_unblock", on_blocking),
        entry!("rayon_oneshot", on_rayon),
    ];
    println!(
        "interleaved, {rounds} rounds, {THREADS} threads, {} calls per batch",
        calls()
    );
    if std::env::var_os("ASYNCIFY_BENCH_CAPTURE_ONLY").is_none() {
        println!("round_trip ({ROUND_TRIPS} sequential calls per chunk)");
        interleave(rounds, Shape::RoundTrip, &peers);
        println!("throughput");
        interleave(rounds, Shape::Throughput, &peers);
        println!("fan_out (256 x 1 ms on {THREADS} threads, ideal 32 ms)");
        interleave(rounds, Shape::FanOut, &peers);
    }

    let overrides = sixteen_overrides();
    let overrides = &overrides;
    let capture = [
        entry!("floor", on_floor),
        entry!("asyncify_pool/0_overrides", on_pool),
        (
            "asyncify_pool/16_overrides",
            pool_under(k, move |queue_all| {
                settings::context(overrides.clone(), queue_all)
            }),
        ),
    ];
    println!("capture (throughput), no tracing dispatcher ever set");
    interleave(rounds, Shape::Throughput, &capture);

    // From here on a dispatcher has been set in this process, for good.
    let subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    interleave_span(
        rounds,
        k,
        "a scoped tracing_subscriber::registry() (set_default)",
    );
    drop(subscriber);

    // Last: a global default cannot be unset.
    tracing::subscriber::set_global_default(tracing_subscriber::registry())
        .expect("no global subscriber was set before");
    interleave_span(rounds, k, "a global tracing_subscriber::registry()");
}

/// This pool's throughput with every round's submissions made inside `under`.
fn pool_under<'a>(k: &'a Contenders, under: impl Fn(&mut dyn FnMut()) + 'a) -> Measure<'a> {
    let n = calls();
    Box::new(move |_| {
        k.runtime
            .block_on(batches_under(1, n, || on_pool(k, noop), &under))
            .as_nanos() as f64
            / n as f64
    })
}

/// The capture rows under whatever subscriber is in force: no span, and a span entered.
fn interleave_span(rounds: usize, k: &Contenders, subscriber: &str) {
    let span = tracing::info_span!("bench_request");
    let span = &span;
    let entries = [
        (
            "floor",
            Box::new(move |shape| chunk(k, shape, || on_floor(k, noop))) as Measure<'_>,
        ),
        (
            "asyncify_pool/subscriber_no_span",
            pool_under(k, |queue_all| queue_all()),
        ),
        (
            "asyncify_pool/span_under_subscriber",
            pool_under(k, move |queue_all| span.in_scope(queue_all)),
        ),
    ];
    println!("capture (throughput), under {subscriber}");
    interleave(rounds, Shape::Throughput, &entries);
}
