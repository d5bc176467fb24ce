//! The free `asyncify` runs on a default pool whose thread count follows the
//! `async_max_workers` setting in force at each call, as DSPy's limiter does: a `context`
//! override, a `scope` override and a `configure` value all count.
//!
//! The default pool and the global configuration are process-wide; this file is its own
//! process, and its tests take [`SERIAL`] so they do not see each other's settings.

mod common;

use std::sync::{Arc, Mutex, MutexGuard};

use asyncify_pool::settings::{self, Overrides};
use asyncify_pool::{asyncify, default_pool, worker_index};
use common::{probe_every_worker, wait, Gauge};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn workers(n: usize) -> Overrides {
    Overrides::new().with("async_max_workers", n)
}

/// Makes `calls` calls of an asyncified program that holds in a gauge, drives them through at
/// `expected` at a time, and returns the most that ran at once.
fn run_held_calls(
    calls: usize,
    expected: usize,
    make: impl FnOnce(&Arc<Gauge>) -> Vec<asyncify_pool::JobHandle<usize>>,
) -> usize {
    let gauge = Gauge::new();
    let handles = make(&gauge);
    assert_eq!(handles.len(), calls);
    gauge.drive(calls, expected);
    for h in handles {
        let inside = wait(h).unwrap();
        assert!(
            inside <= expected,
            "{inside} calls ran at once, limit {expected}"
        );
    }
    gauge.state().max
}

/// DSPy's own test: 8 calls inside `context(async_max_workers=4)` run exactly 4 at once.
#[test]
fn eight_calls_in_a_context_of_four_workers_run_exactly_four_at_once() {
    let _serial = serial();
    let max = run_held_calls(8, 4, |gauge| {
        let gauge = gauge.clone();
        let program = asyncify(move |_: u32| gauge.hold());
        settings::context(workers(4), || (0..8).map(|i| program.call(i)).collect())
    });
    assert_eq!(max, 4);
    assert_eq!(default_pool().threads(), 4);

    // A call under another value resizes the pool again before it is queued.
    let program = asyncify(|x: u32| x);
    let h = settings::context(workers(2), || program.call(1));
    assert_eq!(default_pool().threads(), 2);
    assert_eq!(wait(h), Ok(1));
}

#[test]
fn a_configured_value_counts_and_a_context_overrides_it() {
    let _serial = serial();
    settings::configure(workers(3)).unwrap();
    let max = run_held_calls(9, 3, |gauge| {
        let gauge = gauge.clone();
        let program = asyncify(move |_: u32| gauge.hold());
        (0..9).map(|i| program.call(i)).collect()
    });
    assert_eq!(max, 3);
    assert_eq!(default_pool().threads(), 3);

    // The inner setting wins over the configured one.
    let max = run_held_calls(6, 2, |gauge| {
        let gauge = gauge.clone();
        let program = asyncify(move |_: u32| gauge.hold());
        settings::context(workers(2), || (0..6).map(|i| program.call(i)).collect())
    });
    assert_eq!(max, 2);

    // Back to the configured value outside the context, and to the default once reset.
    assert_eq!(wait(asyncify(|x: u8| x).call(7)), Ok(7));
    assert_eq!(default_pool().threads(), 3);
    settings::configure(workers(8)).unwrap();
    assert_eq!(wait(asyncify(|x: u8| x).call(8)), Ok(8));
    assert_eq!(default_pool().threads(), 8);
}

#[test]
fn a_scope_override_counts_for_calls_made_while_it_is_polled() {
    let _serial = serial();
    let gauge = Gauge::new();
    let g = gauge.clone();
    let program = asyncify(move |_: u32| g.hold());
    let calls = settings::scope(workers(5), async move {
        let handles: Vec<_> = (0..10).map(|i| program.call(i)).collect();
        futures::future::join_all(handles).await
    });
    let driver = std::thread::spawn({
        let gauge = gauge.clone();
        move || gauge.drive(10, 5)
    });
    let results = pollster::block_on(calls);
    driver.join().expect("five calls ran at once");
    for r in results {
        assert!(r.unwrap() <= 5);
    }
    assert_eq!(gauge.state().max, 5);
    assert_eq!(default_pool().threads(), 5);
}

/// The worker numbers of every thread of the default pool, sorted (a thread started later takes
/// a number never used before, so a new thread shows up as a new number).
fn default_pool_workers() -> Vec<usize> {
    let mut seen: Vec<_> = probe_every_worker(default_pool(), worker_index)
        .into_iter()
        .map(|(index, met)| {
            assert!(met, "every worker of the default pool ran a probe at once");
            index.expect("a probe runs on a thread of the pool")
        })
        .collect();
    seen.sort_unstable();
    seen
}

/// Calls that alternate `async_max_workers` between 2 and 16 move the limit at every call but
/// reuse the living threads: the surplus ones stay for the default pool's keep-alive.
#[test]
fn alternating_async_max_workers_starts_no_thread_per_call() {
    let _serial = serial();
    let program = asyncify(|x: u32| x * 2);
    let h = settings::context(workers(16), || program.call(1));
    assert_eq!(wait(h), Ok(2));
    let before = default_pool_workers();
    assert_eq!(before.len(), 16);
    for i in 0..40u32 {
        let n = if i % 2 == 0 { 2 } else { 16 };
        let h = settings::context(workers(n), || program.call(i));
        assert_eq!(default_pool().threads(), n);
        assert_eq!(wait(h), Ok(i * 2));
        assert!(default_pool().stats().live_threads >= 16);
    }
    assert_eq!(default_pool().threads(), 16);
    assert_eq!(default_pool_workers(), before, "threads were started again");
}

/// The default pool's surplus threads retire after its documented keep-alive of 10 s: not at
/// the shrink, not before 10 s of idleness, and all of them within the hang bound after.
#[test]
fn the_default_pools_surplus_threads_retire_after_ten_seconds_idle() {
    let _serial = serial();
    let program = asyncify(|x: u32| x + 1);
    assert_eq!(
        wait(settings::context(workers(16), || program.call(1))),
        Ok(2)
    );
    // Every thread runs a probe after this instant, so none has been idle since before it.
    let busy_after = std::time::Instant::now();
    assert_eq!(default_pool_workers().len(), 16);
    assert_eq!(
        wait(settings::context(workers(2), || program.call(2))),
        Ok(3)
    );
    assert!(
        default_pool().stats().live_threads > 2,
        "surplus threads left at the shrink"
    );
    let give_up = busy_after + common::HANG;
    loop {
        let live = default_pool().stats().live_threads;
        if live < 16 {
            assert!(
                busy_after.elapsed() >= std::time::Duration::from_secs(10),
                "a surplus thread retired {:?} after its last job",
                busy_after.elapsed()
            );
        }
        if live == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "surplus threads never retired: {live} live"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(default_pool().threads(), 2);
}
