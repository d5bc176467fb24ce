//! Per-worker state (`pool.asyncify_with(init, program)`): a state is made once per worker,
//! used only on the thread that made it and by one run at a time, rebuilt after a panic, and
//! dropped when its worker leaves or its program is gone. The calls keep every guarantee of a
//! plain call.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};

use asyncify_pool::settings::{self, Overrides};
use asyncify_pool::{
    is_cancelled, worker_index, AsyncProgram, BoxProgram, JobError, Program, WorkerPool,
};
use common::{
    assert_every_worker_runs, assert_shutdown_returns, in_child, lock, quiet_planned_panics,
    spin_until, wait, within_hang, Barrier, Gate, PanicOnDrop, Tracked, HANG,
};

/// A state that knows which `init` made it, on which thread, and how often it was used.
struct Made {
    serial: usize,
    thread: ThreadId,
    uses: usize,
}

/// An `init` that numbers its states and counts them per worker.
fn numbered(
    inits: &Arc<Mutex<BTreeMap<Option<usize>, usize>>>,
) -> impl Fn() -> Made + Send + Sync + 'static {
    let inits = Arc::clone(inits);
    let serials = AtomicUsize::new(0);
    move || {
        *lock(&inits).entry(worker_index()).or_default() += 1;
        Made {
            serial: serials.fetch_add(1, SeqCst),
            thread: thread::current().id(),
            uses: 0,
        }
    }
}

#[test]
fn init_runs_at_most_once_per_worker_and_each_state_stays_on_its_thread() {
    const THREADS: usize = 4;
    const CALLS: usize = 400;
    let pool = WorkerPool::new(THREADS);
    let inits = Arc::default();
    let program = pool.asyncify_with(numbered(&inits), |made: &mut Made, i: usize| {
        made.uses += 1;
        (
            made.serial,
            made.thread,
            thread::current().id(),
            made.uses,
            i,
        )
    });
    // All in flight at once, so that every worker gets some.
    let handles: Vec<_> = (0..CALLS).map(|i| program.call(i)).collect();
    let mut uses: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut thread_of: BTreeMap<usize, ThreadId> = BTreeMap::new();
    for (i, handle) in handles.into_iter().enumerate() {
        let (serial, made_on, ran_on, used, input) = wait(handle).unwrap();
        assert_eq!(input, i);
        assert_eq!(
            made_on, ran_on,
            "call {i} used a state made on another thread"
        );
        assert_eq!(*thread_of.entry(serial).or_insert(ran_on), ran_on);
        uses.entry(serial).or_default().push(used);
    }
    let inits = lock(&inits).clone();
    assert!(inits.keys().all(Option::is_some), "init ran off the pool");
    assert!(
        inits.values().all(|&n| n == 1),
        "init ran more than once on a worker: {inits:?}"
    );
    assert_eq!(uses.len(), inits.len(), "one state per worker that ran it");
    assert!(uses.len() <= THREADS);
    // Each state's uses are 1, 2, 3, ...: one run at a time, no use lost or seen twice.
    for (serial, mut seen) in uses {
        seen.sort_unstable();
        assert!(
            seen.iter().copied().eq(1..=seen.len()),
            "state {serial}: {seen:?}"
        );
    }
}

#[test]
fn a_state_that_is_not_send_is_kept_between_calls() {
    let pool = WorkerPool::new(1);
    let program = pool.asyncify_with(
        || Rc::new(RefCell::new(Vec::new())),
        |seen: &mut Rc<RefCell<Vec<u32>>>, x: u32| {
            seen.borrow_mut().push(x);
            let all = seen.borrow().clone();
            all
        },
    );
    assert_eq!(wait(program.call(1)), Ok(vec![1]));
    assert_eq!(wait(program.call(2)), Ok(vec![1, 2]));
    assert_eq!(wait(program.call(3)), Ok(vec![1, 2, 3]));
}

/// The programs of the nesting test: each run records its state's serial, then calls the
/// program itself on `depth - 1` and waits (the one worker runs the nested call itself).
type Nesting = BoxProgram<u32, Vec<usize>>;

