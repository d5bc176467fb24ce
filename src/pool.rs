//! The worker pool: a set of OS threads that it owns, fed by one MPMC queue.
//!
//! # Policy
//!
//! * **Threads.** A pool runs exactly the number of threads it was given, starting them at
//!   construction. They never idle out; an idle worker is parked inside the queue's `recv`
//!   (crossbeam spins briefly, then parks on a futex, and a sender skips the wake-up syscall
//!   when nobody sleeps), so an idle pool costs no CPU.
//! * **Concurrency.** At most `threads()` jobs run at once. The limit is a counter of permits,
//!   `target` and `running` packed in one atomic word so that taking a permit and lowering the
//!   target are ordered against each other: from the moment `set_threads(n)` returns, a job
//!   starts only if fewer than `n` are running.
//! * **Resizing.** Growing starts the missing threads at once. Shrinking lowers the target, and
//!   surplus workers retire at their next job boundary; idle ones are woken with one `Wake`
//!   message each so they notice. A running job is never interrupted.
//! * **Order.** One FIFO queue: jobs are taken in submission order.
//! * **Shutdown.** `shutdown` closes the pool (later calls resolve at once to `ShutDown`) and
//!   queues one `Stop` per worker behind everything accepted, so the queue drains before the
//!   workers leave; then it joins them. A job that slips into the queue behind the `Stop`s is
//!   dropped with the queue when the last worker leaves, and a dropped job tells its caller
//!   `ShutDown` (see [`Job`]), so no caller hangs. Dropping the last `WorkerPool` handle does the
//!   same without joining.
//! * **Waiting inside a job.** A worker that blocks in `JobHandle::wait` keeps taking jobs from
//!   its pool's queue and runs them on its own stack while it waits, so nested waits never
//!   deadlock, whatever the thread count.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::error::{JobError, PoolError};
use crate::job::{new_job, Captured, Job, JobHandle};
use crate::program::AsyncProgram;

/// The most threads a pool may have (the permit counter keeps counts in 32 bits).
const MAX_THREADS: usize = u32::MAX as usize;

pub(crate) enum Message {
    Run(Job),
    /// A nudge: a worker that receives it re-checks whether it is surplus.
    Wake,
    /// The receiving worker exits.
    Stop,
}

type Hook = Arc<dyn Fn(usize) + Send + Sync>;

/// Configuration for a [`WorkerPool`], made by [`WorkerPool::builder`].
///
/// | knob | default |
/// |---|---|
/// | [`threads`](Self::threads) | `num_cpus::get()` (also for 0) |
/// | [`thread_name`](Self::thread_name) | `"asyncify"`, threads are named `asyncify-0`, `asyncify-1`, … |
/// | [`stack_size`](Self::stack_size) | the standard library's default (2 MiB, or `RUST_MIN_STACK`) |
/// | [`on_thread_start`](Self::on_thread_start) / [`on_thread_stop`](Self::on_thread_stop) | none |
///
/// # Examples
///
/// ```
/// use asyncify_pool::WorkerPool;
///
/// let pool = WorkerPool::builder()
///     .threads(4)
///     .thread_name("llm")
///     .stack_size(256 * 1024)
///     .on_thread_start(|i| println!("worker {i} up"))
///     .build()
///     .unwrap();
/// assert_eq!(pool.threads(), 4);
/// let name = pool.spawn(|| std::thread::current().name().unwrap().to_owned()).wait().unwrap();
/// assert!(name.starts_with("llm-"));
/// ```
#[must_use]
pub struct Builder {
    threads: usize,
    name: String,
    stack_size: Option<usize>,
    on_start: Option<Hook>,
    on_stop: Option<Hook>,
}

