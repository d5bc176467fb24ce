//! The public face of a batch: [`AsyncProgram::batch`] makes a [`Batch`], whose builder methods
//! set its options, and which runs when awaited, [`wait`](Batch::wait)ed on, or pulled as
//! [`completions`](Batch::completions). The options it gathers move into the driver when the
//! batch starts.

use std::fmt;
use std::future::IntoFuture;
use std::time::Duration;

use super::driver::Driver;
use super::result::{BatchResult, Progress};
use super::running::Completions;
use crate::capture::Captured;
use crate::error::SettingsError;
use crate::limits::DEFAULT_MAX_ERRORS;
use crate::program::{AsyncProgram, Program};
use crate::settings::{self, MAX_ERRORS};

// Named only in the docs.
#[cfg(doc)]
use {
    super::running::BatchFuture, crate::error::JobError, crate::job::JobHandle,
    futures_core::Stream,
};

impl<P: ?Sized> AsyncProgram<P> {
    /// Prepares a run of the program over every input, DSPy `Parallel`-style: a [`Batch`] to
    /// configure, then await (or [`wait`](Batch::wait) on, or stream with
    /// [`completions`](Batch::completions)).
    ///
    /// The settings overrides and tracing span in force here are captured now and are in force
    /// for every item, as for [`call`](Self::call). The error budget defaults to the
    /// `max_errors` setting in force here (10 unless configured); a value of another type in
    /// force there (an `i32` set through the string key `"max_errors"`, say) makes every item
    /// fail with [`JobError::InvalidSetting`], as an unusable `async_max_workers` does for a
    /// call, unless [`max_errors`](Batch::max_errors) sets the budget. Nothing is submitted
    /// until the batch is driven.
    ///
    /// The program's options apply to each item as to a call (its deadline, its gates, its
    /// overload signal), but for a retry policy: a batch runs each item once.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::WorkerPool;
    ///
    /// let pool = WorkerPool::new(4);
    /// let square = pool.asyncify(|x: u64| x * x);
    /// let result = pollster::block_on(square.batch(1..=5));
    /// let squares: Vec<u64> = result.into_results().into_iter().map(Result::unwrap).collect();
    /// assert_eq!(squares, [1, 4, 9, 16, 25]);
    /// ```
    pub fn batch<I, It>(&self, inputs: It) -> Batch<P, I>
    where
        P: Program<I>,
        I: Send + 'static,
        It: IntoIterator<Item = I>,
    {
        Batch {
            program: self.clone(),
            inputs: inputs.into_iter().collect(),
            captured: Captured::here(),
            opts: Options {
                max_errors: MAX_ERRORS
                    .try_get()
                    .map(|n| n.unwrap_or(DEFAULT_MAX_ERRORS)),
                workers: self.follows_setting().then(settings::async_max_workers),
                concurrency: usize::MAX,
                on_progress: None,
                fail_if: None,
                clone_input: None,
                keep_failed_inputs: false,
                stragglers: None,
                #[cfg(feature = "progress")]
                progress_bar: false,
            },
        }
    }
}

