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
//! * **Backpressure.** Unbounded by default. With `queue_capacity(n)`, at most `n` jobs wait
//!   in the queue; a call that finds it full returns a handle that holds the job and queues it
//!   when a worker makes room (the handle is woken, no thread spins or blocks for it), and
//!   `try_spawn`/`try_call` refuse instead, handing the input back.
//! * **Counting.** Each worker counts what it ran in its own cache line; `stats()` adds them
//!   up, so counting costs the hot path no shared write.
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
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::capture::Captured;
use crate::error::{JobError, PoolError};
use crate::job::{new_job, Job, JobHandle, Outcome, Submit};
use crate::permits::Permits;
use crate::program::AsyncProgram;

/// The most threads a pool may have (the permit counter keeps counts in 32 bits).
const MAX_THREADS: usize = crate::permits::MAX;

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
/// | [`queue_capacity`](Self::queue_capacity) | unbounded |
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
    queue_capacity: Option<usize>,
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

    /// Bounds the queue to `capacity` waiting jobs (running ones not counted).
    ///
    /// When the queue is full, [`WorkerPool::spawn`] and [`AsyncProgram::call`] still return a
    /// handle at once, but the job waits inside the handle until a worker makes room: awaiting
    /// the handle waits asynchronously, [`JobHandle::wait`] blocks, and dropping the handle
    /// meanwhile queues nothing. [`WorkerPool::try_spawn`] and [`AsyncProgram::try_call`] return
    /// the input back instead. A capacity of 0 is taken as 1.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::WorkerPool;
    /// use std::sync::mpsc;
    ///
    /// let pool = WorkerPool::builder().threads(1).queue_capacity(1).build().unwrap();
    /// let (release, gate) = mpsc::channel::<()>();
    /// let (started_tx, started) = mpsc::channel();
    /// let busy = pool.spawn(move || { started_tx.send(()).unwrap(); gate.recv().unwrap() });
    /// started.recv().unwrap();                  // the worker is busy
    /// let queued = pool.spawn(|| 1);            // takes the one queue slot
    /// let waiting = pool.spawn(|| 2);           // no room: held by its handle
    /// assert!(waiting.is_waiting_for_room());
    /// assert!(pool.try_spawn(|| 3).unwrap_err().is_full());
    /// release.send(()).unwrap();
    /// assert_eq!((queued.wait(), waiting.wait()), (Ok(1), Ok(2)));
    /// # busy.wait().unwrap();
    /// ```
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = Some(capacity.max(1));
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
            permits: Permits::new(threads),
            live: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            ctrl: Mutex::new(Ctrl {
                rx: Some(rx),
                closing_rx: None,
                threads: Vec::new(),
                counters: Vec::new(),
                next_index: 0,
            }),
            exited: Condvar::new(),
            capacity: self.queue_capacity,
            slots_used: AtomicUsize::new(0),
            room: Mutex::new(Vec::new()),
            room_waiters: AtomicUsize::new(0),
            room_round: AtomicUsize::new(0),
            pills: AtomicUsize::new(0),
            retired: Counters::default(),
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
            .field("queue_capacity", &self.queue_capacity)
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
    /// The concurrency limit (see `permits`).
    permits: Permits,
    /// Worker threads alive. Changed only under `ctrl`, read anywhere.
    live: AtomicUsize,
    closed: AtomicBool,
    ctrl: Mutex<Ctrl>,
    /// Signalled when `live` reaches 0.
    exited: Condvar,
    /// `Some(n)`: at most `n` jobs wait in the queue; `slots_used` counts them.
    capacity: Option<usize>,
    slots_used: AtomicUsize,
    /// Wakers of handles waiting for room in a full bounded queue.
    room: Mutex<Vec<Waker>>,
    room_waiters: AtomicUsize,
    /// Bumped each time `room` is emptied, so a handle knows whether its waker is still there.
    room_round: AtomicUsize,
    /// `Wake`/`Stop` messages in the queue, so `stats().queued` counts only jobs.
    pills: AtomicUsize,
    /// What retired workers counted.
    retired: Counters,
    name: String,
    stack_size: Option<usize>,
    on_start: Option<Hook>,
    on_stop: Option<Hook>,
}

