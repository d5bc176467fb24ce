//! A program as a `tower::Service`, ready when the pool's queue has room.

use std::fmt;
use std::task::{Context, Poll, Waker};

use crate::error::{JobError, Refusal};
use crate::job::JobHandle;
use crate::pool::Reserved;
use crate::program::{AsyncProgram, Program};

impl<P: ?Sized> AsyncProgram<P> {
    /// This program as a [`tower_service::Service`] (see [`ProgramService`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use tower_service::Service;
    ///
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let mut double = pool.asyncify(|x: u32| x * 2).service();
    /// let out = pollster::block_on(async {
    ///     std::future::poll_fn(|cx| double.poll_ready(cx)).await?;
    ///     double.call(21).await
    /// });
    /// assert_eq!(out, Ok(42));
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
    pub fn service(&self) -> ProgramService<P> {
        ProgramService {
            program: self.clone(),
            reserved: None,
            registered: None,
        }
    }
}

/// A type-erased [`ProgramService`], the service of a [`BoxProgram`](crate::BoxProgram):
/// one nameable type for every program service from `I` to `O` (wrapped in tower layers, it
/// is what a type annotation has to spell out).
///
/// # Examples
///
/// ```
/// use asyncify_pool::tower::BoxProgramService;
///
/// let pool = asyncify_pool::WorkerPool::new(1);
/// let service: BoxProgramService<u8, u8> = pool.asyncify(|x: u8| x).boxed().service();
/// # let _ = service;
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub type BoxProgramService<I, O> = ProgramService<dyn Program<I, Output = O>>;

/// An [`AsyncProgram`] as a [`tower_service::Service`], made by
/// [`AsyncProgram::service`].
///
/// * `poll_ready` takes a slot in the pool's queue for the next `call`. With an unbounded
///   queue (the default) it is always ready; with
///   [`Builder::queue_capacity`](crate::Builder::queue_capacity) it returns `Pending` while the
///   queue is full and wakes the task when a worker frees a slot. So tower middleware that
///   relies on readiness (`load_shed`, `buffer`, `timeout` around a `ServiceBuilder`) sees the
///   pool's backpressure. After shutdown it fails with [`JobError::ShutDown`].
/// * `call` queues the run in that slot and returns its [`JobHandle`] as the response future:
///   the settings overrides and tracing span in force at `call` go with it, and dropping the
///   future cancels the call, as for [`AsyncProgram::call`]. A `call` without a `poll_ready`
///   before it (against tower's contract) is queued as [`AsyncProgram::call`] would be.
///
/// A ready service holds one queue slot until its `call` (or until it is dropped), and
/// `stats().queued` does not count it. A clone is a new service over the same program: it is
/// not ready until polled itself.
///
/// # Examples
///
/// ```
/// use std::task::{Context, Poll};
/// use tower_service::Service;
///
/// let pool = asyncify_pool::WorkerPool::builder().threads(1).queue_capacity(1).build().unwrap();
/// let gate = std::sync::Arc::new(std::sync::Barrier::new(2));
/// let g = gate.clone();
/// let (started_tx, started) = std::sync::mpsc::channel();
/// let _busy = pool.spawn(move || { started_tx.send(()).unwrap(); g.wait(); });
/// started.recv().unwrap();                           // the one worker is busy
/// let _queued = pool.spawn(|| ());                   // fills the one queue slot
///
/// let mut service = pool.asyncify(|x: u8| x).service();
/// let mut cx = Context::from_waker(std::task::Waker::noop());
/// assert!(service.poll_ready(&mut cx).is_pending()); // backpressure: the queue is full
/// gate.wait();
/// let out = pollster::block_on(async {
///     std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
///     service.call(7).await
/// });
/// assert_eq!(out, Ok(7));
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub struct ProgramService<P: ?Sized> {
    program: AsyncProgram<P>,
    /// The slot taken by `poll_ready` for the next `call`.
    reserved: Option<Reserved>,
    /// The waker registered while the queue was full, and in which round.
    registered: Option<(usize, Waker)>,
}

impl<P, I> tower_service::Service<I> for ProgramService<P>
where
    P: Program<I> + ?Sized,
    I: Send + 'static,
{
    type Response = P::Output;
    type Error = JobError;
    type Future = JobHandle<P::Output>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), JobError>> {
        if self.reserved.is_some() {
            if !self.program.pool().is_shut_down() {
                return Poll::Ready(Ok(()));
            }
            self.reserved = None; // the slot is of no use any more
        }
        match self.program.pool().poll_reserve(cx, &mut self.registered) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(reserved)) => {
                self.reserved = Some(reserved);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(Refusal::ShutDown)) => Poll::Ready(Err(JobError::shut_down())),
            Poll::Ready(Err(Refusal::Full)) => unreachable!("poll_reserve waits while full"),
        }
    }

    fn call(&mut self, input: I) -> JobHandle<P::Output> {
        let Some(reserved) = self.reserved.take() else {
            return self.program.call(input);
        };
        if let Err(e) = self.program.follow_setting() {
            drop(reserved);
            crate::guard::drop("the input of a refused call", input);
            return JobHandle::ready(Err(e));
        }
        self.program.call_reserved(reserved, input)
    }
}

impl<P: ?Sized> Clone for ProgramService<P> {
    fn clone(&self) -> Self {
        self.program.service()
    }
}

impl<P: ?Sized> Drop for ProgramService<P> {
    fn drop(&mut self) {
        // A registered waker (user code) leaves the room's list, through the guard.
        self.program.pool().unregister_room(self.registered.take());
    }
}

impl<P: ?Sized> fmt::Debug for ProgramService<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProgramService")
            .field("program", &self.program)
            .field("ready", &self.reserved.is_some())
            .finish()
    }
}
