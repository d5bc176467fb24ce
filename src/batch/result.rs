//! What a batch tells its caller: [`Progress`] while it runs, and [`BatchResult`] once every
//! item is accounted for.

use std::time::Duration;

use crate::error::JobError;

// Named only in the docs.
#[cfg(doc)]
use {super::builder::Batch, super::running::Completions};

/// Where a batch stands: counts of finished items and the time since it started.
///
/// Passed to [`Batch::on_progress`], and returned by [`Completions::progress`].
///
/// # Examples
///
/// ```
/// let pool = asyncify_pool::WorkerPool::new(2);
/// let id = pool.asyncify(|x: u8| x);
/// let mut items = id.batch(0..3).completions().into_iter();
/// items.by_ref().for_each(drop);
/// let p = items.get_ref().progress();
/// assert_eq!((p.done, p.failed, p.not_started, p.total), (3, 0, 0, 3));
/// assert_eq!(p.finished(), p.total);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Items whose program returned (and did not match `fail_if`).
    pub done: usize,
    /// Items whose program panicked or whose output matched `fail_if`.
    pub failed: usize,
    /// Items that never started: cancelled when the batch stopped, or refused by a shut-down pool.
    pub not_started: usize,
    /// Items in the batch.
    pub total: usize,
    /// Time since the batch started running (its first poll or `wait`).
    pub elapsed: Duration,
}

impl Progress {
    /// Items accounted for: `done + failed + not_started`.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let mut items = pool.asyncify(|x: u8| x).batch([1, 2]).completions().into_iter();
    /// items.next().unwrap();
    /// assert!(items.get_ref().progress().finished() >= 1);
    /// ```
    pub fn finished(&self) -> usize {
        self.done + self.failed + self.not_started
    }
}

/// The outcome of a batch: each item's output or error in input order, the counts, and the
/// inputs that can be had back.
///
/// # Examples
///
/// ```
/// use asyncify_pool::WorkerPool;
///
/// let pool = WorkerPool::new(2);
/// let inv = pool.asyncify(|x: i32| 100 / x); // panics on 0
/// # std::panic::set_hook(Box::new(|_| {}));
/// let result = inv.batch([1, 0, 4]).wait();
/// assert_eq!(result.total(), 3);
/// assert_eq!((result.done(), result.failed(), result.not_started()), (2, 1, 0));
/// assert!(result.results()[1].as_ref().unwrap_err().is_panic());
/// assert!(!result.is_stopped());
/// ```
#[derive(Debug)]
pub struct BatchResult<I, O> {
    pub(super) results: Vec<Result<O, JobError>>,
    pub(super) done: usize,
    pub(super) failed: usize,
    pub(super) not_started: usize,
    pub(super) stopped: bool,
    pub(super) elapsed: Duration,
    pub(super) failed_inputs: Vec<(usize, I)>,
    pub(super) unstarted_inputs: Vec<(usize, I)>,
}

impl<I, O> BatchResult<I, O> {
    /// Each item's output, or why it has none, in input order. An item that never started has
    /// [`JobError::Cancelled`] (the batch stopped) or [`JobError::ShutDown`] (the pool did).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// let r = pool.asyncify(|x: u8| x + 1).batch([1, 2]).wait();
    /// assert_eq!(r.results(), [Ok(2), Ok(3)]);
    /// ```
    pub fn results(&self) -> &[Result<O, JobError>] {
        &self.results
    }

    /// The results, by value, in input order.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// let r = pool.asyncify(|x: u8| x.to_string()).batch([1, 2]).wait();
    /// assert_eq!(r.into_results(), [Ok("1".to_owned()), Ok("2".to_owned())]);
    /// ```
    pub fn into_results(self) -> Vec<Result<O, JobError>> {
        self.results
    }

    /// Items whose program returned (and did not match [`Batch::fail_if`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// assert_eq!(pool.asyncify(|x: u8| x).batch(0..4).wait().done(), 4);
    /// ```
    pub fn done(&self) -> usize {
        self.done
    }

