//! A job and its handle: the unit that travels from a call to a worker and back.
//!
//! # One allocation per call
//!
//! A call makes one `Arc` of a [`cell`](self::cell) holding the work, later its result. The
//! queue holds it as a [`Job`] (type-erased: "something to run"), the caller holds it as a
//! [`JobHandle<T>`] (type-erased the other way: "something that will produce a `T`"). The
//! cell's stages, and who may move it out of each, are described in [`cell`](self::cell).
//!
//! # Who runs a job
//!
//! A worker that takes the job's entry off the queue ([`Start::FromQueue`]), or a worker of the
//! same pool that waits on the handle and starts the job itself before any other worker has
//! ([`Start::OutOfLine`]; see `pool::worker`). Whoever runs it runs it through the one code path
//! in [`Runnable::run`]: the caller's context in force, the program inside the guard, the
//! outcome recorded, the result stored, the caller woken.

mod cell;
mod handle;

use std::any::Any;
use std::cell::RefCell;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::capture::Captured;
use crate::error::JobError;
use crate::guard;
use crate::limits::TIMING_SAMPLE;
pub(crate) use cell::Cell;
use cell::Stage;
pub(crate) use handle::{thread_waker, Submit};
pub use handle::{AbortHandle, JobHandle};

/// How a runner came by a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// It took the job's entry off the queue, which the job entered at `queued` (`None` for an
    /// entry its waiter took from the handle while it waited for room: it never was queued).
    FromQueue { queued: Option<Instant> },
    /// It waits on the job's handle and starts the job itself; the queue entry becomes a husk.
    OutOfLine,
}

/// What became of a job a runner was handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It ran and returned, and its output went to the caller (or, detached, to nobody, as
    /// the caller chose). The timing is there if the job was in the sample (see [`sampled`]),
    /// in this variant and the next two.
    Completed(Option<Timing>),
    /// It ran and panicked (whether or not its caller was still there to be told).
    Panicked(Option<Timing>),
    /// It ran and returned after its caller had dropped or aborted the handle: the output
    /// was discarded.
    Abandoned(Option<Timing>),
    /// A queue entry whose job never ran: its caller had dropped the handle, or it was called
    /// off (a batch that stopped).
    Cancelled,
    /// A queue entry whose job a waiting worker had already started out of line.
    Husk,
    /// An out-of-line start that came too late: a worker had already taken the job.
    Lost,
}

/// When a timed job that ran entered the queue, started and ended, as its runner saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    /// `None` if it did not start from the queue: its waiter started it out of line, or took
    /// it from its handle before it found room in a bounded queue.
    pub(crate) queued: Option<Instant>,
    pub(crate) started: Instant,
    pub(crate) ended: Instant,
}

/// The runner's view of a cell: something to run, or to give up on.
pub(crate) trait Runnable: Send + Sync + 'static {
    /// Runs the job if it is still queued; otherwise only reports what it found. `record`
    /// learns the outcome before the caller can see the result (under the cell's lock, where
    /// abandonment is decided), so a caller that has its result finds it counted in the pool's
    /// stats. It is the pool's counting code, no user code.
    fn run(self: Arc<Self>, start: Start, record: &dyn Fn(Outcome));
    /// Resolves a still-queued job with `error` (it will never run); false if it had left the queue.
    fn revoke(&self, error: JobError) -> bool;
    /// True once the handle was dropped while the job runs.
    fn is_cancelled(&self) -> bool;
    /// True if the job was started out of line: a queue entry for it is a husk.
    fn is_husk(&self) -> bool;
    /// True if the caller put the job in the timing sample (see [`sampled`]), so its queue
    /// entry is to note when it enters the queue.
    fn is_timed(&self) -> bool;
    /// The running job returns without having run its program (see [`decline`]).
    fn decline(&self);
    /// Stores the result passed as `&mut Option<Result<T, JobError>>` (type-erased so the cell can
    /// sit in the thread-local `CURRENT` as a plain `dyn Runnable` while the job runs), and
    /// returns the waker to wake, if the caller still waits. `captured` goes back into the cell.
    /// Tells `record` the outcome, under the lock that decides whether the output is discarded.
    fn complete(
        &self,
        result: &mut dyn Any,
        captured: Captured,
        timing: Option<Timing>,
        record: &dyn Fn(Outcome),
    ) -> Option<Waker>;
}

