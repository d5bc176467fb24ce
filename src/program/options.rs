//! The options of an [`AsyncProgram`]: deadlines, retries, rate limits and concurrency limits.
//! Each returns a new program, so one program can be wrapped differently for different
//! callers; the machinery is in `control`.

use std::sync::Arc;
use std::time::Duration;

use super::{AsyncProgram, Program};
use crate::control::{Controls, Limit, Overload, Policy, ProgramStats, RateLimiter, Retry};

impl<P: ?Sized> AsyncProgram<P> {
    /// The same program, with `change` made to a copy of its options (and fresh counts).
    fn with_controls(&self, change: impl FnOnce(&mut Controls)) -> Self {
        let mut next = self.clone();
        next.controls = Some(Controls::derive(self.controls.as_ref(), change));
        next
    }

    /// Each call gets a deadline `timeout` after it is made. A call whose job has not started
    /// by then never starts; at the deadline the caller gets [`JobError::TimedOut`] at once
    /// (the pool's own timer wakes it: no async runtime is involved), and a job that runs sees
    /// [`is_cancelled`](crate::is_cancelled) turn true, and its output is discarded. Inside the
    /// job, [`deadline`](crate::deadline) tells the deadline, for the program's own timeouts.
    /// With [`retry`](Self::retry), the deadline bounds every attempt and backoff together.
    ///
    /// `Duration::ZERO`: every call times out without starting. `Duration::MAX` (or any
    /// timeout past what an `Instant` holds): no deadline. Replaces an earlier timeout.
    ///
    /// [`JobError::TimedOut`]: crate::JobError::TimedOut
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use asyncify_pool::{is_cancelled, WorkerPool};
    ///
    /// let pool = WorkerPool::new(1);
    /// let slow = pool.asyncify(|_: ()| {
    ///     while !is_cancelled() {
    ///         std::thread::sleep(Duration::from_millis(1));
    ///     }
    ///     "gave up"
    /// });
    /// let bounded = slow.timeout(Duration::from_millis(20));
    /// assert!(bounded.call(()).wait().unwrap_err().is_timed_out());
    /// ```
    pub fn timeout(&self, timeout: Duration) -> Self {
        self.with_controls(|c| c.timeout = Some(timeout))
    }

    /// Calls are retried by `policy` (see [`Retry`]): up to its number of attempts, each under
    /// the caller's captured overrides and span, with a backoff between them during which the
    /// call waits on the pool's timer, holding no worker. The input is cloned for each attempt
    /// but the last: for the first, at the call, on the caller's thread, before the call takes
    /// a concurrency slot or a rate token and before its [`timeout`](Self::timeout) starts;
    /// for a later one, on the worker that runs that attempt, which by then holds the attempt's
    /// slot and token (so a `Clone` that waits for a call of this program under a full
    /// [`concurrency_limit`](Self::concurrency_limit) waits for its own slot: a cycle of waits,
    /// like a job that holds every slot and waits on this program).
    /// [`stats`](Self::stats) counts attempts and retries. Replaces an earlier policy.
    ///
    /// A [`batch`](Self::batch) of the program runs each item once: the policy applies to
    /// calls, not to a batch's items, which have the batch's own failure handling
    /// ([`Batch::fail_if`](crate::Batch::fail_if), [`Batch::max_errors`](crate::Batch::max_errors),
    /// [`Batch::keep_failed_inputs`](crate::Batch::keep_failed_inputs)). The other options
    /// apply to its items as to calls.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    /// use std::time::Duration;
    /// use asyncify_pool::{Retry, WorkerPool};
    ///
    /// let pool = WorkerPool::new(1);
    /// let tries = AtomicU32::new(0);
    /// let flaky = pool.asyncify(move |q: String| {
    ///     if tries.fetch_add(1, SeqCst) == 0 { Err("429") } else { Ok(q.len()) }
    /// });
    /// let policy = Retry::new(3)
    ///     .backoff(Duration::from_millis(1), Duration::from_millis(5))
    ///     .retry_if(|r: &Result<usize, &str>| r.is_err());
    /// let patient = flaky.retry(policy);
    /// assert_eq!(patient.call("four".to_owned()).wait(), Ok(Ok(4)));
    /// assert_eq!((patient.stats().attempts, patient.stats().retries), (2, 1));
    /// ```
    pub fn retry<I, O>(&self, policy: Retry<O>) -> Self
    where
        P: Program<I, Output = O>,
        I: Clone + Send + 'static,
        O: 'static,
    {
        let policy = Policy::new::<I, O>(policy);
        self.with_controls(|c| c.retry = Some(policy))
    }

    /// At most `n` of this program's attempts are let into the pool per `per`, one every
    /// `per / n`; they start then if a worker is free (see [`RateLimiter`]; for a burst, or a
    /// limit shared with other programs, use [`with_rate_limiter`](Self::with_rate_limiter)). A call that must wait for its turn
    /// waits outside the pool, holding no worker, in the order of the calls; dropping its
    /// handle takes it out of the line. Replaces an earlier rate limit.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    ///
    /// let pool = asyncify_pool::WorkerPool::new(4);
    /// let api = pool.asyncify(|x: u32| x).rate_limit(100, Duration::from_secs(1));
    /// let start = Instant::now();
    /// let handles: Vec<_> = (0..6).map(|i| api.call(i)).collect();
    /// let outs: Vec<u32> = handles.into_iter().map(|h| h.wait().unwrap()).collect();
    /// assert_eq!(outs, [0, 1, 2, 3, 4, 5]);
    /// assert!(start.elapsed() >= Duration::from_millis(50)); // six starts, 10 ms apart
    /// ```
    pub fn rate_limit(&self, n: u32, per: Duration) -> Self {
        self.with_rate_limiter(&RateLimiter::new(n, per))
    }

