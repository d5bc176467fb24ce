//! Calls made under a *global* tracing subscriber, the way services run. There a thread's calls
//! under one span share one captured context, and workers stay under the global dispatcher
//! instead of setting it per job (see `src/capture.rs`). These tests hold that sharing to the
//! same contract as a capture per call: every job sees exactly its caller's span and overrides,
//! a span closes as soon as its last job is done, and a new span or context that reuses an old
//! one's id or address is never mistaken for it.
//!
//! A global subscriber is process-wide, so these tests have their own test binary, and each
//! tells its records apart by the `n` it gives its spans.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use asyncify_pool::settings::{self, Overrides};
use asyncify_pool::WorkerPool;
use common::{spin_until, wait, Gate};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// What the global subscriber saw: for each `probe` event, the `n` of the span it happened in;
/// and the `n` of every span that closed.
#[derive(Default)]
struct Seen {
    probes: HashMap<u64, Option<u64>>,
    closed: Vec<u64>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Seen>>);

/// The `n` a span was made with, kept in its extensions.
struct N(u64);

#[derive(Default)]
struct Numbers {
    n: Option<u64>,
    probe: Option<u64>,
}

impl Visit for Numbers {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "n" => self.n = Some(value),
            "probe" => self.probe = Some(value),
            _ => {}
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Ok(value) = u64::try_from(value) {
            self.record_u64(field, value);
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut numbers = Numbers::default();
        attrs.record(&mut numbers);
        if let Some(n) = numbers.n {
            ctx.span(id).unwrap().extensions_mut().insert(N(n));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut numbers = Numbers::default();
        event.record(&mut numbers);
        if let Some(probe) = numbers.probe {
            let n = ctx
                .event_span(event)
                .and_then(|span| span.extensions().get::<N>().map(|n| n.0));
            self.0.lock().unwrap().probes.insert(probe, n);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let n = ctx.span(&id).unwrap().extensions().get::<N>().map(|n| n.0);
        if let Some(n) = n {
            self.0.lock().unwrap().closed.push(n);
        }
    }
}

/// The global recorder, installed once for the whole test binary.
fn seen() -> &'static Recorder {
    static RECORDER: OnceLock<Recorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = Recorder::default();
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(recorder.clone()),
        )
        .expect("only this test binary sets the global subscriber");
        recorder
    })
}

/// The span `probe` was recorded in, as that span's `n` (`None`: no span with an `n`).
fn span_of(probe: u64) -> Option<Option<u64>> {
    seen().0.lock().unwrap().probes.get(&probe).copied()
}

fn closed(n: u64) -> bool {
    seen().0.lock().unwrap().closed.contains(&n)
}

/// Waits until span `n` closes; the bound only turns a hang into a failure.
fn wait_closed(n: u64) {
    spin_until(&format!("span {n} to close"), || closed(n));
}

/// A job that records a `probe` event and returns the overrides' `n` it sees.
fn probe_job(probe: u64) -> impl FnOnce() -> Option<u64> + Send + 'static {
    move || {
        tracing::info!(probe, "probe");
        settings::get::<u64>("n")
    }
}

#[test]
fn every_job_sees_its_callers_span_and_overrides_when_many_threads_interleave() {
    seen();
    let pool = WorkerPool::new(4);
    let callers: Vec<_> = (0..4u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                // Two spans and two contexts per thread, each switched on its own rhythm while
                // earlier calls are still queued, so that a shared capture reused for the wrong
                // span or the wrong overrides would show up.
                let spans = [0, 1].map(|k| tracing::info_span!("call", n = 1_000 + t * 10 + k));
                let contexts = [0, 1].map(|j| Overrides::new().with("n", 2_000 + t * 10 + j));
                let handles: Vec<_> = (0..400u64)
                    .map(|i| {
                        let (k, j) = (i / 3 % 2, i / 5 % 2);
                        let probe = t * 1_000_000 + i;
                        let handle = spans[k as usize].in_scope(|| {
                            settings::context(contexts[j as usize].clone(), || {
                                pool.spawn(probe_job(probe))
                            })
                        });
                        (probe, k, j, handle)
                    })
                    .collect();
                for (probe, k, j, handle) in handles {
                    assert_eq!(wait(handle), Ok(Some(2_000 + t * 10 + j)), "overrides");
                    assert_eq!(span_of(probe), Some(Some(1_000 + t * 10 + k)), "span");
                }
            })
        })
        .collect();
    for caller in callers {
        caller.join().unwrap();
    }
    // Outside any span or context, a job sees neither.
    let probe = 99_000_000;
    assert_eq!(wait(pool.spawn(probe_job(probe))), Ok(None));
    assert_eq!(span_of(probe), Some(None));
}

