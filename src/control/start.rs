//! How a controlled call starts: through its gates at once if it can, on the shortest path
//! that keeps its options.
//!
//! * It has to wait at a gate (no slot free, no token), its deadline has passed already, or
//!   its first attempt waits for room in a bounded queue: a [`call`], the driver
//!   that waits holding no worker and makes every attempt.
//! * Otherwise, with neither a deadline nor a retry policy: the caller's handle is the
//!   attempt's own, a job like a plain call's (the attempt's job gives the slot back and makes
//!   the samples).
//! * Otherwise, with a deadline and no retry policy: the same job, in a [`timed`] cell that
//!   keeps the deadline too.
//! * Otherwise: a [`direct`] call around the first attempt's cell, which keeps the deadline
//!   and hands over to a driven call if the policy wants another attempt.

use std::sync::{Arc, Weak};
use std::time::Instant;

use super::attempt::{Attempt, Step};
use super::call::{self, Parts};
use super::direct::{self, Again};
use super::timed;
use super::{with_deadline, Controls, Counts, Policy};
use crate::capture::Captured;
use crate::error::{JobError, Refusal};
use crate::guard;
use crate::job::JobHandle;
use crate::pool::Registry;

/// Starts a call of `run` on `input` under `controls`, on `registry`'s pool.
pub(crate) fn start<I, O, R>(
    controls: &Arc<Controls>,
    registry: &Arc<Registry>,
    run: R,
    input: I,
    captured: Captured,
) -> JobHandle<O>
where
    I: Send + 'static,
    O: Send + 'static,
    R: Fn(I) -> O + Clone + Send + Sync + 'static,
{
    if registry.is_closed() {
        guard::drop("the work of a refused call", (input, captured, run));
        return JobHandle::ready(Err(JobError::shut_down()));
    }
    let timed = controls.counts.call_is_timed();
    // The input is copied for a second attempt first, on the caller's thread, while the call
    // holds nothing yet: no concurrency slot, no rate token, no place in the queue (a `Clone`
    // that calls this program, or waits for a call on this pool, would wait for what its own
    // call holds). The call's time starts after it: its deadline, and the rate limit's look.
    let policy = controls.retry.as_ref().filter(|p| p.attempts() > 1);
    let (input, kept) = match policy.map(|p| p.copy(&input)) {
        Some(Some(Ok(copy))) => (copy, Some(input)),
        Some(Some(Err(message))) => {
            guard::drop("an input", (input, captured, run));
            return JobHandle::ready(Err(JobError::panicked(message)));
        }
        Some(None) | None => (input, None),
    };
    // One clock read for the deadline, the rate limit's first look and the timing sample
    // (none without any of them).
    let now = (timed || controls.timeout.is_some() || controls.rate.is_some()).then(Instant::now);
    let deadline = controls
        .timeout
        .zip(now)
        .and_then(|(timeout, now)| now.checked_add(timeout));
    let called = now.filter(|_| timed);
    let parts = |run, captured| Parts {
        registry: Arc::clone(registry),
        controls: Arc::clone(controls),
        run: Some(run),
        captured,
        deadline,
        called,
    };
    // For a driven call: the original, and the copy for its first attempt.
    let driven = |input: I, kept: Option<I>| match kept {
        Some(original) => (original, Some(input)),
        None => (input, None),
    };
    if deadline.zip(now).is_some_and(|(d, now)| now >= d) {
        // (It ends at once, `TimedOut`, its inputs dropped through the guard.)
        let (input, copy) = driven(input, kept);
        return call::start(parts(run, captured), input, copy, None, None, now);
    }
    // The gates, joining none of their lines: a call that must wait is a driven one.
    let slot = match &controls.limit {
        Some(limit) => match limit.try_acquire() {
            Some(slot) => Some(slot),
            None => {
                let (input, copy) = driven(input, kept);
                return call::start(parts(run, captured), input, copy, None, None, now);
            }
        },
        None => None,
    };
    // A token taken here goes back if the first attempt never starts (see `Attempt::token`).
    let token = match &controls.rate {
        Some(rate) => match rate.rate().try_take(now) {
            Some(token) => Some(token),
            None => {
                let (input, copy) = driven(input, kept);
                return call::start(parts(run, captured), input, copy, slot, None, now);
            }
        },
        None => None,
    };
    let sampled = called.map(|called| (Arc::clone(&controls.counts), called));
    let retries = kept.is_some();
    if deadline.is_none() && !retries {
        // (No timeout, one too long to have a deadline, or a policy of one attempt.)
        Counts::add(&controls.counts.attempts);
        let job = Attempt::starting(slot, token, sampled, run, input);
        return registry.submit(job, captured);
    }
    if policy.is_some_and(Policy::retries_panics) {
        // A panic to retry unwinds out of the attempt's job: the driven call sees it.
        let (input, copy) = driven(input, kept);
        return call::start(parts(run, captured), input, copy, slot, token, now);
    }
    // The first attempt's place in the queue, taken after the copy: no user code runs while the
    // call holds it (a `Clone` that waits for a call on this pool would wait for this place).
    let reserved = match registry.reserve() {
        Ok(reserved) => reserved,
        Err(Refusal::Full) => {
            // A bounded queue with no room: a driven call waits for it.
            let (input, copy) = driven(input, kept);
            return call::start(parts(run, captured), input, copy, slot, token, now);
        }
        Err(Refusal::ShutDown) => {
            // Counted, as a plain call's attempt is when the pool closes as it is queued.
            Counts::add(&controls.counts.attempts);
            guard::drop(
                "the work of a refused call",
                (input, kept, slot, token, captured, run),
            );
            return JobHandle::ready(Err(JobError::shut_down()));
        }
    };
    if let (Some(deadline), false) = (deadline, retries) {
        Counts::add(&controls.counts.attempts);
        // The deadline in force inside the job; the call checks it as a worker takes the job
        // (see `timed`).
        let run = move |input| with_deadline(deadline, || run(input));
        let job = Attempt::starting(slot, token, sampled, run, input);
        return timed::submit(registry, controls, reserved, deadline, job, captured);
    }
    let again = kept.map(|kept| Again::new(run.clone(), captured.clone(), kept));
    // The call is the first attempt's cell too: one allocation.
    let direct = direct::new(
        registry,
        controls,
        deadline,
        called,
        again,
        captured,
        |me| {
            let me_for_then = retries.then(|| Weak::clone(me));
            let then = move |out| match &me_for_then {
                Some(me) => direct::after_first(me, out),
                None => Step::Done(out),
            };
            let me_for_expired = deadline.map(|_| Weak::clone(me));
            let expired = move || match &me_for_expired {
                Some(me) => direct::expired(me),
                None => Step::Expired,
            };
            let plan = Attempt {
                slot,
                token,
                deadline,
                sampled,
            };
            plan.job(run, move || input, then, expired)
        },
    );
    Counts::add(&controls.counts.attempts);
    direct.queued(reserved)
}
