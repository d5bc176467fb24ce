//! The worker loop: one loop, run by an idle worker and by a thread waiting on a job.
//!
//! # One loop, two goals
//!
//! [`work_until`] checks its goal, takes the next piece of work the goal allows, runs it, and
//! otherwise waits. The goal says what "done", "work" and "wait" mean:
//!
//! * [`Serve`], the worker's top level: done when the pool has more workers than its target
//!   and this one has had no job for the keep-alive (it retires), or the pool is closed with an
//!   empty queue (it stops); work is the next job in the queue, taken *after* a permit; waiting
//!   is spinning a little, then sleeping in [`Sleep`](super::sleep::Sleep), until the
//!   keep-alive ends for a surplus worker. Retirement, stop and wake-up are handled here and
//!   nowhere else (the policy is in `registry`).
//! * [`Await`], inside [`JobHandle::wait`]: done when the handle is ready (or the deadline
//!   passed); work is *the awaited job itself*, if this thread is a worker of its pool and no
//!   other worker has started it yet; waiting is parking the thread until the job's completion
//!   wakes it.
//!
//! # Nested waits: why only the awaited job
//!
//! A job that waits on another job of its pool (an LLM module calling a sub-module) must not
//! deadlock, even on one thread, so the waiting worker runs the awaited job itself when nobody
//! has started it: out of line, on its own stack, under its own permit. It runs *only* that job
//! and never other queued work: a waiting worker that took whatever was next in the queue (the
//! next *outer* job, most of the time) stacked unrelated jobs frame on frame until the stack
//! overflowed (rayon-rs/rayon#854 is the same failure). So the stack grows with the program's
//! own nesting, never with the queue, and no thread is added for breadth.
//!
//! Nesting itself is bounded by the stack, not assumed: a thread runs an awaited job on its
//! own stack only while less than half of it is in use; deeper, the job runs on a *spare*
//! thread, with a fresh stack of the pool's size, while the waiter parks (the spare runs under
//! the waiter's permit, so the pool's concurrency does not change). Threads then grow with
//! nesting depth divided by what half a stack holds, a handful for a thousand levels.
//!
//! A wait made from what follows a job on its worker (the drop of its discarded output or of
//! its captured context, its caller's waker, a waker of the bounded queue woken as the job
//! leaves it) is nested too: the thread still holds the job's place in the pool there, and
//! runs the awaited job under it, as inside the job. The place is kept to the end of that code
//! rather than given back before it: given back, the worker would run user code beside as many
//! jobs as the pool has places, and the awaited job would need a place of its own, which a
//! full pool may not have until one of its jobs ends; with one thread that was a deadlock (the
//! thread waited for the place it held).
//!
//! Deadlock freedom: the awaited job is queued (the waiter runs it), waiting for room in a
//! bounded queue (the waiter owns its handle, so it runs it without queueing it), or running
//! on some thread, which by the same argument is making progress. Only a cycle of jobs waiting
//! on each other through handles passed between them can block, as it would anywhere.
//!
//! A job of *another* pool is never run by the waiter (that pool's limit is not this one's),
//! and a waiting worker runs no other work either: it parks, keeping its place. So jobs of two
//! pools that wait on each other's in a cycle (a job on A waits on one on B, which waits on one
//! queued behind it on A) wait forever if A has no other free thread, as with any pool that
//! keeps its threads while they block. Running A's queued jobs on the waiter's stack meanwhile
//! (as this pool once did) breaks that cycle but makes others: a helped job that waits on the
//! job buried under it hangs, and the stack grows with the queue again.
//!
//! Order: top-level calls start in submission order (one FIFO queue, a permit taken before the
//! job). A job waited on from inside another starts in that order too, or earlier, on its
//! waiter, when the waiter gets to it first.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::permits::Permit;
use super::registry::{Registry, Ticket};
use super::shutdown;
use super::sleep::{pause, Sleeper, SPINS_BEFORE_SLEEP};
use super::stats::Counters;
use crate::error::JobError;
use crate::guard;
use crate::job::{thread_waker, Job, JobHandle, Outcome, Runnable, Start};
use crate::local_state;
use crate::sync::{deadline_after, lock, Mutex};

