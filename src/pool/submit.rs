//! How a job enters the pool: the one internal spawn that every call, `spawn` and batch item goes
//! through. It checks that the pool is open, takes a queue slot and queues the job, or, when a
//! bounded queue is full, leaves the job in its handle until a worker makes room.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use super::registry::Registry;
use super::room::Held;
use crate::capture::Captured;
use crate::error::{JobError, Refusal};
use crate::job::{new_job, new_job_waking, Job, JobHandle, Submit};
use crate::sync::{lock, AtomicBool, Mutex};

impl Registry {
    /// Queues `f` to run under `captured`. The handle resolves at once to `ShutDown` if the pool
    /// is closed; with a full bounded queue it holds the job until there is room.
    pub(crate) fn submit<F, T>(self: &Arc<Self>, f: F, captured: Captured) -> JobHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.submit_waking(f, captured, None)
    }

    /// [`submit`](Self::submit), with `waker` registered as the caller's from the start (it
    /// is woken when the job ends; a handle waiting for room must still be polled to be queued).
    pub(crate) fn submit_waking<F, T>(
        self: &Arc<Self>,
        f: F,
        captured: Captured,
        waker: Option<Waker>,
    ) -> JobHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // ORDERING: a racing `close` is fine either way: a job sent after the last worker left
        // is dropped by the disconnected queue and tells its caller `ShutDown`.
        if self.is_closed() {
            crate::guard::drop("the work of a refused call", (f, captured, waker));
            return JobHandle::ready(Err(JobError::shut_down()));
        }
        let (job, mut handle) = new_job_waking(f, captured, self.id, waker);
        if self.room.try_take() {
            self.push(job);
        } else {
            match self.room.hold(job) {
                Ok(job) => handle.set_pending(Box::new(WaitingForRoom {
                    job,
                    registry: Arc::clone(self),
                    registered: None,
                })),
                // The pool closed meanwhile: dropping the job tells the handle `ShutDown`.
                Err(job) => drop(job),
            }
        }
        handle
    }

    /// Takes a queue slot for one job, or says why not (for the `try_` calls).
    pub(crate) fn reserve(self: &Arc<Self>) -> Result<Reserved, Refusal> {
        if self.is_closed() {
            return Err(Refusal::ShutDown);
        }
        if !self.room.try_take() {
            return Err(Refusal::Full);
        }
        Ok(Reserved {
            registry: Some(Arc::clone(self)),
        })
    }

    /// Takes a queue slot, or registers `cx` to be woken when one frees up (for a service's
    /// `poll_ready`). `registered` remembers the last registration, so that a task polled again
    /// while the queue stays full does not add a waker per poll.
    #[cfg(feature = "tower")]
    pub(crate) fn poll_reserve(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        registered: &mut Option<(usize, Waker)>,
    ) -> Poll<Result<Reserved, Refusal>> {
        let mut fresh = false;
        loop {
            match self.reserve() {
                Err(Refusal::Full) => {}
                done => {
                    self.room.unregister(registered.take());
                    return Poll::Ready(done);
                }
            }
            // Registered now: try once more, so that a slot freed in between is not missed.
            if fresh || !self.room.register_once(cx, registered) {
                return Poll::Pending;
            }
            fresh = true;
        }
    }

    /// Queues `f`, to run under `captured`, in a slot taken by [`reserve`](Self::reserve).
    pub(crate) fn submit_reserved<F, T>(
        &self,
        reserved: Reserved,
        f: F,
        captured: Captured,
    ) -> JobHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // A slot may have been held for long (a ready tower service): after a close, this is
        // a call made after the shutdown.
        if self.is_closed() {
            crate::guard::drop("the work of a refused call", (f, captured));
            drop(reserved);
            return JobHandle::ready(Err(JobError::shut_down()));
        }
        let (job, handle) = new_job(f, captured, self.id);
        reserved.fill(job);
        handle
    }
}

