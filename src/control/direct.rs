//! A controlled call that passed its gates at once and has a retry policy: the call and its
//! first attempt's cell are one allocation (the queue holds the call as the attempt's job), and
//! the caller's handle is on it, with no driver between the worker and the caller.
//!
//! The worker wakes the caller directly, as for a plain call. What the options add happens
//! around that: the deadline is an entry on the pool's timer whose alarm cuts the attempt off
//! (a queued one never starts, a running one sees `is_cancelled()`; the handle resolves to
//! `TimedOut` at once); the retry policy looks at the output on the worker, at the end of the
//! attempt's job. Only if it wants another attempt, or if the handle is detached, does a
//! [`call`] take over, for the attempts after the first.
//!
//! # Handing over
//!
//! Who may act on a direct call: its caller (poll, drop, detach), an
//! [`AbortHandle`](crate::AbortHandle), a stopping batch, the deadline's alarm, and the first
//! attempt's job on its worker (expired, or handing over to a retry). Each marks what it does
//! in `events` with one read-modify-write and acts on what it saw there, so in every race one
//! side comes second and sees the other:
//!
//! * The hand-over takes the original input (`TAKEN`) only if no call adopted the attempt
//!   (`ADOPTED`, by a detach), and a detach adopts only if the input was not taken: never
//!   both. It then makes the new call, unstarted, and publishes it (`HANDED_OVER`) only if
//!   nothing ended the call first (a deadline, an abort, a drop, a stop); only then does the
//!   new call start. Refused, it is dropped unstarted and the attempt's output is the answer.
//! * After `HANDED_OVER`, every event goes to the new call.
//! * The timeout is counted once (`COUNTED`), under the attempt's cell's lock, before the
//!   caller can see its answer: by the alarm as its cut wins, or by the worker that finds the
//!   deadline passed as it starts the attempt, whichever comes first; or by a call that
//!   adopted the attempt (with its own entry on the timer). Nobody counts it for a call whose
//!   handle was dropped first.

use std::any::Any;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::attempt::Step;
use super::call::{self, Continued, Parts};
use super::limit::Sample;
use super::{Controls, Counts};
use crate::capture::Captured;
use crate::error::JobError;
use crate::guard;
use crate::job::{Abort, Cell, Completion, Cut, Job, JobHandle, Outcome, Runnable, Start, Timing};
use crate::pool::{Alarm, Registry, Reserved, TimerKey};
use crate::sync::{lock, AtomicU16, AtomicU64, Mutex};

/// The deadline came (whether or not it cut the attempt off).
const DEADLINE: u16 = 1;
/// An `AbortHandle` aborted the call.
const ABORTED: u16 = 2;
/// A stopping batch asked the call to stop.
const STOP_ASKED: u16 = 4;
/// A call took over: every request goes to it.
const HANDED_OVER: u16 = 8;
/// The handle was detached.
const DETACHED: u16 = 16;
/// The handle was dropped.
const CANCELLED: u16 = 32;
/// The worker took the original input, to hand over to a retry.
const TAKEN: u16 = 64;
/// A call adopted the attempt (a detach): it has the input, the deadline and the verdict.
const ADOPTED: u16 = 128;
/// The timeout is counted: by the alarm, under the attempt's lock as its cut wins, or by the
/// worker that found the deadline passed, before its answer is seen. Whoever sets it first
/// counts; the other counts nothing (so a caller with its `TimedOut` finds it counted once).
const COUNTED: u16 = 256;
/// What ends the call, or leaves it to a call that adopted it: no hand-over after it.
const ENDING: u16 = DEADLINE | ABORTED | STOP_ASKED | CANCELLED | ADOPTED;

/// `entry` when the deadline has no entry on the timer.
const NO_ENTRY: u64 = u64::MAX;

