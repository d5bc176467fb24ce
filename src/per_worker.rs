//! Programs with per-worker state: `pool.asyncify_with(init, program)`.
//!
//! A program that needs something expensive or thread-bound (a database connection, a model
//! session) gets one per worker thread, made there on first use and never moved off it. The
//! states live in the thread's store (see `local_state`, which also says when they are
//! dropped); this file is the program that takes one out for each run and puts it back.

use std::fmt;
use std::sync::Arc;

use crate::guard;
use crate::local_state::{self, ProgramKey};
use crate::pool::WorkerPool;
use crate::program::{AsyncProgram, Program};

impl WorkerPool {
    /// Wraps `program` so that each [`call`](AsyncProgram::call) runs it on this pool with a
    /// state of its own worker: `init` makes the state on a worker the first time that worker
    /// runs this program, and `program(&mut state, input)` runs with it. The state stays on
    /// the thread that made it, so `S` need be neither `Send` nor `Sync` (a
    /// `rusqlite::Connection`, an `Rc`, a model session).
    ///
    /// The result is an ordinary [`AsyncProgram`]: `call`, `try_call`, `batch`, `boxed` and
    /// `service` work as for [`asyncify`](Self::asyncify), with the same guarantees (the
    /// caller's overrides and span in force, cancellation by dropping the handle, panics as
    /// [`JobError::Panicked`](crate::JobError::Panicked), any executor, shutdown).
    ///
    /// * **Made.** `init` runs inside the call that first needs a state on a worker, so that
    ///   call's overrides and span are in force then (a state that keeps something of them
    ///   keeps the first caller's). If `init` panics, that call resolves to `Panicked`, the
    ///   worker lives, and the next call on it runs `init` again.
    /// * **Never shared.** A run takes the state out of its worker's store and puts it back
    ///   when it returns. A call of the same program waited on from inside a run and run by
    ///   the waiting worker itself (see [`JobHandle::wait`](crate::JobHandle::wait)) finds no
    ///   state there and makes a second one; both are kept for later. A worker holds as many
    ///   states of a program as the program's deepest nesting on it, one in most programs.
    /// * **Rebuilt after a panic.** A state whose run panicked may be half-updated: it is
    ///   dropped, and the next run on that worker makes a fresh one with `init`.
    /// * **Dropped.** A worker drops its states when it leaves: it retires after
    ///   [`set_threads`](Self::set_threads) lowered the count, the pool shut down
    ///   ([`shutdown`](Self::shutdown) returns only after every state is dropped), or it was a
    ///   spare thread that ran one deeply nested job. Once every clone of the program and every
    ///   call of it are gone, each worker drops that program's states at the end of its next
    ///   job, or when it next goes idle after one (a worker asleep meanwhile is not woken for
    ///   it). A state's `Drop` runs on its own thread, and a panic in it is reported
    ///   through `tracing` and costs nothing else.
    /// * **Off the pool.** [`Program::run`] called directly, outside the pool's threads (as
    ///   through [`AsyncProgram::program`]), makes a state for that run and drops it after.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::cell::RefCell;
    /// use std::rc::Rc;
    /// use asyncify_pool::WorkerPool;
    ///
    /// // Not `Send`: it could not be shared between workers, and need not be.
    /// struct Session {
    ///     history: Rc<RefCell<Vec<String>>>,
    /// }
    ///
    /// let pool = WorkerPool::new(1);
    /// let chat = pool.asyncify_with(
    ///     || Session { history: Rc::default() },
    ///     |session: &mut Session, message: String| {
    ///         session.history.borrow_mut().push(message);
    ///         session.history.borrow().len()
    ///     },
    /// );
    /// // One worker, so one session: it remembers the first call.
    /// assert_eq!(chat.call("hello".to_owned()).wait(), Ok(1));
    /// assert_eq!(chat.call("again".to_owned()).wait(), Ok(2));
    /// ```
    pub fn asyncify_with<S, I, O, Init, F>(
        &self,
        init: Init,
        program: F,
    ) -> AsyncProgram<PerWorker<Init, F>>
    where
        Init: Fn() -> S + Send + Sync + 'static,
        F: Fn(&mut S, I) -> O + Send + Sync + 'static,
        S: 'static,
        O: Send + 'static,
    {
        let program = PerWorker {
            init,
            program,
            key: ProgramKey::new(),
        };
        AsyncProgram::new(program, self.clone(), None)
    }
}

/// A program with a state per worker thread, made by [`WorkerPool::asyncify_with`]: `init`
/// makes a state, `program` runs with it.
///
/// Each `asyncify_with` makes a program with states of its own: two programs made from the
/// same closures share none.
///
/// # Examples
///
/// ```
/// use asyncify_pool::{BoxProgram, WorkerPool};
///
/// // `PerWorker` names its two closures; `boxed()` gives a type that is easy to name.
/// struct App {
///     running_total: BoxProgram<String, usize>,
/// }
///
/// let pool = WorkerPool::new(1);
/// let app = App {
///     running_total: pool
///         .asyncify_with(|| 0, |total: &mut usize, s: String| {
///             *total += s.len();
///             *total
///         })
///         .boxed(),
/// };
/// assert_eq!(app.running_total.call("abc".to_owned()).wait(), Ok(3));
/// assert_eq!(app.running_total.call("de".to_owned()).wait(), Ok(5));
/// ```
pub struct PerWorker<Init, F> {
    init: Init,
    program: F,
    /// This program's identity in the workers' stores; when it is dropped, they sweep its
    /// states.
    key: Arc<ProgramKey>,
}

impl<S, I, O, Init, F> Program<I> for PerWorker<Init, F>
where
    Init: Fn() -> S + Send + Sync + 'static,
    F: Fn(&mut S, I) -> O + Send + Sync + 'static,
    S: 'static,
    O: Send + 'static,
{
    type Output = O;

    /// Runs `program` with a state of this thread: an idle one of this program, or a new one
    /// from `init`. It is put back afterwards, or dropped if the run panicked.
    fn run(&self, input: I) -> O {
        // The panics of `init` and `program` are caught here only to dispose of what this
        // frame owns through the guard (a `Drop` that panics while unwinding would abort), and
        // passed on to the job's guard, which makes them the call's `Panicked`.
        let mut state = match local_state::take::<S>(&self.key) {
            Some(state) => state,
            None => match guard::call(&self.init) {
                Ok(state) => Box::new(state),
                Err(message) => {
                    guard::drop("the input of a call whose state's init panicked", input);
                    guard::resume(message)
                }
            },
        };
        match guard::call(|| (self.program)(&mut state, input)) {
            Ok(output) => {
                local_state::put(&self.key, state);
                output
            }
            Err(message) => {
                guard::drop("a per-worker state whose run panicked", state);
                guard::resume(message)
            }
        }
    }
}

impl<Init, F> fmt::Debug for PerWorker<Init, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerWorker")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}
