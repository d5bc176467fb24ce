//! A controlled call: the caller's handle on a call of a program with options, and the driver
//! of its attempts (see the [module docs](super) for the gates it passes).
//!
//! # Stages
//!
//! * `Waiting(input)`: before an attempt, at a gate (a limit's line, a limiter's line) or in a
//!   backoff on the pool's timer. Holds the input. Every such wait ends at the pool's close
//!   through an entry on the timer: the backoff's, the deadline's, the limiter's alarm, or (in
//!   a limit's line, for a call with no deadline there) one set only to watch for the close.
//! * `Attempt`: an attempt is a job of the pool; the call holds its handle (and the input,
//!   kept for another attempt if the retry policy may want one). The attempt's job holds the
//!   call's concurrency slot until it ends, so an abandoned attempt still counts against the
//!   limit while it runs.
//! * `Done(result)`: the caller's answer. `Closed` once taken (or nobody wants it).
//!
//! The attempt's handle is polled with the call itself as the waker, outside the call's lock:
//! while a poll is under way the handle is out of the stage (`None`), and a wake-up that comes
//! meanwhile (`notified`) makes the poller poll again.

use std::any::Any;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use super::attempt::{Attempt, Step};
use super::limit::{Sample, Slot};
use super::rate::{Take, Token};
use super::{Controls, Counts, Grant, Waiter};
use crate::capture::Captured;
use crate::error::JobError;
use crate::guard;
use crate::job::{Abort, AbortHandle, Completion, Cut, Job, JobHandle, Runnable};
use crate::pool::{Alarm, Registry, TimerKey};
use crate::sync::{lock, AtomicBool, Mutex, MutexGuard};

/// What an attempt's job returns.
pub(super) type Attempted<O> = Step<O>;

/// How far ahead a call waiting in a limit's line sets the entry that watches for the pool's
/// close (see [`Call::watch_close`]).
const WATCH: Duration = Duration::from_secs(365 * 24 * 3600);

/// `now + wait`, or, past what an `Instant` holds, an instant at least half as far ahead as
/// the latest one it holds (for a wait that long: never, in effect).
fn saturating_after(now: Instant, mut wait: Duration) -> Instant {
    loop {
        match now.checked_add(wait) {
            Some(until) => return until,
            None => wait /= 2, // (it fits by `Duration::ZERO` at the latest)
        }
    }
}

/// What a call is made of, however it starts.
pub(super) struct Parts<R> {
    pub(super) registry: Arc<Registry>,
    pub(super) controls: Arc<Controls>,
    /// The program (`None` for a call that will make no more attempts).
    pub(super) run: Option<R>,
    pub(super) captured: Captured,
    pub(super) deadline: Option<Instant>,
    /// When the call was made, if it is one of the program's timing sample.
    pub(super) called: Option<Instant>,
}

/// Starts the call at its gates (`slot` and `token`: those it passed already), on the
/// caller's thread (`now`: the time, if the deadline or a rate limit needs it). `copy`: the
/// input's copy for the first attempt, if the retry policy may want another, made before any
/// gate (`input` is then the original, kept for the next attempt).
pub(super) fn start<I, O, R>(
    parts: Parts<R>,
    input: I,
    copy: Option<I>,
    slot: Option<Slot>,
    token: Option<Token>,
    now: Option<Instant>,
) -> JobHandle<O>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
{
    let id = parts.registry.id;
    let call = Call::new(parts, Stage::Waiting(input), 0, |st| {
        st.slot = slot;
        st.token = token;
        st.copy = copy;
    });
    call.keep_deadline();
    call.advance_at(now);
    JobHandle::new(call, id)
}

/// A call to take over after a first attempt that the retry policy wants another for
/// (`input`: the original, kept for it), not started: [`Continued::begin`] starts it with that
/// attempt's outcome.
pub(super) fn prepare<I, O, R>(parts: Parts<R>, input: I) -> Arc<dyn Continued<O>>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
{
    let stage = Stage::Attempt {
        kept: Some(input),
        handle: None,
    };
    Call::new(parts, stage, 1, |_| {})
}

/// Takes over a call whose first attempt, `attempt`, is under way, with nobody waiting for it
/// (a detached handle): the call is the attempt's waker and keeps the deadline itself.
/// `input`: the original, if the retry policy may want another attempt.
pub(super) fn adopt<I, O, R>(
    parts: Parts<R>,
    input: Option<I>,
    attempt: JobHandle<Attempted<O>>,
) -> Arc<dyn Continued<O>>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
{
    let stage = Stage::Attempt {
        kept: input,
        handle: Some(attempt),
    };
    let call = Call::new(parts, stage, 1, |_| {});
    call.keep_deadline();
    // Not polled yet: the caller publishes it first (see `Continued::start`).
    call
}