struct Ctrl {
    /// Kept to start new workers; dropped at close, so that once the workers are gone the queue
    /// is torn down and anything left in it tells its caller `ShutDown`.
    rx: Option<Receiver<Message>>,
    /// The same receiver from close until the last worker leaves, so that a shutdown that runs
    /// out of time can take the queued jobs out (see `abandon_queued`).
    closing_rx: Option<Receiver<Message>>,
    threads: Vec<JoinHandle<()>>,
    /// The counters of the live workers.
    counters: Vec<Arc<Counters>>,
    next_index: usize,
}

/// One worker's tally, written only by that worker (so a plain load and store, no locked
/// instruction) and read by `stats()`. Aligned to keep workers off each other's cache lines.
#[derive(Default)]
#[repr(align(128))]
struct Counters {
    completed: AtomicU64,
    panicked: AtomicU64,
    cancelled: AtomicU64,
}

impl Counters {
    fn record(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Completed => &self.completed,
            Outcome::Panicked => &self.panicked,
            Outcome::Skipped => &self.cancelled,
        };
        // ORDERING: single writer; readers want a recent value, not a synchronising one.
        counter.store(counter.load(Relaxed) + 1, Relaxed);
    }

    fn add_to(&self, stats: &mut Stats) {
        stats.completed += self.completed.load(Relaxed);
        stats.panicked += self.panicked.load(Relaxed);
        stats.cancelled += self.cancelled.load(Relaxed);
    }

    /// Folds a retiring worker's tally into the pool's (under `ctrl`, so not racing).
    fn absorb(&self, other: &Counters) {
        for (mine, theirs) in [
            (&self.completed, &other.completed),
            (&self.panicked, &other.panicked),
            (&self.cancelled, &other.cancelled),
        ] {
            mine.fetch_add(theirs.load(Relaxed), Relaxed);
        }
    }
}

