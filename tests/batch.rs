//! Batches (issue 5): order, error budget, context, cancellation on drop, per-batch
//! concurrency, stragglers. No timing assertions: every wait is bounded only to turn a hang
//! into a failure.

mod common;

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use asyncify_pool::settings::{self, Overrides};
use asyncify_pool::{is_cancelled, BatchResult, WorkerPool};
use common::{in_child, quiet_planned_panics, wait, within_hang, HANG};
use futures::StreamExt;

/// A pseudo-random number from `seed` (xorshift), for per-item latencies and failures.
fn scramble(seed: u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn jitter(i: u64) {
    thread::sleep(Duration::from_micros(scramble(i) % 2_000));
}

/// Spins (sleeping) until `done()` or `HANG`; returns whether `done()` became true.
fn wait_until(done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + HANG;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
    true
}

fn check_order(result: &BatchResult<u64, u64>, n: u64) {
    assert_eq!(result.total(), n as usize);
    assert_eq!(result.done(), n as usize);
    for (i, r) in result.results().iter().enumerate() {
        assert_eq!(r, &Ok(i as u64 * 3), "item {i}");
    }
}

#[test]
fn order_is_kept_under_random_latency() {
    within_hang("the test", || {
        let pool = WorkerPool::new(8);
        let triple = pool.asyncify(|i: u64| {
            jitter(i);
            i * 3
        });
        check_order(&triple.batch(0..300).wait(), 300);
        check_order(&triple.batch(0..300).concurrency(3).wait(), 300);
        check_order(&pollster::block_on(triple.batch(0..300)), 300);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        check_order(
            &rt.block_on(triple.batch(0..300).concurrency(5).into_future()),
            300,
        );
    });
}

#[test]
fn completions_yield_every_index_once_with_its_result() {
    within_hang("the test", || {
        let pool = WorkerPool::new(6);
        let triple = pool.asyncify(|i: u64| {
            jitter(i);
            i * 3
        });
        let mut seen = vec![0; 200];
        for (index, result) in triple.batch(0..200).concurrency(4).completions() {
            assert_eq!(result, Ok(index as u64 * 3));
            seen[index] += 1;
        }
        assert!(seen.iter().all(|&n| n == 1));

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let seen = rt.block_on(async {
            let mut seen = vec![0; 200];
            let mut stream = triple.batch(0..200).completions();
            assert_eq!(futures::Stream::size_hint(&stream), (200, Some(200)));
            while let Some((index, result)) = stream.next().await {
                assert_eq!(result, Ok(index as u64 * 3));
                seen[index] += 1;
            }
            seen
        });
        assert!(seen.iter().all(|&n| n == 1));
    });
}

#[test]
fn error_budget_stops_the_batch_and_no_item_starts_after_the_stop() {
    quiet_planned_panics();
    within_hang("the test", || {
        // One item at a time: the stop is decided before the next item is submitted, so the
        // counts are exact. Items 0, 3, 6, … fail; the third failure (item 6) exceeds 2.
        let pool = WorkerPool::new(1);
        let starts = Arc::new(AtomicUsize::new(0));
        let s = starts.clone();
        let program = pool.asyncify(move |i: u32| {
            s.fetch_add(1, SeqCst);
            assert!(i % 3 != 0, "planned: item {i} fails");
            i
        });
        let result = program.batch(0..100).max_errors(2).concurrency(1).wait();
        assert!(result.is_stopped());
        assert_eq!((result.done(), result.failed()), (4, 3));
        assert_eq!(result.not_started(), 93);
        assert_eq!(starts.load(SeqCst), 7);
        assert!(result.results()[6].as_ref().unwrap_err().is_panic());
        assert!(result.results()[7..]
            .iter()
            .all(|r| r.as_ref().unwrap_err().is_cancelled()));
        let unstarted: Vec<usize> = result.unstarted_inputs().iter().map(|(i, _)| *i).collect();
        assert_eq!(unstarted, (7..100).collect::<Vec<_>>());
        // Nothing of the batch is left to run: after the pool drains, the count is the same.
        pool.shutdown();
        assert_eq!(starts.load(SeqCst), 7);
    });
}

#[test]
fn error_budget_counts_every_start_under_load() {
    quiet_planned_panics();
    within_hang("the test", || {
        for round in 0..5u64 {
            let pool = WorkerPool::new(8);
            let starts = Arc::new(AtomicUsize::new(0));
            let s = starts.clone();
            let program = pool.asyncify(move |i: u64| {
                s.fetch_add(1, SeqCst);
                jitter(i + round * 1000);
                assert!(
                    scramble(i + round) % 5 != 0,
                    "planned: an unlucky item fails"
                );
                i
            });
            let result = if round % 2 == 0 {
                program.batch(0..500).max_errors(3).wait()
            } else {
                pollster::block_on(program.batch(0..500).max_errors(3).concurrency(6))
            };
            assert!(result.is_stopped());
            assert!(result.failed() > 3);
            // Every item either ran to the end (and is counted) or never started.
            let ran = starts.load(SeqCst);
            assert_eq!(ran, result.done() + result.failed());
            assert_eq!(result.not_started(), 500 - ran);
            let cancelled = result
                .results()
                .iter()
                .filter(|r| matches!(r, Err(e) if e.is_cancelled()))
                .count();
            assert_eq!(cancelled, result.not_started());
            // And none starts later: shutdown runs whatever the pool still holds, then joins.
            pool.shutdown();
            assert_eq!(starts.load(SeqCst), ran);
        }
    });
}

#[test]
fn max_errors_defaults_to_the_setting_in_force_at_batch() {
    within_hang("the test", || {
        let pool = WorkerPool::new(1);
        let program = pool.asyncify(|i: u32| i);
        let strict = settings::context(Overrides::new().with(&settings::MAX_ERRORS, 0), || {
            program.batch(0..50).fail_if(|_| true).concurrency(1)
        });
        // Waited on outside the override: the budget was captured at `batch()`.
        let result = strict.wait();
        assert!(result.is_stopped());
        assert_eq!((result.failed(), result.not_started()), (1, 49));
        // The global default is 10.
        let result = program.batch(0..50).fail_if(|_| true).concurrency(1).wait();
        assert_eq!((result.failed(), result.not_started()), (11, 39));
    });
}

#[test]
fn running_items_see_is_cancelled_when_the_batch_stops() {
    quiet_planned_panics();
    within_hang("the test", || {
        let pool = WorkerPool::new(4);
        let running = Arc::new(AtomicUsize::new(0));
        let r = running.clone();
        // Items 1–3 run until they are told the batch gave up on them; item 0 fails once they
        // are all running. With `concurrency(4)`, items 4.. are not submitted before the stop
        // (otherwise item 0's worker could take item 4 before the driver sees the failure).
        let program = pool.asyncify(move |i: u32| {
            if i == 0 {
                assert!(wait_until(|| r.load(SeqCst) == 3));
                panic!("planned: item 0 fails");
            }
            r.fetch_add(1, SeqCst);
            wait_until(is_cancelled)
        });
        let result = program.batch(0..10).max_errors(0).concurrency(4).wait();
        assert!(result.is_stopped());
        assert_eq!(result.results()[1..4], [Ok(true), Ok(true), Ok(true)]);
        assert_eq!(
            (result.done(), result.failed(), result.not_started()),
            (3, 1, 6)
        );
        assert!(result.results()[4..]
            .iter()
            .all(|r| r.as_ref().unwrap_err().is_cancelled()));
    });
}

#[test]
fn overrides_and_span_reach_every_item() {
    within_hang("the test", || {
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        let pool = WorkerPool::new(4);
        let program = pool.asyncify(|i: u32| {
            jitter(i.into());
            let span = tracing::Span::current();
            (
                settings::get::<&str>("lm"),
                span.metadata().map(|m| m.name()),
                span.id(),
            )
        });
        let span = tracing::info_span!("evaluate");
        let expected = (Some("big"), Some("evaluate"), span.id());
        let make = || {
            settings::context(Overrides::new().with("lm", "big"), || {
                span.in_scope(|| program.batch(0..60).concurrency(2))
            })
        };
        // Driven outside the override and the span, and submitting later items from here.
        let blocking = make().wait();
        let awaited = pollster::block_on(make());
        for result in [blocking, awaited] {
            assert_eq!(result.done(), 60);
            for r in result.results() {
                assert_eq!(r.as_ref().unwrap(), &expected);
            }
        }
        assert_eq!(settings::get::<&str>("lm"), None);
    });
}

#[test]
fn dropping_a_batch_midway_cancels_its_queued_items() {
    within_hang("the test", || {
        for awaited in [false, true] {
            let pool = WorkerPool::new(1);
            let starts = Arc::new(AtomicUsize::new(0));
            let saw_cancel = Arc::new(AtomicBool::new(false));
            let (started_tx, started_rx) = mpsc::channel::<()>();
            let (release_tx, release_rx) = mpsc::channel::<()>();
            let started_tx = Mutex::new(started_tx);
            let release_rx = Mutex::new(release_rx);
            let (s, c) = (starts.clone(), saw_cancel.clone());
            // Item 2 holds the only worker until released; items 3..10 wait in the queue.
            let program = pool.asyncify(move |i: u32| {
                s.fetch_add(1, SeqCst);
                if i == 2 {
                    started_tx.lock().unwrap().send(()).unwrap();
                    release_rx.lock().unwrap().recv_timeout(HANG).unwrap();
                    c.store(is_cancelled(), SeqCst);
                }
                i
            });
            if awaited {
                let started = futures::channel::oneshot::channel::<()>();
                let (signal, stop) = started;
                let batch = program.batch(0..10).into_future();
                let forward = thread::spawn(move || {
                    started_rx.recv_timeout(HANG).unwrap();
                    signal.send(()).unwrap();
                });
                // Polls the batch until item 2 is running, then drops it.
                let out = pollster::block_on(futures::future::select(batch, stop));
                assert!(matches!(out, futures::future::Either::Right(_)));
                drop(out); // the batch future, returned by `select` unfinished
                forward.join().unwrap();
            } else {
                let mut items = program.batch(0..10).completions().into_iter();
                let mut got = vec![items.next().unwrap().0, items.next().unwrap().0];
                got.sort();
                assert_eq!(got, [0, 1]);
                started_rx.recv_timeout(HANG).unwrap();
                drop(items);
            }
            release_tx.send(()).unwrap();
            pool.shutdown(); // runs whatever is still queued, then joins
            assert_eq!(starts.load(SeqCst), 3, "items 3.. never ran");
            assert!(
                saw_cancel.load(SeqCst),
                "the running item saw is_cancelled()"
            );
            assert_eq!(pool.stats().cancelled, 7);
        }
    });
}

/// A gauge of how many items of one batch run at once, and the most seen.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, SeqCst);
    }
}