/// A call taken over after its first attempt (see [`prepare`], [`adopt`]): what the handle of
/// that attempt passes on to it.
pub(super) trait Continued<O>: Completion<O> + Abort + Send + Sync {
    /// Its deadline came (the first attempt's handle keeps the entry on the timer).
    fn deadline_came(self: Arc<Self>);
    /// From now on it keeps its deadline on the timer itself (the first attempt's handle is
    /// going: detached).
    fn keep_own_deadline(self: Arc<Self>);
    /// Starts a [`prepare`]d call after a first attempt that ended with `outcome` (a backoff,
    /// then the next attempt). Nothing if it has ended meanwhile.
    fn begin(self: Arc<Self>, outcome: Result<O, JobError>);
    /// Starts an [`adopt`]ed call: it becomes its attempt's waker (and decides when that
    /// attempt ends).
    fn start(self: Arc<Self>);
    /// The pool closed: see [`Alarm::close`].
    fn pool_closed(self: Arc<Self>) -> bool;
}

impl<I, O, R> Continued<O> for Call<I, O, R>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
{
    fn deadline_came(self: Arc<Self>) {
        Alarm::ring(self);
    }

    fn keep_own_deadline(self: Arc<Self>) {
        self.keep_deadline();
    }

    fn begin(self: Arc<Self>, outcome: Result<O, JobError>) {
        self.decide(outcome, true);
    }

    fn start(self: Arc<Self>) {
        self.poll_attempt();
    }

    fn pool_closed(self: Arc<Self>) -> bool {
        Alarm::close(self)
    }
}

struct Call<I, O, R> {
    /// Itself, for the methods of the handle's traits (which take `&self`).
    me: Weak<Self>,
    registry: Arc<Registry>,
    controls: Arc<Controls>,
    /// The program; `None` if no attempt will be made (a call that took over a first attempt
    /// with no retry policy after it).
    run: Option<R>,
    captured: Captured,
    deadline: Option<Instant>,
    /// When the call was made, if it is one of the program's timing sample.
    called: Option<Instant>,
    /// Set once the call has ended or its handle is gone: lines skip it (read without the lock).
    finished: AtomicBool,
    state: Mutex<State<I, O>>,
}

struct State<I, O> {
    stage: Stage<I, O>,
    waker: Option<Waker>,
    /// Attempts handed to the pool so far.
    attempts: u32,
    /// The concurrency slot, from its grant until the next attempt takes it.
    slot: Option<Slot>,
    /// The rate token taken for the next attempt (given back if the call ends first).
    token: Option<Token>,
    /// The input's copy for the first attempt, made on the caller's thread before the call
    /// took a slot or a token (a `Clone` that calls this program must not wait for what its
    /// own call holds).
    copy: Option<I>,
    deadline_key: Option<TimerKey>,
    /// While the call waits in a limit's line with no deadline on the timer: its entry there
    /// that only the pool's close rings (see [`Call::watch_close`]).
    watch: Option<TimerKey>,
    /// The line the call waits in, if it does: it tells that line if it leaves without being
    /// let out, so that the line lets go of its entry (and the call's memory) in time.
    in_line: Option<InLine>,
    /// The end of the current backoff.
    backoff: Option<(Instant, TimerKey)>,
    /// The outcome of the last attempt, while a retry waits: the answer if it never comes.
    last: Option<Result<O, JobError>>,
    /// A wake-up came while the attempt's handle was out being polled.
    notified: bool,
    /// A waiting worker asked for the attempt while its handle was out: wake the caller when
    /// it is back, so that the worker asks again.
    wanted: bool,
    detached: bool,
    /// A stopping batch wants the result as it is: no more attempts.
    stop_asked: bool,
    /// The attempt runs on a spare thread under its waiter's permit: the call must not end
    /// before the attempt does (a timeout or an abort then waits for it, as `verdict`).
    on_spare: bool,
    verdict: Option<JobError>,
    /// The attempt abandoned by a deadline or an abort, for [`Abort::is_finished`].
    attempt_abort: Option<AbortHandle>,
    /// The call itself, once detached: lines and the timer hold it only weakly, and nobody
    /// else may hold it while it waits. Let go of at its end.
    detached_self: Option<Arc<dyn Any + Send + Sync>>,
}

/// The lines a call waits in.
#[derive(Clone, Copy)]
enum InLine {
    Limit,
    Rate,
}

enum Stage<I, O> {
    Waiting(I),
    Attempt {
        /// The input again, for another attempt.
        kept: Option<I>,
        /// `None` while it is being polled (or being put in place).
        handle: Option<JobHandle<Attempted<O>>>,
    },
    Done(Result<O, JobError>),
    Closed,
}

