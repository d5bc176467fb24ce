//! The bounded queue (`Builder::queue_capacity`): a call on a full queue returns a handle that
//! waits for room before its job is queued (asynchronously when awaited, blocking in `wait()`),
//! without spinning; dropping it meanwhile queues nothing; `try_call`/`try_spawn` hand the input
//! back; and under load every job still resolves exactly once.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use asyncify_pool::{JobError, JobHandle, WorkerPool};
use common::{wait, CountingWaker, HANG};

fn bounded_pool(threads: usize, capacity: usize) -> WorkerPool {
    WorkerPool::builder()
        .threads(threads)
        .queue_capacity(capacity)
        .build()
        .unwrap()
}

/// Occupies one worker until released; returns once the job has started.
struct Blocker {
    release: mpsc::Sender<()>,
    handle: JobHandle<&'static str>,
}

impl Blocker {
    fn start(pool: &WorkerPool) -> Self {
        let (started_tx, started_rx) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let handle = pool.spawn(move || {
            started_tx.send(()).unwrap();
            release_rx
                .recv_timeout(HANG)
                .expect("the blocker was never released");
            "blocker"
        });
        started_rx
            .recv_timeout(HANG)
            .expect("the blocker never started");
        Blocker { release, handle }
    }

    fn release(self) {
        self.release.send(()).unwrap();
        assert_eq!(wait(self.handle), Ok("blocker"));
    }
}

/// Records the order in which jobs ran.
fn recorder(order: &Arc<Mutex<Vec<&'static str>>>, name: &'static str) -> impl FnOnce() -> usize {
    let order = Arc::clone(order);
    move || {
        order.lock().unwrap().push(name);
        name.len()
    }
}

/// A future that counts its polls, around a handle.
struct Counted<T> {
    handle: JobHandle<T>,
    polls: Arc<AtomicUsize>,
}

impl<T> Future for Counted<T> {
    type Output = Result<T, JobError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.polls.fetch_add(1, SeqCst);
        Pin::new(&mut self.handle).poll(cx)
    }
}

#[test]
fn an_awaited_handle_waits_for_room_without_blocking_its_runtime_thread() {
    let pool = bounded_pool(1, 2);
    let blocker = Blocker::start(&pool);
    let order = Arc::new(Mutex::new(Vec::new()));
    let q1 = pool.spawn(recorder(&order, "q1"));
    let q2 = pool.spawn(recorder(&order, "q2"));
    assert!(!q1.is_waiting_for_room() && !q2.is_waiting_for_room());
    let third = pool.spawn(recorder(&order, "third"));
    assert!(third.is_waiting_for_room(), "the queue holds 2");
    assert_eq!(pool.stats().queued, 2, "the third job is held, not queued");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let polls = Arc::new(AtomicUsize::new(0));
    let out = rt.block_on(async {
        let task = tokio::spawn(Counted {
            handle: third,
            polls: Arc::clone(&polls),
        });
        // This runtime has one thread. That this loop runs while the task waits shows that
        // waiting for room blocks no thread; that the task is polled once in 100 turns shows
        // it does not spin (a future that woke itself would be polled on every turn).
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(polls.load(SeqCst), 1, "polled again with no room made");
        assert!(!task.is_finished());
        assert_eq!(pool.stats().queued, 2);
        assert!(order.lock().unwrap().is_empty());

        // Room appears once the worker moves on: the task is woken, queues, and resolves.
        blocker.release.send(()).unwrap();
        tokio::time::timeout(HANG, task)
            .await
            .expect("the waiting handle never resolved")
            .unwrap()
    });
    assert_eq!(out, Ok("third".len()));
    assert_eq!(*order.lock().unwrap(), ["q1", "q2", "third"]);
    // A few wake-ups, and the 16 re-polls a queued handle asks for before it waits.
    assert!(polls.load(SeqCst) <= 5 + 16, "{} polls", polls.load(SeqCst));
    assert_eq!(wait(blocker.handle), Ok("blocker"));
    assert_eq!((wait(q1), wait(q2)), (Ok(2), Ok(2)));
}

