//! The one allocation behind a call: the job's stage, the waker of whoever awaits it, and the
//! flags that [`is_cancelled`](crate::is_cancelled) and the pool's stats read.
//!
//! # Stages
//!
//! Every move between stages happens under the slot's mutex, so the parties (the runner, the
//! handle, and whoever drops the queued job) can never both "win". No user code runs under the
//! mutex: what a move takes out (the work, a result, a waker) is dropped or woken after it.
//!
//! * [`Stage::Queued`]`(work, context)`: accepted, not started. The cell owns the work and the
//!   caller's captured context. Moved out by:
//!   - a *runner* (a worker that took the job off the queue, or a worker that waits on the
//!     job and starts it itself, out of line) → `Running`; the runner takes the work;
//!   - the handle being dropped → `Closed`; the dropper drops the work: it never runs;
//!   - a revoke (the queue torn down at shutdown, a batch calling the job off) → `Done(Err)`;
//!     the revoker drops the work and wakes the waker.
//! * [`Stage::Running`]: the runner owns the work. Only the runner moves it on, → `Done(result)`,
//!   or → `Closed` if the handle is gone, telling the pool's counters under the lock whether
//!   the output was abandoned. A handle dropped meanwhile only sets [`CANCELLED`];
//!   a handle that asks the job to stop but still wants the result sets [`STOP_ASKED`].
//! * [`Stage::Done`]`(result)`: the result waits for the handle, which alone moves it on,
//!   → `Closed`, taking the result (or dropping it, if the handle is dropped).
//! * [`Stage::Closed`]: nobody wants anything more from this job; final.
//!
//! A queue entry that a runner finds in any stage but `Queued` is a husk: its job was started
//! out of line ([`OUT_OF_LINE`] set) or called off (not set), and the runner only counts it.
//!
//! # Why this is memory-safe on the cancel path
//!
//! oneshot 0.1.11–0.2.1 can free its channel under a sender that is still waking a receiver
//! being dropped (faern/oneshot#87). Here both sides hold an `Arc` to the cell, so it lives until
//! the last of them lets go; the waker is taken out of the slot under the mutex and woken after,
//! from the runner's own clone. There is no `unsafe` in this crate at all.

use std::any::Any;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::{Abort, Completion, Cut, Outcome, Runnable, Start, Timing, CURRENT};
use crate::capture::Captured;
use crate::error::JobError;
use crate::guard;
use crate::sync::{lock, AtomicU16, Mutex, MutexGuard};

/// Set when the handle is dropped (or aborted) while the job runs:
/// [`is_cancelled`](crate::is_cancelled), and the runner counts the job abandoned.
const CANCELLED: u16 = 1;
/// Set when a worker waiting on the job started it itself: its queue entry is a husk.
const OUT_OF_LINE: u16 = 2;
/// Set when the handle asks a running job to stop early but still wants its result (a batch
/// that stopped waits for its running items): [`is_cancelled`](crate::is_cancelled) too.
const STOP_ASKED: u16 = 4;
/// Set when an `AbortHandle` cancelled the job while it ran: its handle resolves to
/// `Cancelled` at once, and the output is discarded ([`CANCELLED`] is set too).
const ABORTED: u16 = 8;
/// Set when the job runs on a spare thread under its waiter's permit: the waiter must not
/// return before it ends, so an abort does not resolve the handle early then.
const ON_SPARE: u16 = 16;
/// Set when the handle was detached: nobody wants the result, which the runner drops (an
/// `AbortHandle` may still hold the cell, and must not keep the output alive).
const DETACHED: u16 = 32;
/// Set when the result is stored (stage `Done`): a poll that finds it needs no waker, so it
/// clones none (a clone is a reference count on the caller's task, whose cache line the worker
/// just wrote when it woke that task).
const DONE: u16 = 64;
/// Set from the start if the caller put the job in the timing sample: its runner reads the
/// clock at its start and end (and nobody reads it for a job without the flag).
const TIMED: u16 = 128;
/// Set with [`ABORTED`] when a deadline cut the running job off: its handle resolves to
/// `TimedOut` instead.
const CUT_BY_DEADLINE: u16 = 256;
/// Set by the running job when it returns without having run its program (see
/// [`decline`](super::decline)): its runner counts it as called off.
const DECLINED: u16 = 512;