/// How an aborted job's handle resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// [`JobError::Cancelled`]: an [`AbortHandle`].
    Cancelled,
    /// [`JobError::TimedOut`]: a controlled call's deadline.
    TimedOut,
}

impl Cut {
    pub(crate) fn error(self) -> JobError {
        match self {
            Cut::Cancelled => JobError::cancelled(),
            Cut::TimedOut => JobError::timed_out(),
        }
    }
}

/// What an [`AbortHandle`] holds: something to cancel from anywhere.
pub(crate) trait Abort: Send + Sync {
    /// Cancels the job as a dropped handle does, and resolves its handle to `cut`'s error at
    /// once (see `AbortHandle`). True if this ended it: false once it has finished or was
    /// aborted already, and for a deadline's cut ([`Cut::TimedOut`]) once its handle is gone.
    fn abort(&self, cut: Cut) -> bool;
    /// True once the job has finished, was called off or will never run.
    fn is_finished(&self) -> bool;
}

/// The handle's view of a job: something that will produce a `T`. A cell (one run on the
/// pool), or a controlled call (`control`) that drives attempts of its own.
pub(crate) trait Completion<T>: Send + Sync {
    fn poll_done(&self, cx: Option<&mut Context<'_>>) -> Poll<Result<T, JobError>>;
    /// False only if a poll now would surely be pending, read without a lock: a yielding
    /// handle then polls no further (it takes no lock the worker may want, and leaves no waker
    /// for the worker to wake). True when in doubt.
    fn may_be_ready(&self) -> bool {
        true
    }
    fn is_done(&self) -> bool;
    /// True while no runner has started the job.
    fn is_queued(&self) -> bool;
    fn cancel(&self);
    fn revoke(&self, error: JobError) -> bool;
    /// Makes `is_cancelled()` true in the running job; its result is still delivered.
    fn ask_to_stop(&self);
    /// The job runs on a spare thread under its waiter's permit: an abort must not resolve
    /// the handle before it ends.
    fn on_spare(&self);
    /// Nobody will take the result: the runner drops it (or, if it is there, this does).
    fn detach(&self);
    /// The queued job, as something to run (for a waiting worker that starts it out of
    /// line); `None` if there is none to start now.
    fn out_of_line(self: Arc<Self>) -> Option<Arc<dyn Runnable>>;
    /// A job that waits for room in a full bounded queue, for a waiting worker to run at once
    /// (a cell's own is held by its handle: see `JobHandle::take_pending`).
    fn take_held(&self) -> Option<Job> {
        None
    }
    /// The job as an [`AbortHandle`] sees it.
    fn abort_target(self: Arc<Self>) -> Arc<dyn Abort>;
}

thread_local! {
    /// The job running on this thread, innermost first when a waiting worker runs another.
    static CURRENT: RefCell<Option<Arc<dyn Runnable>>> = const { RefCell::new(None) };
}

/// A job's entry in the queue. Dropping it unrun (the queue was torn down at shutdown, or the
/// pool refused it) tells its caller [`JobError::ShutDown`]: an accepted job is never silently
/// lost.
pub(crate) struct Job {
    /// The job's cell; for a timed job once queued, a [`Stamped`] around it.
    cell: Option<Arc<dyn Runnable>>,
}

impl Job {
    /// The queue entry of `cell`, a job made elsewhere (a controlled call's own).
    pub(crate) fn of(cell: Arc<dyn Runnable>) -> Self {
        Job { cell: Some(cell) }
    }

    pub(crate) fn run(mut self, record: &dyn Fn(Outcome)) {
        if let Some(cell) = self.cell.take() {
            // A stamped entry puts in when it was queued.
            cell.run(Start::FromQueue { queued: None }, record);
        }
    }