impl Builder {
    /// The number of worker threads; 0 means `num_cpus::get()`.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::builder().threads(3).build().unwrap();
    /// assert_eq!(pool.threads(), 3);
    /// ```
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// The prefix of the worker threads' names: `{prefix}-{index}`. Linux shows only the first
    /// 15 bytes of a thread name, so keep it short.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::builder().threads(1).thread_name("db").build().unwrap();
    /// let name = pool.spawn(|| std::thread::current().name().map(String::from)).wait().unwrap();
    /// assert_eq!(name.as_deref(), Some("db-0"));
    /// ```
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.name = prefix.into();
        self
    }

    /// The stack size of each worker thread, in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::builder().stack_size(8 << 20).build().unwrap();
    /// # drop(pool);
    /// ```
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// Runs on each worker thread when it starts, with the worker's index (0, 1, … in start
    /// order, never reused). A panic in the hook is caught and logged.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let started = Arc::new(AtomicUsize::new(0));
    /// let s = started.clone();
    /// let pool = asyncify_pool::WorkerPool::builder()
    ///     .threads(2)
    ///     .on_thread_start(move |_| { s.fetch_add(1, Ordering::SeqCst); })
    ///     .build()
    ///     .unwrap();
    /// pool.shutdown();
    /// assert_eq!(started.load(Ordering::SeqCst), 2);
    /// ```
    pub fn on_thread_start(mut self, hook: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_start = Some(Arc::new(hook));
        self
    }

    /// Runs on each worker thread just before it exits (shutdown, or retiring after a
    /// `set_threads` that shrank the pool), with the worker's index. A panic in it is caught.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let stopped = Arc::new(AtomicUsize::new(0));
    /// let s = stopped.clone();
    /// let pool = asyncify_pool::WorkerPool::builder()
    ///     .threads(2)
    ///     .on_thread_stop(move |_| { s.fetch_add(1, Ordering::SeqCst); })
    ///     .build()
    ///     .unwrap();
    /// pool.shutdown(); // joins, so both hooks have run
    /// assert_eq!(stopped.load(Ordering::SeqCst), 2);
    /// ```
    pub fn on_thread_stop(mut self, hook: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_stop = Some(Arc::new(hook));
        self
    }

    /// Starts the pool's threads.
    ///
    /// # Errors
    ///
    /// [`PoolError::Spawn`] if the operating system refuses a thread; the threads already
    /// started are stopped again.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::builder().build().unwrap();
    /// assert_eq!(pool.threads(), num_cpus::get());
    /// ```
    pub fn build(self) -> Result<WorkerPool, PoolError> {
        let threads = match self.threads {
            0 => num_cpus::get().max(1),
            n => n.min(MAX_THREADS),
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            tx,
            permits: AtomicU64::new(pack(threads, 0)),
            live: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            gate: Mutex::new(()),
            gate_cv: Condvar::new(),
            gate_waiters: AtomicUsize::new(0),
            ctrl: Mutex::new(Ctrl {
                rx: Some(rx),
                threads: Vec::new(),
                next_index: 0,
            }),
            exited: Condvar::new(),
            name: self.name,
            stack_size: self.stack_size,
            on_start: self.on_start,
            on_stop: self.on_stop,
        });
        let pool = WorkerPool {
            handle: Arc::new(Handle { shared }),
        };
        {
            let shared = &pool.handle.shared;
            let mut ctrl = shared.lock_ctrl();
            shared.spawn_workers(&mut ctrl, threads)?;
        }
        Ok(pool)
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("threads", &self.threads)
            .field("thread_name", &self.name)
            .field("stack_size", &self.stack_size)
            .finish_non_exhaustive()
    }
}

/// A pool of worker threads that runs blocking programs and hands their results back to async
/// (or blocking) callers.
///
/// `WorkerPool` is a cheap handle (`Clone + Send + Sync`): clones share the same threads. When
/// the last handle is dropped the pool closes: queued jobs still run and their handles resolve,
/// then the threads exit.
///
/// # Examples
///
/// ```
/// use asyncify_pool::WorkerPool;
///
/// let pool = WorkerPool::new(4);
/// let summarize = pool.asyncify(|text: String| format!("{} words", text.split_whitespace().count()));
/// let out = pollster::block_on(summarize.call("the quick brown fox".to_owned()));
/// assert_eq!(out.unwrap(), "4 words");
/// ```
#[derive(Clone)]
pub struct WorkerPool {
    handle: Arc<Handle>,
}