/// What a thread of the pool is started for.
pub(super) enum Role {
    /// A worker: serve the queue until it retires or the pool stops.
    Worker(Receiver<Job>),
    /// A spare: run one awaited job on a fresh stack, then leave. The job is handed through a
    /// slot, so that the waiter can take it back if the thread cannot start.
    Spare(Arc<Mutex<Option<Nested>>>),
}

/// A piece of work a loop may run.
enum Work<'w> {
    /// A job taken off the queue, with the place taken for it first.
    Queued(Job, Place<'w>),
    /// An awaited job, run by (or for) the thread waiting on it, under the waiter's place (or,
    /// for a hook, under a place taken for it).
    Nested(Nested, Option<Place<'w>>),
}

/// A permit this thread holds, marked on its worker while it is held (see
/// [`Worker::holds_place`]).
struct Place<'w> {
    worker: &'w Worker,
    _permit: Permit<'w>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        // Only a thread that holds no place takes one, so it holds none again.
        self.worker.holds_place.set(false);
    }
}

/// Where a piece of work ran.
#[derive(PartialEq)]
enum Ran {
    Here,
    /// On a spare thread, under this thread's permit: the waiter must now wait for it to end.
    OnSpare,
}

/// An awaited job that its waiter runs.
pub(super) enum Nested {
    /// It was still waiting for room in a bounded queue: it never entered the queue.
    Held(Job),
    /// It was queued and nobody had started it: started out of line, its entry becomes a husk.
    OutOfLine(Arc<dyn Runnable>),
}

/// A thread of the pool, as its loop sees it.
struct Worker {
    registry: Arc<Registry>,
    /// The thread's number in its pool, as in its name and its hooks.
    index: usize,
    counters: Arc<Counters>,
    /// The queue, for a worker; a spare takes nothing from it.
    rx: Option<Receiver<Job>>,
    /// Where this thread's stack began (its size is at least the pool's `stack_size`: the OS
    /// only rounds it up, and the pool raises a size too small for its nested waits).
    stack_base: usize,
    /// Where this worker sleeps when idle.
    sleeper: Arc<Sleeper>,
    shutdown: shutdown::Sender,
    /// True while this thread holds a place in the pool (a [`Place`], or for a spare its
    /// waiter's): from a job's start to the end of the user code that follows it (see the
    /// module docs), so that a wait there runs the awaited job under that place.
    holds_place: Cell<bool>,
}

thread_local! {
    /// Set on the pool's threads: which pool, and what its loop needs.
    static WORKER: RefCell<Option<Rc<Worker>>> = const { RefCell::new(None) };
}

/// This thread's place in its pool, if it is a thread of one (none in a thread-local's
/// destructor: a pool's thread has left its pool by then).
fn this_worker() -> Option<Rc<Worker>> {
    WORKER.try_with(|w| w.borrow().clone()).ok().flatten()
}

/// True on a thread of the pool with id `pool` (a job of it runs here).
pub(crate) fn on_thread_of(pool: u64) -> bool {
    WORKER
        .try_with(|w| w.borrow().as_ref().is_some_and(|w| w.registry.id == pool))
        .unwrap_or(false)
}

/// The number of the pool thread this runs on: the `N` of its name (`asyncify-N`, see
/// [`Builder::thread_name`](crate::Builder::thread_name)) and the index its
/// [`on_thread_start`](crate::Builder::on_thread_start) hook was given. `None` off the
/// threads of every pool.
///
/// A pool's first threads are numbered from 0 up; a thread started later (by
/// [`set_threads`](crate::WorkerPool::set_threads), or a spare thread that runs a deeply
/// nested wait) takes the next number never used in that pool, so no two threads of a pool
/// ever share one. A job waited on from inside another job and run by its waiter sees the
/// waiter's number.
///
/// # Examples
///
/// ```
/// use asyncify_pool::{worker_index, WorkerPool};
///
/// let pool = WorkerPool::new(2);
/// let index = pool.spawn(worker_index).wait().unwrap();
/// assert!(matches!(index, Some(0) | Some(1)));
/// assert_eq!(worker_index(), None); // not a thread of a pool
/// ```
pub fn worker_index() -> Option<usize> {
    // `try_with`: user code may ask from a thread-local's destructor, after this one is gone.
    WORKER
        .try_with(|w| w.borrow().as_ref().map(|w| w.index))
        .ok()
        .flatten()
}

