//! An adaptive concurrency limit reports each move as a `tracing` event (target
//! `asyncify_pool::adaptive`, field `limit`) to the global subscriber, and the last one agrees
//! with the program's stats. Its own test binary: it sets the process's global subscriber.

mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use asyncify_pool::{Overload, WorkerPool};
use common::wait;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

#[derive(Clone, Default)]
struct Moves(Arc<Mutex<Vec<u64>>>);

struct Limit(Option<u64>);

impl Visit for Limit {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "limit" {
            self.0 = Some(value);
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl<S: Subscriber> Layer<S> for Moves {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == "asyncify_pool::adaptive" {
            let mut limit = Limit(None);
            event.record(&mut limit);
            self.0
                .lock()
                .unwrap()
                .push(limit.0.expect("a `limit` field"));
        }
    }
}

#[test]
fn every_move_of_the_limit_is_a_tracing_event() {
    let moves = Moves::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(moves.clone()))
        .expect("the only global subscriber of this binary");
    let pool = WorkerPool::new(8);
    let overloaded = Arc::new(AtomicBool::new(false));
    let o = Arc::clone(&overloaded);
    let p = pool
        .asyncify(move |_: u32| {
            std::thread::sleep(std::time::Duration::from_millis(1));
            if o.load(SeqCst) {
                429u16
            } else {
                200
            }
        })
        .adaptive_concurrency(1, 6, Overload::when(|s: &u16| *s == 429));
    // Keep more calls outstanding than the limit can ever be, so that it is always in use.
    let handles: Vec<_> = (0..300).map(|i| p.call(i)).collect();
    for h in handles {
        assert_eq!(wait(h), Ok(200));
    }
    let grown = moves.0.lock().unwrap().clone();
    assert_eq!(
        grown,
        (2..=6).collect::<Vec<u64>>(),
        "one event per step up, to the max"
    );
    assert_eq!(p.stats().concurrency_limit, Some(6));
    overloaded.store(true, SeqCst);
    assert_eq!(wait(p.call(0)), Ok(429));
    let all = moves.0.lock().unwrap().clone();
    assert_eq!(
        all.last(),
        Some(&5),
        "a cut by a tenth, at least one: {all:?}"
    );
    assert_eq!(p.stats().concurrency_limit, Some(5));
}