#[test]
fn a_nested_call_of_the_same_program_gets_a_state_of_its_own() {
    let pool = WorkerPool::new(1);
    let inits = Arc::default();
    let me: Arc<Mutex<Option<Nesting>>> = Arc::default();
    let inner = Arc::clone(&me);
    let program = pool
        .asyncify_with(numbered(&inits), move |made: &mut Made, depth: u32| {
            made.uses += 1;
            let in_use = made.uses;
            let mut serials = vec![made.serial];
            if depth > 0 {
                let nested = lock(&inner).clone().expect("set before the first call");
                serials.extend(nested.call(depth - 1).wait().unwrap());
            }
            // Nobody else touched this state meanwhile.
            assert_eq!(made.uses, in_use, "a nested run used the outer run's state");
            assert_eq!(made.thread, thread::current().id());
            serials
        })
        .boxed();
    *lock(&me) = Some(program.clone());

    let first = wait(program.call(2)).unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(
        first.iter().collect::<BTreeSet<_>>().len(),
        3,
        "three nested runs, three states: {first:?}"
    );
    // All three are kept: the same nesting again makes none.
    let again = wait(program.call(2)).unwrap();
    assert_eq!(
        again.iter().collect::<BTreeSet<_>>(),
        first.iter().collect::<BTreeSet<_>>()
    );
    assert_eq!(lock(&inits).values().sum::<usize>(), 3);
    lock(&me).take(); // the program held itself
    pool.shutdown();
}

#[test]
fn a_run_that_panics_leaves_a_fresh_state_for_the_next_call() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let inits = Arc::default();
    let drops = Arc::new(AtomicUsize::new(0));
    let made = numbered(&inits);
    let counted = Arc::clone(&drops);
    let program = pool.asyncify_with(
        move || (made(), Tracked(Arc::clone(&counted))),
        |(made, _): &mut (Made, Tracked), fail: bool| {
            made.uses += 1;
            if fail {
                panic!("planned: a run that panics halfway");
            }
            (made.serial, made.uses)
        },
    );
    assert_eq!(wait(program.call(false)), Ok((0, 1)));
    assert_eq!(wait(program.call(false)), Ok((0, 2)));
    match wait(program.call(true)) {
        Err(JobError::Panicked { message, .. }) => {
            assert_eq!(message, "planned: a run that panics halfway")
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert_eq!(drops.load(SeqCst), 1, "the state that panicked was dropped");
    assert_eq!(wait(program.call(false)), Ok((1, 1)), "a fresh state");
    assert_eq!(lock(&inits).values().sum::<usize>(), 2);
}

#[test]
fn a_panicking_init_gives_panicked_and_the_worker_lives() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let tries = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&tries);
    let input_drops = Arc::new(AtomicUsize::new(0));
    let program = pool.asyncify_with(
        move || {
            if counted.fetch_add(1, SeqCst) < 2 {
                panic!("planned: init fails");
            }
            7
        },
        |seven: &mut u32, input: Tracked| {
            drop(input);
            *seven
        },
    );
    for _ in 0..2 {
        match wait(program.call(Tracked(Arc::clone(&input_drops)))) {
            Err(JobError::Panicked { message, .. }) => assert_eq!(message, "planned: init fails"),
            other => panic!("expected Panicked, got {other:?}"),
        }
    }
    assert_eq!(input_drops.load(SeqCst), 2, "the inputs were dropped");
    assert_every_worker_runs(&pool, 1);
    assert_eq!(wait(program.call(Tracked(Arc::clone(&input_drops)))), Ok(7));
    assert_eq!(tries.load(SeqCst), 3);
}

/// A pool of `threads` with a per-worker program whose states count their drops, and every
/// worker holding a state (the calls meet at a barrier, so each worker runs one).
fn every_worker_with_a_state(threads: usize) -> (WorkerPool, Arc<AtomicUsize>, impl Fn() -> usize) {
    let pool = WorkerPool::new(threads);
    let drops = Arc::new(AtomicUsize::new(0));
    let inits = Arc::new(AtomicUsize::new(0));
    let (d, i) = (Arc::clone(&drops), Arc::clone(&inits));
    let barrier = Barrier::new(threads);
    let program = pool.asyncify_with(
        move || {
            i.fetch_add(1, SeqCst);
            Tracked(Arc::clone(&d))
        },
        move |_: &mut Tracked, meet: bool| {
            if meet {
                barrier.wait();
            }
            worker_index()
        },
    );
    let handles: Vec<_> = (0..threads).map(|_| program.call(true)).collect();
    let workers: BTreeSet<_> = handles.into_iter().map(|h| wait(h).unwrap()).collect();
    assert_eq!(workers.len(), threads);
    assert_eq!(inits.load(SeqCst), threads);
    // The program stays alive (in the closure) so that its states are not swept as gone.
    let calls = move || {
        let _ = wait(program.call(false));
        inits.load(SeqCst)
    };
    (pool, drops, calls)
}

