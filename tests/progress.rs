//! Batches with a terminal progress bar (the `progress` feature) run and report exactly as
//! without one. Under `cargo test` stderr is usually not a terminal and the bar draws nothing;
//! its layout is tested in the crate (`src/batch/bar.rs`).
#![cfg(feature = "progress")]

mod common;

use std::time::Duration;

use asyncify_pool::WorkerPool;
use common::quiet_planned_panics;

/// A panicking item and a `fail_if` failure, waited on: every result in place, the counts right.
#[test]
fn a_batch_with_a_bar_and_failures_runs_to_completion() {
    quiet_planned_panics();
    let pool = WorkerPool::new(3);
    let program = pool.asyncify(|x: u32| {
        assert!(x != 5, "planned: item 5 panics");
        std::thread::sleep(Duration::from_millis(2));
        x * 10
    });
    let result = program
        .batch(0..40)
        .fail_if(|out: &u32| *out == 170)
        .keep_failed_inputs()
        .progress_bar()
        .wait();
    assert_eq!(result.total(), 40);
    assert_eq!(
        (result.done(), result.failed(), result.not_started()),
        (38, 2, 0)
    );
    assert!(!result.is_stopped());
    for (i, item) in result.results().iter().enumerate() {
        match i {
            5 => assert!(item.as_ref().unwrap_err().is_panic(), "{item:?}"),
            // A `fail_if` failure keeps its output.
            _ => assert_eq!(*item, Ok(i as u32 * 10)),
        }
    }
    assert_eq!(result.failed_inputs(), [(5, 5), (17, 17)]);
}

/// The same with the batch awaited, and stopped by its error budget: the items that never
/// started are counted (the bar's "not started") and resolve to `Cancelled`.
#[test]
fn an_awaited_batch_with_a_bar_stops_on_its_error_budget() {
    let pool = WorkerPool::new(1);
    let program = pool.asyncify(|x: u32| x);
    let batch = program
        .batch(0..20)
        .fail_if(|out: &u32| *out % 2 == 1)
        .max_errors(1)
        .concurrency(1)
        .progress_bar();
    let result = pollster::block_on(batch);
    assert!(result.is_stopped());
    assert_eq!(
        (result.done(), result.failed(), result.not_started()),
        (2, 2, 16)
    );
    assert_eq!(result.results()[..4], [Ok(0), Ok(1), Ok(2), Ok(3)]);
    assert!(result.results()[4..]
        .iter()
        .all(|r| r.as_ref().unwrap_err().is_cancelled()));
}

/// An empty batch with a bar completes at once.
#[test]
fn an_empty_batch_with_a_bar_completes() {
    let pool = WorkerPool::new(1);
    let program = pool.asyncify(|x: u32| x);
    let result = program.batch(Vec::<u32>::new()).progress_bar().wait();
    assert_eq!((result.total(), result.done()), (0, 0));
}