#[test]
fn a_span_closes_once_its_last_job_is_done_not_when_the_thread_calls_again() {
    seen();
    let pool = WorkerPool::new(2);
    let gate = Gate::new();
    let span = tracing::info_span!("request", n = 7_001);
    let handles: Vec<_> = span.in_scope(|| {
        (0..10)
            .map(|_| {
                let gate = gate.clone();
                pool.spawn(move || gate.wait())
            })
            .collect()
    });
    drop(span);
    // The caller let go of the span, but its jobs still need it.
    assert!(!closed(7_001));
    gate.open();
    for handle in handles {
        wait(handle).unwrap();
    }
    // Nothing keeps it open now: not the worker, not this thread's cache of its last capture.
    wait_closed(7_001);
}

#[test]
fn a_new_span_after_the_old_one_closed_is_not_mistaken_for_it() {
    seen();
    let pool = WorkerPool::new(1);
    for round in 0..200u64 {
        // The same callsite every round; the registry recycles a closed span's slot.
        let n = 8_000 + round;
        let span = tracing::info_span!("round", n);
        let probe = 8_000_000 + round;
        let handle = span.in_scope(|| pool.spawn(probe_job(probe)));
        wait(handle).unwrap();
        assert_eq!(span_of(probe), Some(Some(n)));
        drop(span);
        wait_closed(n);
    }
}

#[test]
fn a_new_context_at_a_recycled_address_is_not_mistaken_for_the_old_one() {
    seen();
    let pool = WorkerPool::new(1);
    let span = tracing::info_span!("contexts", n = 9_000);
    for i in 0..500u64 {
        // Each context's map is freed before the next is made, so malloc hands the next one
        // the same address again and again.
        let handle = span.in_scope(|| {
            settings::context(Overrides::new().with("n", i), || {
                pool.spawn(probe_job(9_000_000 + i))
            })
        });
        assert_eq!(wait(handle), Ok(Some(i)));
    }
}

#[test]
fn a_scoped_subscriber_over_the_global_one_travels_with_the_call() {
    seen();
    let pool = WorkerPool::new(1);
    let local = Recorder::default();
    let probe = 10_000_000;
    let handle = tracing::subscriber::with_default(
        tracing_subscriber::registry().with(local.clone()),
        || {
            let span = tracing::info_span!("local", n = 10_001);
            span.in_scope(|| pool.spawn(probe_job(probe)))
        },
    );
    wait(handle).unwrap();
    assert_eq!(
        local.0.lock().unwrap().probes.get(&probe),
        Some(&Some(10_001)),
        "the job ran under the caller's scoped subscriber and span"
    );
    assert_eq!(span_of(probe), None, "not under the global one");

    // And the next call, made outside it, is under the global one again on the same worker.
    let probe = probe + 1;
    let span = tracing::info_span!("global", n = 10_002);
    wait(span.in_scope(|| pool.spawn(probe_job(probe)))).unwrap();
    assert_eq!(span_of(probe), Some(Some(10_002)));
    assert!(!local.0.lock().unwrap().probes.contains_key(&probe));
}

