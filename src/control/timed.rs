//! A controlled call that passed its gates at once and has a deadline but no retry policy: one
//! allocation, the job's own cell with the deadline beside it, and nothing between the worker
//! and the caller.
//!
//! The deadline is an entry on the pool's timer whose alarm is this call itself (the queue
//! holds it while it waits, the worker while it runs, so the alarm reaches it as long as the
//! job may still run, whether or not anybody polls). When it rings, a queued job never starts
//! and a running one sees `is_cancelled()`; either way the handle resolves to `TimedOut` at
//! once. A worker that takes the job after its deadline ends it the same way instead of
//! running it. Whichever of the two cuts the job off counts the timeout (the cell's own lock
//! decides, as for an [`AbortHandle`](crate::AbortHandle), which may race them).
//!
//! The entry goes off the timer when the call ends: at the caller's answer, at the drop of the
//! handle, at an abort, when the job is called off in the queue or found expired, or, for a
//! detached call, when its job ends.
//!
//! A call with a retry policy goes through [`direct`](super::direct) instead: it may hand over
//! to another attempt, which this one never does.

use std::any::Any;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::limit::Sample;
use super::{Controls, Counts};
use crate::capture::Captured;
use crate::error::JobError;
use crate::guard;
use crate::job::{Abort, Cell, Completion, Cut, Job, JobHandle, Outcome, Runnable, Start, Timing};
use crate::pool::{Alarm, Registry, Reserved, TimerKey};
use crate::sync::AtomicU64;

/// `entry` when the deadline has no entry on the timer.
const NO_ENTRY: u64 = u64::MAX;

pub(super) struct Timed<F, T> {
    cell: Cell<F, T>,
    registry: Arc<Registry>,
    controls: Arc<Controls>,
    deadline: Instant,
    /// The sequence number of the deadline's entry on the timer, or [`NO_ENTRY`].
    entry: AtomicU64,
}

/// Queues `job` in the place `reserved` holds, under `captured`, with `deadline` on the
/// timer: the caller's handle.
pub(super) fn submit<F, T>(
    registry: &Arc<Registry>,
    controls: &Arc<Controls>,
    reserved: Reserved,
    deadline: Instant,
    job: F,
    captured: Captured,
) -> JobHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let timed = Arc::new(Timed {
        cell: Cell::queued(job, captured),
        registry: Arc::clone(registry),
        controls: Arc::clone(controls),
        deadline,
        entry: AtomicU64::new(NO_ENTRY),
    });
    reserved.fill(Job::of(Arc::clone(&timed) as Arc<dyn Runnable>));
    let alarm: Weak<dyn Alarm> = Arc::downgrade(&timed) as Weak<dyn Alarm>;
    match registry.timer.deadline(deadline, alarm) {
        // Nobody reads it before the handle exists: the handle, or the job's end once the
        // handle is detached, takes it off.
        Ok(key) => timed.entry.store(key.seq(), Relaxed),
        // The pool closed meanwhile and the OS refused the timer a thread: refused, unless
        // the job has started already.
        Err(_closed) => {
            let _ = Completion::revoke(&timed.cell, JobError::shut_down());
        }
    }
    JobHandle::new(timed, registry.id)
}

impl<F, T> Timed<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    /// Cuts the job off for its deadline (a queued one never starts, a running one sees
    /// `is_cancelled()`): true if this ended it, and then counted, under the cell's lock as the
    /// cut wins (so the caller finds it counted, and a cut that loses counts nothing), and
    /// taken by an adaptive limit as an overload. Not for a call whose handle was dropped:
    /// nobody waits for it (the cell refuses the cut).
    fn time_out(&self) -> bool {
        let timed_out = &self.controls.counts.timed_out;
        if !self.cell.cut_off(Cut::TimedOut, || Counts::add(timed_out)) {
            // It had ended, or was ended otherwise first.
            return false;
        }
        if let Some(limit) = &self.controls.limit {
            limit.sample(Sample::TimedOut);
        }
        true
    }
}

impl<F, T> Timed<F, T> {
    /// Takes the deadline's entry off the timer, if it is there.
    fn cancel_entry(&self) {
        let seq = self.entry.swap(NO_ENTRY, Relaxed);
        if seq != NO_ENTRY {
            let key = TimerKey::from_parts(self.deadline, seq);
            self.registry.timer.cancel(key);
        }
    }
}