#[test]
fn states_are_dropped_when_the_pool_shuts_down() {
    let (pool, drops, _program) = every_worker_with_a_state(3);
    assert_eq!(drops.load(SeqCst), 0);
    pool.shutdown();
    assert_eq!(
        drops.load(SeqCst),
        3,
        "shutdown returned before the states were dropped"
    );
}

#[test]
fn states_are_dropped_before_an_async_shutdown_resolves() {
    let (pool, drops, _program) = every_worker_with_a_state(3);
    // It resolves once the threads are gone, without joining them: the states must be
    // dropped by then, not by thread-local destructors after.
    within_hang("shutdown_async", {
        let pool = pool.clone();
        move || pollster::block_on(pool.shutdown_async())
    });
    assert_eq!(drops.load(SeqCst), 3);
}

#[test]
fn a_surplus_worker_drops_its_states_when_it_retires() {
    let (pool, drops, call_and_count_inits) = every_worker_with_a_state(3);
    pool.set_threads(1).unwrap();
    spin_until("the two surplus workers' states to be dropped", || {
        drops.load(SeqCst) == 2
    });
    // The worker left keeps its state.
    assert_eq!(call_and_count_inits(), 3);
    assert_eq!(drops.load(SeqCst), 2);
    pool.shutdown();
    assert_eq!(drops.load(SeqCst), 3);
}

/// A per-worker program `x -> x` whose states count their drops in the counter returned.
fn counting_drops(
    pool: &WorkerPool,
) -> (
    AsyncProgram<impl Program<u8, Output = u8>>,
    Arc<AtomicUsize>,
) {
    let drops = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&drops);
    let program = pool.asyncify_with(move || Tracked(Arc::clone(&d)), |_: &mut Tracked, x: u8| x);
    (program, drops)
}

#[test]
fn a_gone_programs_states_are_dropped_when_its_worker_goes_idle() {
    let pool = WorkerPool::new(1);
    let (program, drops) = counting_drops(&pool);
    assert_eq!(wait(program.call(1)), Ok(1));
    let copy = program.clone();
    drop(program);
    assert_eq!(wait(copy.call(2)), Ok(2));
    assert_eq!(drops.load(SeqCst), 0, "a clone keeps the states");
    drop(copy);
    // The worker may have gone idle before the program was gone: it sweeps when it next goes
    // idle, after a job of any kind.
    assert_eq!(wait(pool.spawn(|| "a plain job")), Ok("a plain job"));
    spin_until("the gone program's state to be dropped", || {
        drops.load(SeqCst) == 1
    });
    assert_every_worker_runs(&pool, 1);
}

#[test]
fn a_gone_programs_states_are_dropped_at_its_busy_workers_next_job_boundary() {
    let pool = WorkerPool::new(1);
    let (gone, drops) = counting_drops(&pool);
    let other = pool.asyncify_with(|| (), |(): &mut (), x: u8| x);
    let counted = Arc::clone(&drops);
    let probe = pool.asyncify(move |()| counted.load(SeqCst));
    // Everything queued behind a held job, so that the one worker runs it back to back and
    // never goes idle in between.
    let gate = Gate::new();
    let g = Arc::clone(&gate);
    let hold = pool.spawn(move || g.wait());
    let last = gone.call(1);
    drop(gone); // its call holds it until that run ends
    let before = probe.call(());
    let next = other.call(2);
    let after = probe.call(());
    gate.open();
    wait(hold).unwrap();
    assert_eq!(wait(last), Ok(1));
    assert_eq!(
        wait(before),
        Ok(1),
        "dropped at the job boundary after its last run"
    );
    assert_eq!(wait(next), Ok(2));
    assert_eq!(wait(after), Ok(1), "dropped once");
}

