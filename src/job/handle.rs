//! [`JobHandle`]: the caller's side of a job. Its blocking [`wait`](JobHandle::wait) lives with
//! the worker loop in `pool::worker`, because waiting inside a job *is* that loop.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use super::cell::{Cell, Stage};
use super::{Abort, Completion, Job, Runnable};
use crate::error::JobError;

/// The result of one call: a future, and a blocking [`wait`](Self::wait) for sync callers.
///
/// * Awaiting it gives the program's output, or a [`JobError`]. It works on any executor: the
///   worker wakes whatever waker polled it last, and no runtime is needed.
/// * Dropping it before the job starts means the job never runs; dropping it while the job runs
///   lets the job finish, discards the result, and makes [`is_cancelled`](crate::is_cancelled)
///   true inside the job. So `tokio::time::timeout(d, handle)` abandons a call cleanly.
/// * Polled before its job is done, it asks to be polled again at once (it wakes its own
///   waker) on its first 16 such polls, and only then waits for the worker's wake-up: a short
///   job's answer is found on a re-poll, without the executor's thread parking and being woken
///   for it. Other tasks of the executor run in between, as after any yield.
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
    /// The id of the pool the job runs on (0: none), so that a worker of that pool waiting on
    /// this handle may start the job itself.
    pool: u64,
    /// Polls left that, finding the job not done, ask to be polled again at once (see the
    /// `Future` impl).
    yields: u8,
}

/// How many times a handle polled before its job is done asks its executor to poll it again
/// at once, before it waits for the worker's wake-up. A short job is then found done on a
/// re-poll, and the executor's thread neither parks nor is woken for it: on the 2-core
/// machine a `program.call` round trip went from about 4.5 µs to 0.6–0.7 µs (BENCHMARKS.md,
/// "A handle yields before it waits"). A long job costs 16 extra polls, once.
const YIELDS_BEFORE_WAITING: u8 = 16;

/// A job that still has to be put into a full bounded queue; polled by its handle.
pub(crate) trait Submit: Send {
    /// Ready once the job is queued (or was resolved without queueing, e.g. at shutdown).
    /// With a context, registers it to be woken when the queue has room.
    fn poll_submit(&mut self, cx: Option<&mut Context<'_>>) -> Poll<()>;
    /// The job itself, for a worker of the pool that waits on it and runs it at once.
    fn into_job(self: Box<Self>) -> Option<Job>;
    /// Queues the job when the queue has room, with nobody polling (for a detached handle).
    fn detach(self: Box<Self>);
}

impl<T> JobHandle<T> {
    /// A handle on `inner`, a job of the pool with id `pool` (0: none).
    pub(crate) fn new(inner: Arc<dyn Completion<T>>, pool: u64) -> Self {
        JobHandle {
            inner: Some(inner),
            pending: None,
            pool,
            yields: YIELDS_BEFORE_WAITING,
        }
    }

    /// True once the result is ready (or was already taken), so awaiting would not wait. After
    /// an [`AbortHandle::abort`] that is at once, while the job may still run; see
    /// [`AbortHandle::is_finished`] for whether it has returned.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::WorkerPool;
    ///
    /// let pool = WorkerPool::new(1);
    /// let mut h = pool.spawn(|| 1);
    /// h.wait_timeout(std::time::Duration::MAX).unwrap().unwrap();
    /// assert!(h.is_finished());
    /// ```
    pub fn is_finished(&self) -> bool {
        match &self.inner {
            None => true,
            Some(inner) => inner.is_done(),
        }
    }

    /// Lets the job run to its end with nobody waiting for it: its output is dropped on the
    /// worker (as smol's `Task::detach`). Dropping the handle instead cancels the job.
    ///
    /// A job still waiting for room in a full bounded queue is queued when room frees up, as
    /// if its handle were still polled. At shutdown a detached job is like any other: queued
    /// ones run, and those the pool cannot run are dropped unrun.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let (tx, rx) = mpsc::channel();
    /// pool.spawn(move || tx.send("written to the audit log").unwrap()).detach();
    /// assert_eq!(rx.recv().unwrap(), "written to the audit log");
    /// ```
    pub fn detach(mut self) {
        if let Some(pending) = self.pending.take() {
            pending.detach();
        }
        // Not `cancel`: the job goes on, and its runner drops the output (if it is done
        // already, this drops it here).
        if let Some(inner) = self.inner.take() {
            inner.detach();
            crate::guard::drop("a detached job's context", inner);
        }
    }

