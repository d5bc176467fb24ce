//! Programs and their async face: what `asyncify` takes and what it gives back, and (in
//! `options`) the options that put deadlines, retries and limits on its calls.

mod options;

use std::fmt;
use std::sync::Arc;

use crate::capture::Captured;
use crate::control::{self, Controls};
use crate::error::{JobError, SettingsError, TryCallError};
use crate::job::JobHandle;
use crate::pool::{Reserved, WorkerPool};

impl WorkerPool {
    /// Wraps `program` so that each [`call`](AsyncProgram::call) runs it on this pool.
    /// The program is stored once; calls share it.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// let double = pool.asyncify(|x: u64| x * 2);
    /// assert_eq!(double.call(21).wait(), Ok(42));
    /// ```
    pub fn asyncify<P>(&self, program: P) -> AsyncProgram<P> {
        AsyncProgram::new(program, self.clone(), None)
    }
}

/// What a program of the free `asyncify` does before each call: size the default pool by the
/// `async_max_workers` in force (see `global`), or say why it cannot.
pub(crate) type Follow = fn(&WorkerPool) -> Result<(), SettingsError>;

/// A blocking program that can be asyncified: anything that turns an `I` into an output on a
/// worker thread.
///
/// Every `Fn(I) -> O + Send + Sync + 'static` closure or function is a `Program<I>`. A module
/// type of your own can implement it directly (or be wrapped in a closure).
///
/// # Examples
///
/// ```
/// use asyncify_pool::{Program, WorkerPool};
///
/// struct Classifier { labels: Vec<&'static str> }
///
/// impl Program<String> for Classifier {
///     type Output = &'static str;
///     fn run(&self, text: String) -> &'static str {
///         self.labels[text.len() % self.labels.len()]
///     }
/// }
///
/// let pool = WorkerPool::new(2);
/// let classify = pool.asyncify(Classifier { labels: vec!["short", "long"] });
/// assert_eq!(classify.call("abc".to_owned()).wait(), Ok("long"));
/// ```
pub trait Program<I>: Send + Sync + 'static {
    /// What one run produces.
    type Output: Send + 'static;

    /// Runs the program once. Called on a worker thread, with the caller's overrides in force.
    fn run(&self, input: I) -> Self::Output;
}

impl<F, I, O> Program<I> for F
where
    F: Fn(I) -> O + Send + Sync + 'static,
    O: Send + 'static,
{
    type Output = O;

    fn run(&self, input: I) -> O {
        self(input)
    }
}

/// A type-erased [`AsyncProgram`] from inputs `I` to outputs `O`, made by
/// [`AsyncProgram::boxed`]: every program of that shape has this one type, whatever closure or
/// module it wraps.
///
/// # Examples
///
/// ```
/// use asyncify_pool::{BoxProgram, WorkerPool};
///
/// let pool = WorkerPool::new(1);
/// let programs: Vec<BoxProgram<u32, u32>> = vec![
///     pool.asyncify(|x: u32| x + 1).boxed(),
///     pool.asyncify(|x: u32| x * 10).boxed(),
/// ];
/// let outs: Vec<u32> = programs.iter().map(|p| p.call(4).wait().unwrap()).collect();
/// assert_eq!(outs, [5, 40]);
/// ```
pub type BoxProgram<I, O> = AsyncProgram<dyn Program<I, Output = O>>;

/// A program bound to a pool: a cheap, cloneable async callable.
///
/// Made by [`WorkerPool::asyncify`] or the free function [`asyncify`](crate::asyncify). The
/// program is held once, behind an `Arc`; clones and calls share it.
///
/// # Examples
///
/// ```
/// use asyncify_pool::WorkerPool;
///
/// let pool = WorkerPool::new(2);
/// let shout = pool.asyncify(|s: &'static str| s.to_uppercase());
/// let again = shout.clone(); // shares the program and the pool
/// let (a, b) = pollster::block_on(async { (shout.call("hi").await, again.call("yo").await) });
/// assert_eq!((a.unwrap(), b.unwrap()), ("HI".to_owned(), "YO".to_owned()));
/// ```
pub struct AsyncProgram<P: ?Sized> {
    program: Arc<P>,
    pool: WorkerPool,
    /// Made by the free `asyncify`: resize the default pool to `async_max_workers` before each call.
    follow: Option<Follow>,
    /// Deadlines, retries and limits (see `options`); `None` for a plain program, whose calls
    /// go straight to the pool.
    controls: Option<Arc<Controls>>,
}

impl<P> AsyncProgram<P> {
    pub(crate) fn new(program: P, pool: WorkerPool, follow: Option<Follow>) -> Self {
        AsyncProgram {
            program: Arc::new(program),
            pool,
            follow,
            controls: None,
        }
    }

    /// The same program behind a type-erased [`BoxProgram`], a type that is easy to name (in a
    /// web framework's state, a struct field, a collection of programs of different types).
    /// Calls go through one virtual call more; nothing else changes (the pool, the clones'
    /// sharing, the following of `async_max_workers`).
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::{BoxProgram, WorkerPool};
    ///
    /// struct AppState {
    ///     summarize: BoxProgram<String, usize>,
    /// }
    ///
    /// let pool = WorkerPool::new(2);
    /// let state = AppState { summarize: pool.asyncify(|s: String| s.len()).boxed() };
    /// assert_eq!(state.summarize.call("four".to_owned()).wait(), Ok(4));
    /// ```
    pub fn boxed<I>(self) -> BoxProgram<I, P::Output>
    where
        P: Program<I>,
    {
        let program: Arc<dyn Program<I, Output = P::Output>> = self.program;
        AsyncProgram {
            program,
            pool: self.pool,
            follow: self.follow,
            controls: self.controls,
        }
    }
}