/// An attempt's input: ready, or the original to copy on the worker (keeping it in the call
/// for the attempt after).
enum Input<I, C> {
    Ready(I),
    CopyOf(I, Weak<C>),
}

/// The part of a call an attempt that copies its own input needs.
trait KeepInput<I> {
    /// Copies `original` for this attempt and keeps it for the next; a `Clone` that panics
    /// makes the attempt panic with its message.
    fn copy_and_keep(&self, original: I) -> I;
}

impl<I, C: KeepInput<I>> Input<I, C> {
    fn take(self) -> I {
        match self {
            Input::Ready(input) => input,
            Input::CopyOf(original, call) => match call.upgrade() {
                Some(call) => call.copy_and_keep(original),
                None => original,
            },
        }
    }
}

impl<I, O, R> KeepInput<I> for Call<I, O, R>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
{
    fn copy_and_keep(&self, original: I) -> I {
        let Some(policy) = self.controls.retry.as_ref() else {
            return original;
        };
        match policy.copy(&original) {
            Some(Ok(copy)) => {
                let mut st = self.lock();
                if let Stage::Attempt { kept, .. } = &mut st.stage {
                    *kept = Some(original);
                    copy
                } else {
                    drop(st);
                    guard::drop("an input", original);
                    copy
                }
            }
            None => original,
            Some(Err(message)) => {
                guard::drop("an input", original);
                std::panic::resume_unwind(Box::new(message))
            }
        }
    }
}

/// What an ended call lets go of, after its lock is released: values of the user's (`V`),
/// timer entries, the caller's waker, and the line it was waiting in. (The slot and token it
/// held go back before: see [`Call::end_with`].)
#[must_use]
struct Ending<V> {
    values: V,
    keys: [Option<TimerKey>; 3],
    waker: Option<Waker>,
    left: Option<InLine>,
}

impl<I, O, R> Call<I, O, R>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
{
    /// A call in `stage` after `attempts` attempts, with `set` applied to its state.
    fn new(
        parts: Parts<R>,
        stage: Stage<I, O>,
        attempts: u32,
        set: impl FnOnce(&mut State<I, O>),
    ) -> Arc<Self> {
        let mut state = State {
            stage,
            waker: None,
            attempts,
            slot: None,
            token: None,
            copy: None,
            deadline_key: None,
            watch: None,
            in_line: None,
            backoff: None,
            last: None,
            notified: false,
            wanted: false,
            detached: false,
            stop_asked: false,
            on_spare: false,
            verdict: None,
            attempt_abort: None,
            detached_self: None,
        };
        set(&mut state);
        Arc::new_cyclic(|me| Call {
            me: Weak::clone(me),
            registry: parts.registry,
            controls: parts.controls,
            run: parts.run,
            captured: parts.captured,
            deadline: parts.deadline,
            called: parts.called,
            finished: AtomicBool::new(false),
            state: Mutex::new(state),
        })
    }