/// Where a job is (see the module docs for who moves it out of each stage).
pub(super) enum Stage<F, T> {
    /// Accepted, not started: the work and the caller's captured context, owned by the cell.
    Queued(F, Captured),
    /// A runner owns the work and runs it.
    Running,
    /// The result, waiting for the handle. The error is boxed: errors are rare, and a
    /// 24-byte `JobError` in every cell would push a small call's cell into the next malloc
    /// size class (see the size test below).
    Done(Result<T, Box<JobError>>),
    /// Nobody wants anything more.
    Closed,
}

pub(super) struct Slot<F, T> {
    pub(super) stage: Stage<F, T>,
    pub(super) side: Side,
}

/// The waker of whoever awaits the job while it is pending; once the job ran, the captured
/// context the runner hands back, so that the cell's last owner (normally the caller) releases
/// it (see `capture`). One field for both keeps a small closure's cell in an 80-byte chunk.
pub(super) enum Side {
    Waker(Waker),
    /// Held only to be dropped with the cell.
    Back(#[allow(dead_code)] Captured),
}

impl Side {
    pub(super) fn empty() -> Side {
        Side::Back(Captured::default())
    }

    fn take_waker(&mut self) -> Option<Waker> {
        match std::mem::replace(self, Side::empty()) {
            Side::Waker(waker) => Some(waker),
            back => {
                *self = back;
                None
            }
        }
    }
}

/// The cell shared by a job's queue entry, its runner and its handle.
pub(crate) struct Cell<F, T> {
    pub(super) slot: Mutex<Slot<F, T>>,
    /// [`CANCELLED`], [`OUT_OF_LINE`], [`STOP_ASKED`], [`ABORTED`], [`ON_SPARE`],
    /// [`DETACHED`], [`DONE`], [`TIMED`], [`CUT_BY_DEADLINE`] and [`DECLINED`]; read without
    /// the lock.
    pub(super) flags: AtomicU16,
}

impl<F, T> Cell<F, T> {
    /// A cell in `stage`, [`TIMED`] if `timed`.
    pub(super) fn new(stage: Stage<F, T>, timed: bool) -> Self {
        Self::waking(stage, timed, None)
    }