#[test]
fn two_concurrent_batches_each_keep_their_concurrency() {
    within_hang("the test", || {
        let pool = WorkerPool::new(8);
        let gauges = [Arc::new(Gauge::default()), Arc::new(Gauge::default())];
        let programs = gauges.clone().map(|gauge| {
            pool.asyncify(move |i: u64| {
                gauge.enter();
                jitter(i);
                gauge.leave();
                i
            })
        });
        let [first, second] = programs;
        let other = thread::spawn(move || first.batch(0..200).concurrency(2).wait());
        let mine = pollster::block_on(second.batch(100..300).concurrency(2));
        let theirs = other.join().unwrap();
        assert_eq!((mine.done(), theirs.done()), (200, 200));
        for gauge in &gauges {
            let most = gauge.most.load(SeqCst);
            assert!((1..=2).contains(&most), "a batch ran {most} items at once");
        }
    });
}

/// Counts a run of item `i` and returns which run of it this is (1 for the first).
fn count_run(runs: &Mutex<Vec<usize>>, i: usize) -> usize {
    let mut runs = runs.lock().unwrap();
    runs[i] += 1;
    runs[i]
}

#[test]
fn straggler_copies_run_only_when_asked() {
    within_hang("the test", || {
        let pool = WorkerPool::new(4);
        let runs = Arc::new(Mutex::new(vec![0usize; 20]));
        let r = runs.clone();
        // Item 0's first run is slow; a copy of it, if any, is fast.
        let program = pool.asyncify(move |i: usize| {
            let run = count_run(&r, i);
            if i == 0 && run == 1 {
                thread::sleep(Duration::from_millis(30));
            }
            i
        });
        let result = program.batch(0..20).wait();
        assert_eq!(result.done(), 20);
        assert!(
            runs.lock().unwrap().iter().all(|&n| n == 1),
            "no copy unasked"
        );
    });
}

