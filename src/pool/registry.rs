//! The machinery behind a [`WorkerPool`](super::WorkerPool): the queue, the concurrency limit,
//! the threads and the lifecycle. The public `WorkerPool` is a thin handle on this.
//!
//! # Lifecycle
//!
//! * **Open.** Calls push jobs into the queue (one crossbeam channel, FIFO) and wake one
//!   sleeping worker. Workers come and go with [`set_threads`](Registry::set_threads) (see
//!   *Threads and the target* below).
//! * **Closed** ([`close`](Registry::close), by `shutdown` or the last `WorkerPool` handle):
//!   calls are refused at once with `ShutDown`; every sleeping worker and every handle waiting
//!   for room is woken. Workers go on until the queue is empty, then leave.
//! * **Gone.** The last worker to leave takes the pool's own receiver and drops what is left in
//!   the queue (each job dropped tells its caller `ShutDown`); when it then drops its own
//!   receiver, the channel is disconnected: a call that passed the "open?" check just before the
//!   close finds its send refused and its job dropped the same way, and a job sent between the
//!   drain and the disconnect is dropped by the channel, the same way. Every accepted job runs
//!   or tells its caller why not, and no lock is held while a dropped job's closure (user code)
//!   is dropped.
//!
//! # Threads and the target
//!
//! The target (the permit word's, see `permits`) is the concurrency limit, and it moves at
//! once. The threads follow it lazily, so that a limit that goes up and down (the default pool
//! follows `async_max_workers` call by call) does not start and stop threads on every change:
//!
//! * Raising the target starts threads only until `live` reaches it: threads still alive
//!   above an earlier, lower target are reused. Workers that found jobs queued but no permit
//!   (`starved`) are woken for the new permits.
//! * Lowering it stops no thread. A worker above the target (`live > target`) leaves once it
//!   has had no job for the pool's keep-alive
//!   ([`Builder::keep_alive`](super::Builder::keep_alive)): with `Duration::ZERO` at its next
//!   job boundary, with `Duration::MAX` never. Until then it is an ordinary worker, its jobs
//!   started under the permits like any other, so the limit holds while it lives. Idle
//!   surplus workers sleep until their keep-alive ends (the shrink wakes those asleep without
//!   a deadline to start watching it, see `sleep`); a worker that is not surplus sleeps
//!   without a deadline, so an idle pool costs no CPU once its surplus threads are gone.
//! * Which workers leave is whichever run out of keep-alive first; `live` never drops below
//!   the target (one atomic update decides, see [`retire_or_stop`](Registry::retire_or_stop)).
//! * Closing wakes every sleeper, timed or not: the keep-alive never delays a shutdown.

use std::cell::Cell;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::builder::ThreadConfig;
use super::permits::Permits;
use super::room::Room;
use super::shutdown;
use super::sleep::Sleep;
use super::starved::Starved;
use super::stats::{Counters, Stats, Sum};
use super::timer::{RingerTask, Timer};
use super::worker::{self, Role};
use crate::error::PoolError;
use crate::guard;
use crate::job::Job;
use crate::sync::{lock, AtomicBool, AtomicUsize, Mutex, StaticAtomicU64};

/// Pool ids, so that a handle knows which pool's workers may start its job out of line.
static NEXT_ID: StaticAtomicU64 = StaticAtomicU64::new(1);

pub(crate) struct Registry {
    pub(crate) id: u64,
    tx: Sender<Job>,
    pub(super) permits: Permits,
    pub(super) sleep: Sleep,
    pub(super) room: Room,
    closed: AtomicBool,
    /// Worker threads alive (spares not counted). Changed by a worker leaving (lock-free, see
    /// [`retire_or_stop`](Self::retire_or_stop)) and by `set_threads` under `ctrl`.
    live: AtomicUsize,
    /// Sleeping workers that found jobs queued but no permit: a `set_threads` that raises the
    /// target wakes them (see [`queued_job_may_start`](Self::queued_job_may_start)).
    starved: Starved,
    /// Queue entries whose job a waiting worker started out of line (see `job::cell`), so that
    /// `stats().queued` counts only jobs still to start.
    pub(super) husks: AtomicUsize,
    ctrl: Mutex<Ctrl>,
    shutdown: shutdown::Receiver,
    /// What threads that left had counted.
    retired: Counters,
    /// The one timer of the pool's waits for time (deadlines, backoffs, rate limits).
    pub(crate) timer: Timer,
    /// When the pool started: the origin of its timing window's epochs.
    origin: Instant,
    pub(super) config: ThreadConfig,
}