    /// A cell whose caller's waker is known already (a controlled call's attempt: the call is
    /// its own attempt's waker), so that nobody has to poll it before it runs.
    pub(super) fn waking(stage: Stage<F, T>, timed: bool, waker: Option<Waker>) -> Self {
        // A cell made with its result (a refused call's) says so in its flags, as one that
        // got it later does.
        let done = if matches!(stage, Stage::Done(_)) {
            DONE
        } else {
            0
        };
        let timed = if timed { TIMED } else { 0 };
        Cell {
            slot: Mutex::new(Slot {
                stage,
                side: waker.map_or_else(Side::empty, Side::Waker),
            }),
            flags: AtomicU16::new(timed | done),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slot<F, T>> {
        lock(&self.slot)
    }

    /// Runs `f` under the cell's lock (pool code, no user code: from inside the running job, a
    /// count that a cut's [`cut_off`](Self::cut_off) must find made, or not begun).
    pub(crate) fn locked<R>(&self, f: impl FnOnce() -> R) -> R {
        let _slot = self.lock();
        f()
    }

    /// How an aborted job ended (read under the lock, where `abort` sets it).
    fn cut(&self) -> Cut {
        if self.flag(CUT_BY_DEADLINE) {
            Cut::TimedOut
        } else {
            Cut::Cancelled
        }
    }

    fn flag(&self, flag: u16) -> bool {
        // ORDERING: written under the lock by the side that decides; read either under the lock
        // (husk accounting) or as a hint for cooperative code (`is_cancelled`).
        self.flags.load(Relaxed) & flag != 0
    }
}

impl<F, T> Cell<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    /// A queued job's cell, [`TIMED`] if the thread's timing sample takes it (see `sampled`).
    pub(crate) fn queued(f: F, captured: Captured) -> Self {
        Self::new(Stage::Queued(f, captured), super::sampled())
    }

    /// True once the handle was detached: nobody will take the result.
    pub(crate) fn is_detached(&self) -> bool {
        self.flag(DETACHED)
    }

    /// A runner that took the job (`start`) found its deadline passed: if it is still queued,
    /// it ends `TimedOut` without running, counted by `record` as a job called off, under the
    /// lock, before anyone can see the result (taken out of line, its queue entry is then a
    /// husk). Gives back the waker to wake; `None` if the job had left the queue.
    /// `count`, also under the lock, is the caller's own count of the timeout.
    pub(crate) fn expire(
        &self,
        start: Start,
        record: &dyn Fn(Outcome),
        count: impl FnOnce(),
    ) -> Option<Option<Waker>> {
        self.take_queued(JobError::timed_out(), || {
            if start == Start::OutOfLine {
                self.flags.fetch_or(OUT_OF_LINE, Relaxed);
            }
            record(Outcome::Cancelled);
            count();
        })
    }

    /// [`Abort::abort`], with `then` run under the lock if this cut ends the job, before
    /// anyone can see the answer (a deadline's count of the timeout: pool code, no user code).
    pub(crate) fn cut_off(&self, cut: Cut, then: impl FnOnce()) -> bool {
        let mut then = Some(then);
        let mut once = || {
            if let Some(then) = then.take() {
                then();
            }
        };
        if let Some(waker) = self.take_queued(cut.error(), &mut once) {
            if let Some(waker) = waker {
                guard::wake_soon(waker);
            }
            return true; // it was queued: it never runs
        }
        let mut slot = self.lock();
        if !matches!(slot.stage, Stage::Running) || self.flag(ABORTED) {
            return false; // finished (the result stays), nobody wants it, or aborted already
        }
        if cut == Cut::TimedOut && self.flag(CANCELLED) {
            // Its handle is gone: nobody waits for the deadline, and the job already sees
            // `is_cancelled()`.
            return false;
        }
        once();
        // The runner owns the work; it finds CANCELLED when it completes and discards the
        // output. The handle, woken, finds ABORTED and resolves to `cut`'s error now.
        let by_deadline = if cut == Cut::TimedOut {
            CUT_BY_DEADLINE
        } else {
            0
        };
        self.flags
            .fetch_or(CANCELLED | ABORTED | by_deadline, Relaxed);
        let waker = slot.side.take_waker();
        drop(slot);
        if let Some(waker) = waker {
            guard::wake(waker);
        }
        true
    }

    /// Resolves a still-queued job with `error`, after `then` under the lock: the waker to
    /// wake, or `None` if the job had left the queue.
    fn take_queued(&self, error: JobError, then: impl FnOnce()) -> Option<Option<Waker>> {
        let error = Box::new(error);
        let mut slot = self.lock();
        if !matches!(slot.stage, Stage::Queued(..)) {
            return None;
        }
        then();
        let work = std::mem::replace(&mut slot.stage, Stage::Done(Err(error)));
        self.flags.fetch_or(DONE, Relaxed);
        let waker = slot.side.take_waker();
        drop(slot);
        guard::drop_soon("the work of a job that never ran", work);
        Some(waker)
    }

    /// [`Runnable::run`] for a cell that is a part of `owner` (which `cell` finds in it): the
    /// owner is what sits in `CURRENT` while the job runs and what completes it, so that what
    /// it adds to the cell is kept on the way out (a controlled call's deadline).
    pub(crate) fn run_as<O: Runnable>(
        owner: Arc<O>,
        cell: impl Fn(&O) -> &Self,
        start: Start,
        record: &dyn Fn(Outcome),
    ) {
        let this = cell(&owner);
        let (f, mut captured) = {
            let mut slot = this.lock();
            match std::mem::replace(&mut slot.stage, Stage::Running) {
                Stage::Queued(f, captured) => {
                    if start == Start::OutOfLine {
                        this.flags.fetch_or(OUT_OF_LINE, Relaxed);
                    }
                    (f, captured)
                }
                other => {
                    slot.stage = other;
                    let outcome = match start {
                        Start::OutOfLine => Outcome::Lost,
                        Start::FromQueue { .. } if this.flag(OUT_OF_LINE) => Outcome::Husk,
                        Start::FromQueue { .. } => Outcome::Cancelled,
                    };
                    drop(slot);
                    record(outcome);
                    // The queue entry may be the cell's last owner, and the cell still holds
                    // the caller's context (user values): dropped through the guard.
                    guard::drop("a finished job's context", owner);
                    return;
                }
            }
        };
        let started = this.flag(TIMED).then(Instant::now);
        // Moved into `CURRENT` (not cloned: the count's cache line stays with the caller) for
        // `is_cancelled`, and taken back after.
        let owner: Arc<dyn Runnable> = owner;
        let previous = CURRENT.with(|c| c.replace(Some(owner)));
        let result = captured
            .run_in_place(|| guard::call(f))
            .map_err(JobError::panicked);
        let timing = started.map(|started| Timing {
            queued: match start {
                Start::FromQueue { queued } => queued,
                Start::OutOfLine => None,
            },
            started,
            ended: Instant::now(),
        });
        let this = CURRENT
            .with(|c| c.replace(previous))
            .expect("the running job is in CURRENT");
        let waker = this.complete(&mut Some(result), captured, timing, record);
        // Let go of the cell before waking its caller: the handle is then the last owner and
        // frees it (and the captured context) on the thread that allocated it, which keeps
        // malloc on its fast path and reference counts on one core (BENCHMARKS.md). If the
        // handle is gone, this frees the cell here, and with it user values.
        guard::drop("a finished job's context", this);
        if let Some(waker) = waker {
            guard::wake(waker);
        }
    }
}

impl<F, T> Runnable for Cell<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fn run(self: Arc<Self>, start: Start, record: &dyn Fn(Outcome)) {
        Cell::run_as(self, |cell| cell, start, record);
    }