/// A job held by its handle until the bounded queue has room.
struct WaitingForRoom {
    /// Empty once queued, or dropped at the pool's close (see `Room::drop_held`).
    job: Arc<Held>,
    registry: Arc<Registry>,
    /// The waker registered in the room, and the round it was registered in: polled again in
    /// the same round by the same task, the handle does not register again (a task re-polled
    /// while the queue stays full would otherwise add a waker per poll).
    registered: Option<(usize, Waker)>,
}

/// A handle that gives up waiting (dropped, or queued at last) takes its waker out of the room.
impl Drop for WaitingForRoom {
    fn drop(&mut self) {
        self.registry.room.unregister(self.registered.take());
    }
}

impl Submit for WaitingForRoom {
    fn poll_submit(&mut self, cx: Option<&mut Context<'_>>) -> Poll<()> {
        let registry = &self.registry;
        let mut registered = false;
        loop {
            // With the job gone, the close has it (`Room::drop_held`) and is about to drop it,
            // which tells the handle `ShutDown` through its cell: until then the job is
            // neither queued nor refused, so this stays pending (ready, the handle would offer
            // the cell to a waiting worker to run out of line).
            if registry.is_closed() {
                // Dropping the job tells the handle `ShutDown` (outside the lock: user code).
                let job = lock(&self.job).take();
                let Some(job) = job else {
                    return Poll::Pending;
                };
                drop(job);
                return Poll::Ready(());
            }
            if registry.room.try_take() {
                let job = lock(&self.job).take();
                let Some(job) = job else {
                    registry.room.release();
                    return Poll::Pending;
                };
                registry.push(job);
                return Poll::Ready(());
            }
            let Some(cx) = cx.as_ref().filter(|_| !registered) else {
                return Poll::Pending;
            };
            // Registered now: try once more, so that a slot freed in between is not missed.
            if !registry.room.register_once(cx, &mut self.registered) {
                return Poll::Pending;
            }
            registered = true;
        }
    }

    fn into_job(self: Box<Self>) -> Option<Job> {
        // (The caller drops it if the pool is closed: it may hold a lock here, and dropping a
        // job runs user code and wakes its caller.)
        let job = lock(&self.job).take();
        job
    }

    fn detach(self: Box<Self>) {
        let detached = Arc::new(Detached {
            waiting: Mutex::new(Some(*self)),
            notified: AtomicBool::new(false),
        });
        detached.poll();
    }
}

/// A job waiting for room whose handle was detached: it polls itself whenever the room wakes
/// it, and queues the job when there is a slot (or drops it, telling nobody, at shutdown).
struct Detached {
    /// `None` while one thread polls it (or once it is queued).
    waiting: Mutex<Option<WaitingForRoom>>,
    /// A wake-up that came while another thread polled: that thread polls again.
    notified: AtomicBool,
}

impl Detached {
    fn poll(self: &Arc<Self>) {
        self.notified.store(true, SeqCst);
        let waker = Waker::from(Arc::clone(self));
        loop {
            // Taken out of the lock to poll: dropping the job (at shutdown) runs user code,
            // which may close a pool and wake this very waker again.
            let Some(mut waiting) = lock(&self.waiting).take() else {
                return; // another thread polls it and will see `notified`
            };
            self.notified.store(false, SeqCst);
            if waiting
                .poll_submit(Some(&mut Context::from_waker(&waker)))
                .is_ready()
            {
                // Queued (or dropped at shutdown). Dropping it also drops the registered
                // waker, the only reference cycle back to `self`, and maybe a user's waker
                // registered before the handle was detached.
                crate::guard::drop("a waker", waiting);
                return;
            }
            *lock(&self.waiting) = Some(waiting);
            if !self.notified.load(SeqCst) {
                return;
            }
        }
    }
}

impl Wake for Detached {
    fn wake(self: Arc<Self>) {
        self.poll();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.poll();
    }
}

/// A queue slot taken for one job; given back if unused.
pub(crate) struct Reserved {
    /// `None` once filled.
    registry: Option<Arc<Registry>>,
}

impl Reserved {
    /// Queues `job` in this slot.
    pub(crate) fn fill(mut self, job: Job) {
        if let Some(registry) = self.registry.take() {
            registry.push(job);
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.take() {
            registry.room.release();
        }
    }
}