/// An address on the current stack.
fn stack_address() -> usize {
    let marker = 0u8;
    std::ptr::addr_of!(marker) as usize
}

/// The body of every thread of the pool. The thread is known as one of the pool's for all of
/// it, hooks and teardown included, so that a `shutdown` from there does not wait for itself.
pub(super) fn main(registry: Arc<Registry>, ticket: Ticket, role: Role) {
    let Ticket {
        index,
        counters,
        shutdown,
    } = ticket;
    let (rx, spare) = match role {
        Role::Worker(rx) => (Some(rx), None),
        Role::Spare(slot) => (None, lock(&slot).take()),
    };
    let worker = Rc::new(Worker {
        registry: Arc::clone(&registry),
        index,
        counters: Arc::clone(&counters),
        rx,
        stack_base: stack_address(),
        sleeper: Arc::default(),
        shutdown,
        holds_place: Cell::new(false),
    });
    WORKER.with(|w| *w.borrow_mut() = Some(Rc::clone(&worker)));
    // Per-worker programs' states are kept on this thread until it leaves (below).
    local_state::keep();
    if let Some(hook) = &registry.config.on_start {
        guard::quietly("an on_thread_start hook", || hook(index));
    }
    let last_worker = match (spare, &worker.rx) {
        (Some(nested), _) => {
            // Under the waiter's place, which it keeps until this job has ended.
            worker.holds_place.set(true);
            worker.run(Work::Nested(nested, None));
            worker.holds_place.set(false);
            false
        }
        (None, None) => false, // a spare whose waiter took the job back
        (None, Some(_)) => {
            let mut serve = Serve {
                rounds: 0,
                idle_since: None,
                left: None,
            };
            work_until(Some(&worker), &mut serve);
            serve.left.unwrap_or(false)
        }
    };
    if let Some(hook) = &registry.config.on_stop {
        guard::quietly("an on_thread_stop hook", || hook(index));
    }
    // Before the thread counts as gone, so that `shutdown` returns after them; never left to
    // a thread-local destructor, where a panic would abort.
    local_state::drop_all();
    registry.thread_left(&counters, last_worker);
    // A leaving worker hands its place on: one that lacked a permit may go on now.
    registry.sleep.wake_one();
    WORKER.with(|w| w.borrow_mut().take());
    // Last: the shutdown sender, so that `shutdown` returns only once this thread is done.
    drop(worker);
}

/// What a loop runs for (see the module docs).
trait Goal {
    /// True once the loop may return.
    fn reached(&mut self, worker: Option<&Worker>) -> bool;
    /// The next piece of work to run now on this thread of the pool, if any.
    fn next<'w>(&mut self, worker: &'w Worker) -> Option<Work<'w>>;
    /// Waits until something the goal depends on may have changed.
    fn wait(&mut self, worker: Option<&Worker>);
    /// The last piece of work went to a spare thread.
    fn handed_to_spare(&mut self) {}
}

/// The one loop: check the goal, run what it allows, else wait. `worker` is this thread's
/// place in the pool (`None` off the pool's threads: nothing to run, only to wait).
fn work_until(worker: Option<&Worker>, goal: &mut impl Goal) {
    loop {
        if goal.reached(worker) {
            return;
        }
        match worker.and_then(|w| Some((w, goal.next(w)?))) {
            Some((worker, work)) => {
                if worker.run(work) == Ran::OnSpare {
                    goal.handed_to_spare();
                }
            }
            None => goal.wait(worker),
        }
    }
}