/// The user-facing owner: when the last `WorkerPool` clone goes, the pool closes. Workers hold
/// only `Shared`, so they do not keep the pool open.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
    }
}

struct Shared {
    tx: Sender<Message>,
    /// `target` (the thread count asked for) in the high 32 bits, `running` (jobs started and not
    /// finished) in the low 32. One word, so "take a permit if running < target" and "lower
    /// the target" are totally ordered.
    permits: AtomicU64,
    /// Worker threads alive. Changed only under `ctrl`, read anywhere.
    live: AtomicUsize,
    closed: AtomicBool,
    /// Where a worker that holds a job but no permit (just after a shrink) sleeps.
    gate: Mutex<()>,
    gate_cv: Condvar,
    gate_waiters: AtomicUsize,
    ctrl: Mutex<Ctrl>,
    /// Signalled when `live` reaches 0.
    exited: Condvar,
    name: String,
    stack_size: Option<usize>,
    on_start: Option<Hook>,
    on_stop: Option<Hook>,
}

struct Ctrl {
    /// Kept to start new workers; dropped at close, so that once the workers are gone the queue
    /// is torn down and anything left in it tells its caller `ShutDown`.
    rx: Option<Receiver<Message>>,
    threads: Vec<JoinHandle<()>>,
    next_index: usize,
}

const fn pack(target: usize, running: usize) -> u64 {
    ((target as u64) << 32) | running as u64
}

const fn target_of(word: u64) -> usize {
    (word >> 32) as usize
}

