//! Jobs run nested inside a tracing subscriber's own callback: a layer whose `on_event` hands
//! work to the pool and waits for it (an exporter, say), on a pool thread, so that the waiting
//! thread runs the awaited job itself. While a callback runs, tracing lets no dispatcher be set
//! on that thread (it panics) and hands out its no-op dispatcher. Both tests failed on code
//! that read the dispatcher with `get_default` there and then set one or probed with one: the
//! first lost its job (the panic unwound out of the job's run), the second's panic was
//! reported into the subscriber from inside its own callback.
//!
//! A global subscriber is process-wide: this binary sets one, and the test that needs calls
//! made before any subscriber runs first, in its own process (`in_child`).

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use asyncify_pool::{JobHandle, WorkerPool};
use common::{in_child, wait, HANG};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

#[derive(Default)]
struct Fields {
    message: String,
    wait: bool,
}

impl Visit for Fields {
    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "wait" {
            self.wait = value;
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

/// Logs every event's message; on an event with `wait = true`, waits for the next handle
/// handed to it (bounded) and logs what the wait gave.
#[derive(Clone, Default)]
struct Waits {
    log: Arc<Mutex<Vec<String>>>,
    handles: Arc<Mutex<VecDeque<JobHandle<()>>>>,
}

impl<S: Subscriber> Layer<S> for Waits {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.log.lock().unwrap().push(fields.message);
        if fields.wait {
            let handle = self.handles.lock().unwrap().pop_front();
            let got = handle.map(|mut h| h.wait_timeout(HANG));
            self.log.lock().unwrap().push(format!("waited: {got:?}"));
        }
    }
}

fn waits() -> &'static Waits {
    static WAITS: OnceLock<Waits> = OnceLock::new();
    WAITS.get_or_init(|| {
        let waits = Waits::default();
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(waits.clone()))
            .expect("only this binary sets the global subscriber");
        // A scoped dispatcher left set on another thread: tracing then looks up each thread's
        // dispatcher, and a callback's thread gets the no-op one.
        std::thread::spawn(|| {
            std::mem::forget(tracing::subscriber::set_default(
                tracing_subscriber::registry(),
            ))
        })
        .join()
        .unwrap();
        waits
    })
}

#[test]
fn a_job_made_before_any_subscriber_and_run_in_a_hooks_subscriber_callback_runs() {
    in_child(
        "a_job_made_before_any_subscriber_and_run_in_a_hooks_subscriber_callback_runs",
        || {
            static RAN: AtomicBool = AtomicBool::new(false);
            let (go, gone) = mpsc::channel::<()>();
            let gone = Mutex::new(gone);
            let pool = WorkerPool::builder()
                .threads(1)
                .on_thread_start(move |_| {
                    gone.lock().unwrap().recv().unwrap();
                    tracing::info!(wait = true, "worker up");
                })
                .build()
                .unwrap();
            // Both made before any dispatcher exists: they carry no tracing context.
            let first = pool.spawn(|| ());
            let nested = pool.spawn(|| RAN.store(true, SeqCst));
            let waits = waits();
            waits.handles.lock().unwrap().push_back(nested);
            go.send(()).unwrap();
            // The hook runs before the worker's first job, and waits for the second there.
            assert_eq!(wait(first), Ok(()));
            assert!(RAN.load(SeqCst), "the job run in the callback never ran");
            let log = waits.log.lock().unwrap().clone();
            assert!(
                log.contains(&"waited: Some(Some(Ok(())))".to_string()),
                "the hook's wait: {log:?}"
            );
        },
    );
}

#[test]
fn a_job_run_in_a_subscriber_callback_sets_no_dispatcher() {
    let waits = waits();
    let pool = WorkerPool::new(1);
    wait(pool.spawn(|| ())).unwrap();
    for in_span in [false, true] {
        let (go, gone) = mpsc::channel::<()>();
        let outer = pool.spawn(move || {
            gone.recv().unwrap();
            tracing::info!(wait = true, "outer");
        });
        // Queued behind the outer job: its worker runs it inside the subscriber's callback.
        let span = tracing::info_span!("inner");
        let inner = if in_span {
            span.in_scope(|| pool.spawn(|| tracing::info!("inner, in a span")))
        } else {
            pool.spawn(|| tracing::info!("inner"))
        };
        waits.handles.lock().unwrap().push_back(inner);
        go.send(()).unwrap();
        wait(outer).unwrap();
    }
    let log = waits.log.lock().unwrap().clone();
    assert_eq!(
        log.iter()
            .filter(|l| *l == "waited: Some(Some(Ok(())))")
            .count(),
        2,
        "{log:#?}"
    );
    assert!(
        !log.iter().any(|l| l.contains("panicked")),
        "a panic reported into the subscriber from its own callback: {log:#?}"
    );
}
