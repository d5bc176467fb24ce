//! A batch being consumed, each a thin face over the driver that does the work:
//! [`BatchFuture`] when it is awaited, [`Completions`] to stream its results as they finish, and
//! [`CompletionsIter`] to iterate over them, blocking.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use super::builder::Batch;
use super::driver::{Driver, Item};
use super::result::{BatchResult, Progress};
use crate::error::JobError;
use crate::program::Program;

impl<P: ?Sized, I> IntoFuture for Batch<P, I>
where
    P: Program<I>,
    I: Send + 'static,
{
    type Output = BatchResult<I, P::Output>;
    type IntoFuture = BatchFuture<P, I>;

    fn into_future(self) -> BatchFuture<P, I> {
        let total = self.inputs.len();
        BatchFuture {
            driver: Driver::new(self),
            results: (0..total).map(|_| None).collect(),
            finished: false,
        }
    }
}

/// The future of a running batch, made by awaiting a [`Batch`] (`IntoFuture`). Resolves to a
/// [`BatchResult`]. Dropping it stops the batch: queued items never start, running ones see
/// [`is_cancelled`](crate::is_cancelled).
///
/// # Examples
///
/// ```
/// use asyncify_pool::{BatchFuture, WorkerPool};
/// use std::future::IntoFuture;
///
/// let pool = WorkerPool::new(2);
/// let id = pool.asyncify(|x: u8| x);
/// let future: BatchFuture<_, u8> = id.batch(0..3).into_future();
/// assert_eq!(pollster::block_on(future).done(), 3);
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct BatchFuture<P: ?Sized, I>
where
    P: Program<I>,
{
    pub(super) driver: Driver<P, I>,
    results: Vec<Option<Result<P::Output, JobError>>>,
    finished: bool,
}

impl<P: ?Sized, I> BatchFuture<P, I>
where
    P: Program<I>,
    I: Send + 'static,
{
    pub(super) fn place(&mut self, (index, result): Item<P::Output>) {
        self.results[index] = Some(result);
    }

    pub(super) fn finish(&mut self) -> BatchResult<I, P::Output> {
        self.finished = true;
        let d = &mut self.driver;
        BatchResult {
            results: std::mem::take(&mut self.results)
                .into_iter()
                .map(|r| r.expect("a completed batch has a result for every item"))
                .collect(),
            done: d.done,
            failed: d.failed,
            not_started: d.not_started,
            stopped: d.stopped,
            elapsed: d.progress().elapsed,
            failed_inputs: d.take_failed_inputs(),
            unstarted_inputs: d.take_unstarted_inputs(),
        }
    }
}

// No field is ever pinned (the inputs and outputs sit in plain `Vec`s and are moved freely), so
// the future is `Unpin` whatever `I` and the output are.
impl<P: ?Sized, I> Unpin for BatchFuture<P, I> where P: Program<I> {}