const fn running_of(word: u64) -> usize {
    (word & 0xffff_ffff) as usize
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The pool's own critical sections do not panic (hooks and jobs run outside them).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn lock_ctrl(&self) -> MutexGuard<'_, Ctrl> {
        lock(&self.ctrl)
    }

    fn target(&self) -> usize {
        target_of(self.permits.load(SeqCst))
    }

    /// Takes a permit to start a job, waiting while `running >= target` (only ever true
    /// between a shrink and the retirement of the surplus workers).
    fn acquire(&self) {
        if self.try_acquire() {
            return;
        }
        let mut gate = lock(&self.gate);
        self.gate_waiters.fetch_add(1, SeqCst);
        while !self.try_acquire() {
            gate = self.gate_cv.wait(gate).unwrap_or_else(PoisonError::into_inner);
        }
        self.gate_waiters.fetch_sub(1, SeqCst);
    }

    fn try_acquire(&self) -> bool {
        // ORDERING: SeqCst on every access to `permits` and `gate_waiters`: a releaser that reads
        // `gate_waiters == 0` must be ordered before the waiter's increment, so the waiter's next
        // `try_acquire` sees the released permit (Dekker's pattern).
        self.permits
            .fetch_update(SeqCst, SeqCst, |w| {
                (running_of(w) < target_of(w)).then_some(w + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.permits.fetch_sub(1, SeqCst);
        if self.gate_waiters.load(SeqCst) > 0 {
            self.wake_gate();
        }
    }

    fn wake_gate(&self) {
        let _gate = lock(&self.gate);
        self.gate_cv.notify_all();
    }

    fn set_target(&self, target: usize) {
        let _ = self
            .permits
            .fetch_update(SeqCst, SeqCst, |w| Some(pack(target, running_of(w))));
    }

    fn spawn_workers(self: &Arc<Self>, ctrl: &mut Ctrl, count: usize) -> Result<(), PoolError> {
        let rx = ctrl.rx.as_ref().ok_or(PoolError::ShutDown)?;
        for _ in 0..count {
            let index = ctrl.next_index;
            let mut builder = thread::Builder::new().name(format!("{}-{index}", self.name));
            if let Some(size) = self.stack_size {
                builder = builder.stack_size(size);
            }
            let shared = Arc::clone(self);
            let rx = rx.clone();
            match builder.spawn(move || worker_main(shared, rx, index)) {
                Ok(handle) => {
                    ctrl.next_index += 1;
                    self.live.fetch_add(1, SeqCst);
                    ctrl.threads.push(handle);
                }
                Err(e) => {
                    // Keep the target honest: the pool has what it has.
                    self.set_target(self.live.load(SeqCst).max(1));
                    return Err(PoolError::Spawn(e));
                }
            }
        }
        Ok(())
    }

    /// Stops accepting jobs and queues one `Stop` per worker behind everything accepted.
    /// Returns false if the pool was already closed.
    fn close(&self) -> bool {
        let mut ctrl = self.lock_ctrl();
        if self.closed.swap(true, SeqCst) {
            return false;
        }
        ctrl.rx = None;
        for _ in 0..self.live.load(SeqCst) {
            let _ = self.tx.send(Message::Stop);
        }
        true
    }

    /// Called by a worker before it exits, whatever the reason.
    fn worker_exited(&self, ctrl: &mut Ctrl) {
        let _ = ctrl;
        if self.live.fetch_sub(1, SeqCst) == 1 {
            self.exited.notify_all();
        }
    }

    /// True if this worker is surplus (more live threads than the target) and has taken itself
    /// off the count; it must exit then.
    fn retire_if_surplus(&self) -> bool {
        if self.live.load(SeqCst) <= self.target() {
            return false;
        }
        let mut ctrl = self.lock_ctrl();
        if self.live.load(SeqCst) <= self.target() {
            return false;
        }
        self.worker_exited(&mut ctrl);
        true
    }
}

thread_local! {
    /// Set on worker threads: the pool they belong to, and their queue, for nested waits.
    static WORKER: RefCell<Option<WorkerContext>> = const { RefCell::new(None) };
}

struct WorkerContext {
    pool: *const Shared,
    rx: Receiver<Message>,
    /// A nested wait took a `Stop` meant for this worker: it exits after the current job.
    stop_seen: bool,
}

fn run_hook(hook: &Option<Hook>, index: usize, which: &str) {
    if let Some(hook) = hook {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(index))).is_err() {
            tracing::error!(index, "asyncify-pool: the {which} hook panicked");
        }
    }
}

fn worker_main(shared: Arc<Shared>, rx: Receiver<Message>, index: usize) {
    run_hook(&shared.on_start, index, "on_thread_start");
    WORKER.with(|w| {
        *w.borrow_mut() = Some(WorkerContext {
            pool: Arc::as_ptr(&shared),
            rx: rx.clone(),
            stop_seen: false,
        })
    });
    let retired = worker_loop(&shared, &rx);
    drop(rx);
    WORKER.with(|w| w.borrow_mut().take());
    run_hook(&shared.on_stop, index, "on_thread_stop");
    if !retired {
        let mut ctrl = shared.lock_ctrl();
        shared.worker_exited(&mut ctrl);
    }
}

/// Returns true if the worker retired (already off the live count).
fn worker_loop(shared: &Shared, rx: &Receiver<Message>) -> bool {
    loop {
        if shared.retire_if_surplus() {
            return true;
        }
        match rx.recv() {
            Ok(Message::Run(job)) => {
                shared.acquire();
                job.run();
                shared.release();
                if WORKER.with(|w| w.borrow().as_ref().is_some_and(|w| w.stop_seen)) {
                    return false;
                }
            }
            Ok(Message::Wake) => {}
            Ok(Message::Stop) | Err(_) => return false,
        }
    }
}

/// Wakes a worker blocked in a nested wait when the job it waits on completes.
struct ChannelWaker(Sender<()>);

impl Wake for ChannelWaker {
    fn wake(self: Arc<Self>) {
        let _ = self.0.try_send(());
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.0.try_send(());
    }
}

/// `JobHandle::wait` on a worker thread: run queued jobs of this worker's pool while waiting.
/// Returns `None` off worker threads.
pub(crate) fn wait_on_worker<T>(handle: &mut JobHandle<T>) -> Option<Result<T, JobError>> {
    let rx = WORKER.with(|w| w.borrow().as_ref().map(|w| w.rx.clone()))?;
    let (notify_tx, notify_rx) = crossbeam_channel::bounded(1);
    let waker = Waker::from(Arc::new(ChannelWaker(notify_tx)));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(result) = handle.poll_with(Some(&mut cx)) {
            return Some(result);
        }
        let stop_seen = WORKER.with(|w| w.borrow().as_ref().is_some_and(|w| w.stop_seen));
        if stop_seen {
            // This worker owes its pool an exit; it must not take another worker's `Stop`.
            let _ = notify_rx.recv();
            continue;
        }
        crossbeam_channel::select! {
            recv(rx) -> message => match message {
                // This thread already holds a permit (it is running the job that waits), so
                // the helped job runs under it.
                Ok(Message::Run(job)) => job.run(),
                // A surplus worker will be retired when this one reaches its loop again.
                Ok(Message::Wake) => {}
                Ok(Message::Stop) => WORKER.with(|w| {
                    if let Some(w) = w.borrow_mut().as_mut() {
                        w.stop_seen = true;
                    }
                }),
                Err(_) => { let _ = notify_rx.recv(); }
            },
            recv(notify_rx) -> _ => {}
        }
    }
}

