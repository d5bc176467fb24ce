//! A job and its handle: the unit that travels from a call to a worker and back.
//!
//! # One allocation per call
//!
//! A call makes one `Arc<Cell>`. The queue holds it as a [`Job`] (type-erased: "something to
//! run"), the caller holds it as a [`JobHandle<T>`] (type-erased the other way: "something that
//! will produce a `T`"). Inside sits one small mutex-protected [`Slot`] with the job's stage and
//! the waker of whoever awaits it (after the run, the caller's captured context, handed back to
//! be released by the caller), next to the `cancelled` flag that [`is_cancelled`] reads.
//!
//! # Stages
//!
//! Every move between stages happens under the slot's mutex, so the three parties (the worker,
//! the handle, and a shutdown that drops the queued job) can never both "win":
//!
//! * `Queued(work)`: accepted, not started. The worker moves it to `Running` and takes `work`
//!   (and the captured context, which it puts back with the result).
//!   A dropped handle moves it to `Closed` and drops `work`: the job never runs. A dropped
//!   queue entry (shutdown) moves it to `Done(Err(ShutDown))`: the caller is told.
//! * `Running`: the worker owns the work. A dropped handle only sets `cancelled`.
//! * `Done(result)`: the worker stored the result (or shutdown stored `ShutDown`) and woke the
//!   waker. The handle takes the result and moves it to `Closed`.
//! * `Closed`: nobody wants anything more from this job.
//!
//! # Why this is memory-safe on the cancel path
//!
//! oneshot 0.1.11–0.2.1 can free its channel under a sender that is still waking a receiver
//! being dropped (faern/oneshot#87). Here both sides hold an `Arc` to the cell, so it lives until
//! the last of them lets go; the waker is taken out of the slot under the mutex and woken after,
//! from the worker's own clone. There is no `unsafe` in this crate at all.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crate::capture::Captured;
use crate::error::JobError;
use crate::sync::{AtomicBool, Mutex, MutexGuard};

enum Stage<F, T> {
    Queued(F, Captured),
    Running,
    Done(Result<T, JobError>),
    Closed,
}

struct Slot<F, T> {
    stage: Stage<F, T>,
    side: Side,
}

/// The waker of whoever awaits the job while it is pending; once the job ran, the captured
/// context the worker hands back, so that the cell's last owner (normally the caller) releases
/// it (see `capture`). One field for both keeps a small closure's cell in an 80-byte chunk.
enum Side {
    Waker(Waker),
    /// Held only to be dropped with the cell.
    Back(#[allow(dead_code)] Captured),
}

impl Side {
    fn empty() -> Side {
        Side::Back(Captured::default())
    }

    fn take_waker(&mut self) -> Option<Waker> {
        match std::mem::replace(self, Side::empty()) {
            Side::Waker(waker) => Some(waker),
            back => {
                *self = back;
                None
            }
        }
    }
}

/// The one allocation behind a call. See the module docs for its stages.
struct Cell<F, T> {
    slot: Mutex<Slot<F, T>>,
    /// Set when the handle is dropped while the job runs; read by [`is_cancelled`] without the lock.
    cancelled: AtomicBool,
}

impl<F, T> Cell<F, T> {
    fn lock(&self) -> MutexGuard<'_, Slot<F, T>> {
        // Nothing panics while holding this lock except a user waker's `clone`; the slot is
        // consistent at every such point, so a poisoned lock is still a usable lock.
        crate::sync::lock(&self.slot)
    }
}

/// Drops a value that user code owns (an input, an output, a panic payload) without letting its
/// destructor's panic take down a worker.
fn drop_quietly<V>(value: V) {
    if catch_unwind(AssertUnwindSafe(move || drop(value))).is_err() {
        tracing::warn!("a value dropped by asyncify-pool panicked in its destructor");
    }
}

fn wake_quietly(waker: Waker) {
    if catch_unwind(AssertUnwindSafe(move || waker.wake())).is_err() {
        tracing::warn!("a waker panicked while asyncify-pool woke it");
    }
}

/// What became of a job a worker took off the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It ran and returned.
    Completed,
    /// It ran and panicked.
    Panicked,
    /// It did not run: its caller had dropped the handle (or its batch had cancelled it).
    Skipped,
}