    /// Puts the deadline on the pool's timer, with the call as its alarm.
    fn keep_deadline(self: &Arc<Self>) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if self.lock().deadline_key.is_some() {
            return;
        }
        let alarm: Weak<dyn Alarm> = Arc::downgrade(self) as Weak<dyn Alarm>;
        if let Ok(key) = self.registry.timer.deadline(deadline, alarm) {
            let old = self.lock().deadline_key.replace(key);
            if let Some(old) = old {
                self.registry.timer.cancel(old); // (kept twice at once: one is enough)
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<I, O>> {
        lock(&self.state)
    }

    fn weak_waiter(self: &Arc<Self>) -> Weak<dyn Waiter> {
        Arc::downgrade(&(Arc::clone(self) as Arc<dyn Waiter>))
    }

    /// For a call that joined a limit's line: unless its deadline is on the timer already (whose
    /// entry the pool's close rings), an entry far ahead there, which only the close rings in
    /// practice: nothing else lets a call out of the line but a slot given back, which may
    /// never come (a holder that never returns). False if the timer refused it: the pool has
    /// closed (the timer closes after the pool's flag is set, and every entry it took before
    /// is told of the close).
    fn watch_close(self: &Arc<Self>, st: &mut State<I, O>) -> bool {
        if st.deadline_key.is_some() || st.watch.is_some() {
            return true;
        }
        let now = Instant::now();
        let alarm: Weak<dyn Alarm> = Arc::downgrade(&(Arc::clone(self) as Arc<dyn Alarm>));
        match self
            .registry
            .timer
            .at(now.checked_add(WATCH).unwrap_or(now), alarm)
        {
            Ok(key) => {
                st.watch = Some(key);
                true
            }
            Err(_closed) => false,
        }
    }

    /// Moves a waiting call through its gates and into an attempt, as far as it can go now.
    fn advance(self: &Arc<Self>) {
        let needs_clock = self.deadline.is_some() || self.controls.rate.is_some();
        self.advance_at(needs_clock.then(Instant::now));
    }

    /// [`advance`](Self::advance) with the time read by the caller (`None` if neither the
    /// deadline nor a rate limit needs it).
    fn advance_at(self: &Arc<Self>, now: Option<Instant>) {
        let mut st = self.lock();
        if !matches!(st.stage, Stage::Waiting(_)) || st.backoff.is_some() {
            return;
        }
        if self.registry.is_closed() {
            let result = st.last.take().unwrap_or(Err(JobError::shut_down()));
            return self.end(st, result);
        }
        if self.deadline.zip(now).is_some_and(|(d, now)| now >= d) {
            return self.end(st, Err(JobError::timed_out()));
        }
        if let Some(limit) = &self.controls.limit {
            if st.slot.is_none() {
                match limit.acquire(self.weak_waiter()) {
                    Some(slot) => st.slot = Some(slot),
                    None => {
                        Counts::add(&self.controls.counts.waited_for_slot);
                        st.in_line = Some(InLine::Limit);
                        if !self.watch_close(&mut st) {
                            // The pool closed as the call joined the line: it leaves at once.
                            let result = st.last.take().unwrap_or(Err(JobError::shut_down()));
                            return self.end(st, result);
                        }
                        return;
                    }
                }
            }
        }
        if let Some(rate) = &self.controls.rate {
            if st.token.is_none() {
                match rate
                    .rate()
                    .take(&(Arc::clone(self) as Arc<dyn Waiter>), now)
                {
                    Take::Now(token) => st.token = Some(token),
                    Take::Wait => {
                        Counts::add(&self.controls.counts.waited_for_rate);
                        st.in_line = Some(InLine::Rate);
                        return;
                    }
                    Take::Closed => {
                        let result = st.last.take().unwrap_or(Err(JobError::shut_down()));
                        return self.end(st, result);
                    }
                }
            }
        }
        let waiting = std::mem::replace(
            &mut st.stage,
            Stage::Attempt {
                kept: None,
                handle: None,
            },
        );
        let Stage::Waiting(input) = waiting else {
            unreachable!("checked above");
        };
        let token = st.token.take();
        let copy = st.copy.take();
        st.attempts += 1;
        let attempt = st.attempts;
        let slot = st.slot.take();
        drop(st);
        self.submit(attempt, input, copy, slot, token);
    }

    /// Hands attempt number `attempt` to the pool with what it passed its gates with (no lock
    /// held: dropping an input is user code), then polls it. `copy`: the input's copy made at
    /// the call, for the first attempt (`input` is then the original, kept for the next).
    fn submit(
        self: &Arc<Self>,
        attempt: u32,
        input: I,
        copy: Option<I>,
        slot: Option<Slot>,
        token: Option<Token>,
    ) {
        let Some(run) = self.run.clone() else {
            // Not reached: a call without its program keeps no input for another attempt.
            guard::drop("an input", (input, copy, slot, token));
            let mut st = self.lock();
            if !matches!(st.stage, Stage::Attempt { .. }) {
                return;
            }
            let result = st.last.take().unwrap_or(Err(JobError::shut_down()));
            return self.end(st, result);
        };
        let policy = self.controls.retry.as_ref();
        let another = policy.is_some_and(|p| attempt < p.attempts());
        let (input, kept) = match copy {
            // Made at the call, on the caller's thread, before the gates.
            Some(copy) => (Input::Ready(copy), Some(input)),
            // Off the caller's thread (after a backoff, a slot or a token, on the pool's timer
            // or a worker), the copy for another attempt is made by the attempt itself, on its
            // worker: the timer runs no user `Clone`.
            None if another => (Input::CopyOf(input, self.me.clone()), None),
            None => (Input::Ready(input), None),
        };
        let plan = Attempt {
            slot,
            token,
            deadline: self.deadline,
            sampled: self
                .called
                .map(|called| (Arc::clone(&self.controls.counts), called)),
        };
        let job = plan.job(run, move || input.take(), Step::Done, || Step::Expired);
        // The call is its attempt's waker from the start: nobody polls the attempt before it
        // ends (unless it waits for room in a full bounded queue).
        let waker = Waker::from(Arc::clone(self));
        // Counted before it is queued: whoever sees the attempt run finds it counted.
        let counts = &self.controls.counts;
        Counts::add(&counts.attempts);
        if attempt > 1 {
            Counts::add(&counts.retries);
        }
        let handle = self
            .registry
            .submit_waking(job, self.captured.clone(), Some(waker));
        let must_poll = handle.is_waiting_for_room() || handle.pool() == 0;
        let mut st = self.lock();
        let stop_asked = st.stop_asked;
        let Stage::Attempt { kept: k, handle: h } = &mut st.stage else {
            // Ended meanwhile (a deadline, an abort, a dropped handle): the attempt goes too.
            drop(st);
            guard::drop("an abandoned attempt", (handle, kept));
            return;
        };
        if kept.is_some() {
            *k = kept; // (an attempt that copies its own input may have put it back already)
        }
        *h = Some(handle);
        if stop_asked {
            if let Some(h) = h {
                h.ask_to_stop();
            }
        }
        st.on_spare = false; // that was an earlier attempt's spare thread
                             // A worker waiting on this call (inside a job) may start the new attempt itself: wake
                             // it so that it looks again. (An attempt made at the call has nobody waiting yet.)
        let waker = st.waker.take();
        let again = std::mem::take(&mut st.notified);
        drop(st);
        if let Some(waker) = waker {
            guard::wake(waker);
        }
        if must_poll || again {
            self.poll_attempt();
        }
    }

    /// Polls the attempt's handle with the call as its waker; on its result, decides.
    fn poll_attempt(self: &Arc<Self>) {
        loop {
            let mut handle = {
                let mut st = self.lock();
                let Stage::Attempt { handle, .. } = &mut st.stage else {
                    return;
                };
                match handle.take() {
                    Some(h) => {
                        st.notified = false;
                        h
                    }
                    None => {
                        st.notified = true; // the poller (or submitter) polls again
                        return;
                    }
                }
            };
            let waker = Waker::from(Arc::clone(self));
            match handle.poll_with(Some(&mut Context::from_waker(&waker))) {
                Poll::Ready(result) => {
                    guard::drop("a finished attempt", handle);
                    return self.attempt_ended(result);
                }
                Poll::Pending => {
                    let mut st = self.lock();
                    let again = std::mem::take(&mut st.notified);
                    let wanted = std::mem::take(&mut st.wanted);
                    let Stage::Attempt { handle: h, .. } = &mut st.stage else {
                        drop(st);
                        guard::drop("an abandoned attempt", handle);
                        return;
                    };
                    *h = Some(handle);
                    let waker = wanted.then(|| st.waker.take()).flatten();
                    drop(st);
                    if let Some(waker) = waker {
                        guard::wake(waker);
                    }
                    if !again {
                        return;
                    }
                }
            }
        }
    }

    /// An attempt ended with `result` (its job has given the slot back and made its samples):
    /// done, or another attempt after a backoff.
    fn attempt_ended(self: &Arc<Self>, result: Result<Attempted<O>, JobError>) {
        let expired = matches!(result, Ok(Step::Expired));
        let mut judged = None;
        let outcome = match result {
            Ok(Step::Done(out)) => Ok(out),
            Ok(Step::Judged(out, retry)) => {
                judged = Some(retry);
                Ok(out)
            }
            Ok(Step::Expired) => Err(JobError::timed_out()),
            // The first attempt of a direct call that this call adopted saw an abort of that
            // call (which reaches this one too).
            Ok(Step::Aborted) => Err(JobError::cancelled()),
            Ok(Step::HandedOver) => {
                // Not reached: an attempt a call adopted never hands over (`direct`'s claims
                // exclude each other). Were it to, the other call would answer: this one ends.
                let st = self.lock();
                if matches!(st.stage, Stage::Attempt { .. }) {
                    self.end(st, Err(JobError::cancelled()));
                }
                return;
            }
            Err(e) => Err(e),
        };
        if self.finished.load(Acquire) {
            // Ended meanwhile (a deadline, an abort): this outcome is nobody's.
            guard::drop("a discarded output", outcome);
            return;
        }
        if let (true, Some(limit)) = (expired, &self.controls.limit) {
            limit.sample(Sample::TimedOut); // (the job gave its slot back)
        }
        // User code (the classifier, unless the attempt's job ran it), before any lock.
        let policy = self.controls.retry.as_ref();
        let wants_another =
            judged.unwrap_or_else(|| policy.is_some_and(|p| p.wants_another(&outcome)));
        self.decide(outcome, wants_another);
    }

    /// After an attempt that ended with `outcome`: done, or (if the policy `wants_another`
    /// and there is room for one) another attempt after a backoff.
    fn decide(self: &Arc<Self>, outcome: Result<O, JobError>, wants_another: bool) {
        let policy = self.controls.retry.as_ref();
        let mut st = self.lock();
        let kept = match &mut st.stage {
            Stage::Attempt { kept, .. } => kept.take(),
            _ => {
                // Ended meanwhile: nobody wants this outcome.
                drop(st);
                guard::drop("a discarded output", outcome);
                return;
            }
        };
        if let Some(verdict) = st.verdict.take() {
            st.last = Some(outcome);
            return self.end_with(st, Err(verdict), kept);
        }
        let retry = wants_another
            && !st.stop_asked
            && !self.registry.is_closed()
            && policy.is_some_and(|p| st.attempts < p.attempts());
        let input = match kept {
            Some(input) if retry => input,
            // The kept input (user code in its `Drop`) goes after the lock, with the rest.
            kept => return self.end_with(st, outcome, kept),
        };
        let wait = policy.map_or(Duration::ZERO, |p| p.backoff(st.attempts));
        // A backoff past what an `Instant` holds ends as late as one holds: never, in effect
        // (the call waits until it is dropped, aborted or its pool closes), and past any
        // deadline, so with one it is not made.
        let until = saturating_after(Instant::now(), wait);
        let in_time = self.deadline.is_none_or(|d| until < d);
        if !in_time {
            st.stage = Stage::Waiting(input);
            return self.end(st, outcome);
        }
        st.stage = Stage::Waiting(input);
        st.last = Some(outcome);
        if wait > Duration::ZERO {
            let alarm: Weak<dyn Alarm> = Arc::downgrade(&(Arc::clone(self) as Arc<dyn Alarm>));
            match self.registry.timer.at(until, alarm) {
                Ok(key) => {
                    st.backoff = Some((until, key));
                    return;
                }
                Err(_closed) => {
                    let result = st.last.take().expect("stored above");
                    return self.end(st, result);
                }
            }
        }
        drop(st);
        self.advance();
    }

    /// Ends the call with `result` (for the handle, unless detached) and lets go of everything
    /// else, after the lock.
    fn end(&self, st: MutexGuard<'_, State<I, O>>, result: Result<O, JobError>) {
        self.end_with(st, result, None);
    }

    /// [`end`](Self::end), dropping `kept` (an input taken out of the state) with the rest.
    fn end_with(
        &self,
        mut st: MutexGuard<'_, State<I, O>>,
        result: Result<O, JobError>,
        kept: Option<I>,
    ) {
        if result.as_ref().is_err_and(JobError::is_timed_out) {
            Counts::add(&self.controls.counts.timed_out);
        }
        self.finished.store(true, Release);
        let (stage, result) = if st.detached {
            (Stage::Closed, Some(result))
        } else {
            (Stage::Done(result), None)
        };
        let old = std::mem::replace(&mut st.stage, stage);
        let ending = Ending {
            values: (
                old,
                result,
                st.copy.take(),
                st.last.take(),
                st.detached_self.take(),
                kept,
            ),
            keys: [
                st.deadline_key.take(),
                st.watch.take(),
                st.backoff.take().map(|(_, key)| key),
            ],
            waker: st.waker.take(),
            left: st.in_line.take(),
        };
        // The slot and the token go back before the user's values are dropped, so that a
        // `Drop` of theirs that blocks holds no capacity.
        let gates = (st.slot.take(), st.token.take());
        drop(st);
        drop(gates);
        self.release(ending);
    }

    /// Lets go of what an ended call held (its timer entries, then the user's values), then
    /// wakes its caller. (When the pool lets go of many calls at once, the values go after
    /// every caller is woken: see `guard::telling_all_first`.)
    fn release<V: Send + 'static>(&self, ending: Ending<V>) {
        for key in ending.keys.into_iter().flatten() {
            self.registry.timer.cancel(key);
        }
        guard::drop_soon("a finished call's values", ending.values);
        match ending.left {
            Some(InLine::Limit) => self.controls.limit.iter().for_each(|l| l.left()),
            Some(InLine::Rate) => self.controls.rate.iter().for_each(|r| r.rate().left()),
            None => {}
        }
        if let Some(waker) = ending.waker {
            guard::wake_soon(waker);
        }
    }

    /// Ends the call now with `error` (a deadline, an abort), unless its attempt runs on a
    /// spare thread: then that attempt is asked to stop, and the call ends when it does. False
    /// if it had ended.
    fn end_early(&self, error: JobError) -> bool {
        let mut st = self.lock();
        let attempt = match &st.stage {
            Stage::Done(_) | Stage::Closed => return false,
            Stage::Attempt { handle, .. } => handle.as_ref(),
            Stage::Waiting(_) => None,
        };
        if st.on_spare && matches!(st.stage, Stage::Attempt { .. }) {
            // (A handle out being polled is put back by its poller, which then finds the
            // verdict when the attempt ends.)
            if let Some(h) = attempt {
                h.ask_to_stop();
            }
            let first = st.verdict.is_none();
            st.verdict.get_or_insert(error);
            return first;
        }
        // The attempt may still run: `AbortHandle::is_finished` waits for it.
        let abort = attempt.map(JobHandle::abort_handle);
        let in_flight = matches!(st.stage, Stage::Attempt { .. });
        let old = std::mem::replace(&mut st.attempt_abort, abort);
        let timed_out = error.is_timed_out();
        self.end(st, Err(error));
        guard::drop("an abort handle", old);
        // An attempt the deadline cut off is an overload signal (one that timed out waiting
        // in the program's own line is not: the limit was too small, not too large).
        if let (true, true, Some(limit)) = (timed_out, in_flight, &self.controls.limit) {
            limit.sample(Sample::TimedOut);
        }
        true
    }
}

impl<I, O, R> Alarm for Call<I, O, R>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
{
    /// The deadline, the end of a backoff, or (a year on) the entry that watches for the
    /// pool's close.
    fn ring(self: Arc<Self>) {
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            self.end_early(JobError::timed_out());
            return;
        }
        let mut st = self.lock();
        if st.watch.is_some_and(|key| now >= key.when()) {
            // A year in a limit's line: watched for another.
            st.watch = None;
            let in_line = matches!(st.in_line, Some(InLine::Limit));
            if in_line && !self.watch_close(&mut st) {
                let result = st.last.take().unwrap_or(Err(JobError::shut_down()));
                return self.end(st, result);
            }
        }
        if matches!(st.stage, Stage::Waiting(_))
            && st.backoff.is_some_and(|(until, _)| now >= until)
        {
            st.backoff = None;
            drop(st);
            self.advance();
        }
    }