/// A prepared run of one program over many inputs, made by [`AsyncProgram::batch`].
///
/// Configure it with the builder methods, then either `.await` it (any executor), call
/// [`wait`](Self::wait) (blocking), or take its results as they finish with
/// [`completions`](Self::completions).
///
/// # Guarantees
///
/// * **Captured once.** The overrides, tracing span and `max_errors` in force at `batch()`
///   are in force for every item, whichever thread or task drives the batch later.
/// * **Lazy.** Nothing is submitted until the batch is driven; the driver (the awaiting task,
///   the waiting thread, the consumer of `completions`) submits items and collects results.
///   There is no batch thread.
/// * **Order.** [`BatchResult::results`] is in input order, whatever the completion order.
/// * **Error budget.** Once more than `max_errors` items failed, no further item starts:
///   items not yet started resolve to [`JobError::Cancelled`] (inputs handed back), running
///   ones see [`is_cancelled`](crate::is_cancelled) and are waited for. So when a batch
///   completes, each item either ran to the end (`done` or `failed`) or never started.
/// * **Drop.** Dropping a running batch ([`BatchFuture`], [`Completions`]) stops it the same
///   way, without waiting for the running items.
/// * **Pool limits.** A full bounded queue holds the batch back (one job waits for room, no
///   more are submitted meanwhile); on a shut-down pool items resolve to
///   [`JobError::ShutDown`] and count as not started.
///
/// | option | default |
/// |---|---|
/// | [`max_errors`](Self::max_errors) | the `max_errors` setting at `batch()`, 10 unless configured |
/// | [`concurrency`](Self::concurrency) | unlimited: the pool's threads bound it |
/// | [`on_progress`](Self::on_progress) | none |
/// | [`fail_if`](Self::fail_if) | only panics fail |
/// | [`keep_failed_inputs`](Self::keep_failed_inputs) | off (inputs are not cloned) |
/// | [`stragglers`](Self::stragglers) | off |
///
/// # Examples
///
/// ```
/// use asyncify_pool::WorkerPool;
///
/// let pool = WorkerPool::new(4);
/// let parse = pool.asyncify(|s: &'static str| s.parse::<i32>());
/// let result = parse
///     .batch(["1", "2", "x", "4"])
///     .fail_if(Result::is_err) // a program that returns `Result` reports failures this way
///     .max_errors(5)
///     .concurrency(2)
///     .wait();
/// assert_eq!((result.done(), result.failed(), result.not_started()), (3, 1, 0));
/// assert_eq!(result.results()[3], Ok(Ok(4)));
/// ```
#[must_use = "a batch does nothing until it is awaited, waited on, or its completions are pulled"]
pub struct Batch<P: ?Sized, I>
where
    P: Program<I>,
{
    pub(super) program: AsyncProgram<P>,
    pub(super) inputs: Vec<I>,
    pub(super) captured: Captured,
    pub(super) opts: Options<I, P::Output>,
}

/// What [`Batch::fail_if`] keeps.
type Predicate<O> = Box<dyn Fn(&O) -> bool + Send>;