/// The queue's view of a cell: something to run, or to give up on.
pub(crate) trait Runnable: Send + Sync + 'static {
    /// Runs the job if it is still queued; does nothing if its handle was dropped first.
    /// `record` learns the outcome before the caller is woken, so a caller that has its result
    /// finds it counted in the pool's stats.
    fn run(self: Arc<Self>, record: &dyn Fn(Outcome));
    /// Resolves a still-queued job with `error` (it will never run); false if it had left the queue.
    fn revoke(&self, error: JobError) -> bool;
    /// True once the handle was dropped.
    fn is_cancelled(&self) -> bool;
    /// Stores the result passed as `&mut Option<Result<T, JobError>>` (type-erased so the cell can
    /// sit in the thread-local `CURRENT` as a plain `dyn Runnable` while the job runs), and
    /// returns the waker to wake, if the caller still waits. `captured` goes back into the cell.
    fn complete(&self, result: &mut dyn Any, captured: Captured) -> Option<Waker>;
}

/// The handle's view of a cell: something that will produce a `T`.
trait Completion<T>: Send + Sync {
    fn poll_done(&self, cx: Option<&mut Context<'_>>) -> Poll<Result<T, JobError>>;
    fn is_done(&self) -> bool;
    fn cancel(&self);
    fn revoke(&self, error: JobError) -> bool;
}

thread_local! {
    /// Set by a job that decided not to run its work after all (see [`skip_this_job`]).
    static SKIPPED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The job running on this thread, innermost first when a waiting worker runs another.
    static CURRENT: RefCell<Option<Arc<dyn Runnable>>> = const { RefCell::new(None) };
}

impl<F, T> Runnable for Cell<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fn run(self: Arc<Self>, record: &dyn Fn(Outcome)) {
        let (f, mut captured) = {
            let mut slot = self.lock();
            match std::mem::replace(&mut slot.stage, Stage::Running) {
                Stage::Queued(f, captured) => (f, captured),
                other => {
                    slot.stage = other;
                    drop(slot);
                    record(Outcome::Skipped);
                    return;
                }
            }
        };
        let previous = CURRENT.with(|c| c.replace(Some(self)));
        let skipped_outside = SKIPPED.with(|s| s.replace(false));
        let top_level = previous.is_none();
        let result = captured
            .run_in_place(top_level, || catch_unwind(AssertUnwindSafe(f)))
            .map_err(|payload| {
                let error = JobError::from_panic(&*payload);
                drop_quietly(payload);
                error
            });
        let this = CURRENT
            .with(|c| c.replace(previous))
            .expect("the running job is in CURRENT");
        let skipped = SKIPPED.with(|s| s.replace(skipped_outside));
        record(match result {
            Err(JobError::Panicked { .. }) => Outcome::Panicked,
            _ if skipped => Outcome::Skipped,
            _ => Outcome::Completed,
        });
        let waker = this.complete(&mut Some(result), captured);
        // Let go of the cell before waking its caller: the handle is then the last owner and
        // frees it (and the captured context) on the thread that allocated it, which keeps
        // malloc on its fast path and reference counts on one core (BENCHMARKS.md).
        drop(this);
        if let Some(waker) = waker {
            wake_quietly(waker);
        }
    }

    fn complete(&self, result: &mut dyn Any, captured: Captured) -> Option<Waker> {
        let result = result
            .downcast_mut::<Option<Result<T, JobError>>>()
            .and_then(Option::take)
            .expect("complete is called with this cell's own result type");
        let mut slot = self.lock();
        let waker = slot.side.take_waker();
        slot.side = Side::Back(captured);
        if self.cancelled.load(Ordering::Relaxed) {
            // The handle is gone (it set the flag under this lock): nobody wants the result.
            slot.stage = Stage::Closed;
            drop(slot);
            drop_quietly(result);
            None
        } else {
            slot.stage = Stage::Done(result);
            waker
        }
    }

    fn revoke(&self, error: JobError) -> bool {
        let mut slot = self.lock();
        if !matches!(slot.stage, Stage::Queued(..)) {
            return false;
        }
        let Stage::Queued(f, captured) =
            std::mem::replace(&mut slot.stage, Stage::Done(Err(error)))
        else {
            unreachable!("checked above")
        };
        let work = (f, captured);
        let waker = slot.side.take_waker();
        drop(slot);
        drop_quietly(work);
        if let Some(waker) = waker {
            wake_quietly(waker);
        }
        true
    }