    /// Notes that the entry enters the queue now, if its job is timed (no clock read if not).
    pub(crate) fn enter_queue(&mut self) {
        if let Some(cell) = self.cell.take_if(|cell| cell.is_timed()) {
            self.cell = Some(Arc::new(Stamped {
                cell,
                queued: Instant::now(),
            }));
        }
    }

    /// Drops the entry unrun, telling a caller still waiting `ShutDown`; true if it was a husk
    /// (its job had been started out of line), for the pool's count of husks.
    pub(crate) fn discard(mut self) -> bool {
        self.cell.take().is_some_and(discard)
    }
}

fn discard(cell: Arc<dyn Runnable>) -> bool {
    let husk = !cell.revoke(JobError::shut_down()) && cell.is_husk();
    // Possibly the cell's last owner, holding the caller's context (user values): after the
    // other callers are told, when the pool lets go of many jobs at once.
    guard::drop_soon("a discarded job", cell);
    husk
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(cell) = self.cell.take() {
            discard(cell);
        }
    }
}

/// Makes a job for `f`, to run under `captured` on a pool with id `pool`, and the handle that
/// receives its result.
pub(crate) fn new_job<F, T>(f: F, captured: Captured, pool: u64) -> (Job, JobHandle<T>)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    new_job_waking(f, captured, pool, None)
}

/// [`new_job`], with `waker` already registered as the caller's.
pub(crate) fn new_job_waking<F, T>(
    f: F,
    captured: Captured,
    pool: u64,
    waker: Option<Waker>,
) -> (Job, JobHandle<T>)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let timed = sampled();
    let cell = Arc::new(Cell::waking(Stage::Queued(f, captured), timed, waker));
    let handle = JobHandle::new(Arc::clone(&cell) as Arc<dyn Completion<T>>, pool);
    (Job { cell: Some(cell) }, handle)
}

/// A timed job's queue entry: its cell, and when it entered the queue. The instant has no room
/// in the cell (see the size test in `cell`), and none in the entry either: an entry of two
/// words more made the queue's slots 40 bytes instead of 24, which cost throughput with many
/// calls in flight more than the clock reads did (BENCHMARKS.md). So only the timed jobs, one
/// in [`TIMING_SAMPLE`], pay for this allocation, and every entry stays one fat pointer.
struct Stamped {
    cell: Arc<dyn Runnable>,
    queued: Instant,
}

/// Only a [`Job`] holds a `Stamped` (never `CURRENT`, never a handle), so only `run`, `revoke`
/// and `is_husk` are reached; the rest pass through too.
impl Runnable for Stamped {
    fn run(self: Arc<Self>, _: Start, record: &dyn Fn(Outcome)) {
        let queued = Some(self.queued);
        let cell = match Arc::try_unwrap(self) {
            Ok(stamped) => stamped.cell,
            Err(shared) => Arc::clone(&shared.cell),
        };
        cell.run(Start::FromQueue { queued }, record);
    }

    fn revoke(&self, error: JobError) -> bool {
        self.cell.revoke(error)
    }

    fn is_cancelled(&self) -> bool {
        self.cell.is_cancelled()
    }

    fn is_husk(&self) -> bool {
        self.cell.is_husk()
    }

    /// False: already stamped, it is not stamped again.
    fn is_timed(&self) -> bool {
        false
    }

    fn decline(&self) {
        self.cell.decline();
    }

    fn complete(
        &self,
        result: &mut dyn Any,
        captured: Captured,
        timing: Option<Timing>,
        record: &dyn Fn(Outcome),
    ) -> Option<Waker> {
        self.cell.complete(result, captured, timing, record)
    }
}

/// Called by a running job that returns without having run its program (a controlled call's
/// attempt that found its deadline passed): its runner counts it `cancelled`, as a job called
/// off in the queue, not `completed`. The mark is on the job's own cell (`CURRENT`), so a job
/// run nested meanwhile on this thread cannot take it.
pub(crate) fn decline() {
    let _ = CURRENT.try_with(|c| {
        if let Some(job) = c.borrow().as_ref() {
            job.decline();
        }
    });
}