    fn complete(
        &self,
        result: &mut dyn Any,
        captured: Captured,
        timing: Option<Timing>,
        record: &dyn Fn(Outcome),
    ) -> Option<Waker> {
        let result = result
            .downcast_mut::<Option<Result<T, JobError>>>()
            .and_then(Option::take)
            .expect("complete is called with this cell's own result type");
        let declined = self.flag(DECLINED);
        let outcome = |abandoned| match &result {
            Err(_) => Outcome::Panicked(timing),
            Ok(_) if declined => Outcome::Cancelled,
            Ok(_) if abandoned => Outcome::Abandoned(timing),
            Ok(_) => Outcome::Completed(timing),
        };
        let mut slot = self.lock();
        // Counted under the lock, before the result is stored: abandonment is decided here
        // (a handle drops or aborts under this lock), and a caller that finds its result finds
        // it counted. `record` is the pool's counting code, no user code.
        record(outcome(self.flag(CANCELLED)));
        let waker = slot.side.take_waker();
        slot.side = Side::Back(captured);
        if self.flag(ABORTED) {
            // Aborted: the output is discarded, and the handle, which may not have polled
            // since (or waits for a spare thread to end), finds `Cancelled` (or `TimedOut`).
            slot.stage = Stage::Done(Err(Box::new(self.cut().error())));
            self.flags.fetch_or(DONE, Relaxed);
            drop(slot);
            guard::drop("a discarded output", result);
            waker
        } else if self.flag(CANCELLED | DETACHED) {
            // The handle is gone (it set the flag under this lock): nobody wants the result.
            // Dropped, it abandoned the job (counted so); detached, it let the job complete.
            slot.stage = Stage::Closed;
            drop(slot);
            guard::drop("a discarded output", result);
            guard::drop("a waker", waker);
            None
        } else {
            slot.stage = Stage::Done(result.map_err(Box::new));
            self.flags.fetch_or(DONE, Relaxed);
            waker
        }
    }

    fn revoke(&self, error: JobError) -> bool {
        match self.take_queued(error, || {}) {
            Some(waker) => {
                if let Some(waker) = waker {
                    guard::wake_soon(waker);
                }
                true
            }
            None => false,
        }
    }

    fn decline(&self) {
        self.flags.fetch_or(DECLINED, Relaxed);
    }

    fn is_cancelled(&self) -> bool {
        self.flag(CANCELLED | STOP_ASKED)
    }

    fn is_timed(&self) -> bool {
        self.flag(TIMED)
    }