struct Ctrl {
    /// The pool's own receiver: cloned for new workers, drained by a timed-out shutdown, taken
    /// by the last worker to leave.
    rx: Option<Receiver<Job>>,
    /// Cloned for every new thread; dropped at close (see `shutdown`).
    shutdown_tx: Option<shutdown::Sender>,
    threads: Vec<JoinHandle<()>>,
    /// The counters of the threads alive.
    counters: Vec<Arc<Counters>>,
    next_index: usize,
}

/// What a new thread is handed: its index, its counters and its shutdown sender.
pub(super) struct Ticket {
    pub(super) index: usize,
    pub(super) counters: Arc<Counters>,
    pub(super) shutdown: shutdown::Sender,
}

impl Registry {
    pub(super) fn new(threads: usize, capacity: Option<usize>, config: ThreadConfig) -> Arc<Self> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (shutdown_tx, shutdown) = shutdown::channel();
        let origin = Instant::now();
        Arc::new(Registry {
            id: NEXT_ID.fetch_add(1, Relaxed),
            tx,
            permits: Permits::new(threads),
            sleep: Sleep::new(),
            room: Room::new(capacity),
            closed: AtomicBool::new(false),
            live: AtomicUsize::new(0),
            starved: Starved::new(),
            husks: AtomicUsize::new(0),
            ctrl: Mutex::new(Ctrl {
                rx: Some(rx),
                shutdown_tx: Some(shutdown_tx),
                threads: Vec::new(),
                counters: Vec::new(),
                next_index: 0,
            }),
            shutdown,
            retired: Counters::new(origin),
            origin,
            timer: Timer::new(config.name.clone(), config.stack_size),
            config,
        })
    }

    /// A worker took a job off the queue: frees its slot in a bounded queue, and has the
    /// handles waiting for room woken by the timer's ringers, not on this thread, which is
    /// about to run the job (see the room's docs).
    pub(super) fn job_taken_off_the_queue(self: &Arc<Self>) {
        if !self.room.release_for_hand_off() {
            return;
        }
        let me = Arc::downgrade(self);
        let wake: RingerTask = Box::new(move || {
            if let Some(registry) = me.upgrade() {
                registry.room.wake_handed(&|| registry.room_drainer());
                guard::drop("a pool", registry);
            }
        });
        if let Some(wake) = self.timer.hand_off(wake) {
            wake();
        }
    }

    /// A task that wakes the handles still to be woken for room (see `Room::drain`).
    fn room_drainer(self: &Arc<Self>) -> RingerTask {
        let me = Arc::downgrade(self);
        Box::new(move || {
            if let Some(registry) = me.upgrade() {
                registry.room.drain_again(&|| registry.room_drainer());
                guard::drop("a pool", registry);
            }
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    pub(super) fn live(&self) -> usize {
        self.live.load(SeqCst)
    }

    pub(super) fn queue_is_empty(&self) -> bool {
        self.tx.is_empty()
    }

    /// Puts a job whose slot is taken into the queue, and wakes a worker for it.
    pub(crate) fn push(&self, mut job: Job) {
        job.enter_queue();
        if let Err(refused) = self.tx.send(job) {
            // The last worker has left: dropping the job tells its caller `ShutDown`.
            drop(refused.into_inner());
            return;
        }
        self.sleep.wake_one();
    }

    /// Stops accepting jobs; wakes every sleeper and every handle waiting for room. False if
    /// the pool was already closed.
    pub(crate) fn close(&self) -> bool {
        let own_sender = {
            let mut ctrl = lock(&self.ctrl);
            if self.closed.swap(true, SeqCst) {
                return false;
            }
            ctrl.shutdown_tx.take()
        };
        drop(own_sender);
        self.sleep.wake_all();
        // Handles waiting for room must learn that no room will come, and calls waiting for
        // time (a backoff, a rate limit) that the pool will not run them.
        self.room.wake_all();
        self.timer.close();
        // Jobs held by handles waiting for room never run now: dropped, their handles know.
        // Last: a held job's `Drop` is user code, and one that blocks must not keep the calls
        // waiting for time from being told.
        self.room.drop_held();
        true
    }

    /// Starts workers until `threads` are alive (for `build`).
    pub(super) fn start_workers(self: &Arc<Self>, threads: usize) -> Result<(), PoolError> {
        let mut ctrl = lock(&self.ctrl);
        self.grow_to(&mut ctrl, threads)
    }

    /// Starts workers until `threads` are alive, under `ctrl` so that two resizes cannot
    /// interleave. It counts again before each start: a surplus worker may retire meanwhile
    /// (it takes no lock), and the pool must not end below its target.
    fn grow_to(self: &Arc<Self>, ctrl: &mut Ctrl, threads: usize) -> Result<(), PoolError> {
        while self.live() < threads {
            let (Some(rx), Some(tx)) = (ctrl.rx.clone(), ctrl.shutdown_tx.clone()) else {
                return Err(PoolError::ShutDown);
            };
            // Counted before it starts, so that it never sees itself as surplus.
            self.live.fetch_add(1, SeqCst);
            if let Err(e) = self.start_thread(ctrl, tx, Role::Worker(rx)) {
                self.live.fetch_sub(1, SeqCst);
                // Keep the target honest: the pool has what it has.
                self.permits.set_target(self.live().max(1));
                return Err(PoolError::Spawn(e));
            }
        }
        Ok(())
    }

    /// Starts a spare thread that runs `role`'s one job; `shutdown` is the caller's sender,
    /// so that a spare can start after the close too.
    pub(super) fn start_spare(
        self: &Arc<Self>,
        shutdown: shutdown::Sender,
        role: Role,
    ) -> std::io::Result<()> {
        let mut ctrl = lock(&self.ctrl);
        self.start_thread(&mut ctrl, shutdown, role)
    }

    fn start_thread(
        self: &Arc<Self>,
        ctrl: &mut Ctrl,
        shutdown: shutdown::Sender,
        role: Role,
    ) -> std::io::Result<()> {
        let index = ctrl.next_index;
        let counters = Arc::new(Counters::new(self.origin));
        let ticket = Ticket {
            index,
            counters: Arc::clone(&counters),
            shutdown,
        };
        let registry = Arc::clone(self);
        let thread = std::thread::Builder::new()
            .name(format!("{}-{index}", self.config.name))
            .stack_size(self.config.stack_size)
            .spawn(move || worker::main(registry, ticket, role))?;
        ctrl.next_index += 1;
        ctrl.threads.retain(|t| !t.is_finished());
        ctrl.threads.push(thread);
        ctrl.counters.push(counters);
        Ok(())
    }

    /// Changes the target (checked by the caller): the limit moves at once, the threads as
    /// the module docs say.
    pub(super) fn set_threads(self: &Arc<Self>, threads: usize) -> Result<(), PoolError> {
        let mut ctrl = lock(&self.ctrl);
        if self.is_closed() {
            return Err(PoolError::ShutDown);
        }
        let before = self.permits.target();
        self.permits.set_target(threads);
        let grown = self.grow_to(&mut ctrl, threads);
        drop(ctrl);
        if threads > before && self.starved.any_after_freeing() {
            self.sleep.wake_all();
        }
        if self.live() > threads && self.keep_alive() != Duration::MAX {
            // Surplus workers asleep without a deadline must wake to start their keep-alive.
            self.sleep.wake_untimed();
        }
        grown
    }

    /// How long a worker above the target may go without a job before it leaves.
    pub(super) fn keep_alive(&self) -> Duration {
        self.config.keep_alive
    }

    /// True if a surplus worker idle since `idle_since` (`None`: it just ran a job) may leave.
    pub(super) fn keep_alive_ran_out(&self, idle_since: Option<Instant>) -> bool {
        let keep_alive = self.keep_alive();
        keep_alive.is_zero() || idle_since.is_some_and(|since| since.elapsed() >= keep_alive)
    }

    /// For a worker about to sleep: true if a queued job could start now. A worker that finds
    /// jobs queued but no permit counts itself `starved` (once per sleep, in `counted`; it
    /// takes itself off with [`uncount_starved`](Self::uncount_starved)), so that raising the
    /// target wakes it.
    pub(super) fn queued_job_may_start(&self, counted: &Cell<bool>) -> bool {
        if self.queue_is_empty() {
            return false;
        }
        if self.permits.available() {
            return true;
        }
        self.starved
            .count_and_look(counted, || self.permits.available())
    }

    /// A place taken outside a job (by a hook, or a per-worker state's `Drop` between jobs,
    /// for the job it waits on) was given back by a thread that does not look at the queue
    /// next: a worker that went to sleep because every place was taken is woken for it. (A
    /// worker that gives back the place of a queued job takes the next job itself.)
    pub(super) fn place_given_back(&self) {
        if self.starved.any_after_freeing() {
            self.sleep.wake_one();
        }
    }

    /// Ends a sleep counted by [`queued_job_may_start`](Self::queued_job_may_start).
    pub(super) fn uncount_starved(&self, counted: &Cell<bool>) {
        self.starved.uncount(counted);
    }

    /// For a worker between jobs: true if it must leave, because the pool has more workers
    /// than its target and `keep_alive_ran_out()` for this one (it retires), or is closed with
    /// nothing left to run. It has then taken itself off the live count; the second value says
    /// whether it was the last worker.
    pub(super) fn retire_or_stop(&self, keep_alive_ran_out: impl FnOnce() -> bool) -> Option<bool> {
        let closed = self.is_closed();
        let stopping = closed && self.queue_is_empty();
        // The clock is read only for a worker that is surplus now.
        let may_retire = stopping || (self.live() > self.permits.target() && keep_alive_ran_out());
        if !may_retire {
            return None;
        }
        let left = self.live.fetch_update(SeqCst, SeqCst, |live| {
            (stopping || live > self.permits.target()).then(|| live - 1)
        });
        left.ok().map(|before| before == 1 && closed)
    }

    /// Called by every thread of the pool as it leaves (its hooks have run): folds its counts
    /// into the pool's and, for the last worker, tears the queue down.
    pub(super) fn thread_left(&self, counters: &Arc<Counters>, last_worker: bool) {
        let rx = {
            let mut ctrl = lock(&self.ctrl);
            if let Some(i) = ctrl.counters.iter().position(|c| Arc::ptr_eq(c, counters)) {
                ctrl.counters.swap_remove(i);
                self.retired.absorb(counters);
            }
            if last_worker {
                ctrl.rx.take()
            } else {
                None
            }
        };
        if let Some(rx) = rx {
            // Outside the lock: each dropped job drops its closure, which is user code (it may
            // even hold the last handle of this pool, and close it).
            while let Ok(job) = rx.try_recv() {
                if job.discard() {
                    self.husks.fetch_sub(1, Relaxed);
                }
            }
            guard::drop("the pool's queue", rx);
        }
    }

    /// After a shutdown ran out of time: takes the jobs still queued out, so that their callers
    /// are told `ShutDown` now instead of waiting behind a job that may never return. Every
    /// caller is told first; then the jobs are dropped, outside every lock (a `Drop` that
    /// blocks holds up this thread, not the other callers' answers).
    pub(super) fn abandon_queued(&self) {
        let Some(rx) = lock(&self.ctrl).rx.clone() else {
            return;
        };
        guard::telling_all_first(|| {
            for job in rx.try_iter() {
                if job.discard() {
                    self.husks.fetch_sub(1, Relaxed);
                }
            }
        });
    }

    /// Waits until every thread of the pool has left, or `deadline` passes; then joins them.
    /// For an async shutdown: ready once every thread of the pool is gone (not joined: the
    /// threads have only their exit left, and a later blocking `shutdown` joins them).
    pub(super) fn poll_gone(
        &self,
        waker: &std::task::Waker,
        slot: &mut Option<shutdown::WakerSlot>,
    ) -> std::task::Poll<()> {
        self.shutdown.poll_gone(waker, slot)
    }

    pub(super) fn wait_gone(&self, deadline: Option<std::time::Instant>) -> bool {
        if !self.shutdown.wait(deadline) {
            return false;
        }
        let threads = std::mem::take(&mut lock(&self.ctrl).threads);
        let me = std::thread::current().id();
        for t in threads {
            // A leaving thread of the pool can get here (an async shutdown's waker, woken as
            // it leaves, that shuts down again): it cannot join itself.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
        true
    }

    pub(super) fn stats(&self) -> Stats {
        let (threads, running) = self.permits.load();
        let stats = Stats {
            queued: self.tx.len().saturating_sub(self.husks.load(Relaxed)),
            running,
            threads,
            live_threads: self.live(),
            ..Stats::default()
        };
        let mut sum = Sum::new(stats, self.origin);
        let ctrl = lock(&self.ctrl);
        sum.add(&self.retired);
        for counters in &ctrl.counters {
            sum.add(counters);
        }
        drop(ctrl);
        sum.finish()
    }
}
