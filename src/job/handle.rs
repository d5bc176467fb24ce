//! [`JobHandle`]: the caller's side of a job. Its blocking [`wait`](JobHandle::wait) lives with
//! the worker loop in `pool::worker`, because waiting inside a job *is* that loop.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use super::cell::{Cell, Stage};
use super::{Completion, Job, Runnable};
use crate::error::JobError;

/// The result of one call: a future, and a blocking [`wait`](Self::wait) for sync callers.
///
/// * Awaiting it gives the program's output, or a [`JobError`]. It works on any executor: the
///   worker wakes whatever waker polled it last, and no runtime is needed.
/// * Dropping it before the job starts means the job never runs; dropping it while the job runs
///   lets the job finish, discards the result, and makes [`is_cancelled`](crate::is_cancelled)
///   true inside the job. So `tokio::time::timeout(d, handle)` abandons a call cleanly.
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
}

/// A job that still has to be put into a full bounded queue; polled by its handle.
pub(crate) trait Submit: Send {
    /// Ready once the job is queued (or was resolved without queueing, e.g. at shutdown).
    /// With a context, registers it to be woken when the queue has room.
    fn poll_submit(&mut self, cx: Option<&mut Context<'_>>) -> Poll<()>;
    /// The job itself, for a worker of the pool that waits on it and runs it at once.
    fn into_job(self: Box<Self>) -> Option<Job>;
}

impl<T> JobHandle<T> {
    pub(super) fn new(inner: Arc<dyn Completion<T>>, pool: u64) -> Self {
        JobHandle {
            inner: Some(inner),
            pending: None,
            pool,
        }
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
    /// h.wait_timeout(std::time::Duration::MAX).unwrap().unwrap();
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

    /// Hands the handle a job that must still be queued when the bounded queue has room.
    pub(crate) fn set_pending(&mut self, submit: Box<dyn Submit>) {
        self.pending = Some(submit);
    }

    /// The job, if it still waits for room: whoever takes it runs it instead of queueing it.
    pub(crate) fn take_pending(&mut self) -> Option<Job> {
        self.pending.take().and_then(|pending| pending.into_job())
    }

    /// The job as something a waiting worker can start out of line (it does nothing if the
    /// job has left the queue meanwhile). `None` once the result was handed out.
    pub(crate) fn out_of_line(&self) -> Option<Arc<dyn Runnable>> {
        self.inner
            .as_ref()
            .map(|inner| Arc::clone(inner).runnable())
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
        let cell: Cell<fn() -> T, T> = Cell::new(Stage::Done(result.map_err(Box::new)));
        JobHandle::new(Arc::new(cell), 0)
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
        // A job still waiting for room is dropped with `pending`: it never runs.
        if let Some(inner) = self.inner.take() {
            inner.cancel();
            crate::guard::drop("a job's context", inner);
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

/// The waker that unparks this thread.
pub(crate) fn thread_waker() -> Waker {
    THREAD_WAKER.with(Waker::clone)
}