#[test]
fn wait_blocks_until_room_appears() {
    let pool = bounded_pool(1, 1);
    let blocker = Blocker::start(&pool);
    let order = Arc::new(Mutex::new(Vec::new()));
    let q1 = pool.spawn(recorder(&order, "q1"));
    let held = pool.spawn(recorder(&order, "held"));
    assert!(held.is_waiting_for_room());

    let (done_tx, done_rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || done_tx.send(held.wait()).unwrap());
    // The only worker is held and the queue is full: the waiter cannot be answered yet.
    assert!(matches!(done_rx.try_recv(), Err(mpsc::TryRecvError::Empty)));
    assert!(order.lock().unwrap().is_empty());

    blocker.release();
    let out = done_rx.recv_timeout(HANG).expect("wait() never returned");
    assert_eq!(out, Ok("held".len()));
    waiter.join().unwrap();
    assert_eq!(wait(q1), Ok(2));
    assert_eq!(*order.lock().unwrap(), ["q1", "held"]);
}

#[test]
fn dropping_a_waiting_handle_queues_nothing() {
    let pool = bounded_pool(1, 1);
    let blocker = Blocker::start(&pool);
    let q1 = pool.spawn(|| "q1");
    let ran = Arc::new(AtomicUsize::new(0));
    let job = |ran: &Arc<AtomicUsize>| {
        let ran = Arc::clone(ran);
        move || {
            ran.fetch_add(1, SeqCst);
        }
    };

    // One never polled, one polled (so its waker is registered for room), one awaited from a
    // task that is then dropped: none of them may ever run.
    let never_polled = pool.spawn(job(&ran));
    let mut polled = pool.spawn(job(&ran));
    let (wakes, waker) = CountingWaker::new();
    assert!(Pin::new(&mut polled)
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    assert_eq!(wakes.count(), 0, "no wake-up without room");
    let in_task = pool.spawn(job(&ran));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let task = tokio::spawn(in_task);
        tokio::task::yield_now().await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
    });
    assert!(never_polled.is_waiting_for_room() && polled.is_waiting_for_room());
    drop(never_polled);
    drop(polled);

    blocker.release();
    assert_eq!(wait(q1), Ok("q1"));
    // A job queued after them runs after anything they could have queued.
    assert_eq!(wait(pool.spawn(|| "after")), Ok("after"));
    pool.shutdown();
    assert_eq!(
        ran.load(SeqCst),
        0,
        "a dropped waiting handle queued its job"
    );
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.cancelled, stats.queued), (3, 0, 0));
}