    /// The pool closed: a call waiting outside the pool (a backoff, a limit's line) ends now,
    /// with its last outcome; a running call keeps its deadline.
    fn close(self: Arc<Self>) -> bool {
        let mut st = self.lock();
        match st.stage {
            Stage::Waiting(_) => {
                let result = st.last.take().unwrap_or(Err(JobError::shut_down()));
                self.end(st, result);
                false
            }
            Stage::Attempt { .. } => self.deadline.is_some(),
            Stage::Done(_) | Stage::Closed => false,
        }
    }
}

impl<I, O, R> Waiter for Call<I, O, R>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
{
    fn admit(self: Arc<Self>, grant: Grant) {
        let mut st = self.lock();
        st.in_line = None; // let out (the line took its entry out)
        if let (Grant::Slot(_), Some(key)) = (&grant, st.watch) {
            // Out of the limit's line: the close has nothing to end here any more (an attempt
            // keeps its deadline, and a later wait its own way out).
            st.watch = None;
            self.registry.timer.cancel(key);
        }
        if !matches!(st.stage, Stage::Waiting(_)) {
            drop(st);
            drop(grant); // a slot goes back to its limit
            return;
        }
        match grant {
            Grant::Slot(slot) => {
                st.slot = Some(slot);
                drop(st);
                self.advance();
            }
            Grant::Token(token) => {
                st.token = Some(token);
                drop(st);
                self.advance();
            }
            Grant::Closed => {
                let result = st.last.take().unwrap_or(Err(JobError::shut_down()));
                self.end(st, result);
            }
        }
    }

