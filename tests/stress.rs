//! Stress: several threads submit tens of thousands of calls with planned panics, dropped
//! handles (before and after a first poll), contexts, nested calls, awaits and waits, while
//! another thread keeps resizing the pool and `shutdown()` arrives in the middle. Five rounds:
//! the shutdown at a quarter, a half and nine tenths of the calls, one round on a bounded queue,
//! and one where `shutdown_timeout(0)` gives up on a deep queue before `shutdown()` joins.
//!
//! Every call has an id. Jobs count their executions per id; callers record the one answer they
//! got. Afterwards every id must be consistent: `Ok`/`Panicked` ⇔ ran exactly once, `ShutDown`
//! ⇔ never ran, dropped ⇒ ran at most once, accepted before the shutdown began ⇒ not
//! `ShutDown`, called after it ended ⇒ `ShutDown`. Then the pool's `stats()` must agree with
//! these counts.
//!
//! Scale it with `STRESS_CALLS=<calls per submitter>` (default 60 000).

mod common;
use common::{env_or, quiet_planned_panics, wait, HANG};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use asyncify_pool::settings::{self, Overrides};
use asyncify_pool::{JobError, JobHandle, WorkerPool};

const SUBMITTERS: usize = 4;
/// How many handles each submitter keeps outstanding before it waits for the oldest.
const WINDOWS: [usize; SUBMITTERS] = [1, 16, 128, 1024];
/// The thread counts the resizer cycles through.
const SIZES: [usize; 6] = [1, 3, 2, 5, 1, 4];

const UNANSWERED: u8 = 0;
const OK: u8 = 1;
const PANICKED: u8 = 2;
const SHUT_DOWN: u8 = 3;
const DROPPED: u8 = 4;
const WRONG: u8 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Plain,
    Panics,
    /// Called under a `context` that the job must see.
    InContext,
    /// Makes a call of its own from the job and waits for it (helping the pool meanwhile).
    Nested,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// `wait()` right away.
    Wait,
    /// `.await` right away (on `futures::executor::block_on`).
    Await,
    /// Kept in the submitter's window, waited for later.
    Later,
    /// Dropped at once.
    Drop,
    /// Polled once, then dropped (the cancel path that raced in oneshot#87).
    PollThenDrop,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64: a fixed, well-spread plan for every id.
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn plan(id: usize) -> (Behaviour, Answer) {
    let h = mix(id as u64);
    let behaviour = match h % 100 {
        0..=9 => Behaviour::Panics,
        10..=34 => Behaviour::InContext,
        35..=39 => Behaviour::Nested,
        _ => Behaviour::Plain,
    };
    let answer = match (h >> 32) % 100 {
        0..=11 => Answer::Drop,
        12..=17 => Answer::PollThenDrop,
        18..=29 => Answer::Await,
        30..=64 => Answer::Later,
        _ => Answer::Wait,
    };
    (behaviour, answer)
}

struct Ledger {
    executions: Vec<AtomicU8>,
    answers: Vec<AtomicU8>,
    /// `call` returned before the shutdown began: the job was accepted and must run.
    accepted_before: Vec<AtomicBool>,
    /// `call` started after `shutdown()` returned: it must be refused.
    called_after: Vec<AtomicBool>,
    /// Jobs made from inside jobs that ran.
    inner_ran: AtomicUsize,
    violations: AtomicUsize,
    first_violation: std::sync::Mutex<Option<String>>,
    closing: AtomicBool,
    closed: AtomicBool,
}