#[test]
fn a_straggler_gets_one_copy_and_the_first_to_finish_wins() {
    within_hang("the test", || {
        for awaited in [false, true] {
            let pool = WorkerPool::new(4);
            let runs = Arc::new(Mutex::new(vec![0usize; 20]));
            let r = runs.clone();
            // Item 0's first run hangs until abandoned: only its copy can finish it.
            let program = pool.asyncify(move |i: usize| {
                let run = count_run(&r, i);
                if i == 0 && run == 1 {
                    assert!(wait_until(is_cancelled));
                    return 1000;
                }
                i
            });
            let batch = program.batch(0..20).stragglers(Duration::from_millis(5), 2);
            let result = if awaited {
                pollster::block_on(batch)
            } else {
                batch.wait()
            };
            assert_eq!(result.done(), 20);
            assert_eq!(result.results()[0], Ok(0), "the copy's result");
            let runs = runs.lock().unwrap().clone();
            assert_eq!(runs[0], 2);
            assert!(runs[1..].iter().all(|&n| n == 1));
        }
    });
}

#[test]
fn failed_and_unstarted_inputs_come_back() {
    quiet_planned_panics();
    within_hang("the test", || {
        let pool = WorkerPool::new(1);
        let program = pool.asyncify(|word: String| {
            assert!(!word.starts_with('x'), "planned: a bad word fails");
            word.len()
        });
        let words = ["ab", "xc", "def", "xg", "hi", "jk"].map(String::from);
        let result = program
            .batch(words)
            .keep_failed_inputs()
            .max_errors(1)
            .concurrency(1)
            .wait();
        assert_eq!(
            (&result.results()[0], &result.results()[2]),
            (&Ok(2), &Ok(3))
        );
        assert!(result.results()[1].as_ref().unwrap_err().is_panic());
        assert_eq!(
            result.failed_inputs(),
            [(1, "xc".to_owned()), (3, "xg".to_owned())]
        );
        assert_eq!(
            result.unstarted_inputs(),
            [(4, "hi".to_owned()), (5, "jk".to_owned())]
        );
    });
}