    fn is_gone(&self) -> bool {
        self.finished.load(Acquire)
    }

    fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

impl<I, O, R> Wake for Call<I, O, R>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
{
    fn wake(self: Arc<Self>) {
        self.poll_attempt();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.poll_attempt();
    }
}

impl<I, O, R> Completion<O> for Call<I, O, R>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
{
    fn poll_done(&self, cx: Option<&mut Context<'_>>) -> Poll<Result<O, JobError>> {
        // Cloning a waker is user code: before the lock.
        let waker = cx.map(|cx| cx.waker().clone());
        let mut st = self.lock();
        match std::mem::replace(&mut st.stage, Stage::Closed) {
            Stage::Done(result) => {
                drop(st);
                guard::drop("a waker", waker);
                Poll::Ready(result)
            }
            Stage::Closed => {
                drop(st);
                panic!("JobHandle polled after it returned its result")
            }
            pending => {
                st.stage = pending;
                let old = match waker {
                    Some(w) => st.waker.replace(w),
                    None => None,
                };
                drop(st);
                guard::drop("a waker", old);
                Poll::Pending
            }
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.lock().stage, Stage::Done(_) | Stage::Closed)
    }

    fn is_queued(&self) -> bool {
        let st = self.lock();
        match &st.stage {
            Stage::Waiting(_) => st.attempts == 0,
            Stage::Attempt { handle, .. } => {
                st.attempts == 1 && handle.as_ref().is_some_and(JobHandle::is_queued)
            }
            _ => false,
        }
    }