impl Ledger {
    fn new(n: usize) -> Self {
        Ledger {
            executions: (0..n).map(|_| AtomicU8::new(0)).collect(),
            answers: (0..n).map(|_| AtomicU8::new(UNANSWERED)).collect(),
            accepted_before: (0..n).map(|_| AtomicBool::new(false)).collect(),
            called_after: (0..n).map(|_| AtomicBool::new(false)).collect(),
            inner_ran: AtomicUsize::new(0),
            violations: AtomicUsize::new(0),
            first_violation: std::sync::Mutex::new(None),
            closing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    fn violation(&self, what: String) {
        if self.violations.fetch_add(1, SeqCst) == 0 {
            *self.first_violation.lock().unwrap() = Some(what);
        }
    }

    fn answer(&self, id: usize, answer: u8) {
        if let Err(before) = self.answers[id].compare_exchange(UNANSWERED, answer, SeqCst, SeqCst) {
            self.violation(format!("call {id} answered twice: {before} then {answer}"));
        }
    }

    fn resolve(&self, id: usize, result: Result<usize, JobError>) {
        let (behaviour, _) = plan(id);
        let answer = match result {
            Ok(v) if v == id * 3 && behaviour != Behaviour::Panics => OK,
            Err(JobError::Panicked { message, .. })
                if behaviour == Behaviour::Panics && message == format!("planned panic {id}") =>
            {
                PANICKED
            }
            Err(e) if e.is_shut_down() => SHUT_DOWN,
            other => {
                self.violation(format!("call {id} ({behaviour:?}) answered {other:?}"));
                WRONG
            }
        };
        self.answer(id, answer);
    }
}

/// The job of call `id`.
fn job(ledger: &Ledger, pool: &WorkerPool, id: usize, work: u64) -> usize {
    ledger.executions[id].fetch_add(1, SeqCst);
    // Some rounds make jobs slower than submitters, so the queue grows deep.
    std::hint::black_box((0..work).fold(id as u64, |h, i| mix(h ^ i)));
    let (behaviour, _) = plan(id);
    let seen = settings::get::<usize>("stress.id");
    match behaviour {
        Behaviour::InContext if seen != Some(id) => {
            ledger.violation(format!("job {id} saw stress.id = {seen:?}"));
        }
        Behaviour::InContext => {}
        _ if !settings::current().is_empty() => {
            ledger.violation(format!("job {id} saw overrides it was not called with"));
        }
        _ => {}
    }
    match behaviour {
        Behaviour::Panics => std::panic::panic_any(format!("planned panic {id}")),
        Behaviour::Nested => {
            let inner = Arc::new(AtomicBool::new(false));
            let ran = Arc::clone(&inner);
            match pool.spawn(move || ran.store(true, SeqCst)).wait() {
                Ok(()) if inner.load(SeqCst) => {
                    ledger.inner_ran.fetch_add(1, SeqCst);
                }
                Err(e) if e.is_shut_down() && ledger.closing.load(SeqCst) => {}
                other => ledger.violation(format!("job {id}: nested call gave {other:?}")),
            }
        }
        _ => {}
    }
    id * 3
}

struct Figures {
    calls: usize,
    ran: usize,
    panics: usize,
    dropped: usize,
    refused: usize,
    /// Accepted, then taken out of the queue by `shutdown_timeout`.
    abandoned: usize,
    resizes: usize,
    elapsed: Duration,
}

/// One round: `threads` to start with, an optional bounded queue, and `shutdown()` once
/// `shutdown_after` calls (of all submitters together) have been made.
fn round(
    calls_per_submitter: usize,
    shutdown_after: usize,
    threads: usize,
    capacity: Option<usize>,
    impatient: bool,
) -> Figures {
    let work = if impatient { 2_000 } else { 0 };
    quiet_planned_panics();
    let started = Instant::now();
    let total = SUBMITTERS * calls_per_submitter;
    let ledger = Arc::new(Ledger::new(total));
    let mut builder = WorkerPool::builder().threads(threads);
    if let Some(capacity) = capacity {
        builder = builder.queue_capacity(capacity);
    }
    let pool = builder.build().unwrap();
    let submitted = Arc::new(AtomicUsize::new(0));

    // A thread that keeps resizing until the pool is shut down.
    let resizer = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let mut resizes = 0;
            for n in SIZES.iter().cycle() {
                match pool.set_threads(*n) {
                    Ok(()) => resizes += 1,
                    Err(e) => {
                        assert!(matches!(e, asyncify_pool::PoolError::ShutDown), "{e}");
                        return resizes;
                    }
                }
                // Pacing, not synchronisation: resize a few hundred times a second.
                std::thread::sleep(Duration::from_millis(3));
            }
            unreachable!()
        })
    };

    let (halfway_tx, halfway_rx) = mpsc::channel();
    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|s| {
            let pool = pool.clone();
            let ledger = Arc::clone(&ledger);
            let halfway = halfway_tx.clone();
            let submitted = Arc::clone(&submitted);
            std::thread::spawn(move || {
                let inner_pool = pool.clone();
                let inner_ledger = Arc::clone(&ledger);
                let program =
                    pool.asyncify(move |id: usize| job(&inner_ledger, &inner_pool, id, work));
                let mut window: VecDeque<(usize, JobHandle<usize>)> = VecDeque::new();
                let waker = futures::task::noop_waker();
                for i in 0..calls_per_submitter {
                    let id = s * calls_per_submitter + i;
                    let n = submitted.fetch_add(1, SeqCst);
                    // The impatient round gives up while the never-blocking submitter is
                    // half-way, its queue deep.
                    let now = if impatient {
                        s == SUBMITTERS - 1 && i == calls_per_submitter / 2
                    } else {
                        n == shutdown_after
                    };
                    if now {
                        let _ = halfway.send(());
                    }
                    let (behaviour, answer) = plan(id);
                    // In the impatient round the last submitter never blocks, so the queue is
                    // deep when the shutdown gives up on it.
                    let answer = match answer {
                        Answer::Wait | Answer::Await if impatient && s == SUBMITTERS - 1 => {
                            Answer::Later
                        }
                        other => other,
                    };
                    if ledger.closed.load(SeqCst) {
                        ledger.called_after[id].store(true, SeqCst);
                    }
                    let mut handle = if behaviour == Behaviour::InContext {
                        settings::context(Overrides::new().with("stress.id", id), || {
                            program.call(id)
                        })
                    } else {
                        program.call(id)
                    };
                    // A handle still waiting for room in a bounded queue has not queued its job.
                    if !ledger.closing.load(SeqCst) && !handle.is_waiting_for_room() {
                        ledger.accepted_before[id].store(true, SeqCst);
                    }
                    match answer {
                        Answer::Wait => ledger.resolve(id, wait(handle)),
                        Answer::Await => ledger.resolve(id, futures::executor::block_on(handle)),
                        Answer::Later => {
                            window.push_back((id, handle));
                            if window.len() > WINDOWS[s] {
                                let (id, handle) = window.pop_front().unwrap();
                                ledger.resolve(id, wait(handle));
                            }
                        }
                        Answer::Drop => {
                            if handle.is_waiting_for_room() {
                                ledger.accepted_before[id].store(false, SeqCst);
                            }
                            drop(handle);
                            ledger.answer(id, DROPPED);
                        }
                        Answer::PollThenDrop => {
                            let mut cx = Context::from_waker(&waker);
                            match std::pin::Pin::new(&mut handle).poll(&mut cx) {
                                // Finished already: that is its one answer.
                                Poll::Ready(result) => ledger.resolve(id, result),
                                Poll::Pending => {
                                    if handle.is_waiting_for_room() {
                                        ledger.accepted_before[id].store(false, SeqCst);
                                    }
                                    drop(handle);
                                    ledger.answer(id, DROPPED);
                                }
                            }
                        }
                    }
                }
                for (id, handle) in window {
                    ledger.resolve(id, wait(handle));
                }
            })
        })
        .collect();
    drop(halfway_tx);

    halfway_rx
        .recv_timeout(HANG)
        .expect("submitters never got halfway");
    ledger.closing.store(true, SeqCst);
    if impatient {
        // Give up on the queue at once: what is queued is abandoned (told `ShutDown`), what
        // runs finishes; then join. Accepted jobs may be refused here, so that check is off.
        let _ = pool.shutdown_timeout(Duration::ZERO);
    }
    pool.shutdown();
    ledger.closed.store(true, SeqCst);
    let stats_at_shutdown = pool.stats();

    for s in submitters {
        s.join().expect("a submitter panicked");
    }
    let resizes = resizer.join().expect("the resizer panicked");
    let elapsed = started.elapsed();

    // Per id: one answer, consistent with the executions.
    if let Some(first) = ledger.first_violation.lock().unwrap().take() {
        panic!(
            "{} violations; the first: {first}",
            ledger.violations.load(SeqCst)
        );
    }
    let mut figures = Figures {
        calls: total,
        ran: 0,
        panics: 0,
        dropped: 0,
        refused: 0,
        abandoned: 0,
        resizes,
        elapsed,
    };
    let (mut dropped_unrun, mut dropped_unrun_accepted) = (0u64, 0u64);
    for id in 0..total {
        let ran = ledger.executions[id].load(SeqCst);
        let answer = ledger.answers[id].load(SeqCst);
        let accepted = ledger.accepted_before[id].load(SeqCst);
        let after = ledger.called_after[id].load(SeqCst);
        let (behaviour, _) = plan(id);
        let ok = match answer {
            OK | PANICKED => ran == 1 && !after,
            SHUT_DOWN => ran == 0 && (impatient || !accepted),
            DROPPED => ran <= 1 && !(after && ran == 1),
            _ => false,
        };
        assert!(
            ok,
            "call {id} ({behaviour:?}): answer {answer}, ran {ran} times, \
             accepted before shutdown {accepted}, called after {after}"
        );
        figures.ran += ran as usize;
        if ran == 1 && behaviour == Behaviour::Panics {
            figures.panics += 1;
        }
        match answer {
            SHUT_DOWN => {
                figures.refused += 1;
                figures.abandoned += usize::from(accepted);
            }
            DROPPED => {
                figures.dropped += 1;
                if ran == 0 {
                    dropped_unrun += 1;
                    if accepted {
                        dropped_unrun_accepted += 1;
                    }
                }
            }
            _ => {}
        }
    }

    // The pool's own counts agree. Once shut down it is quiet, so they add up exactly.
    let stats = pool.stats();
    assert_eq!(stats, stats_at_shutdown, "a closed pool's stats stay put");
    assert_eq!((stats.queued, stats.running, stats.live_threads), (0, 0, 0));
    let inner = ledger.inner_ran.load(SeqCst);
    // Dropped jobs accepted before the shutdown that no worker took off the queue: only a
    // `shutdown_timeout` takes them out.
    let discarded = dropped_unrun_accepted.saturating_sub(stats.cancelled);
    assert!(impatient || discarded == 0);
    figures.abandoned += discarded as usize;
    assert_eq!(stats.panicked, figures.panics as u64, "{stats:?}");
    assert_eq!(
        stats.completed + stats.abandoned,
        (figures.ran - figures.panics + inner) as u64,
        "{stats:?}"
    );
    // Only a dropped call's job is abandoned (one that ended before the drop is completed).
    assert!(stats.abandoned <= figures.dropped as u64, "{stats:?}");
    // A dropped job is counted `cancelled` when a worker takes it off the queue. Those accepted
    // before the shutdown began are ahead of the `Stop`s, so a worker takes every one of them;
    // one that slipped in behind the `Stop`s is discarded with the queue instead.
    assert!(
        (if impatient { 0 } else { dropped_unrun_accepted }..=dropped_unrun)
            .contains(&stats.cancelled),
        "cancelled {} not in {dropped_unrun_accepted}..={dropped_unrun}",
        stats.cancelled
    );
    let when = if impatient {
        "shutdown_timeout(0) with the last submitter half-way".to_owned()
    } else {
        format!("shutdown() after {shutdown_after} calls")
    };
    eprintln!(
        "stress round: {threads} threads at first, queue capacity {capacity:?}, {when}: {} calls \
         ({inner} inner), {} ran, {} planned panics, {} dropped handles ({dropped_unrun} never \
         ran), {} refused ({} accepted, then abandoned), {} resizes, {stats:?}, {:.1} s",
        figures.calls,
        figures.ran,
        figures.panics,
        figures.dropped,
        figures.refused,
        figures.abandoned,
        figures.resizes,
        figures.elapsed.as_secs_f64()
    );
    figures
}