    fn is_cancelled(&self) -> bool {
        // ORDERING: a hint for cooperative code; Relaxed is enough, the decision that matters
        // (run or not, deliver or not) is taken under the lock.
        self.cancelled.load(Ordering::Relaxed)
    }
}

impl<F, T> Completion<T> for Cell<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fn poll_done(&self, cx: Option<&mut Context<'_>>) -> Poll<Result<T, JobError>> {
        let mut slot = self.lock();
        match std::mem::replace(&mut slot.stage, Stage::Closed) {
            Stage::Done(result) => Poll::Ready(result),
            Stage::Closed => panic!("JobHandle polled after it returned its result"),
            pending => {
                slot.stage = pending;
                if let Some(cx) = cx {
                    match &mut slot.side {
                        Side::Waker(w) if w.will_wake(cx.waker()) => {}
                        side => *side = Side::Waker(cx.waker().clone()),
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.lock().stage, Stage::Done(_) | Stage::Closed)
    }

    fn cancel(&self) {
        let mut slot = self.lock();
        let side = std::mem::replace(&mut slot.side, Side::empty());
        let stage = std::mem::replace(&mut slot.stage, Stage::Closed);
        if let Stage::Running = stage {
            slot.stage = Stage::Running;
            self.cancelled.store(true, Ordering::Relaxed);
        }
        drop(slot);
        // All on the caller's thread, like any value it drops, and outside the lock.
        drop(side);
        match stage {
            Stage::Queued(f, captured) => drop_quietly((f, captured)),
            Stage::Done(result) => drop(result),
            Stage::Running | Stage::Closed => {}
        }
    }

    fn revoke(&self, error: JobError) -> bool {
        Runnable::revoke(self, error)
    }
}

/// A job in the queue. Dropping it unrun (the queue was torn down at shutdown, or the pool
/// refused it) tells its caller [`JobError::ShutDown`]: an accepted job is never silently lost.
pub(crate) struct Job(Option<Arc<dyn Runnable>>);

impl Job {
    pub(crate) fn run(mut self, record: &dyn Fn(Outcome)) {
        if let Some(cell) = self.0.take() {
            cell.run(record);
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(cell) = self.0.take() {
            cell.revoke(JobError::shut_down());
        }
    }
}

/// Makes a job for `f`, running under `captured`, and the handle that receives its result.
pub(crate) fn new_job<F, T>(f: F, captured: Captured) -> (Job, JobHandle<T>)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let cell = Arc::new(Cell {
        slot: Mutex::new(Slot {
            stage: Stage::Queued(f, captured),
            side: Side::empty(),
        }),
        cancelled: AtomicBool::new(false),
    });
    let handle = JobHandle {
        inner: Some(Arc::clone(&cell) as Arc<dyn Completion<T>>),
        pending: None,
    };
    (Job(Some(cell)), handle)
}

/// Called by a job that returns without doing its work because it was called off after a
/// worker had taken it (a batch that stopped meanwhile), so that the pool counts it as
/// cancelled, like a job whose handle was dropped before it started, and not as completed.
pub(crate) fn skip_this_job() {
    SKIPPED.with(|s| s.set(true));
}

/// True inside a job: `asyncify_pool::is_cancelled` and `settings::configure` ask this.
pub(crate) fn in_job() -> bool {
    CURRENT.with(|c| c.borrow().is_some())
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
    CURRENT.with(|c| c.borrow().as_ref().is_some_and(|job| job.is_cancelled()))
}

/// The result of one call: a future, and a blocking [`wait`](Self::wait) for sync callers.
///
/// * Awaiting it gives the program's output, or a [`JobError`]. It works on any executor: the
///   worker wakes whatever waker polled it last, and no runtime is needed.
/// * Dropping it before the job starts means the job never runs; dropping it while the job runs
///   lets the job finish, discards the result, and makes [`is_cancelled`] true inside the job.
///   So `tokio::time::timeout(d, handle)` abandons a call cleanly.
///
/// # Examples
///
/// ```
/// use asyncify_pool::WorkerPool;
///
/// let pool = WorkerPool::new(2);
/// let handle = pool.spawn(|| 6 * 7);
/// assert_eq!(futures::executor::block_on(handle), Ok(42));
/// assert_eq!(pool.spawn(|| "sync").wait(), Ok("sync"));
/// ```
#[must_use = "dropping a JobHandle cancels the job if it has not started"]
pub struct JobHandle<T> {
    /// `None` once the result was handed out.
    inner: Option<Arc<dyn Completion<T>>>,
    /// The job, while a bounded queue had no room for it yet (see `Builder::queue_capacity`).
    pending: Option<Box<dyn Submit>>,
}

/// A job that still has to be put into a full bounded queue; polled by its handle.
pub(crate) trait Submit: Send {
    /// Ready once the job is queued (or was resolved without queueing, e.g. at shutdown).
    /// With a context, registers it to be woken when the queue has room.
    fn poll_submit(&mut self, cx: Option<&mut Context<'_>>) -> Poll<()>;
}

impl<T: Send + 'static> JobHandle<T> {
    /// A handle that is already resolved, for calls refused before a job was made.
    pub(crate) fn ready(result: Result<T, JobError>) -> Self {
        let cell: Cell<fn() -> T, T> = Cell {
            slot: Mutex::new(Slot {
                stage: Stage::Done(result),
                side: Side::empty(),
            }),
            cancelled: AtomicBool::new(false),
        };
        JobHandle {
            inner: Some(Arc::new(cell)),
            pending: None,
        }
    }
}

impl<T> JobHandle<T> {
    /// Blocks the current thread until the job finishes, and returns its result.
    ///
    /// On a worker thread of a pool (inside a job), the waiting worker runs other queued jobs of
    /// its pool meanwhile, as rayon does, so waiting on a job of the same pool never deadlocks,
    /// even with one thread. Anywhere else it parks the thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::WorkerPool;
    ///
    /// let pool = WorkerPool::new(1);
    /// let inner = pool.clone();
    /// // The only worker waits on a job queued behind it, and runs it itself.
    /// let outer = pool.spawn(move || inner.spawn(|| 1).wait().unwrap() + 1);
    /// assert_eq!(outer.wait(), Ok(2));
    /// ```
    pub fn wait(mut self) -> Result<T, JobError> {
        if let Some(result) = crate::pool::wait_on_worker(&mut self) {
            return result;
        }
        THREAD_WAKER.with(|waker| {
            let mut cx = Context::from_waker(waker);
            loop {
                if let Poll::Ready(result) = self.poll_with(Some(&mut cx)) {
                    return result;
                }
                thread::park();
            }
        })
    }

    /// Like [`wait`](Self::wait), but gives up after `timeout` and returns `None`, keeping the
    /// handle (and so the job) alive.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::WorkerPool;
    /// use std::time::Duration;
    ///
    /// let pool = WorkerPool::new(1);
    /// let mut slow = pool.spawn(|| std::thread::sleep(Duration::from_millis(200)));
    /// assert_eq!(slow.wait_timeout(Duration::from_millis(1)), None);
    /// assert_eq!(slow.wait_timeout(Duration::from_secs(30)), Some(Ok(())));
    /// ```
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<T, JobError>> {
        let deadline = Instant::now() + timeout;
        THREAD_WAKER.with(|waker| {
            let mut cx = Context::from_waker(waker);
            loop {
                if let Poll::Ready(result) = self.poll_with(Some(&mut cx)) {
                    return Some(result);
                }
                let now = Instant::now();
                if now >= deadline {
                    return None;
                }
                thread::park_timeout(deadline - now);
            }
        })
    }

    /// True once the result is ready (or was already taken), so awaiting would not wait.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::WorkerPool;
    ///
    /// let pool = WorkerPool::new(1);
    /// let mut h = pool.spawn(|| 1);
    /// h.wait_timeout(std::time::Duration::from_secs(30)).unwrap().unwrap();
    /// assert!(h.is_finished());
    /// ```
    pub fn is_finished(&self) -> bool {
        match &self.inner {
            None => true,
            Some(inner) => inner.is_done(),
        }
    }

    /// True while the job waits for room in a full bounded queue (it is not queued yet).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// assert!(!pool.spawn(|| ()).is_waiting_for_room()); // unbounded queue: always queued
    /// ```
    pub fn is_waiting_for_room(&self) -> bool {
        self.pending.is_some()
    }

    /// Resolves a still-queued job with `error` so it never runs. True if it was still queued.
    pub(crate) fn revoke(&self, error: JobError) -> bool {
        self.inner.as_ref().is_some_and(|i| i.revoke(error))
    }

    /// Hands the handle a job that must still be queued when the bounded queue has room.
    pub(crate) fn set_pending(&mut self, submit: Box<dyn Submit>) {
        self.pending = Some(submit);
    }

    pub(crate) fn poll_with(
        &mut self,
        mut cx: Option<&mut Context<'_>>,
    ) -> Poll<Result<T, JobError>> {
        if let Some(pending) = &mut self.pending {
            if pending.poll_submit(cx.as_deref_mut()).is_pending() {
                return Poll::Pending;
            }
            self.pending = None;
        }
        let inner = self
            .inner
            .as_ref()
            .expect("JobHandle polled after it returned its result");
        let out = inner.poll_done(cx);
        if out.is_ready() {
            self.inner = None;
        }
        out
    }
}

impl<T> Future for JobHandle<T> {
    type Output = Result<T, JobError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_with(Some(cx))
    }
}

impl<T> Drop for JobHandle<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.cancel();
        }
    }
}

