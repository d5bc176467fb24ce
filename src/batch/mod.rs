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
//! * **Ordinary jobs.** Each item is a pool job submitted through the pool's one internal
//!   spawn with the batch's captured context, and its result (output, or `Panicked` from the
//!   pool's one panic guard) comes back through its [`JobHandle`]. The job's ticket tells the
//!   driver which handle to look at: it reports once, when the job leaves the pool (with its
//!   input if it never ran), and, for stragglers, when it starts; a handle whose result is not
//!   in yet when the driver looks is polled with a waker that names its item. The pool runs or
//!   drops every job it accepts, so the batch always learns how each item ended.
//! * **Error budget.** An item *fails* when its program panics, or when its output matches
//!   [`fail_if`](Batch::fail_if) (or `fail_if` panics on it). Once more than `max_errors` items failed, the batch stops: items
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

// Named only in the docs.
#[cfg(doc)]
use {crate::error::JobError, crate::job::JobHandle, crate::program::AsyncProgram};

mod builder;
mod result;
mod running;

// ---------------------------------------------------------------------------------------------
// Machinery: what the jobs share with the driver, the jobs themselves, and the driver.
#[cfg(feature = "progress")]
mod bar;
mod driver;
mod ticket;
mod timer;

pub use builder::Batch;
pub use result::{BatchResult, Progress};
pub use running::{BatchFuture, Completions, CompletionsIter};
