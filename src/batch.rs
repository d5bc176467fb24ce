//! Batches: one program over many inputs, with results in input order, an error budget and
//! progress. The Rust form of DSPy's `Parallel` / `ParallelExecutor`.
//!
//! # Policy
//!
//! * **Lazy, captured once.** [`AsyncProgram::batch`] collects the inputs and captures, there
//!   and then, the settings overrides, the tracing span and the `max_errors` setting in force.
//!   Nothing runs until the batch is awaited, [`wait`](Batch::wait)ed on, or its
//!   [`completions`](Batch::completions) are pulled; every item runs with what was captured,
//!   whichever thread or task drives the batch later.
//! * **Who drives.** Whoever consumes the batch (the task that awaits it, the thread in `wait`,
//!   the consumer of `completions`) submits the items and collects their results. There is no
//!   batch thread; the only helper is a short-lived timer thread for straggler deadlines on the
//!   async path. Without [`concurrency`](Batch::concurrency), every item is submitted at the
//!   first poll and the pool bounds how many run. With `concurrency(n)`, at most `n` of the
//!   batch's jobs are in the pool (queued or running) at a time, and the next one is submitted
//!   when the driver learns that one finished.
//! * **One report per job.** Each job reports to the batch itself, not through its
//!   [`JobHandle`]: that it started (only when stragglers are on), and then either its result,
//!   or that it was dropped without running (its input travels back with that report). The
//!   pool runs or drops every job it accepts, so the batch always learns how each item ended.
//! * **Error budget.** An item *fails* when its program panics, or when its output matches
//!   [`fail_if`](Batch::fail_if). Once more than `max_errors` items failed, the batch stops: items
//!   not yet submitted, and submitted ones still queued, never start and resolve to
//!   [`JobError::Cancelled`]; running ones see [`is_cancelled`](crate::is_cancelled) turn true,
//!   and the batch waits for them and records what they return. So when a batch completes,
//!   every item either ran to the end or never started, and the counts say which.
//! * **Dropping** a batch midway (its future, or its `completions`) stops it the same way, without
//!   waiting for the running items.
//! * **Stragglers** (opt-in, [`stragglers`](Batch::stragglers)): once only a few items are left
//!   and one has run longer than a timeout, a second copy is submitted and the first copy to
//!   finish gives the item's result; the other copy is dropped like a cancelled call.
//! * **Pool limits.** On a pool with a bounded queue, a batch with a job waiting for room
//!   submits nothing more until that job is queued. On a shut-down pool, items resolve to
//!   [`JobError::ShutDown`] and count as not started.

use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use futures_core::Stream;

use crate::capture::Captured;
use crate::error::JobError;
use crate::job::{in_job, JobHandle, Unparker};
use crate::program::{AsyncProgram, Program};
use crate::settings::{self, MAX_ERRORS};

/// The error budget when the `max_errors` setting is missing or not a `usize` (DSPy's default).
const DEFAULT_MAX_ERRORS: usize = 10;