impl<T> fmt::Debug for JobHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("returned", &self.inner.is_none())
            .field("waiting_for_room", &self.pending.is_some())
            .finish()
    }
}

/// Wakes a thread parked in [`JobHandle::wait`] (or in a batch's blocking drive).
pub(crate) struct Unparker(pub(crate) Thread);

impl Wake for Unparker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

thread_local! {
    /// One waker per thread for `wait`, so a blocking wait allocates nothing.
    static THREAD_WAKER: Waker = Waker::from(Arc::new(Unparker(thread::current())));
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! The decisions taken under a cell's lock, checked over every interleaving:
    //! `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`.
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::thread;
    use std::sync::atomic::Ordering::SeqCst;

    fn nothing_captured() -> Captured {
        Captured::default()
    }

    fn outcome_code(o: Outcome) -> usize {
        match o {
            Outcome::Completed => 1,
            Outcome::Panicked => 2,
            Outcome::Skipped => 3,
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
            let (job, handle) = new_job(move || r.fetch_add(1, SeqCst), nothing_captured());
            let o = outcome.clone();
            let worker = thread::spawn(move || job.run(&|x| o.store(outcome_code(x), SeqCst)));
            drop(handle);
            worker.join().unwrap();
            match outcome.load(SeqCst) {
                1 => assert_eq!(runs.load(SeqCst), 1),
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
            let runs = loom::sync::Arc::new(AtomicUsize::new(0));
            let r = runs.clone();
            let (job, mut handle) = new_job(
                move || {
                    r.fetch_add(1, SeqCst);
                    7
                },
                nothing_captured(),
            );
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

    /// The queue is torn down (shutdown) while the caller polls: the caller is either woken
    /// with `ShutDown` or finds it on its next poll; no wake-up is lost.
    #[test]
    fn shutdown_drop_races_a_poll() {
        loom::model(|| {
            let (job, mut handle) = new_job(|| 1, nothing_captured());
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

    /// A job that calls `skip_this_job` is reported as skipped, and the mark does not leak to
    /// the next job on the thread.
    #[test]
    fn a_job_that_skips_itself_is_reported_as_skipped() {
        let outcomes = RefCell::new(Vec::new());
        let record = |o| outcomes.borrow_mut().push(o);
        let (job, handle) = new_job(skip_this_job, Captured::default());
        job.run(&record);
        let (job, other) = new_job(|| 1, Captured::default());
        job.run(&record);
        assert_eq!(*outcomes.borrow(), [Outcome::Skipped, Outcome::Completed]);
        assert!(handle.is_finished() && other.is_finished());
    }

    /// The cell of a small call stays a 72-byte request, an 80-byte malloc chunk: one more word
    /// makes it a 96-byte chunk, which took throughput from ×0.59 to ×0.75 of the floor in one
    /// A/B run (BENCHMARKS.md). The waker and the handed-back context share `Side` for this.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_small_calls_cell_fits_an_80_byte_chunk() {
        assert_eq!(std::mem::size_of::<Side>(), 16);
        assert_eq!(std::mem::size_of::<Captured>(), 8);
        let request = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<Cell<fn(), ()>>();
        assert!(request <= 72, "the cell grew to {request} bytes");
    }
}