    /// A handle that cancels this job through a shared reference, from anywhere (as tokio's
    /// `AbortHandle`); it does not receive the result.
    ///
    /// [`AbortHandle::abort`] has the effect that dropping this handle has on the job (a job
    /// that has not started never runs; a running one sees [`is_cancelled`](crate::is_cancelled)
    /// and its output is discarded), and this handle then resolves at once to
    /// [`JobError::Cancelled`], without waiting for a running job to return. Aborting a job
    /// that has finished changes nothing: its result is still delivered. (One exception to
    /// "at once": a job that its waiter started itself, inside a [`wait`](Self::wait) in a job
    /// of the same pool, runs on the waiter's own stack, so that `wait` returns when the job
    /// does; the job sees `is_cancelled()` meanwhile.)
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use asyncify_pool::{is_cancelled, WorkerPool};
    ///
    /// let pool = WorkerPool::new(1);
    /// let handle = pool.spawn(|| {
    ///     while !is_cancelled() {
    ///         std::thread::sleep(Duration::from_millis(1));
    ///     }
    ///     "stopped"
    /// });
    /// let abort = handle.abort_handle();
    /// abort.abort();
    /// // The handle resolves at once; the job sees `is_cancelled()` and ends on its own.
    /// assert!(handle.wait().unwrap_err().is_cancelled());
    /// while !abort.is_finished() {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// ```
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle {
            cell: self
                .inner
                .as_ref()
                .map(|inner| Arc::clone(inner).abort_target()),
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

    /// True while no worker has started the job (it is queued, or waits for room).
    pub(crate) fn is_queued(&self) -> bool {
        self.pending.is_some() || self.inner.as_ref().is_some_and(|i| i.is_queued())
    }

    /// The id of the pool the job runs on (0 for a handle that was resolved at once).
    pub(crate) fn pool(&self) -> u64 {
        self.pool
    }

    /// Resolves a still-queued job with `error` so it never runs. True if it was still queued.
    pub(crate) fn revoke(&self, error: JobError) -> bool {
        self.inner.as_ref().is_some_and(|i| i.revoke(error))
    }

    /// Makes [`is_cancelled`](crate::is_cancelled) true inside the job if it runs, while the
    /// handle still receives its result (a stopping batch waits for its running items).
    pub(crate) fn ask_to_stop(&self) {
        if let Some(inner) = &self.inner {
            inner.ask_to_stop();
        }
    }

    /// The job runs on a spare thread under its waiter's permit (see `pool::worker`).
    pub(crate) fn on_spare(&self) {
        if let Some(inner) = &self.inner {
            inner.on_spare();
        }
    }

    /// Hands the handle a job that must still be queued when the bounded queue has room.
    pub(crate) fn set_pending(&mut self, submit: Box<dyn Submit>) {
        self.pending = Some(submit);
    }

    /// The job, if it still waits for room: whoever takes it runs it instead of queueing it.
    pub(crate) fn take_pending(&mut self) -> Option<Job> {
        match self.pending.take() {
            Some(pending) => pending.into_job(),
            None => self.inner.as_ref().and_then(|inner| inner.take_held()),
        }
    }

    /// The job as something a waiting worker can start out of line (it does nothing if the
    /// job has left the queue meanwhile). `None` once the result was handed out.
    pub(crate) fn out_of_line(&self) -> Option<Arc<dyn Runnable>> {
        self.inner
            .as_ref()
            .and_then(|inner| Arc::clone(inner).out_of_line())
    }

    pub(crate) fn poll_with(
        &mut self,
        mut cx: Option<&mut Context<'_>>,
    ) -> Poll<Result<T, JobError>> {
        if let Some(pending) = &mut self.pending {
            // The waker goes into the cell too, so that an abort wakes it, and an aborted job
            // need not wait for room: it will never run.
            let inner = self.inner.as_ref().expect("a pending handle has its cell");
            if let Poll::Ready(out) = inner.poll_done(cx.as_deref_mut()) {
                crate::guard::drop("an aborted job", self.pending.take());
                crate::guard::drop("a finished job's context", self.inner.take());
                return Poll::Ready(out);
            }
            if pending.poll_submit(cx.as_deref_mut()).is_pending() {
                return Poll::Pending;
            }
            // Its registration in the room holds a clone of a user's waker.
            crate::guard::drop("a waker", self.pending.take());
        }
        let inner = self
            .inner
            .as_ref()
            .expect("JobHandle polled after it returned its result");
        let out = inner.poll_done(cx);
        if out.is_ready() {
            // Possibly the cell's last owner, with the caller's context in it (user values):
            // through the guard, so that a panicking destructor cannot cost this result.
            crate::guard::drop("a finished job's context", self.inner.take());
        }
        out
    }
}

impl<T: Send + 'static> JobHandle<T> {
    /// A handle that is already resolved, for calls refused before a job was made.
    pub(crate) fn ready(result: Result<T, JobError>) -> Self {
        let cell: Cell<fn() -> T, T> = Cell::new(Stage::Done(result.map_err(Box::new)), false);
        JobHandle::new(Arc::new(cell), 0)
    }
}

impl<T> Future for JobHandle<T> {
    type Output = Result<T, JobError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.yields > 0 && this.pending.is_none() {
            if let Some(inner) = &this.inner {
                if !inner.may_be_ready() {
                    // Surely pending: yield without a look inside (no lock, no waker left
                    // with the job, so its worker has nobody to wake if it ends meanwhile).
                    this.yields -= 1;
                    if crate::guard::returned("a waker", || cx.waker().wake_by_ref()) {
                        return Poll::Pending;
                    }
                    // The wake-up panicked, so nothing polls the task again: the job must hold
                    // its waker, as if there were no yields left.
                    this.yields = 0;
                }
            }
        }
        let out = this.poll_with(Some(cx));
        // Queued or running (not waiting for room in a bounded queue, which takes a worker's
        // whole job): yield rather than wait, a few times. The waker is registered anyway.
        if out.is_pending() && this.pending.is_none() && this.yields > 0 {
            this.yields -= 1;
            crate::guard::quietly("a waker", || cx.waker().wake_by_ref());
        }
        out
    }
}