#[test]
fn progress_is_monotonic_and_ends_complete() {
    quiet_planned_panics();
    within_hang("the test", || {
        let pool = WorkerPool::new(4);
        let program = pool.asyncify(|i: u64| {
            jitter(i);
            assert!(i % 10 != 9, "planned: every tenth item fails");
        });
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let result = program
            .batch(0..100)
            .max_errors(100)
            .on_progress(move |p| s.lock().unwrap().push(p))
            .wait();
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty());
        for pair in seen.windows(2) {
            assert!(pair[0].finished() < pair[1].finished());
            assert!(pair[0].elapsed <= pair[1].elapsed);
        }
        let last = seen.last().unwrap();
        assert_eq!((last.done, last.failed, last.total), (90, 10, 100));
        assert_eq!((result.done(), result.failed()), (90, 10));
    });
}

#[test]
fn a_batch_waited_on_inside_a_job_completes_on_one_thread() {
    within_hang("the test", || {
        let pool = WorkerPool::new(1);
        let inner = pool.asyncify(|i: u32| i + 1);
        let outer = pool.spawn(move || {
            let all = inner.batch(0..50).wait();
            let some = inner.batch(0..50).concurrency(3).wait();
            (all.done(), some.done())
        });
        assert_eq!(outer.wait(), Ok((50, 50)));
    });
}

