//! What tracing itself charges for the operations any span-propagating pool must make per call,
//! on one thread, under a global `tracing_subscriber::registry()` with a span entered: the
//! floor under the "span under a subscriber" capture cost in `benches/pool.rs`.
//!
//! * `current_span`: asking the dispatcher which span is current (`Dispatch::current_span`).
//!   This pool does it once per call to know whether its shared capture still applies.
//! * `span_current_clone_drop`: `Span::current()` and dropping it, what a capture per call
//!   costs (the span's reference count up and down).
//! * `enter_exit`: entering and leaving a span, which the worker does around the job.
//! * `weak_upgrade_drop` and `arc_clone_drop`: taking and releasing a shared capture.
//!
//! Run with `cargo bench --bench tracing_cost`. Compare the sum of the first and third with a
//! call's throughput cost in `benches/pool.rs` (BENCHMARKS.md does).

use std::hint::black_box;
use std::sync::{Arc, Weak};

use criterion::{criterion_group, criterion_main, Criterion};

fn tracing_cost(c: &mut Criterion) {
    tracing::subscriber::set_global_default(tracing_subscriber::registry())
        .expect("the only subscriber in this process");
    let span = tracing::info_span!("request");
    let _entered = span.enter();
    let mut group = c.benchmark_group("tracing_cost");
    group.bench_function("current_span", |b| {
        b.iter(|| {
            tracing::dispatcher::get_default(|d| {
                let current = d.current_span();
                black_box((current.id().map(|id| id.into_u64()), current.metadata()));
            })
        })
    });
    group.bench_function("span_current_clone_drop", |b| {
        b.iter(|| black_box(tracing::Span::current()))
    });
    group.bench_function("enter_exit", |b| {
        b.iter(|| {
            span.with_subscriber(|(id, d)| d.enter(id));
            span.with_subscriber(|(id, d)| d.exit(id));
        })
    });
    let shared = Arc::new([0usize; 8]);
    let weak: Weak<[usize; 8]> = Arc::downgrade(&shared);
    group.bench_function("weak_upgrade_drop", |b| {
        b.iter(|| black_box(weak.upgrade()))
    });
    group.bench_function("arc_clone_drop", |b| {
        b.iter(|| black_box(Arc::clone(&shared)))
    });
    group.finish();
}

criterion_group!(benches, tracing_cost);
criterion_main!(benches);
