//! Run blocking programs on a dedicated pool of worker threads and `.await` them from any
//! executor, with the caller's settings overrides and tracing span in force on the worker for
//! exactly that call. The Rust form of DSPy's `dspy.asyncify`.
//!
//! Use it when async code has to call slow, blocking code (an LLM client, model inference, file
//! or database work) with a bound on how many run at once, per-call configuration, and clean
//! cancellation, without tying the library to one runtime. Do not use it for CPU-parallel
//! data work (use rayon) or for non-blocking async I/O (await it directly).
//!
//! # Example
//!
//! ```
//! use asyncify_pool::{settings::{self, Overrides}, WorkerPool};
//!
//! // A blocking "LLM call" that reads its model from the settings in force.
//! fn answer(question: String) -> String {
//!     let model = settings::get::<&str>("lm").unwrap_or("default-model");
//!     format!("[{model}] {question}")
//! }
//!
//! let pool = WorkerPool::new(4);
//! let program = pool.asyncify(answer);
//!
//! let out = pollster::block_on(async {
//!     // Overrides in force at the call travel with it to the worker.
//!     let handle = settings::context(Overrides::new().with("lm", "small-fast"), || {
//!         program.call("what is 2 + 2?".to_owned())
//!     });
//!     handle.await
//! });
//! assert_eq!(out.unwrap(), "[small-fast] what is 2 + 2?");
//! ```
//!
//! # Guarantees
//!
//! * **Bounded.** At most [`WorkerPool::threads`] jobs run at once, and a pool has at most
//!   [`WorkerPool::MAX_THREADS`] threads; jobs start in submission order.
//!   [`WorkerPool::set_threads`] changes the bound at run time.
//! * **Context.** The overrides ([`settings`]) and the tracing span and dispatcher in force at
//!   [`AsyncProgram::call`] / [`WorkerPool::spawn`] are in force on the worker for exactly that
//!   job, and the worker is clean again afterwards, panic or not.
//! * **Cancellation.** Dropping a [`JobHandle`] before its job starts means the job never runs;
//!   after it started, the result is discarded and [`is_cancelled`] turns true in the job. An
//!   [`AbortHandle`] does the same through a shared reference; [`JobHandle::detach`] lets a job
//!   run with nobody waiting.
//! * **Panics.** A panicking program gives [`JobError::Panicked`] with the message; the worker
//!   lives on. User code that panics where nobody can be told (a destructor of a value handed
//!   in, a panic payload's destructor, a waker, a hook, a batch callback) is caught and
//!   reported through `tracing`: it never costs a worker, a place in the pool or an answer.
//! * **Shutdown.** [`WorkerPool::shutdown`] (or, from async code,
//!   [`WorkerPool::shutdown_async`]) runs everything accepted, then joins the threads;
//!   later calls resolve at once to [`JobError::ShutDown`]. Every accepted job either runs and
//!   delivers its result, or its caller is told why not.
//! * **Any executor.** A [`JobHandle`] is a plain `Future` woken by the worker (tokio, smol,
//!   `futures::executor`, pollster…), and [`JobHandle::wait`] blocks for sync callers.
//!
//! # Batches
//!
//! [`AsyncProgram::batch`] runs a program over a whole data set, DSPy `Parallel`-style: results
//! in input order, an error budget (`max_errors`), a per-batch concurrency cap, progress
//! callbacks (and a terminal bar with the `progress` feature), results streamed as they finish
//! ([`Batch::completions`]), failed inputs handed back, and opt-in straggler copies. See
//! [`Batch`].
//!
//! # Per-worker state
//!
//! [`WorkerPool::asyncify_with`]`(init, program)` gives each worker thread its own state (a
//! database connection, a model session; it need not be `Send`), made by `init` on that
//! worker's first run, passed to `program` as `&mut`, never shared between two runs, rebuilt
//! after a run that panicked, and dropped when the worker leaves. See [`PerWorker`].
//!
//! # Inside a job
//!
//! A job may call into the pool again. [`JobHandle::wait`] inside a job of the same pool runs
//! the awaited job on the waiting worker if no worker has started it yet, so it never
//! deadlocks, even on a one-thread pool. It runs only that job, never other queued work, so the
//! stack grows with the program's own nesting and not with the queue (past half of a stack,
//! the awaited job runs on a short-lived spare thread instead). A job that instead runs its own
//! executor (`pollster::block_on(handle)`) simply blocks its worker until the handle resolves:
//! on a pool with a free thread that works, on a pool whose every thread does it, it waits
//! forever; prefer `wait()` inside jobs.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

// The modules form layers, and each uses only its own layer and those below (tests/layers.rs
// checks it): error, guard, limits, local_state, sync; then settings; capture; job; pool;
// control; program, per_worker; global; batch; tower.
mod batch;
mod capture;
mod control;
mod error;
mod global;
mod guard;
mod job;
mod limits;
mod local_state;
mod per_worker;
mod pool;
mod program;
pub mod settings;
mod sync;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;

pub use batch::{Batch, BatchFuture, BatchResult, Completions, CompletionsIter, Progress};
pub use control::{deadline, Overload, ProgramStats, RateLimiter, Retry};
pub use error::{JobError, PoolError, SettingsError, ShutdownTimeout, TryCallError};
pub use global::{asyncify, default_pool};
pub use job::{is_cancelled, AbortHandle, JobHandle};
pub use per_worker::PerWorker;
pub use pool::{worker_index, Builder, Percentiles, ShutdownFuture, Stats, WorkerPool};
pub use program::{AsyncProgram, BoxProgram, Program};

/// The README's examples, compiled and run as doc tests so the README cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
