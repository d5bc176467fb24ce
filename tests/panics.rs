//! A panicking program becomes `JobError::Panicked` carrying the panic message; the worker
//! survives and goes on with the next job, with the overrides of the panicked job gone.

mod common;

use asyncify_pool::settings::{self, Overrides};
use asyncify_pool::{JobError, WorkerPool};
use common::{quiet_planned_panics, wait};

fn panic_message(err: JobError) -> String {
    match err {
        JobError::Panicked { message, .. } => message,
        other => panic!("expected a panic, got {other:?}"),
    }
}

#[test]
fn a_panic_becomes_panicked_with_its_message() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);

    // A `&'static str` payload.
    let err = wait(pool.spawn(|| -> () { panic!("planned: static message") })).unwrap_err();
    assert!(err.is_panic() && !err.is_shut_down());
    assert!(err.to_string().contains("planned: static message"), "{err}");
    assert_eq!(panic_message(err), "planned: static message");

    // A formatted `String` payload, through an asyncified program and an awaiting caller.
    let program = pool.asyncify(|n: u32| -> u32 { panic!("planned: input was {n}") });
    let err = pollster::block_on(program.call(42)).unwrap_err();
    assert!(err.to_string().contains("planned: input was 42"), "{err}");
    assert_eq!(panic_message(err), "planned: input was 42");

    // `std::panic::panic_any` with a `String` value, and with something that is not a string.
    let err = wait(pool.spawn(|| std::panic::panic_any(String::from("planned: any string"))))
        .unwrap_err();
    assert_eq!(panic_message(err), "planned: any string");
    let err = wait(pool.spawn(|| std::panic::panic_any(7u32))).unwrap_err();
    let message = panic_message(err.clone());
    assert!(
        message.contains("not a string"),
        "a clear message: {message}"
    );
    assert!(err.to_string().contains(&message), "{err}");

    // The error is a proper `std::error::Error` that can cross threads.
    fn is_error<E: std::error::Error + Send + Sync + 'static>(_: &E) {}
    is_error(&err);
}

#[test]
fn the_worker_survives_and_keeps_working() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let name = || std::thread::current().name().unwrap().to_owned();
    let before = wait(pool.spawn(name)).unwrap();
    let handles: Vec<_> = (0..50u32)
        .map(|i| {
            pool.spawn(move || {
                if i % 2 == 0 {
                    panic!("planned: job {i}");
                }
                i
            })
        })
        .collect();
    for (i, h) in (0..50u32).zip(handles) {
        match wait(h) {
            Ok(v) => assert_eq!((i % 2, v), (1, i)),
            Err(e) => assert_eq!((i % 2, panic_message(e)), (0, format!("planned: job {i}"))),
        }
    }
    // Still the same one thread: it caught every panic instead of dying and being replaced.
    assert_eq!(wait(pool.spawn(name)), Ok(before));
    let stats = pool.stats();
    assert_eq!(
        (stats.completed, stats.panicked, stats.live_threads),
        (27, 25, 1)
    );
}

#[test]
fn overrides_are_restored_after_a_panic() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let panicked = settings::context(Overrides::new().with("lm", "doomed"), || {
        pool.spawn(|| -> () {
            assert_eq!(settings::get::<&str>("lm"), Some("doomed"));
            panic!("planned: with overrides in force")
        })
    });
    assert!(wait(panicked).unwrap_err().is_panic());
    let next = pool.spawn(|| (settings::current().is_empty(), settings::get::<&str>("lm")));
    assert_eq!(wait(next), Ok((true, None)));
    let next = settings::context(Overrides::new().with("lm", "fresh"), || {
        pool.spawn(|| settings::get::<&str>("lm"))
    });
    assert_eq!(wait(next), Ok(Some("fresh")));
    // The caller's own overrides were never touched.
    assert!(settings::current().is_empty());
}

#[test]
fn a_panic_in_a_nested_job_is_reported_to_the_job_that_waited() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let inner = pool.clone();
    let outer = pool.spawn(move || {
        let nested = inner.spawn(|| -> u8 { panic!("planned: nested") }).wait();
        // The outer job goes on normally.
        (nested.map_err(panic_message), asyncify_pool::is_cancelled())
    });
    assert_eq!(wait(outer), Ok((Err("planned: nested".to_owned()), false)));
}
