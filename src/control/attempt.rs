//! One attempt of a controlled call: the pool job that runs the program once, and what it
//! reports on the way out (the slot back to its limit, the adaptive limit's sample, the
//! program's timing sample), so that nothing has to look at the attempt after it ends for
//! these.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::limit::{Sample, Slot};
use super::rate::Token;
use super::{with_deadline, Counts};
use crate::sync::lock;

/// What an attempt's job returns.
pub(super) enum Step<O> {
    /// The program returned this.
    Done(O),
    /// The deadline had passed when a worker took the attempt: it did not run the program.
    Expired,
    /// The program returned this, and the retry policy's classifier said whether it wants
    /// another attempt (a direct call's first attempt that could not hand over: a call that
    /// adopted it decides, without classifying again).
    Judged(O, bool),
    /// A direct call's first attempt, which its retry policy wants another for: a driven call
    /// took over from it, and the caller's answer comes from that call.
    HandedOver,
    /// A direct call's first attempt, whose call was aborted before the attempt's job ended
    /// (it saw the abort there): the call was not finished, so its answer is `Cancelled`,
    /// even if the abort's cut of the attempt comes after the job has ended. The output went.
    Aborted,
}

/// What an attempt carries besides its program and input.
pub(super) struct Attempt {
    /// The concurrency slot the attempt holds until it ends (released if it unwinds too).
    pub(super) slot: Option<Slot>,
    /// The rate token taken for the attempt: spent as the program starts; given back if the
    /// attempt never gets there (dropped unstarted, expired, or its input's copy panicked).
    pub(super) token: Option<Token>,
    /// The call's deadline: past it, the attempt does not start.
    pub(super) deadline: Option<Instant>,
    /// The program's counts and when the call was made, if the call is in the program's
    /// timing sample.
    pub(super) sampled: Option<(Arc<Counts>, Instant)>,
}

impl Attempt {
    /// The job of an attempt with no deadline to check as it starts (it always starts), whose
    /// output is the call's answer: see [`job`](Self::job).
    pub(super) fn starting<I, O>(
        slot: Option<Slot>,
        token: Option<Token>,
        sampled: Option<(Arc<Counts>, Instant)>,
        run: impl FnOnce(I) -> O + Send + 'static,
        input: I,
    ) -> impl FnOnce() -> O + Send + 'static
    where
        I: Send + 'static,
        O: Send + 'static,
    {
        let plan = Attempt {
            slot,
            token,
            deadline: None,
            sampled,
        };
        plan.job(
            run,
            move || input,
            |out| out,
            || unreachable!("an attempt without a deadline always starts"),
        )
    }

    /// The job: `then(output)`, or `expired()` if the deadline had passed when it started (it
    /// did not run the program; the slot and the token are back, and `expired` takes the
    /// adaptive limit's sample of the timeout if it is the one to).
    ///
    /// After the program returns, the slot goes back with (unless the caller has let go
    /// meanwhile: [`is_cancelled`](crate::is_cancelled)) the adaptive limit's sample of the
    /// output and the run time, a timed call records its wait and run time, and `then` runs.
    /// A program that panics gives its slot back as it unwinds, and samples nothing.
    pub(super) fn job<I, O, T>(
        self,
        run: impl FnOnce(I) -> O + Send + 'static,
        input: impl FnOnce() -> I + Send + 'static,
        then: impl FnOnce(O) -> T + Send + 'static,
        expired: impl FnOnce() -> T + Send + 'static,
    ) -> impl FnOnce() -> T + Send + 'static
    where
        O: Send + 'static,
    {
        // One capture, a tuple, whose fields drop in order: a job dropped unrun (cut off in
        // the queue, abandoned at shutdown) gives its slot and token back before the user's
        // values go, so a `Drop` of theirs that blocks holds no capacity.
        let parts = (self, input, run, then, expired);
        move || {
            let (plan, input, run, then, expired) = parts;
            let Attempt {
                slot,
                token,
                deadline,
                sampled,
            } = plan;
            let timed = sampled.is_some() || slot.as_ref().is_some_and(Slot::wants_latency);
            // One clock read for the deadline and the timing.
            let started = (timed || deadline.is_some()).then(Instant::now);
            if deadline.zip(started).is_some_and(|(d, now)| now >= d) {
                // The slot and the token go back; `expired` (whoever owns the deadline) samples
                // it.
                drop((slot, token));
                let expired = expired();
                // The program never ran: counted as a job called off in the queue.
                crate::job::decline();
                return expired;
            }
            let input = input();
            // The program starts (a copy of the input that panicked gave the token back as it
            // unwound).
            if let Some(token) = token {
                token.spend();
            }
            let out = match deadline {
                Some(d) => with_deadline(d, || run(input)),
                None => run(input),
            };
            let ran = started.filter(|_| timed).map(|s| (s, s.elapsed()));
            let live = !crate::is_cancelled();
            if let Some(slot) = slot {
                let took = ran.map_or(Duration::ZERO, |r| r.1);
                slot.release(live.then_some(Sample::Returned(&out, took)));
            }
            if let (true, Some((counts, called)), Some((started, ran))) = (live, &sampled, ran) {
                lock(&counts.wait).record(started.saturating_duration_since(*called));
                lock(&counts.run_time).record(ran);
            }
            then(out)
        }
    }
}