/// A snapshot of what a pool is doing and has done, from [`WorkerPool::stats`].
///
/// The counts are read one after another while the pool runs, so under load they are each
/// recent but not one atomic picture; once the pool is quiet they add up exactly: every job a
/// worker took off the queue is `completed`, `panicked` or `cancelled`, and the rest are
/// `queued` or `running`. Jobs that never reached a worker because the pool shut down (calls
/// after `shutdown`, jobs behind the `Stop` messages, or the queue a timed-out
/// `shutdown_timeout` abandoned) appear in none of the counts: their callers got `ShutDown`.
///
/// # Examples
///
/// ```
/// let pool = asyncify_pool::WorkerPool::new(2);
/// pool.spawn(|| ()).wait().unwrap();
/// let _ = pool.spawn(|| panic!("no")).wait();
/// let stats = pool.stats();
/// assert_eq!((stats.completed, stats.panicked, stats.threads), (1, 1, 2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Jobs waiting in the queue (not those still held by a handle waiting for room).
    pub queued: usize,
    /// Jobs running now.
    pub running: usize,
    /// Jobs that ran and returned.
    pub completed: u64,
    /// Jobs that ran and panicked.
    pub panicked: u64,
    /// Jobs taken off the queue without running because their caller had dropped the handle
    /// (or their batch had cancelled them).
    pub cancelled: u64,
    /// The thread count asked for ([`WorkerPool::threads`]).
    pub threads: usize,
    /// Worker threads alive now (above `threads` for a moment after a shrink).
    pub live_threads: usize,
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
        self.permits.target()
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
            let counters = Arc::new(Counters::default());
            let mine = Arc::clone(&counters);
            match builder.spawn(move || worker_main(shared, rx, index, mine)) {
                Ok(handle) => {
                    ctrl.next_index += 1;
                    self.live.fetch_add(1, SeqCst);
                    ctrl.threads.push(handle);
                    ctrl.counters.push(counters);
                }
                Err(e) => {
                    // Keep the target honest: the pool has what it has.
                    self.permits.set_target(self.live.load(SeqCst).max(1));
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
        ctrl.closing_rx = ctrl.rx.take().filter(|_| self.live.load(SeqCst) > 0);
        for _ in 0..self.live.load(SeqCst) {
            self.send_pill(Message::Stop);
        }
        drop(ctrl);
        // Handles waiting for room must learn that no room will come.
        self.wake_room();
        true
    }

    fn send_pill(&self, pill: Message) {
        self.pills.fetch_add(1, Relaxed);
        if self.tx.send(pill).is_err() {
            self.pills.fetch_sub(1, Relaxed);
        }
    }

    /// Bookkeeping for every message a worker takes off the queue.
    fn took(&self, message: &Message) {
        match message {
            Message::Run(_) => {
                if self.capacity.is_some() {
                    self.release_slot();
                }
            }
            Message::Wake | Message::Stop => {
                self.pills.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Takes a queue slot: always for an unbounded queue, if one is free for a bounded one.
    fn try_take_slot(&self) -> bool {
        match self.capacity {
            None => true,
            Some(capacity) => self
                .slots_used
                .fetch_update(SeqCst, SeqCst, |used| (used < capacity).then_some(used + 1))
                .is_ok(),
        }
    }

    fn release_slot(&self) {
        // ORDERING: SeqCst against `room_waiters`, Dekker-style as for the permits: a waiter
        // registers, then retries the slot; a releaser frees the slot, then looks for waiters.
        self.slots_used.fetch_sub(1, SeqCst);
        if self.room_waiters.load(SeqCst) > 0 {
            self.wake_room();
        }
    }

    fn wake_room(&self) {
        let wakers = {
            let mut room = lock(&self.room);
            self.room_waiters.store(0, SeqCst);
            self.room_round.fetch_add(1, SeqCst);
            std::mem::take(&mut *room)
        };
        // Wake them all: one that was dropped meanwhile must not swallow the only wake-up.
        for waker in wakers {
            waker.wake();
        }
    }

    /// Registers `waker` to be woken when a slot frees; returns the round it is registered in.
    fn wait_for_room(&self, waker: &Waker) -> usize {
        let mut room = lock(&self.room);
        room.push(waker.clone());
        self.room_waiters.fetch_add(1, SeqCst);
        self.room_round.load(SeqCst)
    }

    /// Puts a job whose slot is taken into the queue.
    fn push(&self, job: Job) {
        // A failed send hands the message back and drops it, which resolves the handle
        // to `ShutDown` (see `Job`'s `Drop`).
        let _ = self.tx.send(Message::Run(job));
    }

    /// Called by a worker, under `ctrl`, when it leaves the live count, whatever the reason.
    fn worker_exited(&self, ctrl: &mut Ctrl, counters: &Arc<Counters>) {
        if let Some(i) = ctrl.counters.iter().position(|c| Arc::ptr_eq(c, counters)) {
            ctrl.counters.swap_remove(i);
            self.retired.absorb(counters);
        }
        if self.live.fetch_sub(1, SeqCst) == 1 {
            // Tear the queue down: a job that slipped in behind the `Stop`s resolves `ShutDown`.
            ctrl.closing_rx = None;
            self.exited.notify_all();
        }
    }

    /// After a shutdown ran out of time: takes the jobs still queued out of the queue, so their
    /// callers are told `ShutDown` now instead of waiting behind a job that may never return.
    /// The `Stop`s go back for the workers still busy. Drop the jobs returned outside `ctrl`
    /// (dropping one wakes its caller).
    fn abandon_queued(&self, ctrl: &mut Ctrl) -> Vec<Message> {
        let Some(rx) = &ctrl.closing_rx else {
            return Vec::new();
        };
        let taken: Vec<_> = rx.try_iter().collect();
        for message in &taken {
            self.took(message);
            if let Message::Stop = message {
                self.send_pill(Message::Stop);
            }
        }
        taken
    }

    /// True if this worker is surplus (more live threads than the target) and has taken itself
    /// off the count; it must exit then.
    fn retire_if_surplus(&self, counters: &Arc<Counters>) -> bool {
        if self.live.load(SeqCst) <= self.target() {
            return false;
        }
        let mut ctrl = self.lock_ctrl();
        if self.live.load(SeqCst) <= self.target() {
            return false;
        }
        self.worker_exited(&mut ctrl, counters);
        true
    }
}

thread_local! {
    /// Set on worker threads: the pool they belong to, and their queue, for nested waits.
    static WORKER: RefCell<Option<WorkerContext>> = const { RefCell::new(None) };
}

struct WorkerContext {
    pool: Arc<Shared>,
    rx: Receiver<Message>,
    counters: Arc<Counters>,
    /// `Stop`s taken by nested waits. The worker exits after its current job if it took any,
    /// and hands back all but one (they are owed to other workers).
    stops_taken: usize,
}

fn run_hook(hook: &Option<Hook>, index: usize, which: &str) {
    if let Some(hook) = hook {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(index))).is_err() {
            tracing::error!(index, "asyncify-pool: the {which} hook panicked");
        }
    }
}

fn worker_main(shared: Arc<Shared>, rx: Receiver<Message>, index: usize, counters: Arc<Counters>) {
    run_hook(&shared.on_start, index, "on_thread_start");
    WORKER.with(|w| {
        *w.borrow_mut() = Some(WorkerContext {
            pool: Arc::clone(&shared),
            rx: rx.clone(),
            counters: Arc::clone(&counters),
            stops_taken: 0,
        })
    });
    let retired = worker_loop(&shared, &rx, &counters);
    drop(rx);
    WORKER.with(|w| w.borrow_mut().take());
    run_hook(&shared.on_stop, index, "on_thread_stop");
    if !retired {
        let mut ctrl = shared.lock_ctrl();
        shared.worker_exited(&mut ctrl, &counters);
    }
}

/// Returns true if the worker retired (already off the live count).
fn worker_loop(shared: &Shared, rx: &Receiver<Message>, counters: &Arc<Counters>) -> bool {
    loop {
        if shared.retire_if_surplus(counters) {
            return true;
        }
        let message = rx.recv();
        if let Ok(message) = &message {
            shared.took(message);
        }
        match message {
            Ok(Message::Run(job)) => {
                shared.permits.acquire();
                job.run(&|outcome| counters.record(outcome));
                shared.permits.release();
                let stops = WORKER.with(|w| w.borrow().as_ref().map_or(0, |w| w.stops_taken));
                if stops > 0 {
                    // Hand back the `Stop`s owed to other workers, behind anything still queued.
                    for _ in 1..stops {
                        shared.send_pill(Message::Stop);
                    }
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
    let (shared, rx, counters) = WORKER.with(|w| {
        w.borrow()
            .as_ref()
            .map(|w| (Arc::clone(&w.pool), w.rx.clone(), Arc::clone(&w.counters)))
    })?;
    let (notify_tx, notify_rx) = crossbeam_channel::bounded(1);
    let waker = Waker::from(Arc::new(ChannelWaker(notify_tx)));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(result) = handle.poll_with(Some(&mut cx)) {
            return Some(result);
        }
        // Keep taking messages even after a `Stop`: a call that raced with `shutdown` (it passed
        // the "still open?" check just before the close) sits in the queue *behind* the
        // `Stop`s, and the job this worker waits on may be that call. Waiting only for the
        // wake-up then hung forever, since no worker would ever take it and the queue is not
        // torn down while this worker lives. Extra `Stop`s taken meanwhile are handed back
        // when this worker exits (see `worker_loop`).
        crossbeam_channel::select! {
            recv(rx) -> message => match message.map(|m| { shared.took(&m); m }) {
                // This thread already holds a permit (it is running the job that waits), so
                // the helped job runs under it.
                Ok(Message::Run(job)) => job.run(&|outcome| counters.record(outcome)),
                // A surplus worker will be retired when this one reaches its loop again.
                Ok(Message::Wake) => {}
                Ok(Message::Stop) => WORKER.with(|w| {
                    if let Some(w) = w.borrow_mut().as_mut() {
                        w.stops_taken += 1;
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
            .is_some_and(|w| std::ptr::eq(Arc::as_ptr(&w.pool), shared))
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
            queue_capacity: None,
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
        let (job, mut handle) = new_job(f, Captured::here());
        if shared.try_take_slot() {
            shared.push(job);
        } else {
            handle.set_pending(Box::new(WaitingForRoom {
                job: Some(job),
                shared: Arc::clone(shared),
                registered: None,
            }));
        }
        handle
    }

    /// Like [`spawn`](Self::spawn), but refuses instead of waiting when the bounded queue is
    /// full (see [`Builder::queue_capacity`]), or when the pool is shut down, handing `f` back.
    ///
    /// # Errors
    ///
    /// [`TryCallError`] carrying `f`, saying whether the queue was full or the pool shut down.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(1);
    /// assert_eq!(pool.try_spawn(|| 5).unwrap().wait(), Ok(5));
    /// pool.shutdown();
    /// let refused = pool.try_spawn(|| 5).unwrap_err();
    /// assert!(refused.is_shut_down());
    /// assert_eq!((refused.into_input())(), 5);
    /// ```
    pub fn try_spawn<F, T>(&self, f: F) -> Result<JobHandle<T>, TryCallError<F>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self.reserve() {
            Ok(reserved) => Ok(self.spawn_reserved(reserved, f)),
            Err(reason) => Err(TryCallError { input: f, reason }),
        }
    }

    /// Takes a queue slot for one job, or says why not.
    pub(crate) fn reserve(&self) -> Result<Reserved, Refusal> {
        let shared = &self.handle.shared;
        if shared.closed.load(SeqCst) {
            return Err(Refusal::ShutDown);
        }
        if !shared.try_take_slot() {
            return Err(Refusal::Full);
        }
        Ok(Reserved {
            shared: Some(Arc::clone(shared)),
        })
    }

    /// Queues `f` in a slot taken by [`reserve`](Self::reserve).
    pub(crate) fn spawn_reserved<F, T>(&self, reserved: Reserved, f: F) -> JobHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (job, handle) = new_job(f, Captured::here());
        reserved.fill(job);
        handle
    }

    /// A snapshot of the pool's counters (see [`Stats`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = asyncify_pool::WorkerPool::new(3);
    /// let stats = pool.stats();
    /// assert_eq!((stats.threads, stats.queued, stats.running, stats.completed), (3, 0, 0, 0));
    /// ```
    pub fn stats(&self) -> Stats {
        let shared = &self.handle.shared;
        let (threads, running) = shared.permits.load();
        let mut stats = Stats {
            queued: shared.tx.len().saturating_sub(shared.pills.load(Relaxed)),
            running,
            threads,
            live_threads: shared.live.load(SeqCst),
            ..Stats::default()
        };
        let ctrl = shared.lock_ctrl();
        shared.retired.add_to(&mut stats);
        for counters in &ctrl.counters {
            counters.add_to(&mut stats);
        }
        stats
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
        shared.permits.set_target(threads);
        ctrl.threads.retain(|t| !t.is_finished());
        let live = shared.live.load(SeqCst);
        if threads > live {
            shared.spawn_workers(&mut ctrl, threads - live)?;
        } else {
            for _ in threads..live {
                shared.send_pill(Message::Wake);
            }
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
    /// callers are told [`JobError::ShutDown`] at once.
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
                        let timeout = ShutdownTimeout {
                            running: shared.permits.load().1,
                            threads: shared.live.load(SeqCst),
                        };
                        let abandoned = shared.abandon_queued(&mut ctrl);
                        drop(ctrl);
                        drop(abandoned);
                        return Err(timeout);
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

/// A job held by its handle until the bounded queue has room.
struct WaitingForRoom {
    job: Option<Job>,
    shared: Arc<Shared>,
    /// The waker registered in `shared.room`, and the round it was registered in: polled again
    /// in the same round by the same task, the handle does not register again (a task re-polled
    /// while the queue stays full would otherwise add a waker per poll).
    registered: Option<(usize, Waker)>,
}

impl Submit for WaitingForRoom {
    fn poll_submit(&mut self, cx: Option<&mut Context<'_>>) -> Poll<()> {
        let shared = &self.shared;
        let mut registered = false;
        loop {
            if shared.closed.load(SeqCst) {
                // Dropping the job tells the handle `ShutDown`.
                self.job = None;
                return Poll::Ready(());
            }
            if shared.try_take_slot() {
                if let Some(job) = self.job.take() {
                    shared.push(job);
                }
                return Poll::Ready(());
            }
            match (&cx, registered) {
                (Some(cx), false) => {
                    // ORDERING: if the round is unchanged, `wake_room` has not yet bumped it,
                    // so the waker is still in `room` or about to be woken from it.
                    if let Some((round, waker)) = &self.registered {
                        if *round == shared.room_round.load(SeqCst) && waker.will_wake(cx.waker()) {
                            return Poll::Pending;
                        }
                    }
                    // Register, then try once more: a slot freed in between is not missed.
                    let round = shared.wait_for_room(cx.waker());
                    self.registered = Some((round, cx.waker().clone()));
                    registered = true;
                }
                _ => return Poll::Pending,
            }
        }
    }
}

/// A queue slot taken for one job; given back if unused.
pub(crate) struct Reserved {
    /// `None` once filled.
    shared: Option<Arc<Shared>>,
}

impl Reserved {
    fn fill(mut self, job: Job) {
        if let Some(shared) = self.shared.take() {
            shared.push(job);
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            if shared.capacity.is_some() {
                shared.release_slot();
            }
        }
    }
}

/// Why a `try_` call refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Full,
    ShutDown,
}

/// A [`WorkerPool::try_spawn`] or [`AsyncProgram::try_call`] that was refused, with the input
/// handed back.
///
/// # Examples
///
/// ```
/// let pool = asyncify_pool::WorkerPool::new(1);
/// let double = pool.asyncify(|x: u32| x * 2);
/// pool.shutdown();
/// let err = double.try_call(21).unwrap_err();
/// assert!(err.is_shut_down() && !err.is_full());
/// assert_eq!(err.into_input(), 21);
/// ```
pub struct TryCallError<I> {
    input: I,
    reason: Refusal,
}

impl<I> TryCallError<I> {
    pub(crate) fn new(input: I, reason: Refusal) -> Self {
        TryCallError { input, reason }
    }

    /// True if the bounded queue was full.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = asyncify_pool::WorkerPool::new(1);
    /// # pool.shutdown();
    /// assert!(!pool.try_spawn(|| ()).unwrap_err().is_full());
    /// ```
    pub fn is_full(&self) -> bool {
        self.reason == Refusal::Full
    }

    /// True if the pool was shut down.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = asyncify_pool::WorkerPool::new(1);
    /// # pool.shutdown();
    /// assert!(pool.try_spawn(|| ()).unwrap_err().is_shut_down());
    /// ```
    pub fn is_shut_down(&self) -> bool {
        self.reason == Refusal::ShutDown
    }

    /// The input that was not queued.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = asyncify_pool::WorkerPool::new(1);
    /// # pool.shutdown();
    /// let p = pool.asyncify(|s: String| s.len());
    /// assert_eq!(p.try_call("kept".to_owned()).unwrap_err().into_input(), "kept");
    /// ```
    pub fn into_input(self) -> I {
        self.input
    }
}

impl<I> fmt::Debug for TryCallError<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TryCallError")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<I> fmt::Display for TryCallError<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            Refusal::Full => f.write_str("the pool's queue is full"),
            Refusal::ShutDown => f.write_str("the pool has been shut down"),
        }
    }
}

impl<I> std::error::Error for TryCallError<I> {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;

    #[test]
    fn pin_is_not_needed_for_handles() {
        fn unpin<T: Unpin>() {}
        unpin::<JobHandle<()>>();
        let mut handle = WorkerPool::new(1).spawn(|| 3);
        assert_eq!(pollster::block_on(Pin::new(&mut handle)), Ok(3));
    }
}