impl Worker {
    /// Runs a piece of work: here, or on a spare thread if it is an awaited job and this
    /// thread's stack is more than half used.
    fn run(&self, work: Work<'_>) -> Ran {
        match work {
            Work::Queued(job, place) => {
                job.run(&|o| self.record(o));
                drop(place);
                // States of per-worker programs that are gone go at the next job boundary (one
                // relaxed load when none is), so a busy worker lets them go too.
                local_state::sweep();
            }
            Work::Nested(nested, place) => {
                // A spare runs under its waiter's place in a job; a place taken for a hook
                // stays here, so the job runs here with it (a hook runs near its stack's top).
                if place.is_none() && self.stack_is_half_used() {
                    match self.run_on_spare(nested) {
                        Ok(()) => return Ran::OnSpare,
                        Err(nested) => self.run_nested(nested),
                    }
                } else {
                    self.run_nested(nested);
                }
                if let Some(place) = place {
                    // Given back by a thread that goes on with user code instead of looking at
                    // the queue: a worker asleep for want of a place must take it.
                    drop(place);
                    self.registry.place_given_back();
                }
            }
        }
        Ran::Here
    }

    fn run_nested(&self, nested: Nested) {
        match nested {
            Nested::Held(job) => job.run(&|o| self.record(o)),
            Nested::OutOfLine(cell) => {
                let husks = &self.registry.husks;
                // Counted before the start, so that the husk's removal never comes first.
                husks.fetch_add(1, Relaxed);
                cell.run(Start::OutOfLine, &|o| {
                    if o == Outcome::Lost {
                        husks.fetch_sub(1, Relaxed);
                    }
                    self.record(o);
                });
            }
        }
    }

    fn record(&self, outcome: Outcome) {
        if outcome == Outcome::Husk {
            self.registry.husks.fetch_sub(1, Relaxed);
        }
        self.counters.record(outcome);
    }

    /// Marks `permit` as this thread's place in the pool until it is dropped.
    fn take_place<'w>(&'w self, permit: Permit<'w>) -> Place<'w> {
        self.holds_place.set(true);
        Place {
            worker: self,
            _permit: permit,
        }
    }

    fn stack_is_half_used(&self) -> bool {
        stack_address().abs_diff(self.stack_base) > self.registry.config.stack_size / 2
    }

    /// Hands `nested` to a new spare thread; gives it back if the OS refuses one.
    fn run_on_spare(&self, nested: Nested) -> Result<(), Nested> {
        let slot = Arc::new(Mutex::new(Some(nested)));
        let role = Role::Spare(Arc::clone(&slot));
        match self.registry.start_spare(self.shutdown.clone(), role) {
            Ok(()) => Ok(()),
            Err(e) => {
                guard::warn(format_args!(
                    "no spare thread for a deeply nested wait ({e}); running it on this stack"
                ));
                // A thread that failed to start never took it.
                let nested = lock(&slot).take();
                nested.map_or(Ok(()), Err)
            }
        }
    }
}

/// A worker's top level: serve the queue.
struct Serve {
    /// Rounds of spinning since the last job.
    rounds: u32,
    /// When this worker last found nothing to do, since its last job (`None` right after one).
    idle_since: Option<Instant>,
    /// Set once the worker has left the live count: whether it was the last worker.
    left: Option<bool>,
}

impl Goal for Serve {
    fn reached(&mut self, worker: Option<&Worker>) -> bool {
        let registry = &worker.expect("only workers serve").registry;
        let idle_since = self.idle_since;
        self.left = registry.retire_or_stop(|| registry.keep_alive_ran_out(idle_since));
        self.left.is_some()
    }