pub(super) struct Direct<I, O, R, F> {
    registry: Arc<Registry>,
    controls: Arc<Controls>,
    /// The first attempt's cell (made with the call, queued right after it as this call
    /// itself; it never waits for room).
    cell: Cell<F, Step<O>>,
    /// This call, for a call that adopts the attempt (see [`FirstOf`]).
    me: Weak<Self>,
    deadline: Option<Instant>,
    /// The sequence number of the deadline's entry on the timer, or [`NO_ENTRY`].
    entry: AtomicU64,
    /// What the attempts after the first need, if the retry policy may want one.
    again: Option<Again<I, R>>,
    called: Option<Instant>,
    /// [`DEADLINE`], [`ABORTED`], [`STOP_ASKED`], [`HANDED_OVER`], [`DETACHED`],
    /// [`CANCELLED`], [`TAKEN`], [`ADOPTED`], [`COUNTED`].
    events: AtomicU16,
    /// The call that took over (set before [`HANDED_OVER`], never changed after).
    next: Mutex<Option<Arc<dyn Continued<O>>>>,
}

/// The program, the caller's context and the original input, for another attempt: taken
/// whole and once, by the worker's hand-over to a retry or by a detach's adoption (each with
/// its claim), or, if neither has claimed it, let go of when the call is dropped or answered
/// without a retry (the queue may hold the call long after).
pub(super) struct Again<I, R>(Mutex<Option<Kept<I, R>>>);

pub(super) struct Kept<I, R> {
    run: R,
    captured: Captured,
    input: I,
}

impl<I, R> Again<I, R> {
    pub(super) fn new(run: R, captured: Captured, input: I) -> Self {
        Again(Mutex::new(Some(Kept {
            run,
            captured,
            input,
        })))
    }

    fn take(&self) -> Option<Kept<I, R>> {
        lock(&self.0).take()
    }
}

/// What the first attempt's job reaches of its call (type-erased: the job is a part of the
/// call, whose type cannot name its own job's).
pub(super) trait First<O>: Send + Sync {
    /// See [`after_first`].
    fn hand_over_if_wanted(&self, out: O) -> Step<O>;
    /// See [`expired`].
    fn expired_here(&self) -> Step<O>;
}

/// A direct call, before its first attempt is queued (see [`Direct::queued`]): `attempt(me)`
/// makes that attempt's job, run under `captured`, which may reach the call through `me`
/// (which upgrades once the attempt is queued: the call is whole by then).
pub(super) fn new<I, O, R, F>(
    registry: &Arc<Registry>,
    controls: &Arc<Controls>,
    deadline: Option<Instant>,
    called: Option<Instant>,
    again: Option<Again<I, R>>,
    captured: Captured,
    attempt: impl FnOnce(&Weak<dyn First<O>>) -> F,
) -> Arc<Direct<I, O, R, F>>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
    F: FnOnce() -> Step<O> + Send + 'static,
{
    Arc::new_cyclic(|me| {
        let first: Weak<dyn First<O>> = Weak::clone(me) as Weak<dyn First<O>>;
        Direct {
            registry: Arc::clone(registry),
            controls: Arc::clone(controls),
            cell: Cell::queued(attempt(&first), captured),
            me: Weak::clone(me),
            deadline,
            entry: AtomicU64::new(NO_ENTRY),
            again,
            called,
            events: AtomicU16::new(0),
            next: Mutex::new(None),
        }
    })
}

/// The end of the first attempt's job, on its worker, for a call with a retry policy
/// (`me`: the call, which the job's runner holds while the job runs): `out` for the caller, or,
/// if the policy wants another attempt, a call that takes over (the classifier is user code:
/// it runs here, inside the job, under the caller's context, holding no lock).
pub(super) fn after_first<O>(me: &Weak<dyn First<O>>, out: O) -> Step<O> {
    let Some(me) = me.upgrade() else {
        return Step::Done(out); // (not reached: the runner holds the call)
    };
    let step = me.hand_over_if_wanted(out);
    // (Through the guard, as any release of the call: it holds user values.)
    guard::drop("a call", me);
    step
}

/// The attempt expired (its deadline had passed when a worker took it): counted on that
/// worker, whether or not the caller polls, unless the alarm cut it off first, a call that
/// adopted it counts it, or its handle was dropped (nobody waits for it).
pub(super) fn expired<O>(me: &Weak<dyn First<O>>) -> Step<O> {
    let Some(me) = me.upgrade() else {
        return Step::Expired;
    };
    let step = me.expired_here();
    guard::drop("a call", me);
    step
}