#[test]
fn a_handle_polled_many_times_while_waiting_registers_once() {
    // A task re-polled for other reasons (a `select!` loop, a join) while the queue stays full
    // must not pile up a registration per poll: that would grow memory for as long as the
    // queue is full, and wake the task once per earlier poll when room appears.
    let pool = bounded_pool(1, 1);
    let blocker = Blocker::start(&pool);
    let q1 = pool.spawn(|| "q1");
    let mut held = pool.spawn(|| "held");
    let (wakes, waker) = CountingWaker::new();
    for _ in 0..1_000 {
        assert!(Pin::new(&mut held)
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
    }
    assert_eq!(wakes.count(), 0);
    blocker.release();
    assert_eq!(wait(q1), Ok("q1"));
    // The worker made room (and then ran out of work): the held handle is woken, once (by
    // the timer's ringer, so perhaps after `q1` has ended).
    common::spin_until("the held handle to be woken", || wakes.count() > 0);
    assert_eq!(wakes.count(), 1, "woken once per poll made while waiting");
    assert_eq!(wait(held), Ok("held"));
}

#[test]
fn try_call_and_try_spawn_on_a_full_queue_hand_the_input_back() {
    let pool = bounded_pool(1, 2);
    let blocker = Blocker::start(&pool);
    let len = pool.asyncify(|s: String| s.len());
    let a = len.try_call("a".to_owned()).unwrap();
    let bb = len.try_call("bb".to_owned()).unwrap();

    let refused = len.try_call("kept intact".to_owned()).unwrap_err();
    assert!(refused.is_full() && !refused.is_shut_down());
    assert_eq!(refused.to_string(), "the pool's queue is full");
    assert_eq!(refused.into_input(), "kept intact");

    let refused = pool.try_spawn(|| 41 + 1).unwrap_err();
    assert!(refused.is_full());
    assert_eq!((refused.into_input())(), 42, "the same closure came back");
    assert_eq!(pool.stats().queued, 2);

    blocker.release();
    assert_eq!((wait(a), wait(bb)), (Ok(1), Ok(2)));
    assert_eq!(wait(len.try_call("room again".to_owned()).unwrap()), Ok(10));

    pool.shutdown();
    let refused = len.try_call("late".to_owned()).unwrap_err();
    assert!(refused.is_shut_down() && !refused.is_full());
    assert_eq!(refused.into_input(), "late");
}

#[test]
fn a_waiting_handle_is_told_shut_down_and_its_job_never_runs() {
    let pool = bounded_pool(1, 1);
    let blocker = Blocker::start(&pool);
    let q1 = pool.spawn(|| "accepted");
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    let held = pool.spawn(move || flag.store(true, SeqCst));
    assert!(held.is_waiting_for_room());
    let (done_tx, done_rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || done_tx.send(held.wait()).unwrap());

    // Shut down from another thread: it waits for the blocker, but the waiting handle is
    // answered at once, while the blocker still holds the worker.
    let closer = shut_down_in_the_background(&pool);
    let out = done_rx.recv_timeout(HANG).expect("the waiting handle hung");
    assert!(out.unwrap_err().is_shut_down());
    waiter.join().unwrap();

    blocker.release();
    closer.join().unwrap();
    assert_eq!(
        wait(q1),
        Ok("accepted"),
        "accepted before the shutdown: it runs"
    );
    assert!(!ran.load(SeqCst));
}

#[test]
fn the_only_worker_waiting_on_a_full_queue_does_not_deadlock() {
    let pool = bounded_pool(1, 1);
    let inner = pool.clone();
    let out = pool.spawn(move || {
        // The first fills the queue; the others wait for room that only this worker can make.
        let handles: Vec<_> = (0..4u32).map(|i| inner.spawn(move || i * 10)).collect();
        let held = handles.iter().filter(|h| h.is_waiting_for_room()).count();
        let results: Vec<_> = handles.into_iter().map(|h| h.wait().unwrap()).collect();
        (held, results)
    });
    let (held, results) = wait(out).unwrap();
    assert_eq!(held, 3);
    assert_eq!(results, [0, 10, 20, 30]);
}

const UNANSWERED: u8 = 0;
const OK: u8 = 1;
const DROPPED: u8 = 2;

#[test]
fn under_load_every_job_resolves_exactly_once() {
    const CAPACITY: usize = 8;
    const PER: usize = 20_000;
    const SUBMITTERS: usize = 6;
    let pool = bounded_pool(3, CAPACITY);
    let total = PER * SUBMITTERS;
    let executions: Arc<Vec<AtomicU8>> = Arc::new((0..total).map(|_| AtomicU8::new(0)).collect());
    let answers: Arc<Vec<AtomicU8>> =
        Arc::new((0..total).map(|_| AtomicU8::new(UNANSWERED)).collect());
    let (refusals, held, max_queued) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let program = {
        let executions = Arc::clone(&executions);
        pool.asyncify(move |id: usize| {
            executions[id].fetch_add(1, SeqCst);
            id * 7
        })
    };
    let answer = |answers: &[AtomicU8], id: usize, result: Result<usize, JobError>| {
        assert_eq!(result, Ok(id * 7), "call {id}");
        let before = answers[id].swap(OK, SeqCst);
        assert_eq!(before, UNANSWERED, "call {id} answered twice");
    };

    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|s| {
            let (program, answers) = (program.clone(), Arc::clone(&answers));
            let (refusals, held, max_queued) = (
                Arc::clone(&refusals),
                Arc::clone(&held),
                Arc::clone(&max_queued),
            );
            std::thread::spawn(move || {
                let ids = s * PER..(s + 1) * PER;
                match s % 3 {
                    // Blocking callers, a few handles outstanding, a tenth dropped.
                    0 => {
                        let mut window = std::collections::VecDeque::new();
                        for id in ids {
                            let h = program.call(id);
                            if h.is_waiting_for_room() {
                                held.fetch_add(1, SeqCst);
                            }
                            if id % 10 == 3 {
                                drop(h);
                                answers[id].store(DROPPED, SeqCst);
                                continue;
                            }
                            window.push_back((id, h));
                            if window.len() > 16 {
                                let (id, h) = window.pop_front().unwrap();
                                answer(&answers, id, wait(h));
                            }
                            if id % 16 == 0 {
                                let queued = program.pool().stats().queued;
                                max_queued.fetch_max(queued, SeqCst);
                            }
                        }
                        for (id, h) in window {
                            answer(&answers, id, wait(h));
                        }
                    }
                    // `try_call`, falling back to a waiting `call` with the input handed back.
                    1 => {
                        for id in ids {
                            let h = match program.try_call(id) {
                                Ok(h) => h,
                                Err(refused) => {
                                    assert!(refused.is_full());
                                    refusals.fetch_add(1, SeqCst);
                                    program.call(refused.into_input())
                                }
                            };
                            answer(&answers, id, wait(h));
                        }
                    }
                    // Async callers: 64 awaited at once on a current-thread runtime, some of
                    // them cut short by a timeout of zero (dropped while waiting or queued).
                    _ => {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_time()
                            .build()
                            .unwrap();
                        let ids: Vec<_> = ids.collect();
                        for chunk in ids.chunks(64) {
                            let calls = chunk.iter().map(|&id| {
                                let h = program.call(id);
                                if h.is_waiting_for_room() {
                                    held.fetch_add(1, SeqCst);
                                }
                                async move {
                                    if id % 10 == 7 {
                                        let r = tokio::time::timeout(Duration::ZERO, h).await;
                                        (id, r.ok())
                                    } else {
                                        (id, Some(h.await))
                                    }
                                }
                            });
                            let results = rt.block_on(futures::future::join_all(calls));
                            for (id, r) in results {
                                match r {
                                    Some(r) => answer(&answers, id, r),
                                    None => answers[id].store(DROPPED, SeqCst),
                                }
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().expect("a submitter failed");
    }
    pool.shutdown();

    let (mut ran, mut dropped, mut dropped_unrun) = (0u64, 0, 0u64);
    for id in 0..total {
        let n = executions[id].load(SeqCst);
        match answers[id].load(SeqCst) {
            OK => assert_eq!(n, 1, "call {id} answered Ok but ran {n} times"),
            DROPPED => {
                assert!(n <= 1, "dropped call {id} ran {n} times");
                dropped += 1;
                dropped_unrun += u64::from(n == 0);
            }
            other => panic!("call {id} has answer {other}"),
        }
        ran += u64::from(n);
    }
    let stats = pool.stats();
    // A call dropped while its job ran is abandoned, unless the job had finished first.
    assert_eq!(stats.completed + stats.abandoned, ran, "{stats:?}");
    assert!(stats.abandoned <= dropped - dropped_unrun, "{stats:?}");
    assert_eq!((stats.queued, stats.running, stats.panicked), (0, 0, 0));
    assert!(stats.cancelled <= dropped_unrun, "{stats:?}");
    let max_queued = max_queued.load(SeqCst);
    assert!(max_queued <= CAPACITY, "the queue held {max_queued} jobs");
    let (held, refusals) = (held.load(SeqCst), refusals.load(SeqCst));
    assert!(held > 0 && refusals > 0, "the queue was never full");
    eprintln!(
        "backpressure under load: {total} calls, {ran} ran, {dropped} dropped ({dropped_unrun} \
         never ran, {} counted cancelled), {held} handles waited for room, {refusals} try_call \
         refusals, queue depth seen at most {max_queued} of {CAPACITY}",
        stats.cancelled
    );
}

/// A task waker that counts how many of its kind are alive.
struct LiveWaker(Arc<AtomicUsize>);

impl std::task::Wake for LiveWaker {
    fn wake(self: Arc<Self>) {}
}

impl Drop for LiveWaker {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Handles given up while they wait for room (dropped, as a `tokio::time::timeout` around
/// them would) take their task wakers out of the queue's list at once: the pool keeps none
/// while the queue stays full. (All 1,000 were kept until room freed, and then all woken.)
#[test]
fn given_up_waiting_handles_leave_no_waker_behind() {
    let pool = common::bounded_pool(1, 1);
    let (gate, blockers) = common::occupy(&pool, 1);
    let queued = pool.spawn(|| ());
    let live = Arc::new(AtomicUsize::new(0));
    for _ in 0..1_000 {
        let mut handle = pool.spawn(|| ());
        assert!(handle.is_waiting_for_room());
        live.fetch_add(1, SeqCst);
        let waker = std::task::Waker::from(Arc::new(LiveWaker(Arc::clone(&live))));
        assert!(Pin::new(&mut handle)
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        drop(waker);
        drop(handle);
    }
    assert_eq!(
        live.load(SeqCst),
        0,
        "given-up handles' wakers are still held"
    );
    gate.open();
    for b in blockers {
        wait(b).unwrap();
    }
    assert_eq!(wait(queued), Ok(()));
}

/// A task waker whose `Drop` panics.
struct DropPanics;

impl std::task::Wake for DropPanics {
    fn wake(self: Arc<Self>) {}
}

impl Drop for DropPanics {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("planned: a waker's drop");
        }
    }
}

/// Dropping a handle that waits for room drops the last copy of the waker it registered through
/// the guard: a `Drop` that panics there does not unwind out of the handle's drop (it did, and
/// a handle dropped while its task unwound would have aborted the process).
#[test]
fn dropping_a_waiting_handle_whose_waker_panics_on_drop_does_not_panic() {
    common::quiet_planned_panics();
    let pool = common::bounded_pool(1, 1);
    let (gate, blockers) = common::occupy(&pool, 1);
    let queued = pool.spawn(|| ());
    let mut handle = pool.spawn(|| ());
    assert!(handle.is_waiting_for_room());
    let waker = std::task::Waker::from(Arc::new(DropPanics));
    assert!(Pin::new(&mut handle)
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    drop(waker);
    // A second worker takes `queued` off the queue: the room wakes its waiters and lets go of
    // their wakers, so the handle holds the last copy of its own.
    pool.set_threads(2).unwrap();
    common::spin_until("the queued job to run", || queued.is_finished());
    assert!(
        handle.is_waiting_for_room(),
        "not polled since: it still holds its job"
    );
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(handle)));
    assert!(
        dropped.is_ok(),
        "dropping a JobHandle panicked with its waker's drop"
    );
    gate.open();
    for b in blockers {
        wait(b).unwrap();
    }
    assert_eq!(wait(queued), Ok(()));
}

/// A task waker that says it was woken, then blocks until its gate opens.
struct BlockingWaker {
    entered: Mutex<Option<mpsc::Sender<()>>>,
    gate: Arc<common::Gate>,
}

impl std::task::Wake for BlockingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(entered) = self.entered.lock().unwrap().take() {
            let _ = entered.send(());
        }
        self.gate.wait();
    }
}

/// A worker that takes a job off a full queue frees its slot and wakes the handles waiting for
/// room; a waker that blocks there must not hold up the job the worker just took. (It did: the
/// worker woke the waiters on its own thread before running the job, so the job was in no
/// queue and on no thread until the waker came back.)
#[test]
fn a_room_waker_that_blocks_does_not_hold_up_the_job_just_taken_off_the_queue() {
    let pool = common::bounded_pool(2, 1);
    let (first_gate, first) = common::occupy(&pool, 1);
    let (second_gate, second) = common::occupy(&pool, 1);
    let (ran_tx, ran_rx) = mpsc::channel();
    let queued = pool.spawn(move || ran_tx.send("the queued job ran").unwrap());
    let mut waiting = pool.spawn(|| "the waiting job");
    assert!(waiting.is_waiting_for_room());
    let (entered_tx, entered_rx) = mpsc::channel();
    let waker_gate = common::Gate::new();
    let waker = std::task::Waker::from(Arc::new(BlockingWaker {
        entered: Mutex::new(Some(entered_tx)),
        gate: Arc::clone(&waker_gate),
    }));
    assert!(Pin::new(&mut waiting)
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    // One worker is freed: it takes the queued job, and the waiting handle is woken.
    second_gate.open();
    entered_rx
        .recv_timeout(HANG)
        .expect("the waiting handle was never woken");
    assert_eq!(
        ran_rx.recv_timeout(Duration::from_secs(10)),
        Ok("the queued job ran"),
        "the job taken off the queue waited for a room waker that blocks"
    );
    waker_gate.open();
    first_gate.open();
    for b in first.into_iter().chain(second) {
        assert_eq!(wait(b), Ok(()));
    }
    assert_eq!(wait(queued), Ok(()));
    assert_eq!(wait(waiting), Ok("the waiting job"));
}

/// A waiting handle polled by one task after another (moved between tasks, or polled by a
/// `select!` whose waker changes) keeps the room's list to the last task's waker: each new
/// registration takes the one it replaces out. (Each replaced waker stayed in the list until
/// room freed: 1,000 of 1,000 here.)
#[test]
fn a_waiting_handle_polled_by_task_after_task_keeps_only_the_last_tasks_waker() {
    let pool = common::bounded_pool(1, 1);
    let (gate, blockers) = common::occupy(&pool, 1);
    let queued = pool.spawn(|| ());
    let mut handle = pool.spawn(|| "moved between tasks");
    assert!(handle.is_waiting_for_room());
    let live = Arc::new(AtomicUsize::new(0));
    for _ in 0..1_000 {
        live.fetch_add(1, SeqCst);
        let waker = std::task::Waker::from(Arc::new(LiveWaker(Arc::clone(&live))));
        assert!(Pin::new(&mut handle)
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
    }
    assert_eq!(
        live.load(SeqCst),
        1,
        "wakers of tasks that no longer poll the handle are still held"
    );
    gate.open();
    for b in blockers {
        wait(b).unwrap();
    }
    assert_eq!(wait(queued), Ok(()));
    assert_eq!(wait(handle), Ok("moved between tasks"));
    assert_eq!(live.load(SeqCst), 0);
}

/// A job held by a handle waiting for room, that nobody polls, counts as never running once the
/// pool shuts down: its `AbortHandle` says it is finished, and its handle answers `ShutDown`
/// without running it. (It stayed unfinished until its handle was polled or dropped.)
#[test]
fn a_held_job_nobody_polls_is_finished_once_the_pool_shuts_down() {
    let pool = common::bounded_pool(1, 1);
    let (gate, blockers) = common::occupy(&pool, 1);
    let queued = pool.spawn(|| "queued");
    let ran = Arc::new(AtomicBool::new(false));
    let held = {
        let ran = Arc::clone(&ran);
        pool.spawn(move || ran.store(true, SeqCst))
    };
    assert!(held.is_waiting_for_room());
    let abort = held.abort_handle();
    gate.open();
    for b in blockers {
        assert_eq!(wait(b), Ok(()));
    }
    assert_eq!(wait(queued), Ok("queued"));
    assert!(
        !abort.is_finished(),
        "the pool is open: the held job may still run"
    );
    common::assert_shutdown_returns(&pool);
    assert!(
        abort.is_finished(),
        "the pool is shut down, but the job its handle holds does not count as finished"
    );
    assert!(held.is_finished());
    assert!(wait(held).unwrap_err().is_shut_down());
    assert!(!ran.load(SeqCst), "a job held at the shutdown ran");
}

/// Of the handles waiting for room, each is woken on its own: the first one's waker blocking
/// does not keep the others asleep with room free. (They were woken one after the other on one
/// thread, so the second waited for the first's waker to return.)
#[test]
fn a_blocking_room_waker_does_not_keep_the_other_waiters_asleep() {
    let pool = common::bounded_pool(1, 1);
    let (gate, blockers) = common::occupy(&pool, 1);
    let queued = pool.spawn(|| ());
    let mut first = pool.spawn(|| "first");
    let mut second = pool.spawn(|| "second");
    let (entered_tx, entered_rx) = mpsc::channel();
    let waker_gate = common::Gate::new();
    let blocking = std::task::Waker::from(Arc::new(BlockingWaker {
        entered: Mutex::new(Some(entered_tx)),
        gate: Arc::clone(&waker_gate),
    }));
    let (woken, counting) = CountingWaker::new();
    assert!(Pin::new(&mut first)
        .poll(&mut Context::from_waker(&blocking))
        .is_pending());
    assert!(Pin::new(&mut second)
        .poll(&mut Context::from_waker(&counting))
        .is_pending());
    gate.open();
    entered_rx
        .recv_timeout(HANG)
        .expect("the first waiting handle was never woken");
    common::spin_until("the second waiting handle to be woken", || {
        woken.count() > 0
    });
    waker_gate.open();
    for b in blockers {
        assert_eq!(wait(b), Ok(()));
    }
    assert_eq!(wait(queued), Ok(()));
    assert_eq!(wait(first), Ok("first"));
    assert_eq!(wait(second), Ok("second"));
}

/// Says when its drop starts, then blocks until its gate opens.
struct BlockingDrop {
    dropping: mpsc::Sender<()>,
    gate: Arc<common::Gate>,
}

impl Drop for BlockingDrop {
    fn drop(&mut self) {
        let _ = self.dropping.send(());
        self.gate.wait();
    }
}

/// A job whose handle waits for room in `pool`'s full queue, and whose closure holds a
/// [`BlockingDrop`]: the handle, the drop's "started" signal, and the gate that ends the drop.
fn held_with_a_blocking_drop(
    pool: &WorkerPool,
) -> (JobHandle<()>, mpsc::Receiver<()>, Arc<common::Gate>) {
    let (dropping_tx, dropping) = mpsc::channel();
    let gate = common::Gate::new();
    let value = BlockingDrop {
        dropping: dropping_tx,
        gate: Arc::clone(&gate),
    };
    let held = pool.spawn(move || drop(value));
    assert!(held.is_waiting_for_room());
    (held, dropping, gate)
}

/// `pool.shutdown()` on a thread of its own.
fn shut_down_in_the_background(pool: &WorkerPool) -> std::thread::JoinHandle<()> {
    let pool = pool.clone();
    std::thread::spawn(move || pool.shutdown())
}

/// A shutdown that drops the jobs held by handles waiting for room tells the calls waiting for
/// time first: a held job whose `Drop` blocks does not keep a call waiting at a rate limit
/// from its `ShutDown`.
#[test]
fn a_held_job_whose_drop_blocks_does_not_delay_the_shutdown_of_calls_waiting_for_time() {
    let pool = common::bounded_pool(1, 1);
    let limited = pool
        .asyncify(|x: u32| x)
        .rate_limit(1, Duration::from_secs(3_600));
    assert_eq!(wait(limited.call(1)), Ok(1));
    let waiting_for_a_token = limited.call(2);
    let (gate, blockers) = common::occupy(&pool, 1);
    let queued = pool.spawn(|| ());
    let (held, dropping, drop_gate) = held_with_a_blocking_drop(&pool);
    assert!(held.is_waiting_for_room());
    let closer = shut_down_in_the_background(&pool);
    dropping
        .recv_timeout(HANG)
        .expect("the held job was never dropped");
    let answer = common::within_hang("the rate-limited call", move || wait(waiting_for_a_token));
    assert!(answer.unwrap_err().is_shut_down());
    drop_gate.open();
    gate.open();
    closer.join().unwrap();
    for b in blockers {
        assert_eq!(wait(b), Ok(()));
    }
    assert_eq!(wait(queued), Ok(()));
    assert!(wait(held).unwrap_err().is_shut_down());
}

/// A job held by a handle waiting for room is not run after the shutdown by a worker that
/// waits on that handle (it would run it in place of queueing it), even while the close is
/// still dropping the held jobs ahead of it.
#[test]
fn a_held_job_is_not_run_by_a_waiting_worker_after_the_shutdown() {
    let pool = common::bounded_pool(1, 1);
    let (handle_tx, handle_rx) = mpsc::channel::<JobHandle<()>>();
    let (started_tx, started) = mpsc::channel();
    let waiter_gate = common::Gate::new();
    let waiter = {
        let gate = Arc::clone(&waiter_gate);
        pool.spawn(move || {
            started_tx.send(()).unwrap();
            gate.wait();
            let held = handle_rx.recv_timeout(HANG).unwrap();
            held.wait()
        })
    };
    started.recv_timeout(HANG).unwrap();
    let queued = pool.spawn(|| ());
    let (first_held, dropping, drop_gate) = held_with_a_blocking_drop(&pool);
    let ran = Arc::new(AtomicBool::new(false));
    let second_held = {
        let ran = Arc::clone(&ran);
        pool.spawn(move || ran.store(true, SeqCst))
    };
    assert!(first_held.is_waiting_for_room() && second_held.is_waiting_for_room());
    handle_tx.send(second_held).unwrap();
    let closer = shut_down_in_the_background(&pool);
    // The close is dropping the first held job; the second is still in its handle.
    dropping
        .recv_timeout(HANG)
        .expect("the held job was never dropped");
    waiter_gate.open();
    let answer = common::within_hang("the waiting job", move || wait(waiter));
    drop_gate.open();
    closer.join().unwrap();
    assert!(
        answer.expect("the waiting job").unwrap_err().is_shut_down(),
        "the held job was run after the shutdown"
    );
    assert!(!ran.load(SeqCst), "a job held at the shutdown ran");
    assert_eq!(wait(queued), Ok(()));
    assert!(wait(first_held).unwrap_err().is_shut_down());
    assert_eq!(pool.stats().queued, 0, "a husk is still counted as queued");
}

/// Three waiting handles whose wakers block, one after the other, ahead of a fourth: each
/// blocked waker has another ringer take over the rest, so the fourth is woken while all three
/// still block.
#[test]
fn several_blocking_room_wakers_in_a_row_do_not_keep_the_last_waiter_asleep() {
    let pool = common::bounded_pool(1, 1);
    let (gate, blockers) = common::occupy(&pool, 1);
    let queued = pool.spawn(|| ());
    let waker_gate = common::Gate::new();
    let (entered_tx, entered_rx) = mpsc::channel();
    let mut blocked: Vec<JobHandle<usize>> = (0..3).map(|i| pool.spawn(move || i)).collect();
    for handle in &mut blocked {
        let waker = std::task::Waker::from(Arc::new(BlockingWaker {
            entered: Mutex::new(Some(entered_tx.clone())),
            gate: Arc::clone(&waker_gate),
        }));
        assert!(Pin::new(handle)
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
    }
    let mut last = pool.spawn(|| 3);
    let (woken, counting) = CountingWaker::new();
    assert!(Pin::new(&mut last)
        .poll(&mut Context::from_waker(&counting))
        .is_pending());
    gate.open();
    for i in 0..3 {
        entered_rx
            .recv_timeout(HANG)
            .unwrap_or_else(|_| panic!("only {i} of the blocking wakers were reached"));
    }
    common::spin_until("the last waiting handle to be woken", || woken.count() > 0);
    waker_gate.open();
    for b in blockers {
        assert_eq!(wait(b), Ok(()));
    }
    assert_eq!(wait(queued), Ok(()));
    for (i, handle) in blocked.into_iter().enumerate() {
        assert_eq!(wait(handle), Ok(i));
    }
    assert_eq!(wait(last), Ok(3));
}