    fn next<'w>(&mut self, worker: &'w Worker) -> Option<Work<'w>> {
        let registry = &worker.registry;
        if self.rounds > 0 && registry.queue_is_empty() {
            return None; // idle: no permit taken and given back for nothing
        }
        // The permit first: a job never leaves the queue into a thread that cannot run it.
        let place = worker.take_place(registry.permits.try_acquire()?);
        let job = worker.rx.as_ref()?.try_recv().ok()?;
        // The handles waiting for room are woken on a ringer, not here: a waker that blocks
        // would hold up `job`. (Here only if the pool is closed or the timer has no thread:
        // then under the place, and a waker that waits on a job of the pool runs it under it.)
        registry.job_taken_off_the_queue();
        self.rounds = 0;
        self.idle_since = None;
        Some(Work::Queued(job, place))
    }

    fn wait(&mut self, worker: Option<&Worker>) {
        let worker = worker.expect("only workers serve");
        let idle_since = *self.idle_since.get_or_insert_with(Instant::now);
        if self.rounds < SPINS_BEFORE_SLEEP {
            pause(self.rounds);
            self.rounds += 1;
            return;
        }
        // Going idle: the time to drop the states of per-worker programs that are gone.
        local_state::sweep();
        let registry = &worker.registry;
        // When this worker may leave if it is surplus (`None`: never, for `Duration::MAX`).
        let leave_at = idle_since.checked_add(registry.keep_alive());
        let surplus = || registry.live() > registry.permits.target();
        // A surplus worker sleeps until it may leave; the others until woken.
        let until = leave_at.filter(|_| surplus());
        if until.is_some_and(|t| Instant::now() >= t) {
            return; // its keep-alive is over: `reached` retires it
        }
        let counted = Cell::new(false);
        registry.sleep.sleep(&worker.sleeper, until, || {
            registry.is_closed()
                || registry.queued_job_may_start(&counted)
                // Made surplus since it looked (a shrink): sleep again, until its deadline.
                || (until.is_none() && leave_at.is_some() && surplus())
        });
        registry.uncount_starved(&counted);
    }
}

/// A wait on a handle, inside a job or not.
struct Await<'h, T> {
    handle: &'h mut JobHandle<T>,
    /// `None`: no limit.
    deadline: Option<Instant>,
    waker: Waker,
    result: Option<Result<T, JobError>>,
    /// The awaited job was offered to run here once already (since the last wake-up).
    offered: bool,
    /// The awaited job was offered to run here at least once in this wait: only then may a
    /// deadline end it.
    offered_once: bool,
}

impl<T> Await<'_, T> {
    /// True on a thread of the job's own pool, which may run it (see `next`).
    fn may_run_on(&self, worker: Option<&Worker>) -> bool {
        worker.is_some_and(|w| w.registry.id == self.handle.pool())
    }
}

impl<T> Goal for Await<'_, T> {
    fn reached(&mut self, worker: Option<&Worker>) -> bool {
        let mut cx = Context::from_waker(&self.waker);
        if let Poll::Ready(result) = self.handle.poll_with(Some(&mut cx)) {
            self.result = Some(result);
            return true;
        }
        // A deadline ends the wait only once the awaited job was offered to run here: a job
        // polling its child with short (or zero) timeouts on a busy pool would otherwise give
        // up every time before it started the child, and with one thread never get it run.
        self.deadline.is_some_and(|d| Instant::now() >= d)
            && (self.offered_once || !self.may_run_on(worker))
    }

    fn next<'w>(&mut self, worker: &'w Worker) -> Option<Work<'w>> {
        // Only a thread of the job's own pool runs it: another pool's limit is not ours.
        if !self.may_run_on(Some(worker)) || std::mem::replace(&mut self.offered, true) {
            return None;
        }
        self.offered_once = true;
        // Inside a job, or in the user code that follows one, the waiter's own place covers
        // the awaited job; a thread of the pool that holds none (a hook, a per-worker state
        // dropped between jobs) needs a place of its own.
        let place = if worker.holds_place.get() {
            None
        } else {
            Some(worker.take_place(worker.registry.permits.try_acquire()?))
        };
        let held = self.handle.is_waiting_for_room();
        let nested = match self.handle.take_pending() {
            Some(job) if worker.registry.is_closed() => {
                // Refused, as at the handle's next poll: dropping it (here, holding no lock)
                // tells the handle `ShutDown`.
                drop(job);
                None
            }
            Some(job) => Some(Nested::Held(job)),
            // A held job refused at the close (being dropped by it): nothing to run.
            None if held => None,
            None => self.handle.out_of_line().map(Nested::OutOfLine),
        };
        let Some(nested) = nested else {
            if let Some(place) = place {
                // A place taken for nothing: a worker asleep for want of one may take it.
                drop(place);
                worker.registry.place_given_back();
            }
            return None;
        };
        Some(Work::Nested(nested, place))
    }

    fn handed_to_spare(&mut self) {
        // The spare runs under this thread's permit: returning before it ends (a timeout)
        // would let this thread's job end and free the permit while the spare still runs.
        // An abort must not end the wait early either.
        self.deadline = None;
        self.handle.on_spare();
    }

    fn wait(&mut self, _: Option<&Worker>) {
        match self.deadline {
            None => thread::park(),
            Some(deadline) => {
                thread::park_timeout(deadline.saturating_duration_since(Instant::now()))
            }
        }
        // A controlled call (`control`) queues a new attempt after a backoff or a rate limit,
        // and wakes its waiter when it does: that attempt may be started here too.
        self.offered = false;
    }
}