#[test]
fn a_state_whose_drop_panics_costs_nothing() {
    in_child("a_state_whose_drop_panics_costs_nothing", || {
        quiet_planned_panics();
        let pool = WorkerPool::new(1);
        let inits = Arc::new(AtomicUsize::new(0));
        let i = Arc::clone(&inits);
        let program = pool.asyncify_with(
            move || {
                i.fetch_add(1, SeqCst);
                PanicOnDrop("a per-worker state")
            },
            |_: &mut PanicOnDrop, fail: bool| {
                if fail {
                    panic!("planned: the run fails");
                }
            },
        );
        assert_eq!(wait(program.call(false)), Ok(()));
        // The run panics, and so does the drop of its state.
        assert!(matches!(
            wait(program.call(true)),
            Err(JobError::Panicked { .. })
        ));
        assert_every_worker_runs(&pool, 1);
        assert_eq!(wait(program.call(false)), Ok(()));
        assert_eq!(inits.load(SeqCst), 2);
        // At exit, the last state's drop panics on the leaving worker.
        assert_shutdown_returns(&pool);
        assert_eq!(pool.stats().live_threads, 0);
    });
}

#[test]
fn overrides_and_span_at_the_call_are_in_force_in_init_and_program() {
    use tracing::dispatcher::{self, Dispatch};
    let pool = WorkerPool::new(1);
    let program = pool.asyncify_with(
        || settings::get::<&str>("lm"),
        |made_under: &mut Option<&'static str>, (): ()| {
            let span = tracing::Span::current();
            (
                *made_under,
                settings::get::<&str>("lm"),
                span.metadata().map(|m| m.name()),
            )
        },
    );
    let subscriber = Dispatch::new(tracing_subscriber::registry());
    let (first, second) = dispatcher::with_default(&subscriber, || {
        let span = tracing::info_span!("request");
        let _entered = span.enter();
        let first = settings::context(Overrides::new().with("lm", "small"), || program.call(()));
        let second = settings::context(Overrides::new().with("lm", "large"), || program.call(()));
        (wait(first), wait(second))
    });
    assert_eq!(first, Ok((Some("small"), Some("small"), Some("request"))));
    // The state was made under the first call's overrides; the second run sees its own.
    assert_eq!(second, Ok((Some("small"), Some("large"), Some("request"))));
}

#[test]
fn a_dropped_handle_cancels_the_run_and_the_state_is_kept() {
    let pool = WorkerPool::new(1);
    let started = Gate::new();
    let s = Arc::clone(&started);
    let program = pool.asyncify_with(
        || 0u32,
        move |runs: &mut u32, wait_for_cancel: bool| {
            *runs += 1;
            if wait_for_cancel {
                s.open();
                spin_until("the caller to drop the handle", is_cancelled);
            }
            *runs
        },
    );
    let handle = program.call(true);
    started.wait();
    drop(handle);
    assert_eq!(
        wait(program.call(false)),
        Ok(2),
        "the cancelled run's state is kept"
    );
}

#[test]
fn batches_and_any_executor_work_on_a_per_worker_program() {
    let pool = WorkerPool::new(2);
    let program = pool.asyncify_with(
        || thread::current().id(),
        |made_on: &mut ThreadId, x: u64| {
            assert_eq!(*made_on, thread::current().id());
            x * 2
        },
    );
    let batch = program.clone();
    let result = within_hang("a batch", move || batch.batch(0..50u64).wait());
    assert_eq!(
        result
            .into_results()
            .into_iter()
            .map(Result::unwrap)
            .collect::<Vec<_>>(),
        (0..50).map(|x| x * 2).collect::<Vec<_>>()
    );
    let p = program.clone();
    let out = within_hang("tokio", move || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(p.call(21))
    });
    assert_eq!(out, Ok(42));
    let out = within_hang("futures", move || {
        futures::executor::block_on(program.call(4))
    });
    assert_eq!(out, Ok(8));
}

#[test]
fn a_run_off_the_pool_makes_a_state_and_drops_it_after() {
    let pool = WorkerPool::new(1);
    let drops = Arc::new(AtomicUsize::new(0));
    let inits = Arc::new(AtomicUsize::new(0));
    let (d, i) = (Arc::clone(&drops), Arc::clone(&inits));
    let program = pool.asyncify_with(
        move || (i.fetch_add(1, SeqCst), Tracked(Arc::clone(&d))),
        |(serial, _): &mut (usize, Tracked), x: u32| (*serial, x),
    );
    // On this thread, not one of the pool's: each run makes a state and drops it after, so
    // no thread-local destructor is left to drop it.
    assert_eq!(program.program().run(5), (0, 5));
    assert_eq!(drops.load(SeqCst), 1);
    assert_eq!(program.program().run(6), (1, 6));
    assert_eq!(drops.load(SeqCst), 2);
    // The worker makes its own, and keeps it.
    assert_eq!(wait(program.call(7)), Ok((2, 7)));
    assert_eq!(wait(program.call(8)), Ok((2, 8)));
    assert_eq!(drops.load(SeqCst), 2);
}