/// Everything the builder sets, moved into the driver when the batch starts.
pub(super) struct Options<I, O> {
    /// The budget: `max_errors(n)`, or the setting in force at `batch()`, where an unusable
    /// one (a value of another type) is `Err`, and every item fails with it.
    pub(super) max_errors: Result<usize, SettingsError>,
    /// For a program of the free `asyncify`: the `async_max_workers` in force at `batch()`.
    pub(super) workers: Option<Result<usize, SettingsError>>,
    pub(super) concurrency: usize,
    pub(super) on_progress: Option<Box<dyn FnMut(Progress) + Send>>,
    pub(super) fail_if: Option<Predicate<O>>,
    /// Set by the options that need a copy of each input (`I: Clone` is asked there, not here).
    pub(super) clone_input: Option<fn(&I) -> I>,
    pub(super) keep_failed_inputs: bool,
    pub(super) stragglers: Option<Stragglers>,
    #[cfg(feature = "progress")]
    pub(super) progress_bar: bool,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Stragglers {
    pub(super) timeout: Duration,
    pub(super) limit: usize,
}

impl<P: ?Sized, I> Batch<P, I>
where
    P: Program<I>,
    I: Send + 'static,
{
    /// Stops the batch once more than `n` items have failed (panicked, or matched
    /// [`fail_if`](Self::fail_if)). `max_errors(0)` stops at the first failure.
    ///
    /// DSPy stops when the count *reaches* `max_errors`; here `n` failures are tolerated and
    /// the next one stops the batch, as the setting's name says.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::WorkerPool;
    ///
    /// let pool = WorkerPool::new(1);
    /// let check = pool.asyncify(|x: u32| assert!(x % 2 == 0, "odd input"));
    /// # std::panic::set_hook(Box::new(|_| {}));
    /// // One at a time, so the stop is seen before anything else is submitted.
    /// let result = check.batch(0..10).max_errors(1).concurrency(1).wait();
    /// assert!(result.is_stopped());
    /// assert_eq!((result.done(), result.failed(), result.not_started()), (2, 2, 6));
    /// assert!(result.results()[9].as_ref().unwrap_err().is_cancelled());
    /// ```
    pub fn max_errors(mut self, n: usize) -> Self {
        self.opts.max_errors = Ok(n);
        self
    }

    /// Keeps at most `n` of this batch's jobs in the pool (queued or running) at a time, so
    /// that several batches can share one pool fairly; the next item is submitted when one
    /// finishes. It also makes stopping cheap: items never submitted need no cancelling.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::WorkerPool;
    /// use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    /// use std::sync::Arc;
    ///
    /// let pool = WorkerPool::new(8);
    /// let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    /// let (n, m) = (now.clone(), most.clone());
    /// let work = pool.asyncify(move |_: u32| {
    ///     m.fetch_max(n.fetch_add(1, SeqCst) + 1, SeqCst);
    ///     std::thread::sleep(std::time::Duration::from_millis(1));
    ///     n.fetch_sub(1, SeqCst);
    /// });
    /// work.batch(0..20).concurrency(2).wait();
    /// assert!(most.load(SeqCst) <= 2);
    /// ```
    pub fn concurrency(mut self, n: usize) -> Self {
        assert!(
            n > 0,
            "Batch::concurrency(0): a batch needs at least one job at a time"
        );
        self.opts.concurrency = n;
        self
    }

    /// Calls `callback` with the batch's [`Progress`] each time items finish.
    ///
    /// It runs on whoever drives the batch (the awaiting task, the waiting thread), after the
    /// results that arrived together were counted, so calls are coalesced under load; the last
    /// call has every item accounted for. A panic in it is caught and reported through
    /// `tracing`, and the batch goes on.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::WorkerPool;
    /// use std::sync::{Arc, Mutex};
    ///
    /// let pool = WorkerPool::new(2);
    /// let id = pool.asyncify(|x: u8| x);
    /// let last = Arc::new(Mutex::new(None));
    /// let seen = last.clone();
    /// id.batch(0..10).on_progress(move |p| *seen.lock().unwrap() = Some(p)).wait();
    /// let p = last.lock().unwrap().unwrap();
    /// assert_eq!((p.done, p.failed, p.total), (10, 0, 10));
    /// ```
    pub fn on_progress(mut self, callback: impl FnMut(Progress) + Send + 'static) -> Self {
        self.opts.on_progress = Some(Box::new(callback));
        self
    }

    /// Counts an item whose program returned as failed when `predicate(&output)` is true, for
    /// programs that report errors in their output (`.fail_if(Result::is_err)`). The output
    /// stays in the result; the failure counts, the error budget and
    /// [`keep_failed_inputs`](Self::keep_failed_inputs) see it as a failure. It runs on the
    /// driver; if it panics, the panic is caught and reported through `tracing`, and the item
    /// counts as failed.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::WorkerPool;
    ///
    /// let pool = WorkerPool::new(2);
    /// let score = pool.asyncify(|x: i32| x * 10);
    /// let result = score.batch([1, -2, 3]).fail_if(|out: &i32| *out < 0).wait();
    /// assert_eq!(result.failed(), 1);
    /// assert_eq!(result.results()[1], Ok(-20));
    /// ```
    pub fn fail_if(mut self, predicate: impl Fn(&P::Output) -> bool + Send + 'static) -> Self {
        self.opts.fail_if = Some(Box::new(predicate));
        self
    }

    /// Keeps a clone of each input while its item runs, so that the inputs of failed items can
    /// be had back from [`BatchResult::failed_inputs`] (DSPy's `return_failed_examples`).
    ///
    /// Inputs of items that never started come back without this option and without
    /// cloning ([`BatchResult::unstarted_inputs`]): a job dropped unrun hands its input back.
    /// The input of an item that ran was moved into the program, hence the clone.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::WorkerPool;
    ///
    /// let pool = WorkerPool::new(2);
    /// let parse = pool.asyncify(|s: String| s.parse::<u8>());
    /// let inputs = ["7", "seven", "8"].map(String::from);
    /// let result = parse.batch(inputs).fail_if(Result::is_err).keep_failed_inputs().wait();
    /// assert_eq!(result.failed_inputs(), [(1, "seven".to_owned())]);
    /// ```
    pub fn keep_failed_inputs(mut self) -> Self
    where
        I: Clone,
    {
        self.opts.clone_input = Some(I::clone);
        self.opts.keep_failed_inputs = true;
        self
    }

    /// Re-runs stragglers (DSPy's `timeout` and `straggler_limit`): once every item has been
    /// submitted and at most `limit` are unfinished, an item that has been *running* longer
    /// than `timeout` gets one second copy, and whichever copy finishes first gives its result
    /// (success or failure). The other copy is dropped: it never starts if still queued, or
    /// sees [`is_cancelled`](crate::is_cancelled) and has its result discarded (it may still
    /// be running when the batch completes).
    ///
    /// **The program must be safe to run twice on the same input** (no side effect that must
    /// happen once). Copies count against [`concurrency`](Self::concurrency). Inputs are cloned
    /// when submitted, to have one for the copy. A `timeout` of `Duration::MAX` never fires.
    ///
    /// Timing: a driver blocked in [`wait`](Self::wait) wakes itself at the deadline; an
    /// awaited batch starts a timer thread per deadline, which leaves at the deadline or when
    /// the batch is dropped. A batch waited on inside
    /// a pool job (where the waiting worker runs other jobs meanwhile) checks deadlines only
    /// when items finish.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::{is_cancelled, WorkerPool};
    /// use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// let pool = WorkerPool::new(4);
    /// let runs = Arc::new(AtomicUsize::new(0));
    /// let r = runs.clone();
    /// // The first run of input 0 hangs until it is abandoned; its copy answers at once.
    /// let flaky = pool.asyncify(move |x: u32| {
    ///     if x == 0 && r.fetch_add(1, SeqCst) == 0 {
    ///         while !is_cancelled() {
    ///             std::thread::sleep(Duration::from_millis(1));
    ///         }
    ///     }
    ///     x
    /// });
    /// let result = flaky.batch(0..4).stragglers(Duration::from_millis(20), 1).wait();
    /// assert_eq!(result.results()[0], Ok(0));
    /// assert_eq!(runs.load(SeqCst), 2);
    /// ```
    pub fn stragglers(mut self, timeout: Duration, limit: usize) -> Self
    where
        I: Clone,
    {
        self.opts.clone_input = Some(I::clone);
        self.opts.stragglers = Some(Stragglers { timeout, limit });
        self
    }

    /// Draws a progress bar on the terminal (stderr) while the batch runs: finished/total,
    /// items per second, ETA and failures, with [`indicatif`]. Nothing is drawn when stderr is
    /// not a terminal. Available with the `progress` cargo feature.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// let id = pool.asyncify(|x: u32| x);
    /// assert_eq!(id.batch(0..100).progress_bar().wait().done(), 100);
    /// ```
    #[cfg(feature = "progress")]
    #[cfg_attr(docsrs, doc(cfg(feature = "progress")))]
    pub fn progress_bar(mut self) -> Self {
        self.opts.progress_bar = true;
        self
    }

    /// Runs the batch, blocking this thread until every item is accounted for.
    ///
    /// Inside a pool job it does not block its worker idle: like [`JobHandle::wait`], the
    /// worker runs queued jobs meanwhile, so a batch waited on inside a job of the same pool
    /// completes even with one thread. Do not call it from async code: `.await` the batch.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// let len = pool.asyncify(|s: &'static str| s.len());
    /// let result = len.batch(["a", "bb", "ccc"]).wait();
    /// assert_eq!(result.results(), [Ok(1), Ok(2), Ok(3)]);
    /// ```
    pub fn wait(self) -> BatchResult<I, P::Output> {
        let mut future = self.into_future();
        while let Some(item) = future.driver.next_blocking() {
            future.place(item);
        }
        future.finish()
    }

    /// Runs the batch and yields each item's result as it finishes, with its input index:
    /// a [`Stream`] for async callers, which iterates (blocking) for sync ones.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(4);
    /// let double = pool.asyncify(|x: u32| x * 2);
    /// let mut seen: Vec<(usize, u32)> = double
    ///     .batch(0..5)
    ///     .completions()
    ///     .into_iter()
    ///     .map(|(index, result)| (index, result.unwrap()))
    ///     .collect();
    /// seen.sort();
    /// assert_eq!(seen, [(0, 0), (1, 2), (2, 4), (3, 6), (4, 8)]);
    /// ```
    pub fn completions(self) -> Completions<P, I> {
        Completions {
            driver: Driver::new(self),
        }
    }
}

impl<P: ?Sized, I> fmt::Debug for Batch<P, I>
where
    P: Program<I>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("total", &self.inputs.len())
            .field("max_errors", &self.opts.max_errors)
            .field("concurrency", &self.opts.concurrency)
            .field("stragglers", &self.opts.stragglers)
            .finish_non_exhaustive()
    }
}