impl<P> AsyncProgram<P> {
    /// Prepares a run of the program over every input, DSPy `Parallel`-style: a [`Batch`] to
    /// configure, then await (or [`wait`](Batch::wait) on, or stream with
    /// [`completions`](Batch::completions)).
    ///
    /// The settings overrides and tracing span in force here are captured now and are in force
    /// for every item, as for [`call`](Self::call). The error budget defaults to the
    /// `max_errors` setting in force here (10 unless configured). Nothing is submitted until
    /// the batch is driven.
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
                max_errors: settings::get::<usize>(MAX_ERRORS).unwrap_or(DEFAULT_MAX_ERRORS),
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
pub struct Batch<P, I>
where
    P: Program<I>,
{
    program: AsyncProgram<P>,
    inputs: Vec<I>,
    captured: Captured,
    opts: Options<I, P::Output>,
}

/// What [`Batch::fail_if`] keeps.
type Predicate<O> = Box<dyn Fn(&O) -> bool + Send>;

/// Everything the builder sets, moved into the driver when the batch starts.
struct Options<I, O> {
    max_errors: usize,
    concurrency: usize,
    on_progress: Option<Box<dyn FnMut(Progress) + Send>>,
    fail_if: Option<Predicate<O>>,
    /// Set by the options that need a copy of each input (`I: Clone` is asked there, not here).
    clone_input: Option<fn(&I) -> I>,
    keep_failed_inputs: bool,
    stragglers: Option<Stragglers>,
    #[cfg(feature = "progress")]
    progress_bar: bool,
}

#[derive(Debug, Clone, Copy)]
struct Stragglers {
    timeout: Duration,
    limit: usize,
}

impl<P, I> Batch<P, I>
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
        self.opts.max_errors = n;
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
    /// call has every item accounted for. A panic in it propagates to the driver.
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
    /// [`keep_failed_inputs`](Self::keep_failed_inputs) see it as a failure.
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
    /// when submitted, to have one for the copy.
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

impl<P, I> IntoFuture for Batch<P, I>
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

impl<P, I> fmt::Debug for Batch<P, I>
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
    results: Vec<Result<O, JobError>>,
    done: usize,
    failed: usize,
    not_started: usize,
    stopped: bool,
    elapsed: Duration,
    failed_inputs: Vec<(usize, I)>,
    unstarted_inputs: Vec<(usize, I)>,
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
pub struct BatchFuture<P, I>
where
    P: Program<I>,
{
    driver: Driver<P, I>,
    results: Vec<Option<Result<P::Output, JobError>>>,
    finished: bool,
}

impl<P, I> BatchFuture<P, I>
where
    P: Program<I>,
    I: Send + 'static,
{
    fn place(&mut self, (index, result): Item<P::Output>) {
        self.results[index] = Some(result);
    }

    fn finish(&mut self) -> BatchResult<I, P::Output> {
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
impl<P, I> Unpin for BatchFuture<P, I> where P: Program<I> {}

impl<P, I> Future for BatchFuture<P, I>
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

impl<P, I> fmt::Debug for BatchFuture<P, I>
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
pub struct Completions<P, I>
where
    P: Program<I>,
{
    driver: Driver<P, I>,
}

impl<P, I> Completions<P, I>
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

impl<P, I> IntoIterator for Completions<P, I>
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
impl<P, I> Unpin for Completions<P, I> where P: Program<I> {}

impl<P, I> Stream for Completions<P, I>
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

impl<P, I> fmt::Debug for Completions<P, I>
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
pub struct CompletionsIter<P, I>
where
    P: Program<I>,
{
    inner: Completions<P, I>,
}

impl<P, I> CompletionsIter<P, I>
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

impl<P, I> Iterator for CompletionsIter<P, I>
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

impl<P, I> fmt::Debug for CompletionsIter<P, I>
where
    P: Program<I>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionsIter")
            .field("progress", &self.inner.driver.progress())
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Machinery: what the jobs share with the driver, the jobs themselves, and the driver.

type Item<O> = (usize, Result<O, JobError>);

/// What a job tells its batch. Every job sends exactly one `Ran` or `NotRun`.
enum Event<I, O> {
    /// The job is about to run the program (sent only when stragglers are on).
    Started { index: usize, at: Instant },
    /// The program ran and returned, or panicked.
    Ran {
        index: usize,
        result: Result<O, JobError>,
    },
    /// The job was dropped without running the program (cancelled, refused, or the batch had
    /// stopped when it was taken); the input comes back.
    NotRun { index: usize, input: Option<I> },
}

/// Shared by the driver and every job of one batch.
struct Shared<P, I>
where
    P: Program<I>,
{
    program: AsyncProgram<P>,
    /// Set when the batch stops or is dropped. A job that reads it set does not run the program.
    stopped: AtomicBool,
    /// Stragglers need to know when each item started.
    track_starts: bool,
    inbox: Mutex<Inbox<I, P::Output>>,
}

struct Inbox<I, O> {
    events: VecDeque<Event<I, O>>,
    /// The driver's, registered when it found no events; taken (so woken once) by the next one.
    waker: Option<Waker>,
}

impl<P, I> Shared<P, I>
where
    P: Program<I>,
{
    fn lock(&self) -> MutexGuard<'_, Inbox<I, P::Output>> {
        // Nothing in this crate panics while holding it; a poisoned inbox is still consistent.
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn post(&self, event: Event<I, P::Output>) {
        let waker = {
            let mut inbox = self.lock();
            inbox.events.push_back(event);
            inbox.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn wake(&self) {
        let waker = self.lock().waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The closure a batch submits for one copy of one item. Run, it runs the program and reports
/// the result; dropped unrun, it reports `NotRun` with the input.
struct Ticket<P, I>
where
    P: Program<I>,
{
    shared: Arc<Shared<P, I>>,
    index: usize,
    input: Option<I>,
    reported: bool,
}

impl<P, I> Ticket<P, I>
where
    P: Program<I>,
{
    fn run(mut self) {
        // ORDERING: Relaxed is enough, the flag only spares work. A job still queued when the
        // batch stopped is closed under its own cell's lock (the driver drops its handle), so
        // it never gets here; one the worker had already taken may read either value, and
        // either way it reports once and the driver waits for that report.
        if self.shared.stopped.load(Relaxed) {
            crate::job::skip_this_job(); // counted as cancelled in the pool's stats
            return; // `Drop` reports `NotRun` and hands the input back.
        }
        let input = self.input.take().expect("a ticket runs at most once");
        if self.shared.track_starts {
            let at = Instant::now();
            self.shared.post(Event::Started {
                index: self.index,
                at,
            });
        }
        let program = self.shared.program.program();
        let result = catch_unwind(AssertUnwindSafe(|| program.run(input)));
        self.reported = true;
        let index = self.index;
        match result {
            Ok(output) => self.shared.post(Event::Ran {
                index,
                result: Ok(output),
            }),
            Err(payload) => {
                let error = JobError::from_panic(&*payload);
                self.shared.post(Event::Ran {
                    index,
                    result: Err(error),
                });
                // Let the pool see the panic too, so its `Stats` count it.
                resume_unwind(payload);
            }
        }
    }
}

impl<P, I> Drop for Ticket<P, I>
where
    P: Program<I>,
{
    fn drop(&mut self) {
        if !self.reported {
            self.reported = true;
            self.shared.post(Event::NotRun {
                index: self.index,
                input: self.input.take(),
            });
        }
    }
}

/// One item the pool has (or had) jobs for.
struct Flight<I> {
    /// The original's handle and the straggler copy's. `None` once dropped (to cancel) or
    /// taken (to help, in a nested wait).
    handles: [Option<JobHandle<()>>; 2],
    /// Jobs of this item that have not reported yet.
    live: u8,
    /// When the first copy started (only tracked with stragglers on).
    started: Option<Instant>,
    copied: bool,
    /// A clone of the input, for failed inputs or a straggler copy.
    kept: Option<I>,
}

enum Advance<O> {
    Item(Item<O>),
    Done,
    /// Nothing to hand out; the waker is registered. Wake up by the deadline, if any, to
    /// check for stragglers.
    Sleep(Option<Instant>),
}

/// The batch's state machine, run by whoever consumes the batch.
struct Driver<P, I>
where
    P: Program<I>,
{
    shared: Arc<Shared<P, I>>,
    captured: Captured,
    opts: Options<I, P::Output>,
    /// Inputs not submitted yet; the next one has index `next_index`.
    pending: std::vec::IntoIter<I>,
    next_index: usize,
    /// Indexed by item; `Some` from submission until the item's result is known.
    flights: Vec<Option<Flight<I>>>,
    /// Items below this index are finished (a cursor for scans).
    scan_from: usize,
    total: usize,
    /// Jobs of this batch submitted and not reported yet (the `concurrency` gauge).
    jobs: usize,
    done: usize,
    failed: usize,
    not_started: usize,
    stopped: bool,
    /// Results known and not handed out yet, in completion order.
    ready: VecDeque<Item<P::Output>>,
    /// An empty event buffer, swapped with the inbox's so that draining allocates nothing.
    spare: VecDeque<Event<I, P::Output>>,
    failed_inputs: Vec<(usize, I)>,
    unstarted_inputs: Vec<(usize, I)>,
    started: Option<Instant>,
    last_reported: (usize, usize, usize),
    /// A job whose handle waits for room in the pool's full bounded queue: `(index, copy)`.
    waiting_for_room: Option<(usize, usize)>,
    /// The deadline of the last timer thread started (async straggler deadlines).
    timer: Option<Instant>,
    /// The timer threads started, to unpark when the driver goes, and the token whose end
    /// tells them to leave without waiting out their deadline.
    timers: Vec<thread::JoinHandle<()>>,
    alive: Option<Arc<()>>,
    thread_waker: Option<(ThreadId, Waker)>,
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
}

impl<P, I> Driver<P, I>
where
    P: Program<I>,
{
    fn finished(&self) -> usize {
        self.done + self.failed + self.not_started
    }

    /// Results not handed out yet: exactly the items left to yield.
    fn left(&self) -> (usize, Option<usize>) {
        let left = self.total - self.finished() + self.ready.len();
        (left, Some(left))
    }

    fn progress(&self) -> Progress {
        Progress {
            done: self.done,
            failed: self.failed,
            not_started: self.not_started,
            total: self.total,
            elapsed: self.started.map_or(Duration::ZERO, |s| s.elapsed()),
        }
    }
}

impl<P, I> Driver<P, I>
where
    P: Program<I>,
    I: Send + 'static,
{
    fn new(batch: Batch<P, I>) -> Self {
        let Batch {
            program,
            inputs,
            captured,
            opts,
        } = batch;
        let total = inputs.len();
        Driver {
            shared: Arc::new(Shared {
                program,
                stopped: AtomicBool::new(false),
                track_starts: opts.stragglers.is_some(),
                inbox: Mutex::new(Inbox {
                    events: VecDeque::new(),
                    waker: None,
                }),
            }),
            captured,
            opts,
            pending: inputs.into_iter(),
            next_index: 0,
            flights: Vec::new(),
            scan_from: 0,
            total,
            jobs: 0,
            done: 0,
            failed: 0,
            not_started: 0,
            stopped: false,
            ready: VecDeque::new(),
            spare: VecDeque::new(),
            failed_inputs: Vec::new(),
            unstarted_inputs: Vec::new(),
            started: None,
            last_reported: (0, 0, 0),
            waiting_for_room: None,
            timer: None,
            timers: Vec::new(),
            alive: Some(Arc::new(())),
            thread_waker: None,
            #[cfg(feature = "progress")]
            bar: None,
        }
    }

    fn take_failed_inputs(&mut self) -> Vec<(usize, I)> {
        let mut inputs = std::mem::take(&mut self.failed_inputs);
        inputs.sort_unstable_by_key(|(index, _)| *index);
        inputs
    }

    fn take_unstarted_inputs(&mut self) -> Vec<(usize, I)> {
        let mut inputs = std::mem::take(&mut self.unstarted_inputs);
        inputs.sort_unstable_by_key(|(index, _)| *index);
        inputs
    }

    fn start(&mut self) {
        if self.started.is_some() {
            return;
        }
        self.started = Some(Instant::now());
        self.flights = (0..self.total).map(|_| None).collect();
        let program = &self.shared.program;
        if program.follows_setting() {
            // Sized by `async_max_workers` as in force at `batch()`, like one `call` there.
            self.captured
                .clone()
                .run(|| crate::global::follow_setting(program.pool()));
        }
        #[cfg(feature = "progress")]
        if self.opts.progress_bar {
            self.bar = Some(new_bar(self.total));
        }
    }

    /// One step of the batch: hand out a known result, or submit what may be submitted,
    /// collect what the jobs reported, and say when to come back.
    fn advance(&mut self, waker: &Waker) -> Advance<P::Output> {
        self.start();
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Advance::Item(item);
            }
            if self.finished() == self.total {
                self.close_bar();
                return Advance::Done;
            }
            self.submit(waker);
            let deadline = self.resubmit_stragglers(waker);
            let mut events = std::mem::take(&mut self.spare);
            {
                let mut inbox = self.shared.lock();
                if inbox.events.is_empty() {
                    match &inbox.waker {
                        Some(registered) if registered.will_wake(waker) => {}
                        _ => inbox.waker = Some(waker.clone()),
                    }
                    drop(inbox);
                    self.spare = events;
                    return Advance::Sleep(deadline);
                }
                std::mem::swap(&mut inbox.events, &mut events);
            }
            for event in events.drain(..) {
                self.process(event);
            }
            self.spare = events;
            self.report();
        }
    }

    /// Submits items while the batch may have more jobs in the pool.
    fn submit(&mut self, waker: &Waker) {
        // First, always: a job held back by a full queue is queued only when its handle is
        // polled, whether or not more items are to come.
        if !self.queue_has_room(waker)
            || self.stopped
            || self.jobs >= self.opts.concurrency
            || self.pending.len() == 0
        {
            return;
        }
        // Every job captures the context in force at `spawn`: put the batch's in force once
        // for the whole round.
        let captured = self.captured.clone();
        captured.run(|| {
            while self.jobs < self.opts.concurrency {
                let Some(input) = self.pending.next() else {
                    break;
                };
                let index = self.next_index;
                self.next_index += 1;
                let kept = self.opts.clone_input.map(|clone| clone(&input));
                let handle = self.spawn(index, input);
                let waiting = handle.is_waiting_for_room();
                self.flights[index] = Some(Flight {
                    handles: [Some(handle), None],
                    live: 1,
                    started: None,
                    copied: false,
                    kept,
                });
                if waiting {
                    self.waiting_for_room = Some((index, 0));
                    if !self.queue_has_room(waker) {
                        break;
                    }
                }
            }
        });
    }

    fn spawn(&mut self, index: usize, input: I) -> JobHandle<()> {
        let ticket = Ticket {
            shared: Arc::clone(&self.shared),
            index,
            input: Some(input),
            reported: false,
        };
        self.jobs += 1;
        self.shared.program.pool().spawn(move || ticket.run())
    }

    /// False while one of this batch's jobs waits for room in the pool's full bounded queue
    /// (its handle queues it when polled, and `waker` is woken when there is room).
    fn queue_has_room(&mut self, waker: &Waker) -> bool {
        let Some((index, copy)) = self.waiting_for_room else {
            return true;
        };
        let slot = self.flights[index]
            .as_mut()
            .and_then(|flight| flight.handles[copy].as_mut());
        if let Some(handle) = slot {
            if handle.is_waiting_for_room() {
                let mut cx = Context::from_waker(waker);
                if Pin::new(&mut *handle).poll(&mut cx).is_ready() {
                    // Resolved without running (the pool shut down): its ticket reported.
                    if let Some(flight) = self.flights[index].as_mut() {
                        flight.handles[copy] = None;
                    }
                } else if handle.is_waiting_for_room() {
                    return false;
                }
            }
        }
        self.waiting_for_room = None;
        true
    }

    fn process(&mut self, event: Event<I, P::Output>) {
        match event {
            Event::Started { index, at } => {
                if let Some(flight) = self.flights[index].as_mut() {
                    flight.started.get_or_insert(at);
                }
            }
            Event::Ran { index, result } => {
                self.jobs -= 1;
                if self.flights[index].is_some() {
                    self.finish(index, result, true, None);
                }
            }
            Event::NotRun { index, input } => {
                self.jobs -= 1;
                let Some(flight) = self.flights[index].as_mut() else {
                    return; // a straggler copy of an item already finished
                };
                flight.live -= 1;
                if flight.live == 0 {
                    let error = if self.stopped {
                        JobError::cancelled()
                    } else {
                        JobError::shut_down()
                    };
                    self.finish(index, Err(error), false, input);
                }
            }
        }
    }

    /// Records item `index`'s result (`ran`: the program ran; otherwise it never started).
    fn finish(
        &mut self,
        index: usize,
        result: Result<P::Output, JobError>,
        ran: bool,
        returned: Option<I>,
    ) {
        let flight = self.flights[index]
            .take()
            .expect("only items in flight finish");
        // A straggler copy still queued never runs; one still running sees `is_cancelled`.
        drop(flight.handles);
        if ran {
            let failed = match &result {
                Err(_) => true,
                Ok(output) => self.opts.fail_if.as_ref().is_some_and(|f| f(output)),
            };
            if failed {
                self.failed += 1;
                if let (true, Some(input)) = (self.opts.keep_failed_inputs, flight.kept) {
                    self.failed_inputs.push((index, input));
                }
            } else {
                self.done += 1;
            }
        } else {
            self.not_started += 1;
            if let Some(input) = returned.or(flight.kept) {
                self.unstarted_inputs.push((index, input));
            }
        }
        self.ready.push_back((index, result));
        if self.failed > self.opts.max_errors {
            self.stop();
        }
    }

    /// The error budget is spent: nothing more starts. Items not submitted finish now as
    /// cancelled; submitted ones still queued are revoked (their tickets report `NotRun`), and
    /// those running are flagged as cancelled by dropping their handles (they report when done).
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.shared.stopped.store(true, Relaxed);
        self.waiting_for_room = None;
        for input in std::mem::replace(&mut self.pending, Vec::new().into_iter()) {
            let index = self.next_index;
            self.next_index += 1;
            self.not_started += 1;
            self.unstarted_inputs.push((index, input));
            self.ready.push_back((index, Err(JobError::cancelled())));
        }
        for flight in self.flights.iter_mut().flatten() {
            for handle in flight.handles.iter_mut().filter_map(Option::take) {
                // Still queued: resolved now, and its ticket is dropped unrun. Running: dropping
                // the handle makes `is_cancelled()` true in the job.
                handle.revoke(JobError::cancelled());
            }
        }
    }

    /// Submits a second copy of each item that has run past the straggler timeout, once all
    /// items are submitted and few are left. Returns the next deadline to check again at.
    fn resubmit_stragglers(&mut self, waker: &Waker) -> Option<Instant> {
        let Stragglers { timeout, limit } = self.opts.stragglers?;
        let clone = self.opts.clone_input?;
        if self.stopped || self.pending.len() > 0 || self.total - self.finished() > limit {
            return None;
        }
        while self.scan_from < self.total && self.flights[self.scan_from].is_none() {
            self.scan_from += 1;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for index in self.scan_from..self.total {
            let Some(flight) = self.flights[index].as_mut() else {
                continue;
            };
            // Not started yet: its `Started` report will wake the driver.
            let Some(started) = flight.started.filter(|_| !flight.copied) else {
                continue;
            };
            let due = started + timeout;
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            if self.jobs >= self.opts.concurrency || self.waiting_for_room.is_some() {
                continue; // a job finishing, or room in the queue, wakes the driver
            }
            let input = clone(flight.kept.as_ref().expect("stragglers keep every input"));
            flight.copied = true;
            flight.live += 1;
            let captured = self.captured.clone();
            let handle = captured.run(|| self.spawn(index, input));
            let waiting = handle.is_waiting_for_room();
            if let Some(flight) = self.flights[index].as_mut() {
                flight.handles[1] = Some(handle);
            }
            if waiting {
                self.waiting_for_room = Some((index, 1));
                self.queue_has_room(waker);
            }
        }
        next
    }

    fn report(&mut self) {
        let counts = (self.done, self.failed, self.not_started);
        if counts == self.last_reported {
            return;
        }
        self.last_reported = counts;
        let progress = self.progress();
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.set_position(progress.finished() as u64);
            match (progress.failed, progress.not_started) {
                (0, 0) => {}
                (failed, 0) => bar.set_message(format!("{failed} failed")),
                (failed, skipped) => {
                    bar.set_message(format!("{failed} failed, {skipped} not started"))
                }
            }
        }
        if let Some(callback) = self.opts.on_progress.as_mut() {
            callback(progress);
        }
    }

    fn close_bar(&mut self) {
        #[cfg(feature = "progress")]
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }

    /// The blocking path: sleeps on a thread waker, or, inside a pool job, waits on one of
    /// the batch's handles so that the worker runs queued jobs meanwhile.
    fn next_blocking(&mut self) -> Option<Item<P::Output>> {
        loop {
            let waker = self.thread_waker();
            match self.advance(&waker) {
                Advance::Item(item) => return Some(item),
                Advance::Done => return None,
                Advance::Sleep(deadline) => {
                    if in_job() {
                        if let Some(handle) = self.take_handle() {
                            let _ = handle.wait();
                            continue;
                        }
                    }
                    match deadline {
                        None => thread::park(),
                        Some(deadline) => {
                            let now = Instant::now();
                            if deadline > now {
                                thread::park_timeout(deadline - now);
                            }
                        }
                    }
                }
            }
        }
    }

    fn thread_waker(&mut self) -> Waker {
        let id = thread::current().id();
        match &self.thread_waker {
            Some((owner, waker)) if *owner == id => waker.clone(),
            _ => {
                let waker = Waker::from(Arc::new(Unparker(thread::current())));
                self.thread_waker = Some((id, waker.clone()));
                waker
            }
        }
    }

    /// A handle of a job in flight, the earliest submitted, for a nested wait to help with.
    fn take_handle(&mut self) -> Option<JobHandle<()>> {
        while self.scan_from < self.next_index && self.flights[self.scan_from].is_none() {
            self.scan_from += 1;
        }
        let end = self.next_index;
        self.flights[self.scan_from..end]
            .iter_mut()
            .flatten()
            .find_map(|flight| flight.handles.iter_mut().find_map(Option::take))
    }

    /// The async path: the timer thread stands in for `park_timeout`.
    fn poll_next_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item<P::Output>>> {
        match self.advance(cx.waker()) {
            Advance::Item(item) => Poll::Ready(Some(item)),
            Advance::Done => Poll::Ready(None),
            Advance::Sleep(deadline) => {
                if let Some(deadline) = deadline {
                    self.arm_timer(deadline);
                }
                Poll::Pending
            }
        }
    }

    /// Makes sure the driver is woken by `deadline`: starts a thread that sleeps until then
    /// and wakes whatever waker is registered, unless one already pending fires earlier. The
    /// thread leaves early when the driver is dropped.
    fn arm_timer(&mut self, deadline: Instant) {
        let now = Instant::now();
        if matches!(self.timer, Some(t) if t > now && t <= deadline) {
            return;
        }
        let Some(alive) = self.alive.as_ref().map(Arc::downgrade) else {
            return;
        };
        let shared = Arc::downgrade(&self.shared);
        let spawned = thread::Builder::new()
            .name("asyncify-batch-timer".to_owned())
            .spawn(move || loop {
                if alive.strong_count() == 0 {
                    return;
                }
                let now = Instant::now();
                if now >= deadline {
                    if let Some(shared) = shared.upgrade() {
                        shared.wake();
                    }
                    return;
                }
                thread::park_timeout(deadline - now);
            });
        match spawned {
            Ok(timer) => {
                self.timers.retain(|t| !t.is_finished());
                self.timers.push(timer);
                self.timer = Some(deadline);
            }
            Err(e) => tracing::warn!(
                "asyncify-pool: no timer thread for a straggler deadline ({e}); \
                 it is checked when an item finishes"
            ),
        }
    }
}

impl<P, I> Drop for Driver<P, I>
where
    P: Program<I>,
{
    fn drop(&mut self) {
        // Before the handles go (with the fields, after this): a job the worker has already
        // taken then skips the program.
        self.shared.stopped.store(true, Relaxed);
        self.alive = None;
        for timer in &self.timers {
            timer.thread().unpark();
        }
    }
}

#[cfg(feature = "progress")]
fn new_bar(total: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    let template = "{elapsed_precise} [{wide_bar}] {pos}/{len} {rate} ETA {eta} {msg}";
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        let rate = |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
            let _ = write!(out, "{:.0} items/s", state.per_sec());
        };
        bar.set_style(style.with_key("rate", rate).progress_chars("=> "));
    }
    bar
}