#[test]
fn nothing_accepted_is_lost_at_shutdown() {
    let pool = WorkerPool::new(2);
    let program = pool.asyncify_with(|| 10u64, |base: &mut u64, x: u64| *base + x);
    let handles: Vec<_> = (0..100u64).map(|x| program.call(x)).collect();
    within_hang("shutdown", {
        let pool = pool.clone();
        move || pool.shutdown()
    });
    for (x, mut h) in (0..100u64).zip(handles) {
        assert_eq!(h.wait_timeout(HANG), Some(Ok(10 + x)));
    }
    assert!(matches!(wait(program.call(0)), Err(e) if e.is_shut_down()));
}

#[test]
fn try_call_works_on_a_per_worker_program() {
    let pool = common::bounded_pool(1, 1);
    let program = pool.asyncify_with(|| 100u32, |base: &mut u32, x: u32| *base + x);
    assert_eq!(wait(program.try_call(1).unwrap()), Ok(101));
    let (gate, _busy) = common::occupy(&pool, 1);
    let queued = program.try_call(2).unwrap();
    // The queue is full: the input comes back.
    assert_eq!(program.try_call(3).unwrap_err().into_input(), 3);
    gate.open();
    assert_eq!(wait(queued), Ok(102));
}

#[cfg(feature = "tower")]
#[test]
fn a_per_worker_program_is_a_service() {
    use tower_service::Service;
    let pool = WorkerPool::new(1);
    let mut service = pool
        .asyncify_with(
            || 0u32,
            |calls: &mut u32, x: u32| {
                *calls += 1;
                (*calls, x)
            },
        )
        .service();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for call in 1..=2 {
        assert!(service.poll_ready(&mut cx).is_ready());
        let out = within_hang("the call", {
            let response = service.call(call * 10);
            move || pollster::block_on(response)
        });
        assert_eq!(out, Ok((call, call * 10)));
    }
}

/// Who made and dropped the states of a program, by the index of the thread that made them.
type Ledger = Arc<Mutex<BTreeMap<usize, (usize, usize)>>>;

/// A state that enters itself in the ledger when made and when dropped.
struct Entered {
    index: usize,
    ledger: Ledger,
}

impl Drop for Entered {
    fn drop(&mut self) {
        lock(&self.ledger).entry(self.index).or_default().1 += 1;
    }
}

#[test]
fn states_made_on_spare_threads_are_dropped_when_the_spares_leave() {
    in_child(
        "states_made_on_spare_threads_are_dropped_when_the_spares_leave",
        || {
            let pool = common::one_thread_with_a_1m_stack();
            let ledger = Ledger::default();
            let me: Arc<Mutex<Option<BoxProgram<u32, u32>>>> = Arc::default();
            let (l, inner) = (Arc::clone(&ledger), Arc::clone(&me));
            let program = pool
                .asyncify_with(
                    move || {
                        let index = worker_index().expect("made on a thread of the pool");
                        lock(&l).entry(index).or_default().0 += 1;
                        Entered {
                            index,
                            ledger: Arc::clone(&l),
                        }
                    },
                    move |_: &mut Entered, levels: u32| {
                        // 16 KiB a level: past half of the 1 MiB stack well before the bottom,
                        // so the deeper levels run on spare threads.
                        let pad = std::hint::black_box([1u8; 16 * 1024]);
                        if levels == 0 {
                            return 0;
                        }
                        let nested = lock(&inner).clone().expect("set before the call");
                        nested.call(levels - 1).wait().unwrap() + u32::from(pad[levels as usize])
                    },
                )
                .boxed();
            *lock(&me) = Some(program.clone());
            assert_eq!(wait(program.call(120)), Ok(120));
            let spares: Vec<usize> = lock(&ledger).keys().copied().filter(|&i| i != 0).collect();
            assert!(!spares.is_empty(), "no level ran on a spare thread");
            spin_until("the spares' states to be dropped", || {
                let ledger = lock(&ledger);
                spares.iter().all(|i| ledger[i].0 == ledger[i].1)
            });
            // The worker keeps its own (one per level it ran itself) until it leaves.
            assert_eq!(lock(&ledger)[&0].1, 0);
            lock(&me).take();
            pool.shutdown();
            let ledger = lock(&ledger);
            assert!(
                ledger.values().all(|(made, dropped)| made == dropped),
                "{ledger:?}"
            );
        },
    );
}