    fn cancel(&self) {
        self.finished.store(true, Release);
        let mut st = self.lock();
        // The attempt may still run: `AbortHandle::is_finished` waits for it, as after an
        // abort. (One out with its poller is dropped by it, unfinished or not.)
        let abort = match &st.stage {
            Stage::Attempt {
                handle: Some(h), ..
            } => Some(h.abort_handle()),
            _ => None,
        };
        let old = match abort {
            Some(abort) => st.attempt_abort.replace(abort),
            None => None,
        };
        let ending = Ending {
            values: (
                std::mem::replace(&mut st.stage, Stage::Closed),
                st.copy.take(),
                st.last.take(),
            ),
            keys: [
                st.deadline_key.take(),
                st.watch.take(),
                st.backoff.take().map(|(_, key)| key),
            ],
            waker: None,
            left: st.in_line.take(),
        };
        let waker = st.waker.take();
        let gates = (st.slot.take(), st.token.take());
        drop(st);
        drop(gates); // (before the user's values: see `end_with`)
        self.release(ending);
        guard::drop("a waker", (waker, old));
    }

    fn revoke(&self, error: JobError) -> bool {
        let mut st = self.lock();
        let (first, never) = (st.attempts <= 1, st.attempts == 0);
        let taken = match &mut st.stage {
            Stage::Waiting(_) if never => None,
            // Being polled (`None`): it may be running; say so.
            Stage::Attempt { handle, .. } if first => match handle.take() {
                Some(h) => Some(h),
                None => return false,
            },
            _ => return false,
        };
        let Some(taken) = taken else {
            self.end(st, Err(error));
            return true;
        };
        drop(st);
        // Revoking drops the attempt's work (user values): outside the lock.
        let revoked = taken.revoke(JobError::cancelled());
        let mut st = self.lock();
        let Stage::Attempt { handle, .. } = &mut st.stage else {
            drop(st);
            guard::drop("an abandoned attempt", taken);
            return false;
        };
        *handle = Some(taken);
        if revoked {
            self.end(st, Err(error));
        } else if std::mem::take(&mut st.notified) {
            // The attempt ended while it was out here: nobody polled it.
            drop(st);
            if let Some(me) = self.me.upgrade() {
                me.poll_attempt();
            }
        }
        revoked
    }