fn on_worker_of(shared: &Shared) -> bool {
    WORKER.with(|w| {
        w.borrow()
            .as_ref()
            .is_some_and(|w| std::ptr::eq(w.pool, shared))
    })
}

impl WorkerPool {
    /// Starts a pool of `threads` worker threads.
    ///
    /// # Panics
    ///
    /// If `threads` is 0 (use [`builder`](Self::builder) for "one per CPU"), or if the operating
    /// system refuses to start a thread.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(8);
    /// assert_eq!(pool.threads(), 8);
    /// ```
    pub fn new(threads: usize) -> Self {
        assert!(
            threads > 0,
            "WorkerPool::new(0): a pool needs at least one thread \
             (use WorkerPool::builder() for one per CPU)"
        );
        match Self::builder().threads(threads).build() {
            Ok(pool) => pool,
            Err(e) => panic!("WorkerPool::new({threads}): {e}"),
        }
    }

    /// A [`Builder`] for thread count, names, stack size and hooks.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::builder().threads(2).build().unwrap();
    /// assert_eq!(pool.threads(), 2);
    /// ```
    pub fn builder() -> Builder {
        Builder {
            threads: 0,
            name: "asyncify".to_owned(),
            stack_size: None,
            on_start: None,
            on_stop: None,
        }
    }

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
        AsyncProgram::new(program, self.clone(), false)
    }

    /// Runs `f` once on the pool, like tokio's `spawn_blocking`, with the caller's settings
    /// overrides and tracing span in force on the worker for exactly this job. The job is
    /// queued before `spawn` returns.
    ///
    /// If the pool is shut down, the returned handle resolves at once to
    /// [`JobError::ShutDown`].
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let h = pool.spawn(|| std::fs::metadata(".").is_ok());
    /// assert_eq!(h.wait(), Ok(true));
    /// ```
    pub fn spawn<F, T>(&self, f: F) -> JobHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let shared = &self.handle.shared;
        // ORDERING: a racing `close` is fine either way: a job sent after the workers left is
        // dropped with the queue and resolves to `ShutDown` (see `Job`'s `Drop`).
        if shared.closed.load(SeqCst) {
            return JobHandle::ready(Err(JobError::shut_down()));
        }
        let (job, handle) = new_job(f, Captured::here());
        // A failed send hands the message back and drops it, which resolves the handle.
        let _ = shared.tx.send(Message::Run(job));
        handle
    }

    /// The number of threads the pool runs (the most jobs it runs at once).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(asyncify_pool::WorkerPool::new(3).threads(), 3);
    /// ```
    pub fn threads(&self) -> usize {
        self.handle.shared.target()
    }

    /// Changes the number of threads. Growing starts the new threads before returning.
    /// Shrinking never interrupts a running job: surplus workers leave when they finish, and
    /// from the moment this returns, a job starts only while fewer than `threads` run.
    ///
    /// # Errors
    ///
    /// [`PoolError::ZeroThreads`] for 0, [`PoolError::ShutDown`] after shutdown,
    /// [`PoolError::Spawn`] if the operating system refuses a thread (the pool keeps the
    /// threads it has, and `threads()` says how many).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// pool.set_threads(6).unwrap();
    /// assert_eq!(pool.threads(), 6);
    /// pool.set_threads(1).unwrap();
    /// assert_eq!(pool.threads(), 1);
    /// ```
    pub fn set_threads(&self, threads: usize) -> Result<(), PoolError> {
        if threads == 0 {
            return Err(PoolError::ZeroThreads);
        }
        let threads = threads.min(MAX_THREADS);
        let shared = &self.handle.shared;
        let mut ctrl = shared.lock_ctrl();
        if shared.closed.load(SeqCst) {
            return Err(PoolError::ShutDown);
        }
        let old = shared.target();
        shared.set_target(threads);
        ctrl.threads.retain(|t| !t.is_finished());
        let live = shared.live.load(SeqCst);
        if threads > live {
            shared.spawn_workers(&mut ctrl, threads - live)?;
        } else {
            for _ in threads..live {
                let _ = shared.tx.send(Message::Wake);
            }
        }
        if threads > old {
            shared.wake_gate();
        }
        Ok(())
    }

    /// Stops accepting jobs, runs every job already accepted, and joins the threads.
    ///
    /// Calls made after (or racing with) `shutdown` either run with their result delivered, or
    /// resolve to [`JobError::ShutDown`]; never both, never neither. Calling it again, or from
    /// several threads, is fine: every call returns once the threads are gone.
    ///
    /// Called from inside a job of this pool, it closes the pool and returns at once without
    /// joining (a worker cannot join itself, and waiting for the others could wait for the
    /// caller); the threads still drain the queue and exit.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(2);
    /// let queued: Vec<_> = (0..10).map(|i| pool.spawn(move || i)).collect();
    /// pool.shutdown();
    /// // Everything accepted before the shutdown ran.
    /// let results: Vec<_> = queued.into_iter().map(|h| h.wait().unwrap()).collect();
    /// assert_eq!(results, (0..10).collect::<Vec<_>>());
    /// assert!(pool.spawn(|| ()).wait().unwrap_err().is_shut_down());
    /// ```
    pub fn shutdown(&self) {
        let _ = self.shutdown_deadline(None);
    }

    /// Like [`shutdown`](Self::shutdown), but waits at most `timeout` for the workers.
    ///
    /// # Errors
    ///
    /// [`ShutdownTimeout`] if threads were still running when time ran out. They go on with
    /// the job they run and exit after it; the jobs still queued then will not run, and their
    /// callers are told [`JobError::ShutDown`] when the last worker leaves.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// let _slow = pool.spawn(|| std::thread::sleep(Duration::from_millis(300)));
    /// let err = pool.shutdown_timeout(Duration::from_millis(10)).unwrap_err();
    /// assert_eq!(err.running(), 1);
    /// ```
    pub fn shutdown_timeout(&self, timeout: Duration) -> Result<(), ShutdownTimeout> {
        self.shutdown_deadline(Some(Instant::now() + timeout))
    }

    fn shutdown_deadline(&self, deadline: Option<Instant>) -> Result<(), ShutdownTimeout> {
        let shared = &self.handle.shared;
        shared.close();
        if on_worker_of(shared) {
            return Ok(());
        }
        let mut ctrl = shared.lock_ctrl();
        while shared.live.load(SeqCst) > 0 {
            match deadline {
                None => {
                    ctrl = shared
                        .exited
                        .wait(ctrl)
                        .unwrap_or_else(PoisonError::into_inner)
                }
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(ShutdownTimeout {
                            running: running_of(shared.permits.load(SeqCst)),
                            threads: shared.live.load(SeqCst),
                        });
                    }
                    ctrl = shared
                        .exited
                        .wait_timeout(ctrl, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
        let threads = std::mem::take(&mut ctrl.threads);
        drop(ctrl);
        for t in threads {
            let _ = t.join();
        }
        Ok(())
    }

    /// True once [`shutdown`](Self::shutdown) was called.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// assert!(!pool.is_shut_down());
    /// pool.shutdown();
    /// assert!(pool.is_shut_down());
    /// ```
    pub fn is_shut_down(&self) -> bool {
        self.handle.shared.closed.load(SeqCst)
    }
}

impl fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.handle.shared;
        f.debug_struct("WorkerPool")
            .field("threads", &shared.target())
            .field("live", &shared.live.load(SeqCst))
            .field("shut_down", &shared.closed.load(SeqCst))
            .finish()
    }
}