impl<T> Drop for JobHandle<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.cancel();
            crate::guard::drop("a job's context", inner);
        }
        // A job still waiting for room never runs; with it goes the last copy of the waker it
        // registered (user code).
        if let Some(pending) = self.pending.take() {
            crate::guard::drop("a job waiting for room", pending);
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

/// Cancels a job through a shared reference, made by [`JobHandle::abort_handle`]. Cheap to
/// clone; it keeps the job's small shared cell alive, not the job's result.
///
/// # Examples
///
/// ```
/// use asyncify_pool::WorkerPool;
///
/// let pool = WorkerPool::new(1);
/// let busy = pool.spawn(|| std::thread::sleep(std::time::Duration::from_millis(50)));
/// let queued = pool.spawn(|| "never runs");
/// let abort = queued.abort_handle();
/// std::thread::spawn(move || abort.abort()).join().unwrap();
/// assert!(queued.wait().unwrap_err().is_cancelled());
/// busy.wait().unwrap();
/// ```
#[derive(Clone)]
pub struct AbortHandle {
    /// `None` for a handle whose result was already taken.
    cell: Option<Arc<dyn Abort>>,
}

impl AbortHandle {
    /// Cancels the job, as dropping its [`JobHandle`] would, and resolves that handle to
    /// [`JobError::Cancelled`] (see [`JobHandle::abort_handle`]). Does nothing once the job
    /// has finished. Calling it again is fine.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let done = pool.spawn(|| 1);
    /// let abort = done.abort_handle();
    /// while !abort.is_finished() { std::thread::yield_now(); }
    /// abort.abort(); // too late: the result stays
    /// assert_eq!(done.wait(), Ok(1));
    /// ```
    pub fn abort(&self) {
        if let Some(cell) = &self.cell {
            cell.abort(super::Cut::Cancelled);
        }
    }

    /// True once the job is over: it returned (an aborted job that was running counts once it
    /// returns, unlike [`JobHandle::is_finished`], which turns true at the abort), was
    /// cancelled before it started, or will never run (it was still queued, or its handle
    /// still waited for room in a full bounded queue, when the pool shut down).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let h = pool.spawn(|| 1);
    /// let abort = h.abort_handle();
    /// assert_eq!(h.wait(), Ok(1));
    /// assert!(abort.is_finished());
    /// ```
    pub fn is_finished(&self) -> bool {
        self.cell.as_ref().is_none_or(|cell| cell.is_finished())
    }
}

impl Drop for AbortHandle {
    fn drop(&mut self) {
        // Possibly the cell's last owner, with the caller's context in it (user values).
        crate::guard::drop("an abort handle's job", self.cell.take());
    }
}

impl fmt::Debug for AbortHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbortHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Wakes a thread parked in a blocking wait.
struct Unparker(Thread);

impl Wake for Unparker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

thread_local! {
    /// This thread's waker for blocking waits: one per thread, so a wait allocates nothing.
    static THREAD_WAKER: Waker = Waker::from(Arc::new(Unparker(thread::current())));
}

/// The waker that unparks this thread: a new one in a thread-local's destructor, once this
/// thread's is gone.
pub(crate) fn thread_waker() -> Waker {
    THREAD_WAKER
        .try_with(Waker::clone)
        .unwrap_or_else(|_| Waker::from(Arc::new(Unparker(thread::current()))))
}