#[test]
fn a_batch_and_a_nested_call_keep_the_span_and_overrides_they_were_made_under() {
    seen();
    let pool = WorkerPool::new(1);
    let program = pool.asyncify(|probe: u64| probe_job(probe)());
    let span = tracing::info_span!("batch", n = 11_001);
    let batch = span.in_scope(|| {
        settings::context(Overrides::new().with("n", 11_002u64), || {
            program.batch(11_000_000..11_000_050u64)
        })
    });
    drop(span);
    // Driven outside the span and the context: the batch puts back what it captured.
    let result = batch.wait();
    for (probe, out) in (11_000_000..).zip(result.results()) {
        assert_eq!(out, &Ok(Some(11_002)));
        assert_eq!(span_of(probe), Some(Some(11_001)));
    }

    // A call made inside a job inherits the job's span and overrides; on a one-thread pool the
    // waiting worker runs it itself, nested inside the outer job.
    let span = tracing::info_span!("outer", n = 11_003);
    let inner_pool = pool.clone();
    let outer = span.in_scope(|| {
        settings::context(Overrides::new().with("n", 11_004u64), || {
            pool.spawn(move || inner_pool.spawn(probe_job(11_100_000)).wait())
        })
    });
    assert_eq!(wait(outer), Ok(Ok(Some(11_004))));
    assert_eq!(span_of(11_100_000), Some(Some(11_003)));
}

#[test]
fn a_batch_made_under_one_scoped_subscriber_and_driven_under_another_stays_with_the_first() {
    seen();
    let pool = WorkerPool::new(2);
    let program = pool.asyncify(|probe: u64| probe_job(probe)());
    let (first, second) = (Recorder::default(), Recorder::default());
    let batch = tracing::subscriber::with_default(
        tracing_subscriber::registry().with(first.clone()),
        || {
            let span = tracing::info_span!("first", n = 12_001);
            span.in_scope(|| program.batch(12_000_000..12_000_020u64))
        },
    );
    let result = tracing::subscriber::with_default(
        tracing_subscriber::registry().with(second.clone()),
        || batch.wait(),
    );
    assert_eq!(result.done(), 20);
    let first = first.0.lock().unwrap();
    for probe in 12_000_000..12_000_020u64 {
        assert_eq!(first.probes.get(&probe), Some(&Some(12_001)));
    }
    assert!(second.0.lock().unwrap().probes.is_empty());
    drop(first);
    assert_eq!(span_of(12_000_000), None);
}

#[test]
fn a_call_outside_any_span_run_inline_by_a_job_under_a_scoped_subscriber_stays_global() {
    seen();
    // One worker: the job below waits for a call queued behind it, so it runs that call
    // itself, nested, while its own scoped subscriber is in force on the thread.
    let pool = WorkerPool::new(1);
    let local = Recorder::default();
    let (give, take) = std::sync::mpsc::channel::<asyncify_pool::JobHandle<Option<u64>>>();
    let outer = tracing::subscriber::with_default(
        tracing_subscriber::registry().with(local.clone()),
        || {
            let span = tracing::info_span!("local", n = 13_001);
            span.in_scope(|| pool.spawn(move || take.recv().unwrap().wait()))
        },
    );
    let probe = 13_000_000;
    // Made here, under the global subscriber, in no span and with no overrides.
    let inner = pool.spawn(probe_job(probe));
    give.send(inner).unwrap();
    assert_eq!(wait(outer), Ok(Ok(None)));
    assert_eq!(
        span_of(probe),
        Some(None),
        "the global subscriber saw the call's event, in no span"
    );
    assert!(
        !local.0.lock().unwrap().probes.contains_key(&probe),
        "not the scoped subscriber of the job that ran it"
    );
}

#[test]
fn a_worker_left_under_a_scoped_subscriber_still_runs_global_calls_under_the_global_one() {
    seen();
    let pool = WorkerPool::new(1);
    let local = Recorder::default();
    let leak = local.clone();
    // A job that sets a scoped subscriber and never unsets it: its worker stays under it.
    wait(pool.spawn(move || {
        std::mem::forget(tracing::subscriber::set_default(
            tracing_subscriber::registry().with(leak),
        ));
    }))
    .unwrap();
    for probe in 14_000_000..14_000_010 {
        assert_eq!(wait(pool.spawn(probe_job(probe))), Ok(None));
        assert_eq!(span_of(probe), Some(None), "seen by the global subscriber");
    }
    assert!(local.0.lock().unwrap().probes.is_empty());
}