/// A state whose `Drop` calls into its pool and waits, recording what it got.
struct CallsBack {
    pool: WorkerPool,
    got: Arc<Mutex<Vec<Result<u32, JobError>>>>,
}

impl Drop for CallsBack {
    fn drop(&mut self) {
        let got = self.pool.spawn(|| 7).wait();
        lock(&self.got).push(got);
    }
}

#[test]
fn a_state_whose_drop_calls_into_the_pool_as_its_worker_leaves() {
    in_child(
        "a_state_whose_drop_calls_into_the_pool_as_its_worker_leaves",
        || {
            let pool = WorkerPool::new(2);
            let got = Arc::default();
            let (p, g) = (pool.clone(), Arc::clone(&got));
            let barrier = Barrier::new(2);
            let program = pool.asyncify_with(
                move || CallsBack {
                    pool: p.clone(),
                    got: Arc::clone(&g),
                },
                move |_: &mut CallsBack, (): ()| barrier.wait(),
            );
            let both = [program.call(()), program.call(())];
            for h in both {
                wait(h).unwrap();
            }
            // The retiring worker's state runs a job on the pool that lives on.
            pool.set_threads(1).unwrap();
            spin_until("the retiring worker's state to be dropped", || {
                !lock(&got).is_empty()
            });
            assert_eq!(*lock(&got), [Ok(7)]);
            // At shutdown the pool is closed: the call is refused, and shutdown returns.
            assert_shutdown_returns(&pool);
            let got = lock(&got);
            assert_eq!(got.len(), 2);
            assert!(matches!(&got[1], Err(e) if e.is_shut_down()), "{got:?}");
        },
    );
}

/// The program options work on a per-worker program as on any other: the retries each run
/// with a state of the worker that runs them (a `!Send` one here), a deadline cuts a running
/// call off (it sees `is_cancelled()`) and the state stays usable, and a concurrency limit
/// holds.
#[test]
fn options_work_on_a_per_worker_program() {
    use std::time::Duration;

    let pool = WorkerPool::new(2);
    let inits = Arc::new(AtomicUsize::new(0));
    let made = Arc::clone(&inits);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (now, peak) = (Arc::clone(&in_flight), Arc::clone(&most));
    let program = pool.asyncify_with(
        move || {
            made.fetch_add(1, SeqCst);
            Rc::new(RefCell::new(0usize)) // !Send: stays on its worker
        },
        move |uses: &mut Rc<RefCell<usize>>, sleep_ms: u64| {
            peak.fetch_max(now.fetch_add(1, SeqCst) + 1, SeqCst);
            *uses.borrow_mut() += 1;
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_millis(sleep_ms) && !is_cancelled() {
                thread::sleep(Duration::from_millis(1));
            }
            now.fetch_sub(1, SeqCst);
            (*uses.borrow(), is_cancelled())
        },
    );
    // Retries: three attempts, each with the state of its worker, counted by it.
    let retried = program.retry(
        asyncify_pool::Retry::new(3)
            .backoff(Duration::ZERO, Duration::ZERO)
            .retry_if(|_: &(usize, bool)| true),
    );
    let (uses, cut) = wait(retried.call(0)).unwrap();
    assert!(!cut);
    assert!(
        (1..=3).contains(&uses),
        "uses of one worker's state: {uses}"
    );
    assert_eq!(retried.stats().attempts, 3);
    // A deadline cuts off a running call; the job sees it, and the state serves the next call.
    // (It would run for ten minutes uncut: only `is_cancelled()` ends it within the wait's
    // bound.)
    let timed = program.timeout(Duration::from_millis(50));
    assert!(wait(timed.call(600_000)).unwrap_err().is_timed_out());
    spin_until("the cut-off job returns", || in_flight.load(SeqCst) == 0);
    assert_eq!(timed.stats().timed_out, 1);
    assert!(wait(timed.call(0)).is_ok());
    // A concurrency limit of one: never two at once, on two workers.
    most.store(0, SeqCst);
    let limited = program.concurrency_limit(1);
    let handles: Vec<_> = (0..20).map(|_| limited.call(2)).collect();
    for h in handles {
        assert_eq!(wait(h).map(|(_, cut)| cut), Ok(false));
    }
    assert_eq!(
        most.load(SeqCst),
        1,
        "calls at once under concurrency_limit(1)"
    );
    assert!(
        (1..=2).contains(&inits.load(SeqCst)),
        "one state per worker at most"
    );
}

