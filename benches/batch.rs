//! What a batch costs per item, next to the same items as plain calls, in one process.
//!
//! Every contender runs [`ITEMS`] no-op items on one pool of [`THREADS`] threads and is awaited
//! from the same tokio current-thread runtime, so the only difference is the batch machinery:
//!
//! * `calls`: a loop of [`AsyncProgram::call`](asyncify_pool::AsyncProgram::call), all in
//!   flight, then each handle awaited in order. The baseline.
//! * `batch`: `program.batch(0..ITEMS).await` (every item submitted at once, results in order,
//!   error budget and counts kept).
//! * `batch_concurrency_8`: the same with `concurrency(8)`, so the driver submits each next
//!   item when it learns that one finished (the cost of a per-batch cap on no-op items).
//! * `completions`: the batch consumed as a stream, in completion order.
//!
//! The target is `batch` within 10% of `calls` per item.
//!
//! Run with `cargo bench --bench batch`.

use asyncify_pool::WorkerPool;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::StreamExt;

/// Items per iteration, as the issue asks.
const ITEMS: u32 = 10_000;
/// Pool threads (the default of `async_max_workers`, as in the pool bench).
const THREADS: usize = 8;

fn noop(i: u32) -> u32 {
    i
}

fn batch_vs_calls(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
    let pool = WorkerPool::new(THREADS);
    let program = pool.asyncify(noop);

    let mut group = c.benchmark_group("batch_10k_noop");
    group.throughput(Throughput::Elements(u64::from(ITEMS)));
    group.bench_function("calls", |b| {
        b.to_async(&runtime).iter(|| async {
            let handles: Vec<_> = (0..ITEMS).map(|i| program.call(i)).collect();
            let mut sum = 0u64;
            for handle in handles {
                sum += u64::from(handle.await.expect("no-op"));
            }
            sum
        })
    });
    group.bench_function("batch", |b| {
        b.to_async(&runtime).iter(|| async {
            let result = program.batch(0..ITEMS).await;
            assert_eq!(result.done(), ITEMS as usize);
            result
        })
    });
    group.bench_function("batch_concurrency_8", |b| {
        b.to_async(&runtime).iter(|| async {
            let result = program.batch(0..ITEMS).concurrency(8).await;
            assert_eq!(result.done(), ITEMS as usize);
            result
        })
    });
    group.bench_function("completions", |b| {
        b.to_async(&runtime).iter(|| async {
            let mut stream = program.batch(0..ITEMS).completions();
            let mut sum = 0u64;
            while let Some((_, result)) = stream.next().await {
                sum += u64::from(result.expect("no-op"));
            }
            sum
        })
    });
    group.finish();
}

criterion_group!(benches, batch_vs_calls);
criterion_main!(benches);