impl<P: ?Sized, I> Future for BatchFuture<P, I>
where
    P: Program<I>,
    I: Send + 'static,
{
    type Output = BatchResult<I, P::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        assert!(!this.finished, "BatchFuture polled after it completed");
        loop {
            match this.driver.poll_next_item(cx) {
                Poll::Ready(Some(item)) => this.place(item),
                Poll::Ready(None) => return Poll::Ready(this.finish()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<P: ?Sized, I> fmt::Debug for BatchFuture<P, I>
where
    P: Program<I>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchFuture")
            .field("progress", &self.driver.progress())
            .finish_non_exhaustive()
    }
}

/// A running batch's results as they finish, as `(input index, result)`, made by
/// [`Batch::completions`]: a [`Stream`] for async callers, and [`IntoIterator`] (a blocking
/// [`CompletionsIter`]) for sync ones. It ends when every item is accounted for. Dropping it
/// stops the batch like dropping a [`BatchFuture`].
///
/// Two types rather than one implementing both traits, so that `.next()` or `.map()` are not
/// ambiguous where `StreamExt` is in scope.
///
/// # Examples
///
/// ```
/// use asyncify_pool::WorkerPool;
/// use futures::StreamExt; // or tokio_stream::StreamExt
///
/// let pool = WorkerPool::new(4);
/// let double = pool.asyncify(|x: u32| x * 2);
/// let total = pollster::block_on(async {
///     let mut total = 0;
///     let mut stream = double.batch(0..10).completions();
///     while let Some((_index, result)) = stream.next().await {
///         total += result.unwrap();
///     }
///     total
/// });
/// assert_eq!(total, 90);
/// ```
#[must_use = "a batch does nothing until its completions are pulled"]
pub struct Completions<P: ?Sized, I>
where
    P: Program<I>,
{
    pub(super) driver: Driver<P, I>,
}

impl<P: ?Sized, I> Completions<P, I>
where
    P: Program<I>,
    I: Send + 'static,
{
    /// The counts so far (everything, once the iterator or stream has ended).
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    ///
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// let mut c = pool.asyncify(|x: u8| x).batch(0..5).completions();
    /// assert_eq!(c.progress().finished(), 0);
    /// while pollster::block_on(c.next()).is_some() {}
    /// assert_eq!(c.progress().done, 5);
    /// ```
    pub fn progress(&self) -> Progress {
        self.driver.progress()
    }

    /// True if the batch stopped because more than `max_errors` items failed.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    ///
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let mut c = pool.asyncify(|x: u8| x).batch(0..5).fail_if(|_| true).max_errors(0).completions();
    /// while pollster::block_on(c.next()).is_some() {}
    /// assert!(c.is_stopped());
    /// ```
    pub fn is_stopped(&self) -> bool {
        self.driver.stopped
    }

    /// Takes the inputs of the items failed so far, in input order (only with
    /// [`Batch::keep_failed_inputs`]; see [`BatchResult::failed_inputs`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    ///
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// let p = pool.asyncify(|x: u8| x);
    /// let mut c = p.batch(0..4).fail_if(|x| *x == 3).keep_failed_inputs().completions();
    /// while pollster::block_on(c.next()).is_some() {}
    /// assert_eq!(c.take_failed_inputs(), [(3, 3)]);
    /// ```
    pub fn take_failed_inputs(&mut self) -> Vec<(usize, I)> {
        self.driver.take_failed_inputs()
    }

    /// Takes the inputs of the items that never started so far, in input order (see
    /// [`BatchResult::unstarted_inputs`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    ///
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let p = pool.asyncify(|x: u8| x);
    /// let mut c = p.batch(0..3).fail_if(|_| true).max_errors(0).concurrency(1).completions();
    /// while pollster::block_on(c.next()).is_some() {}
    /// assert_eq!(c.take_unstarted_inputs(), [(1, 1), (2, 2)]);
    /// ```
    pub fn take_unstarted_inputs(&mut self) -> Vec<(usize, I)> {
        self.driver.take_unstarted_inputs()
    }
}

impl<P: ?Sized, I> IntoIterator for Completions<P, I>
where
    P: Program<I>,
    I: Send + 'static,
{
    type Item = (usize, Result<P::Output, JobError>);
    type IntoIter = CompletionsIter<P, I>;

    fn into_iter(self) -> CompletionsIter<P, I> {
        CompletionsIter { inner: self }
    }
}

// As for `BatchFuture`: nothing inside is ever pinned.
impl<P: ?Sized, I> Unpin for Completions<P, I> where P: Program<I> {}

impl<P: ?Sized, I> Stream for Completions<P, I>
where
    P: Program<I>,
    I: Send + 'static,
{
    type Item = (usize, Result<P::Output, JobError>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().driver.poll_next_item(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.driver.left()
    }
}

impl<P: ?Sized, I> fmt::Debug for Completions<P, I>
where
    P: Program<I>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completions")
            .field("progress", &self.driver.progress())
            .finish_non_exhaustive()
    }
}

/// The blocking iterator over a batch's results as they finish, `(input index, result)`:
/// [`Completions`] as an [`Iterator`]. Each `next` blocks this thread until a result is in
/// (inside a pool job, the worker runs queued jobs meanwhile, as in [`Batch::wait`]).
///
/// # Examples
///
/// ```
/// let pool = asyncify_pool::WorkerPool::new(4);
/// let double = pool.asyncify(|x: u32| x * 2);
/// let mut outputs = vec![0; 5];
/// for (index, result) in double.batch(0..5).completions() {
///     outputs[index] = result.unwrap();
/// }
/// assert_eq!(outputs, [0, 2, 4, 6, 8]);
/// ```
#[must_use = "iterators are lazy and do nothing unless consumed"]
pub struct CompletionsIter<P: ?Sized, I>
where
    P: Program<I>,
{
    inner: Completions<P, I>,
}

impl<P: ?Sized, I> CompletionsIter<P, I>
where
    P: Program<I>,
{
    /// The [`Completions`] behind this iterator, for its counts.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// let mut items = pool.asyncify(|x: u8| x).batch(0..3).completions().into_iter();
    /// items.by_ref().for_each(drop);
    /// assert_eq!(items.get_ref().progress().done, 3);
    /// ```
    pub fn get_ref(&self) -> &Completions<P, I> {
        &self.inner
    }

    /// The [`Completions`] behind this iterator, to take inputs back from it.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let p = pool.asyncify(|x: u8| x);
    /// let mut items = p.batch(0..3).fail_if(|_| true).max_errors(0).concurrency(1).completions().into_iter();
    /// items.by_ref().for_each(drop);
    /// assert_eq!(items.get_mut().take_unstarted_inputs(), [(1, 1), (2, 2)]);
    /// ```
    pub fn get_mut(&mut self) -> &mut Completions<P, I> {
        &mut self.inner
    }
}

impl<P: ?Sized, I> Iterator for CompletionsIter<P, I>
where
    P: Program<I>,
    I: Send + 'static,
{
    type Item = (usize, Result<P::Output, JobError>);

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.driver.next_blocking()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.driver.left()
    }
}

impl<P: ?Sized, I> fmt::Debug for CompletionsIter<P, I>
where
    P: Program<I>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionsIter")
            .field("progress", &self.inner.driver.progress())
            .finish_non_exhaustive()
    }
}