impl<T> JobHandle<T> {
    /// Blocks the current thread until the job finishes, and returns its result.
    ///
    /// Inside a job of the same pool (a program calling a sub-program and waiting on it), if no
    /// worker has started the awaited job yet, the waiting worker runs it itself, on its own
    /// stack and under its own place in the pool, and returns when it is done; so waiting on a
    /// job of the same pool never deadlocks, even with one thread. It runs only that job, never
    /// other queued work, so nested waits use stack in proportion to their nesting and not to
    /// the queue; past half of the stack, the awaited job runs on a short-lived spare thread
    /// instead (see [`Builder::stack_size`](crate::Builder::stack_size)). The same holds for
    /// user code that a worker runs just after a job, still in the job's place: the drop of
    /// the job's discarded output or of its captured overrides, the caller's waker.
    ///
    /// A call of a program with options ([`timeout`](crate::AsyncProgram::timeout),
    /// [`retry`](crate::AsyncProgram::retry), the limits) is run by its waiter the same way,
    /// attempt by attempt, once each attempt is queued; while the call waits at one of its
    /// program's limits, the waiter parks (see
    /// [`concurrency_limit`](crate::AsyncProgram::concurrency_limit) for when that cannot end).
    ///
    /// Waiting on a job of another pool, or off the pool's threads, it parks the thread until
    /// the job is done. A waiting worker keeps its place in its pool meanwhile, so jobs of two
    /// pools that wait on each other's in a cycle need a free thread on each side.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::WorkerPool;
    ///
    /// let pool = WorkerPool::new(1);
    /// let inner = pool.clone();
    /// // The only worker waits on a job queued behind it, and runs it itself.
    /// let outer = pool.spawn(move || inner.spawn(|| 1).wait().unwrap() + 1);
    /// assert_eq!(outer.wait(), Ok(2));
    /// ```
    pub fn wait(mut self) -> Result<T, JobError> {
        self.wait_until(None)
            .expect("a wait without a deadline ends with a result")
    }

    /// Like [`wait`](Self::wait), but gives up after `timeout` and returns `None`, keeping the
    /// handle (and so the job) alive. `Duration::MAX` (or any timeout past what an `Instant`
    /// holds) waits without a limit.
    ///
    /// Inside a job it helps as `wait` does, whatever the timeout (`Duration::ZERO` too): if no
    /// worker has started the awaited job, it runs it first (on this thread or on a spare
    /// thread), and returns when that job is done, even if that is after `timeout`. So a job
    /// that polls its child with short timeouts gets it run, even on one thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::WorkerPool;
    /// use std::time::Duration;
    ///
    /// let pool = WorkerPool::new(1);
    /// let mut slow = pool.spawn(|| std::thread::sleep(Duration::from_millis(200)));
    /// assert_eq!(slow.wait_timeout(Duration::from_millis(1)), None);
    /// assert_eq!(slow.wait_timeout(Duration::MAX), Some(Ok(())));
    /// ```
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<T, JobError>> {
        self.wait_until(deadline_after(timeout))
    }

    fn wait_until(&mut self, deadline: Option<Instant>) -> Option<Result<T, JobError>> {
        let worker = this_worker();
        let mut goal = Await {
            handle: self,
            deadline,
            waker: thread_waker(),
            result: None,
            offered: false,
            offered_once: false,
        };
        work_until(worker.as_deref(), &mut goal);
        goal.result
    }
}