    fn ask_to_stop(&self) {
        let mut st = self.lock();
        st.stop_asked = true;
        if let Stage::Attempt {
            handle: Some(h), ..
        } = &st.stage
        {
            h.ask_to_stop();
        }
    }

    fn on_spare(&self) {
        let mut st = self.lock();
        st.on_spare = true;
        if let Stage::Attempt {
            handle: Some(h), ..
        } = &st.stage
        {
            h.on_spare();
        }
    }

    fn detach(&self) {
        let mut st = self.lock();
        st.detached = true;
        if !matches!(st.stage, Stage::Done(_) | Stage::Closed) {
            st.detached_self = self.me.upgrade().map(|me| me as Arc<dyn Any + Send + Sync>);
        }
        let done = match std::mem::replace(&mut st.stage, Stage::Closed) {
            done @ Stage::Done(_) => Some(done),
            other => {
                st.stage = other;
                None
            }
        };
        let waker = st.waker.take();
        drop(st);
        guard::drop("a detached call's result", (done, waker));
    }

    fn out_of_line(self: Arc<Self>) -> Option<Arc<dyn Runnable>> {
        let mut st = self.lock();
        match &st.stage {
            Stage::Attempt {
                handle: Some(h), ..
            } => h.out_of_line(),
            Stage::Attempt { handle: None, .. } => {
                st.wanted = true;
                None
            }
            _ => None,
        }
    }

    fn take_held(&self) -> Option<Job> {
        let mut st = self.lock();
        match &mut st.stage {
            Stage::Attempt {
                handle: Some(h), ..
            } => h.take_pending(),
            Stage::Attempt { handle: None, .. } => {
                st.wanted = true;
                None
            }
            _ => None,
        }
    }

    fn abort_target(self: Arc<Self>) -> Arc<dyn Abort> {
        self
    }
}

impl<I, O, R> Abort for Call<I, O, R>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
{
    fn abort(&self, cut: Cut) -> bool {
        self.end_early(cut.error())
    }

    fn is_finished(&self) -> bool {
        let st = self.lock();
        matches!(st.stage, Stage::Done(_) | Stage::Closed)
            && st
                .attempt_abort
                .as_ref()
                .is_none_or(AbortHandle::is_finished)
    }
}