    /// Attempts are let into the pool within `limiter`'s rate, shared with every program given
    /// the same limiter (or a clone of it), on this pool or another. Replaces an earlier rate
    /// limit.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use asyncify_pool::{RateLimiter, WorkerPool};
    ///
    /// let pool = WorkerPool::new(2);
    /// let api_key = RateLimiter::with_burst(600, Duration::from_secs(60), 5);
    /// let summarize = pool.asyncify(|s: String| s.len()).with_rate_limiter(&api_key);
    /// let classify = pool.asyncify(|s: String| s.is_empty()).with_rate_limiter(&api_key);
    /// assert_eq!(summarize.call("abc".into()).wait(), Ok(3));
    /// assert_eq!(classify.call("".into()).wait(), Ok(true));
    /// ```
    pub fn with_rate_limiter(&self, limiter: &RateLimiter) -> Self {
        let limiter = limiter.clone();
        self.with_controls(|c| c.rate = Some(limiter))
    }

    /// At most `n` of this program's attempts are in the pool (queued or running) at once, so
    /// that one slow backend cannot take every worker of a shared pool: the others wait
    /// outside the pool, in order, and other programs' jobs pass them. An attempt abandoned
    /// while it runs (a timeout, a dropped handle) keeps its place until it returns. Programs
    /// made from this one by further options share the limit. Replaces an earlier limit.
    ///
    /// A job of the pool that waits on a call of this program waits for a slot as any caller
    /// does, holding its worker: the waiting worker runs that call's own attempt when it is
    /// queued, but not another call's. So if every slot is held by attempts queued behind such
    /// waiting jobs, with no free thread to run them (or by the waiting jobs themselves, for a
    /// program that calls itself), they wait forever, as with any semaphore inside a thread
    /// pool. Give the pool more threads than the jobs that wait on a limited program.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(8);
    /// let db = pool.asyncify(|q: &'static str| q.len()).concurrency_limit(2);
    /// let handles: Vec<_> = (0..10).map(|_| db.call("select 1")).collect();
    /// assert!(db.stats().in_flight <= 2);
    /// for h in handles {
    ///     assert_eq!(h.wait(), Ok(8));
    /// }
    /// ```
    pub fn concurrency_limit(&self, n: usize) -> Self {
        assert!(
            n > 0,
            "asyncify-pool: a concurrency limit of 0 would run nothing"
        );
        let limit = Limit::fixed(n);
        self.with_controls(|c| c.limit = Some(limit))
    }

    /// A concurrency limit that tunes itself between `min` and `max` by additive increase and
    /// multiplicative decrease, as TCP's congestion control and Netflix's concurrency-limits
    /// do: it starts at `min`, grows by one per round of good answers while it is in use, and
    /// shrinks by a tenth (at least one) on each answer that `overload` flags (a 429, an answer slower than a
    /// bound) and on each timeout of an attempt that held a slot, queued or running (not of a
    /// call that timed out waiting for a slot: the limit was too small for it, not too large for
    /// the backend). Otherwise as [`concurrency_limit`](Self::concurrency_limit).
    /// Its current value is in [`stats`](Self::stats), and each move is a `tracing` event at
    /// debug level (target `asyncify_pool::adaptive`, field `limit`).
    ///
    /// A `min` of 0 is taken as 1; a `max` below `min` as `min`. Replaces an earlier limit.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::{Overload, WorkerPool};
    ///
    /// let pool = WorkerPool::new(8);
    /// let llm = pool
    ///     .asyncify(|prompt: String| if prompt.is_empty() { 429u16 } else { 200 })
    ///     .adaptive_concurrency(2, 32, Overload::when(|status: &u16| *status == 429));
    /// assert_eq!(llm.stats().concurrency_limit, Some(2));
    /// assert_eq!(llm.call("hi".into()).wait(), Ok(200));
    /// ```
    pub fn adaptive_concurrency<O: 'static>(
        &self,
        min: usize,
        max: usize,
        overload: Overload<O>,
    ) -> Self {
        let limit = Limit::adaptive(min, max, overload);
        self.with_controls(|c| c.limit = Some(limit))
    }

    /// What this program's options have done: calls, attempts, retries, timeouts, waits at its
    /// limits, and its concurrency limit now (see [`ProgramStats`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let p = pool.asyncify(|x: u32| x).timeout(Duration::from_secs(5));
    /// p.call(1).wait().unwrap();
    /// assert_eq!((p.stats().calls, p.stats().timed_out), (1, 0));
    /// ```
    pub fn stats(&self) -> ProgramStats {
        self.controls
            .as_ref()
            .map(|c| c.stats())
            .unwrap_or_default()
    }

    /// The options, for a batch of this program.
    pub(crate) fn controls(&self) -> Option<&Arc<Controls>> {
        self.controls.as_ref()
    }
}