#[test]
fn a_shut_down_pool_resolves_every_item() {
    within_hang("the test", || {
        let pool = WorkerPool::new(2);
        let program = pool.asyncify(|i: u32| i);
        pool.shutdown();
        let result = program.batch(0..20).concurrency(3).wait();
        assert_eq!(result.not_started(), 20);
        assert!(!result.is_stopped());
        assert!(result
            .results()
            .iter()
            .all(|r| r.as_ref().unwrap_err().is_shut_down()));
        assert_eq!(result.unstarted_inputs().len(), 20);
    });
}

#[test]
fn a_bounded_queue_holds_the_batch_back_without_losing_items() {
    within_hang("the test", || {
        let pool = WorkerPool::builder()
            .threads(2)
            .queue_capacity(2)
            .build()
            .unwrap();
        let triple = pool.asyncify(|i: u64| {
            jitter(i);
            i * 3
        });
        check_order(&triple.batch(0..100).wait(), 100);
        check_order(&pollster::block_on(triple.batch(0..100)), 100);
    });
}

#[test]
fn batches_can_be_sent_to_another_thread_or_task() {
    fn send<T: Send>(_: &T) {}
    let pool = WorkerPool::new(1);
    let program = pool.asyncify(|s: String| s.len());
    let batch = program.batch(vec!["a".to_owned()]);
    send(&batch);
    send(&batch.into_future());
    let completions = program.batch(vec!["a".to_owned()]).completions();
    send(&completions);
    send(&completions.into_iter());
    let result = program.batch(vec!["ab".to_owned()]).wait();
    send(&result);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let spawned = rt.spawn(program.batch(vec!["abc".to_owned()]).into_future());
    assert_eq!(rt.block_on(spawned).unwrap().results(), [Ok(3)]);
}

/// A batch waited on inside a job of a one-thread pool whose queue holds one job: the waiting
/// worker runs the batch's items itself, the one waiting for room included, and the batch
/// completes.
#[test]
fn a_batch_waited_on_inside_a_job_of_a_pool_with_a_full_queue() {
    in_child(
        "a_batch_waited_on_inside_a_job_of_a_pool_with_a_full_queue",
        || {
            let pool = WorkerPool::builder()
                .threads(1)
                .queue_capacity(1)
                .build()
                .unwrap();
            let id = pool.asyncify(|x: u32| x * 2);
            let outer = pool.spawn(move || id.batch(0..3).wait().into_results());
            assert_eq!(wait(outer), Ok(vec![Ok(0), Ok(2), Ok(4)]));
        },
    );
}

/// An adaptive limit's overload signal sees a batch's outputs as it sees calls': a backend
/// that answers 429 to everything keeps the limit at its `min` (the signal never saw a batch
/// job's output, so every item counted as a success and pushed the limit up to `max`).
#[test]
fn a_batch_feeds_its_programs_overload_signal() {
    use asyncify_pool::Overload;
    let pool = WorkerPool::new(8);
    let overloaded = pool
        .asyncify(|_: u32| {
            thread::sleep(Duration::from_millis(1));
            429u16
        })
        .adaptive_concurrency(1, 8, Overload::when(|s: &u16| *s == 429));
    let result = within_hang("a batch of an adaptive program", move || {
        let result = overloaded.batch(0..200u32).wait();
        (result, overloaded.stats().concurrency_limit)
    });
    assert_eq!(result.0.done(), 200);
    assert_eq!(
        result.1,
        Some(1),
        "every answer was a 429, yet the limit grew"
    );
}