thread_local! {
    /// Calls this thread made since its last timed one, modulo [`TIMING_SAMPLE`].
    static SINCE_SAMPLED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether the job this thread is making now is timed: its first, then one in
/// [`TIMING_SAMPLE`]. A count, not a coin or the clock: no clock read, no shared write, and
/// which calls are timed depends on nothing the pool is doing (its queue, its load), so the
/// sample's durations are those of the calls at large. (A caller whose calls repeat with a
/// period dividing `TIMING_SAMPLE` is sampled at the same places of its pattern: the price of a
/// sample that tests can count exactly.)
fn sampled() -> bool {
    const { assert!(TIMING_SAMPLE > 0, "TIMING_SAMPLE is at least 1") };
    // `try_with`: a call from a thread-local's destructor is not timed.
    SINCE_SAMPLED
        .try_with(|since| {
            let n = since.get();
            since.set(if n + 1 >= TIMING_SAMPLE { 0 } else { n + 1 });
            n == 0
        })
        .unwrap_or(false)
}

/// True inside a running job once its caller has dropped the [`JobHandle`] (a timeout, a
/// `select!` that went the other way, a cancelled task): the result will be thrown away, so a
/// long program may stop early. False outside jobs.
///
/// # Examples
///
/// ```
/// use asyncify_pool::{is_cancelled, WorkerPool};
/// use std::time::Duration;
///
/// let pool = WorkerPool::new(1);
/// let (started_tx, started_rx) = std::sync::mpsc::channel();
/// let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
/// let handle = pool.spawn(move || {
///     started_tx.send(()).unwrap();
///     while !is_cancelled() {
///         std::thread::sleep(Duration::from_millis(1));
///     }
///     stopped_tx.send("noticed").unwrap();
/// });
/// started_rx.recv().unwrap();
/// drop(handle); // the caller gives up
/// assert_eq!(stopped_rx.recv().unwrap(), "noticed");
/// assert!(!is_cancelled()); // not in a job here
/// ```
pub fn is_cancelled() -> bool {
    // `try_with`: no job runs in a thread-local's destructor, which may ask.
    CURRENT
        .try_with(|c| c.borrow().as_ref().is_some_and(|job| job.is_cancelled()))
        .unwrap_or(false)
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! The decisions taken under a cell's lock, checked over every interleaving (`.ci/loom`).
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::thread;
    use std::sync::atomic::Ordering::SeqCst;
    use std::task::Wake;

    fn outcome_code(o: Outcome) -> usize {
        match o {
            Outcome::Completed(_) => 1,
            Outcome::Panicked(_) => 2,
            Outcome::Abandoned(_) => 6,
            Outcome::Cancelled => 3,
            Outcome::Husk => 4,
            Outcome::Lost => 5,
        }
    }

    /// The caller drops its handle while a worker takes the job: the job runs to completion
    /// or is skipped, and the worker's report agrees with what happened.
    #[test]
    fn dropped_handle_races_the_worker() {
        loom::model(|| {
            let runs = loom::sync::Arc::new(AtomicUsize::new(0));
            let outcome = loom::sync::Arc::new(AtomicUsize::new(0));
            let r = runs.clone();
            let (job, handle) = new_job(move || r.fetch_add(1, SeqCst), Captured::default(), 1);
            let o = outcome.clone();
            let worker = thread::spawn(move || job.run(&|x| o.store(outcome_code(x), SeqCst)));
            drop(handle);
            worker.join().unwrap();
            // It ran (completed if it ended before the drop, abandoned after) or was skipped.
            match outcome.load(SeqCst) {
                1 | 6 => assert_eq!(runs.load(SeqCst), 1),
                3 => assert_eq!(runs.load(SeqCst), 0),
                other => panic!("unexpected outcome {other}"),
            }
        });
    }

    /// A batch revokes a queued job while a worker takes it: the caller gets the value (and the
    /// job ran once) or `Cancelled` (and it never ran); never both, never neither.
    #[test]
    fn revoke_races_the_worker() {
        loom::model(|| {
            let (runs, job, mut handle) = counted_job(7);
            let worker = thread::spawn(move || job.run(&|_| {}));
            let revoked = handle.revoke(JobError::cancelled());
            worker.join().unwrap();
            let result = match handle.poll_with(None) {
                Poll::Ready(r) => r,
                Poll::Pending => panic!("both sides are done, the handle must be ready"),
            };
            if revoked {
                assert_eq!(result, Err(JobError::cancelled()));
                assert_eq!(runs.load(SeqCst), 0);
            } else {
                assert_eq!(result, Ok(7));
                assert_eq!(runs.load(SeqCst), 1);
            }
        });
    }

    /// A waiting worker starts the job out of line while another worker takes its queue entry:
    /// the job runs exactly once, the other side sees a husk or loses, and the result is the
    /// job's.
    #[test]
    fn out_of_line_start_races_the_queue() {
        loom::model(|| {
            let runs = loom::sync::Arc::new(AtomicUsize::new(0));
            let queue_side = loom::sync::Arc::new(AtomicUsize::new(0));
            let r = runs.clone();
            let (job, mut handle) = new_job(
                move || {
                    r.fetch_add(1, SeqCst);
                    9
                },
                Captured::default(),
                1,
            );
            let q = queue_side.clone();
            let worker = thread::spawn(move || job.run(&|x| q.store(outcome_code(x), SeqCst)));
            let waiter_side = std::cell::Cell::new(0);
            handle
                .out_of_line()
                .expect("queued, so it can be started")
                .run(Start::OutOfLine, &|x| waiter_side.set(outcome_code(x)));
            let waiter_side = waiter_side.get();
            worker.join().unwrap();
            assert_eq!(runs.load(SeqCst), 1, "ran exactly once");
            match (waiter_side, queue_side.load(SeqCst)) {
                (1, 4) | (5, 1) => {}
                other => panic!("unexpected outcomes {other:?}"),
            }
            assert_eq!(handle.poll_with(None), Poll::Ready(Ok(9)));
        });
    }

    /// The queue is torn down (shutdown) while the caller polls: the caller is either woken
    /// with `ShutDown` or finds it on its next poll; no wake-up is lost.
    #[test]
    fn shutdown_drop_races_a_poll() {
        loom::model(|| {
            let (job, mut handle) = new_job(|| 1, Captured::default(), 1);
            let wakes = std::sync::Arc::new(CountingWaker(std::sync::atomic::AtomicUsize::new(0)));
            let waker = Waker::from(wakes.clone());
            let dropper = thread::spawn(move || drop(job));
            let first = handle.poll_with(Some(&mut Context::from_waker(&waker)));
            dropper.join().unwrap();
            match first {
                Poll::Ready(r) => assert_eq!(r, Err(JobError::shut_down())),
                Poll::Pending => {
                    assert_eq!(wakes.0.load(SeqCst), 1, "the pending poll must be woken");
                    assert_eq!(
                        handle.poll_with(None),
                        Poll::Ready(Err(JobError::shut_down()))
                    );
                }
            }
        });
    }

    /// An abort races a worker that takes, runs and completes the job, while the caller has
    /// polled once: the caller is woken (or finds the answer on its next poll) with the job's
    /// value or `Cancelled`; the job ran at most once, and if it was cancelled before it
    /// started it never ran. An aborted output is discarded, never delivered.
    #[test]
    fn abort_races_the_worker() {
        loom::model(|| {
            let (runs, job, mut handle) = counted_job(3);
            let wakes = std::sync::Arc::new(CountingWaker(std::sync::atomic::AtomicUsize::new(0)));
            let waker = Waker::from(wakes.clone());
            let abort = handle.abort_handle();
            let first = handle.poll_with(Some(&mut Context::from_waker(&waker)));
            assert!(first.is_pending() || first == Poll::Ready(Ok(3)));
            let worker = thread::spawn(move || job.run(&|_| {}));
            abort.abort();
            worker.join().unwrap();
            if first.is_ready() {
                return;
            }
            assert!(wakes.0.load(SeqCst) >= 1, "the pending poll must be woken");
            let result = match handle.poll_with(None) {
                Poll::Ready(r) => r,
                Poll::Pending => panic!("both sides are done, the handle must be ready"),
            };
            match result {
                Ok(3) => assert_eq!(runs.load(SeqCst), 1),
                Err(e) => {
                    assert!(e.is_cancelled());
                    assert!(runs.load(SeqCst) <= 1);
                }
                other => panic!("unexpected result {other:?}"),
            }
            assert!(abort.is_finished());
        });
    }

    /// A job that counts its runs and returns `value`, with its handle.
    fn counted_job(value: u32) -> (loom::sync::Arc<AtomicUsize>, Job, JobHandle<u32>) {
        let runs = loom::sync::Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let (job, handle) = new_job(
            move || {
                r.fetch_add(1, SeqCst);
                value
            },
            Captured::default(),
            1,
        );
        (runs, job, handle)
    }

    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Runs `f` on a thread of its own: its sample count starts afresh.
    fn on_a_new_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| s.spawn(f).join().unwrap())
    }

    /// A queue entry whose job was started out of line is reported as a husk, and the handle
    /// gets the result of the one run. In the sample (a thread's first job), it is timed
    /// without a queue wait.
    #[test]
    fn an_entry_started_out_of_line_is_a_husk() {
        on_a_new_thread(|| {
            let outcomes = Mutex::new(Vec::new());
            let record = |o| outcomes.lock().unwrap().push(o);
            let (job, mut handle) = new_job(|| 5, Captured::default(), 1);
            handle.out_of_line().unwrap().run(Start::OutOfLine, &record);
            job.run(&record);
            let outcomes = outcomes.lock().unwrap();
            assert!(
                matches!(
                    outcomes[..],
                    [
                        Outcome::Completed(Some(Timing { queued: None, .. })),
                        Outcome::Husk
                    ]
                ),
                "{outcomes:?}"
            );
            assert_eq!(handle.poll_with(None), Poll::Ready(Ok(5)));
        });
    }

    /// A thread's first job is timed, then one in `TIMING_SAMPLE`; the others read no clock
    /// and carry no timing, wherever they run.
    #[test]
    fn a_thread_times_its_first_job_and_then_one_in_timing_sample() {
        let n = 3 * TIMING_SAMPLE as usize + 2;
        let timed = on_a_new_thread(|| {
            (0..n)
                .map(|_| {
                    let (mut job, _handle) = new_job(|| (), Captured::default(), 1);
                    job.enter_queue();
                    let outcome = Mutex::new(None);
                    job.run(&|o| *outcome.lock().unwrap() = Some(o));
                    let timing = match outcome.into_inner().unwrap() {
                        Some(Outcome::Completed(timing)) => timing,
                        other => panic!("{other:?}"),
                    };
                    // A timed job was stamped as it entered the queue.
                    assert!(timing.is_none_or(|t| t.queued.is_some()), "{timing:?}");
                    timing.is_some()
                })
                .collect::<Vec<_>>()
        });
        let expected: Vec<bool> = (0..n).map(|i| i % TIMING_SAMPLE as usize == 0).collect();
        assert_eq!(timed, expected);
        // Another thread's count is its own: its first job is timed too.
        assert!(on_a_new_thread(sampled));
    }

    /// A queue entry is one fat pointer, timed or not (see `Stamped`).
    #[test]
    fn a_queue_entry_is_two_words() {
        assert_eq!(std::mem::size_of::<Job>(), 2 * std::mem::size_of::<usize>());
    }

    /// A queue entry whose handle was dropped first is reported as cancelled and never runs.
    #[test]
    fn an_entry_whose_handle_is_gone_is_cancelled() {
        let outcomes = Mutex::new(Vec::new());
        let (job, handle) = new_job(
            || -> u8 { unreachable!("never runs") },
            Captured::default(),
            1,
        );
        drop(handle);
        job.run(&|o| outcomes.lock().unwrap().push(o));
        assert_eq!(*outcomes.lock().unwrap(), [Outcome::Cancelled]);
    }
}