/// A per-worker state whose `Drop` waits on a call `J` of its pool (which a leaving worker
/// runs itself, under a place it takes for it: it holds none between jobs), then waits until
/// an unrelated call `K` has run, as a connection that flushes and then waits for its peers
/// would. Records (the thread that dropped it, the thread that ran `J`).
struct Flusher {
    pool: WorkerPool,
    j_started: Arc<Gate>,
    j_release: Arc<Gate>,
    k_ran: Arc<Gate>,
    threads: Arc<Mutex<Option<(ThreadId, ThreadId)>>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        let (started, release) = (Arc::clone(&self.j_started), Arc::clone(&self.j_release));
        let Ok(ran_j) = self
            .pool
            .spawn(move || {
                started.open();
                release.wait();
                thread::current().id()
            })
            .wait()
        else {
            return; // (at shutdown)
        };
        *lock(&self.threads) = Some((thread::current().id(), ran_j));
        self.k_ran.wait();
    }
}

/// A place taken outside a job (by a leaving worker's state `Drop`, to run the job it waits
/// on) and given back by a thread that does not look at the queue next wakes a worker asleep
/// for want of a place. Before, nobody did: with a free place and an idle worker, `K` stayed
/// queued for as long as the `Drop` went on (here, for good: the `Drop` waits for `K`).
///
/// Which thread runs `J` is a race (the other worker may take it off the queue first); only
/// rounds where the leaving worker ran it test the hand-back. On an idle machine most do, and
/// the test goes on until five have (or a hundred rounds have passed).
#[test]
fn a_place_given_back_after_a_nested_run_outside_a_job_wakes_a_starved_worker() {
    let mut tested = 0;
    for _ in 0..100 {
        if tested == 5 {
            break;
        }
        let pool = WorkerPool::new(2);
        let (j_started, j_release, k_ran) = (Gate::new(), Gate::new(), Gate::new());
        let threads: Arc<Mutex<Option<(ThreadId, ThreadId)>>> = Arc::default();
        let (p, js, jr, kr, th) = (
            pool.clone(),
            Arc::clone(&j_started),
            Arc::clone(&j_release),
            Arc::clone(&k_ran),
            Arc::clone(&threads),
        );
        let program = pool.asyncify_with(
            move || Flusher {
                pool: p.clone(),
                j_started: Arc::clone(&js),
                j_release: Arc::clone(&jr),
                k_ran: Arc::clone(&kr),
                threads: Arc::clone(&th),
            },
            |_: &mut Flusher, barrier: Arc<Barrier>| barrier.wait(),
        );
        // A state on each of the two workers, then both idle.
        let barrier = Barrier::new(2);
        let both = [program.call(Arc::clone(&barrier)), program.call(barrier)];
        for h in both {
            wait(h).unwrap();
        }
        thread::sleep(std::time::Duration::from_millis(50));
        // One worker leaves, dropping its state: `J` runs under the pool's only place.
        pool.set_threads(1).unwrap();
        j_started.wait();
        let kr = Arc::clone(&k_ran);
        let mut k = pool.spawn(move || kr.open());
        thread::sleep(std::time::Duration::from_millis(50)); // the other worker sleeps, starved
        j_release.open();
        spin_until("J's answer", || lock(&threads).is_some());
        let (dropper, ran_j) = lock(&threads).expect("recorded");
        tested += usize::from(dropper == ran_j);
        // Half the bound of the `Drop`'s wait for `K`, which would let `K` go at the end.
        assert_eq!(
            k.wait_timeout(HANG / 2),
            Some(Ok(())),
            "K never started: the place J gave back woke no worker"
        );
        drop(program);
        assert_shutdown_returns(&pool);
    }
    // (On a loaded machine the other worker, still spinning, may take every `J`: then no round
    // tested the hand-back, and nothing failed either.)
    eprintln!("{tested} rounds had the leaving worker run J itself");
}