#[test]
fn every_call_gets_one_answer_consistent_with_what_ran() {
    let n: usize = env_or("STRESS_CALLS", 60_000);
    let started = Instant::now();
    let total = SUBMITTERS * n;
    let rounds: Vec<_> = [
        (total / 4, 1, None, false),
        (total / 2, 2, None, false),
        (total * 9 / 10, 3, None, false),
        (total * 3 / 4, 2, Some(32), false),
        (total / 2, 3, None, true),
    ]
    .into_iter()
    .map(|(at, threads, capacity, impatient)| round(n, at, threads, capacity, impatient))
    .collect();
    for r in &rounds {
        assert!(r.refused > 0, "the shutdown came too late to matter");
        assert!(r.ran > 0 && r.panics > 0 && r.dropped > 0);
    }
    let sum = |f: fn(&Figures) -> usize| rounds.iter().map(f).sum::<usize>();
    eprintln!(
        "stress total: {} rounds, {} calls, {} ran, {} planned panics, {} dropped handles, \
         {} refused, {} resizes, {:.1} s",
        rounds.len(),
        sum(|r| r.calls),
        sum(|r| r.ran),
        sum(|r| r.panics),
        sum(|r| r.dropped),
        sum(|r| r.refused),
        sum(|r| r.resizes),
        started.elapsed().as_secs_f64()
    );
}