/// [`WorkerPool::shutdown_timeout`] ran out of time.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let pool = asyncify_pool::WorkerPool::new(2);
/// let _a = pool.spawn(|| std::thread::sleep(Duration::from_millis(300)));
/// let _b = pool.spawn(|| std::thread::sleep(Duration::from_millis(300)));
/// std::thread::sleep(Duration::from_millis(50));
/// let err = pool.shutdown_timeout(Duration::ZERO).unwrap_err();
/// assert_eq!(err.running(), 2);
/// println!("{err}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownTimeout {
    running: usize,
    threads: usize,
}

impl ShutdownTimeout {
    /// The jobs still running when time ran out.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = asyncify_pool::WorkerPool::new(1);
    /// # let _h = pool.spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
    /// # std::thread::sleep(std::time::Duration::from_millis(50));
    /// let err = pool.shutdown_timeout(std::time::Duration::ZERO).unwrap_err();
    /// assert_eq!(err.running(), 1);
    /// ```
    pub fn running(&self) -> usize {
        self.running
    }

    /// The worker threads that had not exited yet.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = asyncify_pool::WorkerPool::new(1);
    /// # let _h = pool.spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
    /// # std::thread::sleep(std::time::Duration::from_millis(50));
    /// let err = pool.shutdown_timeout(std::time::Duration::ZERO).unwrap_err();
    /// assert_eq!(err.threads(), 1);
    /// ```
    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl fmt::Display for ShutdownTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shutdown timed out with {} job(s) still running on {} thread(s)",
            self.running, self.threads
        )
    }
}

impl std::error::Error for ShutdownTimeout {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;

    #[test]
    fn permits_pack_and_split() {
        let w = pack(7, 3);
        assert_eq!((target_of(w), running_of(w)), (7, 3));
        let w = pack(MAX_THREADS, MAX_THREADS - 1);
        assert_eq!(target_of(w), MAX_THREADS);
        assert_eq!(running_of(w), MAX_THREADS - 1);
    }

    #[test]
    fn acquire_respects_target_and_release_frees() {
        let pool = WorkerPool::new(1);
        let shared = &pool.handle.shared;
        // Quiet pool: no job running, so the permit counter is ours to probe.
        shared.set_target(2);
        assert!(shared.try_acquire());
        assert!(shared.try_acquire());
        assert!(!shared.try_acquire());
        shared.release();
        assert!(shared.try_acquire());
        shared.release();
        shared.release();
        assert_eq!(running_of(shared.permits.load(SeqCst)), 0);
    }

    #[test]
    fn pin_is_not_needed_for_handles() {
        fn unpin<T: Unpin>() {}
        unpin::<JobHandle<()>>();
        let _ = Pin::new(&mut WorkerPool::new(1).spawn(|| ()));
    }
}