impl<I, O, R, F> Direct<I, O, R, F>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
    F: FnOnce() -> Step<O> + Send + 'static,
{
    /// Queues the first attempt in the place `reserved` holds: the caller's handle, with the
    /// deadline on the timer.
    pub(super) fn queued(self: Arc<Self>, reserved: Reserved) -> JobHandle<O> {
        reserved.fill(Job::of(Arc::clone(&self) as Arc<dyn Runnable>));
        if let Some(deadline) = self.deadline {
            let alarm: Weak<dyn Alarm> = Arc::downgrade(&self) as Weak<dyn Alarm>;
            match self.registry.timer.deadline(deadline, alarm) {
                // Nobody reads it before the handle exists: only its owner cancels the entry.
                Ok(key) => self.entry.store(key.seq(), Relaxed),
                // The pool closed meanwhile and the OS refused the timer a thread: refused,
                // unless the attempt has started already.
                Err(_closed) => {
                    let _ = Completion::revoke(&self.cell, JobError::shut_down());
                }
            }
        }
        let id = self.registry.id;
        JobHandle::new(self, id)
    }

    /// Drops what another attempt would need, if nobody took it (only once no claim on it
    /// can succeed).
    fn let_go_of_again(&self) {
        let kept = self.again.as_ref().and_then(Again::take);
        guard::drop("a finished call's input", kept);
    }

    fn attempt(&self) -> &Cell<F, Step<O>> {
        &self.cell
    }

    /// Counts the first attempt's timeout, unless it is counted already (see [`COUNTED`]):
    /// true if this counted it. Called under the attempt's lock (so that the alarm's cut,
    /// which answers the caller under it, finds the count made if this set `COUNTED`).
    fn count_timeout(&self) -> bool {
        let first = self.events.fetch_or(COUNTED, SeqCst) & COUNTED == 0;
        if first {
            Counts::add(&self.controls.counts.timed_out);
        }
        first
    }

    /// An adaptive limit takes a counted timeout as an overload (outside any lock).
    fn sample_timeout(&self) {
        if let Some(limit) = &self.controls.limit {
            limit.sample(Sample::TimedOut);
        }
    }

    fn hand_over_if_wanted(&self, out: O) -> Step<O> {
        let (Some(again), Some(policy)) = (&self.again, &self.controls.retry) else {
            return Step::Done(out);
        };
        let ending = self.events.load(SeqCst) & ENDING != 0;
        if ending || crate::is_cancelled() || self.registry.is_closed() {
            return self.unless_aborted(Step::Done(out));
        }
        // The classifier may take long: the events are looked at again after it.
        let retry = policy.retries_output(&out);
        if !retry || !self.claim(0, TAKEN) {
            return self.unless_aborted(Step::Judged(out, retry));
        }
        let Some(kept) = again.take() else {
            return Step::Done(out); // (not reached: only the claim takes it)
        };
        let next = call::prepare(self.parts(Some(kept.run), kept.captured), kept.input);
        *lock(&self.next) = Some(Arc::clone(&next));
        let Some(seen) = self.claim_seen(ENDING & !ADOPTED, HANDED_OVER) else {
            // Ended meanwhile: the new call goes unstarted, and the output is the answer, unless
            // the call was aborted (cut off by the deadline, it goes to nobody).
            let next = lock(&self.next).take();
            guard::drop("a retry not made", next);
            return self.unless_aborted(Step::Judged(out, true));
        };
        if seen & DETACHED != 0 {
            Arc::clone(&next).keep_own_deadline();
            next.detach();
        }
        next.begin(Ok(out));
        Step::HandedOver
    }

    /// `step`, or [`Step::Aborted`] if the call has been aborted: seen here, inside the
    /// attempt's job, the abort came before the job ended, and so before the call could have
    /// finished, whether or not its cut of the attempt lands before the job ends. (Without
    /// this, an abort that marked the call just before the job ended, and cut the attempt
    /// just after, left the first attempt's output, which asked for a retry, as the answer.)
    fn unless_aborted(&self, step: Step<O>) -> Step<O> {
        if self.events.load(SeqCst) & ABORTED == 0 {
            return step;
        }
        guard::drop("a discarded output", step);
        Step::Aborted
    }

    /// Sets `bit` unless one of `unless` (or [`ENDING`]'s, with `0`) is set; true if it did.
    fn claim(&self, unless: u16, bit: u16) -> bool {
        self.claim_seen(if unless == 0 { ENDING } else { unless }, bit)
            .is_some()
    }

    /// Sets `bit` unless one of `unless` is set: what was there before, or `None` if refused.
    fn claim_seen(&self, unless: u16, bit: u16) -> Option<u16> {
        self.events
            .fetch_update(SeqCst, SeqCst, |e| (e & unless == 0).then_some(e | bit))
            .ok()
    }

    /// The call that took over, if one has.
    fn next(&self) -> Option<Arc<dyn Continued<O>>> {
        if self.events.load(SeqCst) & HANDED_OVER == 0 {
            return None;
        }
        lock(&self.next).clone()
    }

    /// Marks `event`; returns the call that took over, if one had (the event is then its).
    fn mark(&self, event: u16) -> Option<Arc<dyn Continued<O>>> {
        if self.events.fetch_or(event, SeqCst) & HANDED_OVER == 0 {
            return None;
        }
        lock(&self.next).clone()
    }

    fn parts(&self, run: Option<R>, captured: Captured) -> Parts<R> {
        Parts {
            registry: Arc::clone(&self.registry),
            controls: Arc::clone(&self.controls),
            run,
            captured,
            deadline: self.deadline,
            called: self.called,
        }
    }

    /// The first attempt ended with `result` (its job made its samples).
    fn finish(
        &self,
        result: Result<Step<O>, JobError>,
        cx: Option<&mut Context<'_>>,
    ) -> Poll<Result<O, JobError>> {
        if !matches!(result, Ok(Step::HandedOver)) {
            // The answer is the attempt's: the deadline is of no more use, nor is what another
            // attempt would need (the attempt ended, or what cut it off ended the call: no
            // hand-over can claim it now).
            self.cancel_entry();
            self.let_go_of_again();
        }
        match result {
            Ok(Step::Done(out) | Step::Judged(out, _)) => Poll::Ready(Ok(out)),
            // It never started: its deadline had passed when a worker took it (counted there).
            Ok(Step::Expired) => Poll::Ready(Err(JobError::timed_out())),
            Ok(Step::Aborted) => Poll::Ready(Err(JobError::cancelled())),
            Ok(Step::HandedOver) => match self.next() {
                Some(next) => {
                    let answer = next.poll_done(cx);
                    if answer.is_ready() {
                        self.cancel_entry();
                    }
                    answer
                }
                None => unreachable!("a call takes over before the attempt says so"),
            },
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<I, O, R, F> First<O> for Direct<I, O, R, F>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
    F: FnOnce() -> Step<O> + Send + 'static,
{
    fn hand_over_if_wanted(&self, out: O) -> Step<O> {
        Direct::hand_over_if_wanted(self, out)
    }

    fn expired_here(&self) -> Step<O> {
        let seen = self.events.fetch_or(DEADLINE, SeqCst);
        if seen & (ABORTED | ADOPTED | HANDED_OVER) == ABORTED {
            // Aborted first (its cut may have come as a worker took the job, or may come
            // after this): the answer is `Cancelled`, and no timeout is counted.
            return Step::Aborted;
        }
        // Counted before the answer is seen, unless the alarm (which may have marked the
        // deadline first) counted as its cut won; under the attempt's lock, where that cut
        // answers the caller. Not for a dropped call: nobody waits.
        let wanted = seen & (ADOPTED | HANDED_OVER | CANCELLED) == 0;
        if wanted && self.attempt().locked(|| self.count_timeout()) {
            self.sample_timeout();
        }
        Step::Expired
    }
}

/// The queue entry of the first attempt, and its runner's view: the attempt's cell.
impl<I, O, R, F> Runnable for Direct<I, O, R, F>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
    F: FnOnce() -> Step<O> + Send + 'static,
{
    fn run(self: Arc<Self>, start: Start, record: &dyn Fn(Outcome)) {
        Cell::run_as(self, |direct| &direct.cell, start, record);
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
        self.cell.complete(result, captured, timing, record)
    }
}

/// The first attempt as a call that adopts it sees it: the attempt's own cell, inside the
/// direct call, which this keeps alive until the adopting call lets go of the attempt's handle
/// (once it has the attempt's answer, or as it ends early; its abort handle on the attempt is
/// weak).
struct FirstOf<I, O, R, F>(Arc<Direct<I, O, R, F>>);

impl<I, O, R, F> Completion<Step<O>> for FirstOf<I, O, R, F>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
    F: FnOnce() -> Step<O> + Send + 'static,
{
    fn poll_done(&self, cx: Option<&mut Context<'_>>) -> Poll<Result<Step<O>, JobError>> {
        self.0.cell.poll_done(cx)
    }

    fn may_be_ready(&self) -> bool {
        self.0.cell.may_be_ready()
    }

    fn is_done(&self) -> bool {
        self.0.cell.is_done()
    }

    fn is_queued(&self) -> bool {
        self.0.cell.is_queued()
    }

    fn cancel(&self) {
        self.0.cell.cancel();
    }

    fn revoke(&self, error: JobError) -> bool {
        Completion::revoke(&self.0.cell, error)
    }

    fn ask_to_stop(&self) {
        self.0.cell.ask_to_stop();
    }

    fn on_spare(&self) {
        self.0.cell.on_spare();
    }

    fn detach(&self) {
        self.0.cell.detach();
    }

    fn out_of_line(self: Arc<Self>) -> Option<Arc<dyn Runnable>> {
        Some(Arc::clone(&self.0) as Arc<dyn Runnable>)
    }

    /// A weak view: the adopting call keeps an attempt's abort handle for as long as it lives,
    /// and the direct call holds the adopting call (a cycle, if this were strong).
    fn abort_target(self: Arc<Self>) -> Arc<dyn Abort> {
        Arc::new(FirstAbort(Arc::downgrade(&self.0)))
    }
}

/// An abort handle on the first attempt, for a call that adopted it (see
/// [`FirstOf::abort_target`]). A direct call that is gone has finished: nothing holds its job.
struct FirstAbort<I, O, R, F>(Weak<Direct<I, O, R, F>>);

impl<I, O, R, F> Abort for FirstAbort<I, O, R, F>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
    F: FnOnce() -> Step<O> + Send + 'static,
{
    fn abort(&self, cut: Cut) -> bool {
        let Some(direct) = self.0.upgrade() else {
            return false;
        };
        let ended = Abort::abort(&direct.cell, cut);
        // Possibly the call's last owner now, with user values in it.
        guard::drop("a call", direct);
        ended
    }

    fn is_finished(&self) -> bool {
        let Some(direct) = self.0.upgrade() else {
            return true;
        };
        let finished = Abort::is_finished(&direct.cell);
        guard::drop("a call", direct);
        finished
    }
}

impl<I, O, R, F> Direct<I, O, R, F> {
    /// Takes the deadline's entry off the timer, if it is there.
    fn cancel_entry(&self) {
        let seq = self.entry.swap(NO_ENTRY, Relaxed);
        if let (Some(deadline), true) = (self.deadline, seq != NO_ENTRY) {
            self.registry
                .timer
                .cancel(TimerKey::from_parts(deadline, seq));
        }
    }
}

impl<I, O, R, F> Drop for Direct<I, O, R, F> {
    fn drop(&mut self) {
        self.cancel_entry();
    }
}

impl<I, O, R, F> Completion<O> for Direct<I, O, R, F>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
    F: FnOnce() -> Step<O> + Send + 'static,
{
    fn poll_done(&self, mut cx: Option<&mut Context<'_>>) -> Poll<Result<O, JobError>> {
        if let Some(next) = self.next() {
            let answer = next.poll_done(cx);
            if answer.is_ready() {
                self.cancel_entry();
            }
            return answer;
        }
        match self.attempt().poll_done(cx.as_deref_mut()) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => self.finish(result, cx),
        }
    }

    fn may_be_ready(&self) -> bool {
        // Until a call takes over, the attempt's cell holds the answer, and every way the
        // call ends early (the deadline's cut, an abort) marks that cell too.
        self.events.load(SeqCst) & HANDED_OVER != 0 || self.attempt().may_be_ready()
    }

    fn is_done(&self) -> bool {
        match self.next() {
            Some(next) => next.is_done(),
            None => self.attempt().is_done(),
        }
    }

    fn is_queued(&self) -> bool {
        self.next().is_none() && self.attempt().is_queued()
    }

    fn cancel(&self) {
        self.cancel_entry();
        let seen = self.events.fetch_or(CANCELLED, SeqCst);
        if seen & HANDED_OVER != 0 {
            let next = lock(&self.next).clone(); // (the lock is not held past this line)
            if let Some(next) = next {
                next.cancel();
            }
            return;
        }
        self.attempt().cancel();
        if seen & (TAKEN | ADOPTED) == 0 {
            // Nothing can claim it any more: it goes with the handle, on the caller's thread.
            self.let_go_of_again();
        }
    }

    fn revoke(&self, error: JobError) -> bool {
        match self.next() {
            Some(next) => next.revoke(error),
            None => Runnable::revoke(self, error),
        }
    }

    fn ask_to_stop(&self) {
        match self.mark(STOP_ASKED) {
            Some(next) => next.ask_to_stop(),
            None => self.attempt().ask_to_stop(),
        }
    }

    fn on_spare(&self) {
        match self.next() {
            Some(next) => next.on_spare(),
            None => self.attempt().on_spare(),
        }
    }

    /// Nobody will poll: if the attempt is still under way, a call adopts it (to keep the
    /// deadline once this handle is gone, and to make the next attempts), unless one has taken
    /// over already.
    fn detach(&self) {
        // The deadline is the adopting call's from now on (an `AbortHandle` may keep this one
        // alive): it must not ring here too.
        self.cancel_entry();
        let done = self.attempt().is_done();
        // Adopt unless the call ended, the worker hands over, or the attempt is over.
        let adoptable =
            |e: u16| !done && e & (DEADLINE | ABORTED | CANCELLED | TAKEN | HANDED_OVER) == 0;
        let seen = self
            .events
            .fetch_update(SeqCst, SeqCst, |e| {
                Some(e | DETACHED | if adoptable(e) { ADOPTED } else { 0 })
            })
            .unwrap_or_else(|e| e);
        if seen & HANDED_OVER != 0 {
            let next = lock(&self.next).clone(); // (the lock is not held past this line)
            if let Some(next) = next {
                Arc::clone(&next).keep_own_deadline();
                next.detach();
            }
            return;
        }
        if !adoptable(seen) {
            // Ended, over, or being handed over (the hand-over passes the detach on).
            self.attempt().detach();
            if seen & (TAKEN | HANDED_OVER) == 0 {
                // Ended or over: no hand-over can claim it now.
                self.let_go_of_again();
            }
            return;
        }
        let Some(me) = self.me.upgrade() else {
            return; // (not reached: the handle detaching holds the call)
        };
        // (With the adoption's claim: the worker's hand-over never takes these.)
        let (parts, input) = match self.again.as_ref().and_then(Again::take) {
            Some(kept) => (self.parts(Some(kept.run), kept.captured), Some(kept.input)),
            None => (self.parts(None, Captured::default()), None),
        };
        let first = Arc::new(FirstOf(me)) as Arc<dyn Completion<Step<O>>>;
        let attempt = JobHandle::new(first, self.registry.id);
        let adopted = call::adopt(parts, input, attempt);
        // Published, so that an `AbortHandle` (or a stopping batch) reaches it from now on.
        *lock(&self.next) = Some(Arc::clone(&adopted));
        let seen = self.events.fetch_or(HANDED_OVER, SeqCst);
        if seen & ABORTED != 0 {
            adopted.abort(Cut::Cancelled);
        }
        if seen & STOP_ASKED != 0 {
            adopted.ask_to_stop();
        }
        adopted.detach();
        // Only now may it decide (and retry): what came first has reached it.
        adopted.start();
    }

    fn out_of_line(self: Arc<Self>) -> Option<Arc<dyn Runnable>> {
        match self.next() {
            Some(next) => next.out_of_line(),
            None => Some(self),
        }
    }

    fn take_held(&self) -> Option<Job> {
        self.next().and_then(|next| next.take_held())
    }

    fn abort_target(self: Arc<Self>) -> Arc<dyn Abort> {
        self
    }
}

impl<I, O, R, F> Abort for Direct<I, O, R, F>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
    F: FnOnce() -> Step<O> + Send + 'static,
{
    fn abort(&self, cut: Cut) -> bool {
        let event = if cut == Cut::TimedOut {
            DEADLINE
        } else {
            ABORTED
        };
        let seen = self.events.fetch_or(event, SeqCst);
        if seen & HANDED_OVER != 0 {
            let next = lock(&self.next).clone(); // (the lock is not held past this line)
            return next.is_some_and(|next| next.abort(cut));
        }
        if event == ABORTED && seen & (DEADLINE | ADOPTED) == DEADLINE {
            // The deadline came first: the alarm cuts the attempt, or the worker found it
            // passed, and one of them counts the timeout, or the attempt had ended. A cut
            // here as well would answer `Cancelled` to a call counted as timed out.
            return false;
        }
        Abort::abort(self.attempt(), cut)
    }

    fn is_finished(&self) -> bool {
        match self.next() {
            Some(next) => next.is_finished(),
            // Adopted, not yet published: the adopting call may still retry.
            None if self.events.load(SeqCst) & ADOPTED != 0 => false,
            None => Abort::is_finished(self.attempt()),
        }
    }
}

impl<I, O, R, F> Alarm for Direct<I, O, R, F>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
    F: FnOnce() -> Step<O> + Send + 'static,
{
    /// The deadline: a queued attempt never starts, a running one is cut off; either way the
    /// handle resolves to `TimedOut` now, and an adaptive limit takes it as an overload.
    fn ring(self: Arc<Self>) {
        let seen = self.events.fetch_or(DEADLINE, SeqCst);
        if seen & HANDED_OVER != 0 {
            let next = lock(&self.next).clone(); // (the lock is not held past this line)
            if let Some(next) = next {
                next.deadline_came();
            }
            return;
        }
        if seen & (DEADLINE | ADOPTED | CANCELLED) != 0 {
            // The worker found it expired, the adopting call keeps the deadline, or nobody
            // waits for the call any more.
            return;
        }
        // Counted under the attempt's lock as the cut wins, before the caller can see its
        // answer; a cut that loses (the attempt had ended: if it ended expired, its worker
        // counted) counts nothing.
        let mut counted = false;
        self.attempt()
            .cut_off(Cut::TimedOut, || counted = self.count_timeout());
        if counted {
            self.sample_timeout();
        }
    }

    /// The pool closed: the deadline still matters while the attempt may run.
    fn close(self: Arc<Self>) -> bool {
        match self.next() {
            Some(next) => next.pool_closed(),
            None => !self.attempt().is_done(),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::{Retry, WorkerPool};
    use std::time::Duration;

    /// Every way a timed call ends takes its deadline's entry off the timer: answered,
    /// answered and retried, dropped before its answer, detached, aborted; with a retry policy
    /// (a direct call) and without one (`timed`).
    #[test]
    fn no_entry_stays_behind_an_ended_call() {
        let pool = WorkerPool::new(2);
        let timer = &pool.registry().timer;
        let timed = pool.asyncify(|x: u32| x).timeout(Duration::from_secs(3600));
        let retried = timed.retry(Retry::new(2).retry_if(|x: &u32| *x == 7));
        for program in [&timed, &retried] {
            let handles: Vec<_> = (0..500).map(|i| program.call(i)).collect();
            for (i, h) in handles.into_iter().enumerate() {
                assert_eq!(h.wait(), Ok(i as u32));
            }
            drop(program.call(1));
            program.call(2).detach();
            let handle = program.call(3);
            handle.abort_handle().abort();
            let _ = handle.wait();
        }
        assert_eq!(retried.call(7).wait(), Ok(7));
        // A detached call's entry goes once its attempt ends (it is another call's then).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while timer.len() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(timer.len(), 0, "entries stayed on the timer");
    }
}