impl<F, T> Drop for Timed<F, T> {
    fn drop(&mut self) {
        self.cancel_entry();
    }
}

impl<F, T> Runnable for Timed<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fn run(self: Arc<Self>, start: Start, record: &dyn Fn(Outcome)) {
        if Instant::now() >= self.deadline {
            // Not started by its deadline: it never starts. Counted, in the program's stats and
            // the pool's, under the cell's lock as it wins (its caller then finds it counted).
            let timed_out = &self.controls.counts.timed_out;
            if let Some(waker) = self.cell.expire(start, record, || Counts::add(timed_out)) {
                if let Some(limit) = &self.controls.limit {
                    limit.sample(Sample::TimedOut);
                }
                self.cancel_entry();
                if let Some(waker) = waker {
                    guard::wake_soon(waker);
                }
                // The queue entry may be the last owner, with the caller's context in it.
                guard::drop("a finished job's context", self);
                return;
            }
            // It had left the queue (dropped, cut off, or started out of line): the cell's
            // run below finds out which, and counts it.
        }
        Cell::run_as(self, |timed| &timed.cell, start, record);
    }

    fn revoke(&self, error: JobError) -> bool {
        let revoked = Runnable::revoke(&self.cell, error);
        if revoked {
            // It never runs: the deadline is of no more use.
            self.cancel_entry();
        }
        revoked
    }

    fn is_cancelled(&self) -> bool {
        Runnable::is_cancelled(&self.cell)
    }

    fn is_husk(&self) -> bool {
        self.cell.is_husk()
    }

    fn is_timed(&self) -> bool {
        self.cell.is_timed()
    }

    fn decline(&self) {
        self.cell.decline();
    }

    fn complete(
        &self,
        result: &mut dyn Any,
        captured: Captured,
        timing: Option<Timing>,
        record: &dyn Fn(Outcome),
    ) -> Option<Waker> {
        let waker = self.cell.complete(result, captured, timing, record);
        if self.cell.is_detached() {
            // Nobody polls: the deadline is of no more use once the job ended.
            self.cancel_entry();
        }
        waker
    }
}

impl<F, T> Completion<T> for Timed<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fn poll_done(&self, cx: Option<&mut Context<'_>>) -> Poll<Result<T, JobError>> {
        let answer = self.cell.poll_done(cx);
        if answer.is_ready() {
            self.cancel_entry();
        }
        answer
    }

    fn may_be_ready(&self) -> bool {
        self.cell.may_be_ready()
    }

    fn is_done(&self) -> bool {
        self.cell.is_done()
    }

    fn is_queued(&self) -> bool {
        self.cell.is_queued()
    }

    fn cancel(&self) {
        self.cancel_entry();
        self.cell.cancel();
    }

    fn revoke(&self, error: JobError) -> bool {
        Runnable::revoke(self, error)
    }

    fn ask_to_stop(&self) {
        self.cell.ask_to_stop();
    }

    fn on_spare(&self) {
        self.cell.on_spare();
    }

    /// Nobody will poll: the deadline stays on the timer (the alarm still cuts the job off)
    /// until the job ends, whose runner then takes it off; if it has ended already, now.
    fn detach(&self) {
        self.cell.detach();
        if self.cell.is_done() {
            self.cancel_entry();
        }
    }

    fn out_of_line(self: Arc<Self>) -> Option<Arc<dyn Runnable>> {
        Some(self)
    }

    fn abort_target(self: Arc<Self>) -> Arc<dyn Abort> {
        self
    }
}

impl<F, T> Abort for Timed<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fn abort(&self, cut: Cut) -> bool {
        let ended = Abort::abort(&self.cell, cut);
        if ended {
            self.cancel_entry();
        }
        ended
    }

    fn is_finished(&self) -> bool {
        self.cell.is_finished()
    }
}

impl<F, T> Alarm for Timed<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    /// The deadline: see [`time_out`](Timed::time_out).
    fn ring(self: Arc<Self>) {
        self.time_out();
    }

    /// The pool closed: the deadline still matters while the job may run.
    fn close(self: Arc<Self>) -> bool {
        !self.cell.is_done()
    }
}