/// A batch runs each item once: a program's retry policy does not apply to its items (the
/// batch's own failure handling does: `fail_if`, `max_errors`, `keep_failed_inputs`), as the
/// docs of `retry` and `batch` say. The same call is retried.
#[test]
fn a_batch_makes_one_attempt_per_item_of_a_retried_program() {
    use asyncify_pool::Retry;
    let pool = WorkerPool::new(2);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    // Every first run of two answers 503.
    let flaky = pool
        .asyncify(move |_: u32| {
            if r.fetch_add(1, SeqCst) % 2 == 0 {
                503u16
            } else {
                200
            }
        })
        .retry(
            Retry::new(3)
                .backoff(Duration::ZERO, Duration::ZERO)
                .retry_if(|s: &u16| *s == 503),
        );
    assert_eq!(wait(flaky.call(0)), Ok(200), "a call is retried");
    let before = flaky.stats();
    let result = within_hang("a batch of a retried program", move || {
        (flaky.batch([0u32]).wait(), flaky.stats())
    });
    assert_eq!(result.0.results(), &[Ok(503)]);
    let after = result.1;
    assert_eq!(
        (
            after.calls - before.calls,
            after.attempts - before.attempts,
            after.retries - before.retries
        ),
        (1, 1, 0)
    );
    assert_eq!(runs.load(SeqCst), 3);
}

/// `on_progress`'s last call has every item accounted for, also when the results come in
/// outside the driver's event loop: through nested waits, for a batch waited on inside a job
/// of its one-thread pool (its last call said 9 of 10), and at once, on a shut-down pool (it
/// was never called).
#[test]
fn on_progress_last_call_counts_every_item_inside_a_job_and_on_a_shut_down_pool() {
    use asyncify_pool::Progress;
    within_hang("batches with on_progress", || {
        let pool = WorkerPool::new(1);
        let inner = pool.asyncify(|i: u32| i + 1);
        let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
        let s = Arc::clone(&seen);
        let outer = pool.spawn(move || {
            let on_progress = move |p| common::lock(&s).push(p);
            inner.batch(0..10).on_progress(on_progress).wait().done()
        });
        assert_eq!(wait(outer), Ok(10));
        let last = common::lock(&seen).last().copied();
        assert_eq!(last.map(|p| (p.done, p.total)), Some((10, 10)), "{last:?}");

        let program = pool.asyncify(|i: u32| i);
        pool.shutdown();
        let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
        let s = Arc::clone(&seen);
        let on_progress = move |p| common::lock(&s).push(p);
        let result = program.batch(0..5).on_progress(on_progress).wait();
        assert_eq!(result.not_started(), 5);
        let last = common::lock(&seen).last().copied();
        assert_eq!(
            last.map(|p| (p.not_started, p.total)),
            Some((5, 5)),
            "{last:?}"
        );
    });
}

/// The same through a concurrency limit, where items wait in the limit's line and go the
/// driven way: one attempt each, whatever the retry policy's classifier says (it may run
/// there, as it does for a call's last attempt; nothing is kept for another attempt).
#[test]
fn a_batch_makes_one_attempt_per_item_of_a_retried_program_behind_a_limit() {
    use asyncify_pool::Retry;
    let pool = WorkerPool::new(2);
    let classified = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&classified);
    let limited = pool
        .asyncify(|_: u32| 503u16)
        .retry(
            Retry::new(3)
                .backoff(Duration::ZERO, Duration::ZERO)
                .retry_if(move |s: &u16| {
                    c.fetch_add(1, SeqCst);
                    *s == 503
                }),
        )
        .concurrency_limit(1);
    let result = within_hang("a limited batch of a retried program", move || {
        (
            limited.batch(0..20u32).max_errors(usize::MAX).wait(),
            limited.stats(),
        )
    });
    assert_eq!(result.0.done(), 20);
    assert!(result.0.results().iter().all(|r| *r == Ok(503)));
    assert_eq!((result.1.attempts, result.1.retries), (20, 0));
    assert!(result.1.waited_for_slot > 0, "no item went the driven way");
    assert!(
        classified.load(SeqCst) <= 20,
        "an item's output was classified twice"
    );
}