    /// Items whose program panicked, or whose output matched [`Batch::fail_if`].
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// let r = pool.asyncify(|x: u8| x).batch(0..4).fail_if(|x| *x > 1).wait();
    /// assert_eq!(r.failed(), 2);
    /// ```
    pub fn failed(&self) -> usize {
        self.failed
    }

    /// Items that never started: cancelled when the batch stopped, or refused by a shut-down
    /// pool.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// let id = pool.asyncify(|x: u8| x);
    /// pool.shutdown();
    /// let r = id.batch(0..4).wait();
    /// assert_eq!(r.not_started(), 4);
    /// assert!(r.results()[0].as_ref().unwrap_err().is_shut_down());
    /// ```
    pub fn not_started(&self) -> usize {
        self.not_started
    }

    /// Items in the batch: `done() + failed() + not_started()`.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// assert_eq!(pool.asyncify(|x: u8| x).batch(0..7).wait().total(), 7);
    /// ```
    pub fn total(&self) -> usize {
        self.results.len()
    }

    /// True if the batch stopped because more than `max_errors` items failed.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let r = pool.asyncify(|x: u8| x).batch(0..4).fail_if(|_| true).max_errors(0).wait();
    /// assert!(r.is_stopped());
    /// ```
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Wall time from the batch's start to its last result.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// let r = pool.asyncify(|x: u8| x).batch(0..4).wait();
    /// assert!(r.elapsed() < std::time::Duration::from_secs(60));
    /// ```
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The inputs of the failed items, with their indices, in input order. Empty unless the
    /// batch was built with [`Batch::keep_failed_inputs`].
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// let r = pool.asyncify(|x: u8| x).batch(0..4).fail_if(|x| x % 2 == 1).keep_failed_inputs().wait();
    /// assert_eq!(r.failed_inputs(), [(1, 1), (3, 3)]);
    /// ```
    pub fn failed_inputs(&self) -> &[(usize, I)] {
        &self.failed_inputs
    }

    /// Takes the inputs of the failed items out of the result (see
    /// [`failed_inputs`](Self::failed_inputs)), to retry them.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// let p = pool.asyncify(|x: u8| x);
    /// let mut r = p.batch(0..4).fail_if(|x| *x == 2).keep_failed_inputs().wait();
    /// let retry: Vec<u8> = r.take_failed_inputs().into_iter().map(|(_, input)| input).collect();
    /// assert_eq!(p.batch(retry).wait().done(), 1);
    /// ```
    pub fn take_failed_inputs(&mut self) -> Vec<(usize, I)> {
        std::mem::take(&mut self.failed_inputs)
    }

    /// The inputs of the items that never started, with their indices, in input order. Always
    /// available: no clone is needed, since these inputs were never handed to the program.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let p = pool.asyncify(|x: u8| x);
    /// let r = p.batch(0..4).fail_if(|x| *x == 1).max_errors(0).concurrency(1).wait();
    /// assert_eq!(r.unstarted_inputs(), [(2, 2), (3, 3)]);
    /// ```
    pub fn unstarted_inputs(&self) -> &[(usize, I)] {
        &self.unstarted_inputs
    }

    /// Takes the inputs of the items that never started out of the result (see
    /// [`unstarted_inputs`](Self::unstarted_inputs)), to resume later.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let p = pool.asyncify(|x: u8| x);
    /// let mut r = p.batch(0..4).fail_if(|x| *x == 0).max_errors(0).concurrency(1).wait();
    /// assert_eq!(r.take_unstarted_inputs().len(), 3);
    /// assert!(r.unstarted_inputs().is_empty());
    /// ```
    pub fn take_unstarted_inputs(&mut self) -> Vec<(usize, I)> {
        std::mem::take(&mut self.unstarted_inputs)
    }
}