    fn is_husk(&self) -> bool {
        let slot = self.lock();
        !matches!(slot.stage, Stage::Queued(..)) && self.flag(OUT_OF_LINE)
    }
}

impl<F, T> Completion<T> for Cell<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fn poll_done(&self, cx: Option<&mut Context<'_>>) -> Poll<Result<T, JobError>> {
        // Cloning a waker is user code: before the lock, not under it. (One lock per poll; a
        // clone that turns out not to be needed is dropped after the lock.) Once the result is
        // there, no clone: `DONE` is set under the lock with it and never cleared, so a poll
        // that sees it finds the result (a poll that misses it clones for nothing, no more).
        let waker = if self.flag(DONE) {
            None
        } else {
            cx.map(|cx| cx.waker().clone())
        };
        let mut slot = self.lock();
        let (replaced, spare) = match std::mem::replace(&mut slot.stage, Stage::Closed) {
            Stage::Done(result) => {
                drop(slot);
                guard::drop("a waker", waker);
                return Poll::Ready(result.map_err(|e| *e));
            }
            Stage::Closed => {
                drop(slot);
                panic!("JobHandle polled after it returned its result")
            }
            Stage::Running if self.flag(ABORTED) && !self.flag(ON_SPARE) => {
                // The runner still owns the work and will discard its output (CANCELLED).
                slot.stage = Stage::Running;
                drop(slot);
                guard::drop("a waker", waker);
                return Poll::Ready(Err(self.cut().error()));
            }
            pending => {
                slot.stage = pending;
                match waker {
                    Some(w) if !matches!(&slot.side, Side::Waker(old) if old.will_wake(&w)) => (
                        Some(std::mem::replace(&mut slot.side, Side::Waker(w))),
                        None,
                    ),
                    spare => (None, spare),
                }
            }
        };
        drop(slot);
        guard::drop("a waker", (replaced, spare));
        Poll::Pending
    }

    fn may_be_ready(&self) -> bool {
        // ORDERING: a hint. `DONE` and `ABORTED` are set under the lock with what they mean; a
        // stale read only makes the handle yield once more, and a real poll takes the lock.
        // (An aborted job on a spare thread is pending though `ABORTED`: a real poll says so.)
        self.flag(DONE | ABORTED)
    }

    fn is_done(&self) -> bool {
        match self.lock().stage {
            Stage::Done(_) | Stage::Closed => true,
            Stage::Running => self.flag(ABORTED) && !self.flag(ON_SPARE),
            Stage::Queued(..) => false,
        }
    }

    fn is_queued(&self) -> bool {
        matches!(self.lock().stage, Stage::Queued(..))
    }

    fn cancel(&self) {
        let mut slot = self.lock();
        let side = std::mem::replace(&mut slot.side, Side::empty());
        let stage = std::mem::replace(&mut slot.stage, Stage::Closed);
        if let Stage::Running = stage {
            slot.stage = Stage::Running;
            self.flags.fetch_or(CANCELLED, Relaxed);
        }
        drop(slot);
        // On the caller's thread, like any value it drops, and outside the lock; a handle's
        // `Drop` must not panic, so through the guard.
        guard::drop("a waker or a captured context", side);
        guard::drop("an abandoned job or its result", stage);
    }

    fn revoke(&self, error: JobError) -> bool {
        Runnable::revoke(self, error)
    }

    fn ask_to_stop(&self) {
        self.flags.fetch_or(STOP_ASKED, Relaxed);
    }

    fn on_spare(&self) {
        self.flags.fetch_or(ON_SPARE, Relaxed);
    }

    fn detach(&self) {
        let mut slot = self.lock();
        // Under the lock, so that a runner completing now sees it (or has stored the result,
        // which is taken here).
        self.flags.fetch_or(DETACHED, Relaxed);
        let done = match std::mem::replace(&mut slot.stage, Stage::Closed) {
            done @ Stage::Done(_) => Some(done),
            other => {
                slot.stage = other;
                None
            }
        };
        let side = done
            .is_some()
            .then(|| std::mem::replace(&mut slot.side, Side::empty()));
        drop(slot);
        guard::drop("a detached job's result", (done, side));
    }

    fn out_of_line(self: Arc<Self>) -> Option<Arc<dyn Runnable>> {
        Some(self)
    }

    fn abort_target(self: Arc<Self>) -> Arc<dyn Abort> {
        self
    }
}

impl<F, T> Abort for Cell<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fn abort(&self, cut: Cut) -> bool {
        self.cut_off(cut, || {})
    }

    fn is_finished(&self) -> bool {
        matches!(self.lock().stage, Stage::Done(_) | Stage::Closed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The cell of a small call stays a 72-byte request, an 80-byte malloc chunk: one more word
    /// makes it a 96-byte chunk, which took throughput from ×0.59 to ×0.75 of the floor in one
    /// A/B run (BENCHMARKS.md). The waker and the handed-back context share `Side` for this.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_small_calls_cell_fits_an_80_byte_chunk() {
        assert_eq!(std::mem::size_of::<Side>(), 16);
        assert_eq!(std::mem::size_of::<Captured>(), 8);
        let request = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<Cell<fn(), ()>>();
        assert!(request <= 72, "the cell grew to {request} bytes");
    }
}