impl<P: ?Sized> AsyncProgram<P> {
    /// Queues one run of the program on `input` and returns its handle at once.
    ///
    /// The settings overrides and the tracing span in force here and now are captured and are
    /// in force on the worker for exactly this run.
    ///
    /// A program made by the free [`asyncify`](crate::asyncify) first resizes the default pool
    /// to the `async_max_workers` in force; if that value is unusable (not a `usize` from 1 to
    /// [`WorkerPool::MAX_THREADS`]), the handle resolves at once to
    /// [`JobError::InvalidSetting`] and nothing runs.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::{settings::{self, Overrides}, WorkerPool};
    ///
    /// let pool = WorkerPool::new(2);
    /// let greet = pool.asyncify(|name: &'static str| {
    ///     format!("{}, {name}", settings::get::<&str>("greeting").unwrap_or("hello"))
    /// });
    /// let handle = settings::context(Overrides::new().with("greeting", "bonjour"), || greet.call("Ada"));
    /// assert_eq!(handle.wait().unwrap(), "bonjour, Ada");
    /// ```
    pub fn call<I>(&self, input: I) -> JobHandle<P::Output>
    where
        P: Program<I>,
        I: Send + 'static,
    {
        if let Err(e) = self.follow_setting() {
            crate::guard::drop("the input of a refused call", input);
            return JobHandle::ready(Err(e));
        }
        let program = Arc::clone(&self.program);
        let captured = Captured::here();
        if let Some(controls) = &self.controls {
            let run = move |input: I| program.run(input);
            return control::start(controls, self.pool.registry(), run, input, captured);
        }
        self.pool
            .registry()
            .submit(move || program.run(input), captured)
    }

    /// For the free `asyncify`: sizes the default pool by the setting in force.
    pub(crate) fn follow_setting(&self) -> Result<(), JobError> {
        match self.follow {
            Some(follow) => follow(&self.pool).map_err(JobError::invalid_setting),
            None => Ok(()),
        }
    }

    /// Like [`call`](Self::call), but refuses instead of waiting when the pool's bounded queue
    /// is full (see [`Builder::queue_capacity`](crate::Builder::queue_capacity)) or the pool is
    /// shut down, handing the input back.
    ///
    /// # Errors
    ///
    /// [`TryCallError`] carrying `input`. (An unusable `async_max_workers`, for a program of
    /// the free [`asyncify`](crate::asyncify), is no refusal: the handle resolves to
    /// [`JobError::InvalidSetting`] as for [`call`](Self::call).)
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let len = pool.asyncify(|s: String| s.len());
    /// assert_eq!(len.try_call("four".to_owned()).unwrap().wait(), Ok(4));
    /// ```
    pub fn try_call<I>(&self, input: I) -> Result<JobHandle<P::Output>, TryCallError<I>>
    where
        P: Program<I>,
        I: Send + 'static,
    {
        if let Err(e) = self.follow_setting() {
            crate::guard::drop("the input of a refused call", input);
            return Ok(JobHandle::ready(Err(e)));
        }
        match self.pool.reserve() {
            Ok(reserved) => Ok(self.call_reserved(reserved, input)),
            Err(reason) => Err(TryCallError::new(input, reason)),
        }
    }

    /// Queues a run in a queue slot already taken (`try_call`, a service's `poll_ready`).
    pub(crate) fn call_reserved<I>(&self, reserved: Reserved, input: I) -> JobHandle<P::Output>
    where
        P: Program<I>,
        I: Send + 'static,
    {
        if self.controls.is_some() {
            // Its attempts take their slots when they pass the program's gates.
            drop(reserved);
            return self.call(input);
        }
        let program = Arc::clone(&self.program);
        let captured = Captured::here();
        self.pool
            .registry()
            .submit_reserved(reserved, move || program.run(input), captured)
    }

    /// The pool the calls run on.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(3);
    /// let p = pool.asyncify(|x: u8| x);
    /// assert_eq!(p.pool().threads(), 3);
    /// ```
    pub fn pool(&self) -> &WorkerPool {
        &self.pool
    }

    /// The wrapped program.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let p = pool.asyncify(|x: u8| x + 1);
    /// assert_eq!((p.program())(1), 2);
    /// ```
    pub fn program(&self) -> &P {
        &self.program
    }

    /// The shared program, for a batch's jobs (each holds a count, as a call's job does).
    pub(crate) fn shared(&self) -> &Arc<P> {
        &self.program
    }

    /// Whether this program follows the `async_max_workers` setting (made by the free
    /// [`asyncify`](crate::asyncify)) or keeps its pool's size (made by [`WorkerPool::asyncify`]).
    pub(crate) fn follows_setting(&self) -> bool {
        self.follow.is_some()
    }
}

impl<P: ?Sized> Clone for AsyncProgram<P> {
    fn clone(&self) -> Self {
        AsyncProgram {
            program: Arc::clone(&self.program),
            pool: self.pool.clone(),
            follow: self.follow,
            controls: self.controls.clone(),
        }
    }
}

impl<P: ?Sized> fmt::Debug for AsyncProgram<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncProgram")
            .field("pool", &self.pool)
            .field("follows_async_max_workers", &self.follows_setting())
            .finish_non_exhaustive()
    }
}
