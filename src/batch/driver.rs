//! The batch's state machine, run by whoever consumes the batch: it submits items within the
//! concurrency cap, collects their results, keeps the counts and the error budget, stops the
//! batch, resubmits stragglers, and between steps sleeps the way its consumer does (parking the
//! thread, or leaving a waker and, for a deadline, a timer).
//!
//! # Item states
//!
//! Each item moves forward only, [`Slot::Unsubmitted`] → [`Slot::InFlight`] →
//! [`Slot::Finished`]:
//!
//! * `Unsubmitted`: its input waits in `pending`. Left by [`Driver::submit`] (→ `InFlight`)
//!   or, when the batch stops or the setting it needs is unusable, by [`Driver::refuse`]
//!   (→ `Finished`, not started, input handed back).
//! * `InFlight`: one job in the pool, two with a straggler copy. Each copy is a [`JobHandle`],
//!   polled when its job reports that it left the pool ([`Event::Released`]), and again, with
//!   its [`Lane`] as the waker, if its result was not in yet (or while it waits for room in a
//!   full bounded queue, or from its submission if it has a deadline, which may resolve it
//!   while its job still runs); the lane's wake-up ([`Event::Woken`]) says when to look again. The
//!   first copy that *ran* (returned or panicked) gives the item's result; a copy that never
//!   started leaves the item in flight while the other copy may still run. Left only by
//!   [`Driver::finish`].
//! * `Finished`: the result is counted and waits in `ready` until handed out; jobs of the item
//!   still in the pool (a straggler's losing copy) are ignored when they report.
//!
//! # The batch's phases
//!
//! Idle until first driven ([`Driver::start`]); then running: submitting and collecting; once
//! more than `max_errors` items failed, stopped ([`Driver::stop`]): nothing more is submitted,
//! items not started resolve to `Cancelled`, running ones are asked to stop
//! ([`is_cancelled`](crate::is_cancelled)) and still waited for; done when every item is
//! finished and handed out. `jobs` counts this batch's jobs in the pool, which is what
//! `concurrency(n)` bounds: a copy counts from its submission until its result is collected
//! and its job has left the pool. So a copy whose deadline resolved it while it still runs,
//! or one dropped unresolved when its item finished (a straggler's losing copy), counts until
//! its ticket reports it gone (at once, if it already has).
//!
//! # User code
//!
//! `fail_if`, `on_progress` and input clones run through the guard: a panic there is reported
//! and the batch goes on (a panicking `fail_if` counts the item as failed). Events drained from
//! the inbox wait in the driver's own queue and are processed one by one, so nothing the driver
//! has taken in can be lost.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

#[cfg(feature = "progress")]
use super::bar::Bar;
use super::builder::{Batch, Options, Stragglers};
use super::result::Progress;
use super::ticket::{Event, Lane, Shared, Ticket};
use super::timer::Timers;
use crate::capture::Captured;
use crate::control::{self, Carried};
use crate::error::JobError;
use crate::guard;
use crate::job::{thread_waker, JobHandle};
use crate::pool::on_thread_of;
use crate::program::{AsyncProgram, Program};

/// A result handed out: the item's index and what it gave.
pub(super) type Item<O> = (usize, Result<O, JobError>);

/// What a batch job returns: the program's output, and the job's reference to the shared
/// state, handed back so that the driver, which took it, lets it go (the workers never
/// change the shared state's counts: see `ticket`).
type JobOutput<P, I> = Carried<<P as Program<I>>::Output>;

/// A batch job's handle.
type Handle<P, I> = JobHandle<JobOutput<P, I>>;

/// One item's slot in a batch of program `P` over inputs `I`.
type ItemSlot<P, I> = Slot<Lane<P, I>, I, JobOutput<P, I>>;

/// Where one item is (see the module docs). `L` is the batch's [`Lane`] type.
enum Slot<L, I, O> {
    Unsubmitted,
    InFlight(Flight<L, I, O>),
    Finished {
        /// False if it never started: its input goes back to the caller.
        ran: bool,
        /// True once its input was handed back (or it needs none).
        input_given: bool,
        /// Copies dropped unresolved that are still in the pool (see `jobs`).
        lingering: [bool; 2],
    },
}

/// An item with jobs in the pool.
struct Flight<L, I, O> {
    copies: Copies<L, O>,
    /// When the first copy started (only tracked with stragglers on).
    started: Option<Instant>,
    copied: bool,
    /// A clone of the input (for failed inputs or a straggler copy).
    kept: Option<I>,
    /// The input handed back by a copy that never ran.
    returned: Option<I>,
    /// Which copies' jobs have left the pool (their tickets reported).
    released: [bool; 2],
    /// Copies whose results were collected before their jobs left the pool (a deadline
    /// resolves a handle while its run goes on): they count against `concurrency` until their
    /// tickets report.
    early: [bool; 2],
}

/// The original (0) and the straggler copy (1) of an item; `None` once resolved or taken to
/// wait on. The straggler copy, rare, is boxed: every item's slot stays small.
struct Copies<L, O> {
    first: Option<Copy<L, O>>,
    second: Option<Box<Copy<L, O>>>,
}

impl<L, O> Copies<L, O> {
    fn get(&self, copy: usize) -> Option<&Copy<L, O>> {
        match copy {
            0 => self.first.as_ref(),
            _ => self.second.as_deref(),
        }
    }

    fn get_mut(&mut self, copy: usize) -> Option<&mut Copy<L, O>> {
        match copy {
            0 => self.first.as_mut(),
            _ => self.second.as_deref_mut(),
        }
    }

    fn take(&mut self, copy: usize) -> Option<Copy<L, O>> {
        match copy {
            0 => self.first.take(),
            _ => self.second.take().map(|c| *c),
        }
    }

    fn is_some(&self, copy: usize) -> bool {
        self.get(copy).is_some()
    }
}

/// One job of an item: its handle, and the lane it is polled with, once it needed a waker.
struct Copy<L, O> {
    handle: JobHandle<O>,
    lane: Option<Arc<L>>,
}

enum Advance<O> {
    Item(Item<O>),
    Done,
    /// Nothing to hand out; the waker is registered. Wake up by the deadline, if any, to
    /// check for stragglers.
    Sleep(Option<Instant>),
}

/// The batch's state machine, run by whoever consumes the batch.
pub(super) struct Driver<P: ?Sized, I>
where
    P: Program<I>,
{
    program: AsyncProgram<P>,
    shared: Arc<Shared<P, I>>,
    captured: Captured,
    opts: Options<I, P::Output>,
    /// Inputs not submitted yet; the next one has index `next_index`.
    pending: std::vec::IntoIter<I>,
    next_index: usize,
    /// Indexed by item, sized at `start`.
    slots: Vec<ItemSlot<P, I>>,
    /// Items below this index are finished (a cursor for scans).
    scan_from: usize,
    total: usize,
    /// This batch's jobs in the pool (the `concurrency` gauge).
    jobs: usize,
    pub(super) done: usize,
    pub(super) failed: usize,
    pub(super) not_started: usize,
    pub(super) stopped: bool,
    /// Results known and not handed out yet, in completion order.
    ready: VecDeque<Item<P::Output>>,
    /// Events taken from the inbox and not processed yet.
    events: VecDeque<Event<I>>,
    failed_inputs: Vec<(usize, I)>,
    unstarted_inputs: Vec<(usize, I)>,
    started: Option<Instant>,
    last_reported: (usize, usize, usize),
    /// A copy whose handle waits for room in the pool's full bounded queue: `(index, copy)`.
    /// Nothing more is submitted meanwhile.
    waiting_for_room: Option<(usize, usize)>,
    timers: Timers,
    #[cfg(feature = "progress")]
    bar: Option<Bar>,
}

impl<P: ?Sized, I> Driver<P, I>
where
    P: Program<I>,
{
    fn finished(&self) -> usize {
        self.done + self.failed + self.not_started
    }

    /// Results not handed out yet: exactly the items left to yield.
    pub(super) fn left(&self) -> (usize, Option<usize>) {
        let left = self.total - self.finished() + self.ready.len();
        (left, Some(left))
    }

    pub(super) fn progress(&self) -> Progress {
        Progress {
            done: self.done,
            failed: self.failed,
            not_started: self.not_started,
            total: self.total,
            elapsed: self.started.map_or(Duration::ZERO, |s| s.elapsed()),
        }
    }
}

impl<P: ?Sized, I> Driver<P, I>
where
    P: Program<I>,
    I: Send + 'static,
{
    pub(super) fn new(batch: Batch<P, I>) -> Self {
        let Batch {
            program,
            inputs,
            captured,
            opts,
        } = batch;
        let total = inputs.len();
        let timers = Timers::new(Arc::clone(program.pool().registry()));
        Driver {
            shared: Arc::new(Shared::new(
                Arc::clone(program.shared()),
                opts.stragglers.is_some(),
            )),
            program,
            captured,
            opts,
            pending: inputs.into_iter(),
            next_index: 0,
            slots: Vec::new(),
            scan_from: 0,
            total,
            jobs: 0,
            done: 0,
            failed: 0,
            not_started: 0,
            stopped: false,
            ready: VecDeque::new(),
            events: VecDeque::new(),
            failed_inputs: Vec::new(),
            unstarted_inputs: Vec::new(),
            started: None,
            last_reported: (0, 0, 0),
            waiting_for_room: None,
            timers,
            #[cfg(feature = "progress")]
            bar: None,
        }
    }

    pub(super) fn take_failed_inputs(&mut self) -> Vec<(usize, I)> {
        let mut inputs = std::mem::take(&mut self.failed_inputs);
        inputs.sort_unstable_by_key(|(index, _)| *index);
        inputs
    }

    pub(super) fn take_unstarted_inputs(&mut self) -> Vec<(usize, I)> {
        let mut inputs = std::mem::take(&mut self.unstarted_inputs);
        inputs.sort_unstable_by_key(|(index, _)| *index);
        inputs
    }

    /// Idle → running, at the first drive.
    fn start(&mut self) {
        if self.started.is_some() {
            return;
        }
        self.started = Some(Instant::now());
        self.slots = (0..self.total).map(|_| Slot::Unsubmitted).collect();
        match self.opts.workers.take() {
            // Sized by `async_max_workers` as in force at `batch()`, like one `call` there.
            Some(Ok(workers)) if self.program.pool().threads() != workers => {
                let _ = self.program.pool().set_threads(workers);
            }
            Some(Err(e)) => self.refuse(JobError::invalid_setting(e)),
            _ => {}
        }
        if let Err(e) = &self.opts.max_errors {
            // An unusable `max_errors` in force at `batch()` (and no budget set on the batch).
            let error = JobError::invalid_setting(e.clone());
            self.refuse(error);
        }
        #[cfg(feature = "progress")]
        if self.opts.progress_bar {
            self.bar = Some(Bar::new(self.total));
        }
    }

    /// One step of the batch: hand out a known result, or submit what may be submitted,
    /// collect what the jobs reported, and say when to come back.
    fn advance(&mut self, waker: &Waker) -> Advance<P::Output> {
        self.start();
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Advance::Item(item);
            }
            if self.finished() == self.total {
                // Inputs of items that never started may still wait in the inbox after their
                // results were collected (a job revoked at a stop resolves at once, and its
                // ticket's report is processed later): collect them.
                while self.shared.drain_into(&mut self.events, waker) {
                    while let Some(event) = self.events.pop_front() {
                        self.process(event);
                    }
                }
                // Results that came in outside the loop below (through nested waits, or at
                // once: a shut-down pool, a refused setting) are reported too: the last call
                // of `on_progress` has every item.
                self.report();
                self.close_bar();
                self.let_go_of_callbacks();
                return Advance::Done;
            }
            self.submit();
            let deadline = self.resubmit_stragglers();
            if !self.ready.is_empty() {
                continue;
            }
            if self.events.is_empty() && !self.shared.drain_into(&mut self.events, waker) {
                return Advance::Sleep(deadline);
            }
            while let Some(event) = self.events.pop_front() {
                self.process(event);
            }
            self.report();
        }
    }

    /// Unsubmitted → in flight, while the batch may have more jobs in the pool.
    fn submit(&mut self) {
        while !self.stopped && self.waiting_for_room.is_none() && self.jobs < self.opts.concurrency
        {
            let Some(input) = self.pending.next() else {
                return;
            };
            let index = self.next_index;
            self.next_index += 1;
            let kept = self
                .opts
                .clone_input
                .and_then(|clone| clone_input(clone, &input));
            let copy = self.spawn(index, 0, input);
            self.slots[index] = Slot::InFlight(Flight {
                copies: Copies {
                    first: Some(copy),
                    second: None,
                },
                started: None,
                copied: false,
                kept,
                returned: None,
                released: [false; 2],
                early: [false; 2],
            });
            self.submitted(index, 0);
        }
    }

    /// Submits one job for item `index` through the pool's one internal spawn, under the
    /// batch's captured context.
    fn spawn(&mut self, index: usize, copy: usize, input: I) -> Copy<Lane<P, I>, JobOutput<P, I>> {
        let ticket = Ticket {
            shared: Some(Arc::clone(&self.shared)),
            index,
            copy,
            input: Some(input),
        };
        self.jobs += 1;
        let registry = self.program.pool().registry();
        let captured = self.captured.clone();
        // A program with options: the item passes its gates, keeps its deadline and feeds an
        // overload signal (which sees the output inside the job's `Carried`), as a call does.
        // A retry policy copies the program's own input, not a ticket: an item makes one
        // attempt (as the docs of `retry` say).
        let handle = match self.program.controls() {
            Some(controls) => {
                let run = |ticket: Ticket<P, I>| ticket.run();
                control::start(controls, registry, run, ticket, captured)
            }
            None => registry.submit(move || ticket.run(), captured),
        };
        Copy { handle, lane: None }
    }

    /// Copy `copy` of item `index` was just submitted. Its job reports when it leaves the
    /// pool, so its handle needs polling now only if it was resolved at once (a shut-down
    /// pool), waits for room in a full bounded queue (its lane is woken when there is), or
    /// has a deadline (which resolves it while the job may still run: the lane is woken then).
    fn submitted(&mut self, index: usize, copy: usize) {
        let Slot::InFlight(flight) = &self.slots[index] else {
            return;
        };
        let Some(c) = flight.copies.get(copy) else {
            return;
        };
        let timed = (self.program.controls()).is_some_and(|c| c.timeout.is_some());
        if c.handle.pool() == 0 {
            self.poll_copy(index, copy, false);
        } else if timed || c.handle.is_waiting_for_room() {
            self.poll_copy(index, copy, true);
        }
    }

    /// Polls copy `copy` of item `index`; resolves it if it is ready. With `register`, or if
    /// it is not ready, polls it with its lane as the waker (made the first time), so that the
    /// pool wakes the driver when its result is in (or its queue has room).
    fn poll_copy(&mut self, index: usize, copy: usize, register: bool) {
        let shared = &self.shared;
        let Slot::InFlight(flight) = &mut self.slots[index] else {
            return;
        };
        let Some(c) = flight.copies.get_mut(copy) else {
            return;
        };
        let mut polled = if register {
            Poll::Pending
        } else {
            c.handle.poll_with(None)
        };
        if polled.is_pending() {
            let lane = c
                .lane
                .get_or_insert_with(|| Arc::new(Lane::new(Arc::clone(shared), index, copy)));
            let waker = Waker::from(Arc::clone(lane));
            polled = c.handle.poll_with(Some(&mut Context::from_waker(&waker)));
        }
        let waiting = c.handle.is_waiting_for_room();
        match polled {
            Poll::Ready(result) => {
                drop(flight.copies.take(copy));
                self.collected(index, copy, unpack(result));
            }
            Poll::Pending if waiting => self.waiting_for_room = Some((index, copy)),
            Poll::Pending => {
                if self.waiting_for_room == Some((index, copy)) {
                    self.waiting_for_room = None;
                }
            }
        }
    }

    fn process(&mut self, event: Event<I>) {
        match event {
            Event::Started { index, at } => {
                if let Slot::InFlight(flight) = &mut self.slots[index] {
                    flight.started.get_or_insert(at);
                }
            }
            Event::Woken { index, copy } => self.poll_copy(index, copy, true),
            Event::Released { index, copy, input } => {
                if let Slot::Finished { lingering, .. } = &mut self.slots[index] {
                    if std::mem::take(&mut lingering[copy]) {
                        self.jobs -= 1;
                    }
                }
                if let Slot::InFlight(flight) = &mut self.slots[index] {
                    flight.released[copy] = true;
                    if std::mem::take(&mut flight.early[copy]) {
                        self.jobs -= 1;
                    }
                }
                if let Some(input) = input {
                    match &mut self.slots[index] {
                        Slot::InFlight(flight) => flight.returned = Some(input),
                        Slot::Finished {
                            ran: false,
                            input_given,
                            ..
                        } if !*input_given => {
                            *input_given = true;
                            self.unstarted_inputs.push((index, input));
                        }
                        _ => guard::drop("an input", input),
                    }
                }
                // The job is gone, so its result is in its handle, or about to be: a job that
                // ran stores it just after its ticket reported (if it is not in yet, the copy
                // is polled with its lane, which the pool wakes when it is).
                self.poll_copy(index, copy, false);
            }
        }
    }

    /// A copy of item `index` resolved with `result`. Its result is collected: if its job has
    /// left the pool (`gone`), it no longer counts against `concurrency`; otherwise it does
    /// until its ticket reports.
    fn resolve(&mut self, index: usize, result: Result<P::Output, JobError>, gone: bool) {
        if gone {
            self.jobs -= 1;
        }
        // A timed-out item is a failure, as a panicked one is, whether or not it had started.
        let ran = matches!(
            result,
            Ok(_) | Err(JobError::Panicked { .. } | JobError::TimedOut { .. })
        );
        let Slot::InFlight(flight) = &self.slots[index] else {
            return;
        };
        if !ran && (flight.copies.is_some(0) || flight.copies.is_some(1)) {
            return; // the other copy may still run and give the result
        }
        self.finish(index, result, ran);
    }

    /// In flight → finished: records item `index`'s result (`ran`: the program ran, otherwise
    /// it never started).
    fn finish(&mut self, index: usize, result: Result<P::Output, JobError>, ran: bool) {
        let Slot::InFlight(flight) = std::mem::replace(
            &mut self.slots[index],
            Slot::Finished {
                ran,
                input_given: true,
                lingering: [false; 2],
            },
        ) else {
            unreachable!("only items in flight finish")
        };
        // Copies dropped unresolved whose jobs are still in the pool; those that have left it
        // no longer count against `concurrency`.
        let lingering =
            [0, 1].map(|c| (flight.copies.is_some(c) || flight.early[c]) && !flight.released[c]);
        for c in 0..2 {
            if flight.copies.is_some(c) && flight.released[c] {
                self.jobs -= 1;
            }
        }
        // A straggler copy still queued never runs; one still running sees `is_cancelled`.
        let Copies { first, second } = flight.copies;
        if first.is_some() || second.is_some() {
            guard::drop("a straggler copy", (first, second));
        }
        if ran {
            let failed = match &result {
                Err(_) => true,
                Ok(output) => self.opts.fail_if.as_ref().is_some_and(|fail_if| {
                    // A panicking predicate counts the item as failed.
                    guard::call(|| fail_if(output)).unwrap_or(true)
                }),
            };
            if failed {
                self.failed += 1;
                if let (true, Some(input)) = (self.opts.keep_failed_inputs, flight.kept) {
                    self.failed_inputs.push((index, input));
                }
            } else {
                self.done += 1;
                drop_input(flight.kept);
            }
            drop_input(flight.returned);
        } else {
            self.not_started += 1;
            match flight.returned.or(flight.kept) {
                Some(input) => self.unstarted_inputs.push((index, input)),
                // Its job is still to hand it back (see `Event::Released`).
                None => {
                    self.slots[index] = Slot::Finished {
                        ran: false,
                        input_given: false,
                        lingering: [false; 2],
                    }
                }
            }
        }
        if let Slot::Finished { lingering: l, .. } = &mut self.slots[index] {
            *l = lingering;
        }
        self.ready.push_back((index, result));
        if self
            .opts
            .max_errors
            .as_ref()
            .is_ok_and(|&n| self.failed > n)
        {
            self.stop();
        }
    }

    /// Unsubmitted → finished, not started, with `error`: every item not submitted yet.
    fn refuse(&mut self, error: JobError) {
        for input in std::mem::replace(&mut self.pending, Vec::new().into_iter()) {
            let index = self.next_index;
            self.next_index += 1;
            self.not_started += 1;
            self.slots[index] = Slot::Finished {
                ran: false,
                input_given: true,
                lingering: [false; 2],
            };
            self.unstarted_inputs.push((index, input));
            self.ready.push_back((index, Err(error.clone())));
        }
    }

    /// The error budget is spent: nothing more starts. Items not submitted finish now as
    /// cancelled; submitted ones still queued (or waiting for room) are revoked and resolve at
    /// once; those running are asked to stop, and report when done.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.waiting_for_room = None;
        self.refuse(JobError::cancelled());
        let mut revoked = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate().skip(self.scan_from) {
            let Slot::InFlight(flight) = slot else {
                continue;
            };
            for copy in 0..2 {
                let Some(c) = flight.copies.get_mut(copy) else {
                    continue;
                };
                if c.handle.revoke(JobError::cancelled()) {
                    // A job still waiting for room never enters the queue now.
                    drop(c.handle.take_pending());
                    revoked.push((index, copy));
                } else {
                    c.handle.ask_to_stop();
                }
            }
        }
        for (index, copy) in revoked {
            self.poll_copy(index, copy, false);
        }
    }

    /// Submits a second copy of each item that has run past the straggler timeout, once all
    /// items are submitted and few are left. Returns the next deadline to check again at.
    fn resubmit_stragglers(&mut self) -> Option<Instant> {
        let Stragglers { timeout, limit } = self.opts.stragglers?;
        let clone = self.opts.clone_input?;
        if self.stopped || self.pending.len() > 0 || self.total - self.finished() > limit {
            return None;
        }
        while self.scan_from < self.total
            && matches!(self.slots[self.scan_from], Slot::Finished { .. })
        {
            self.scan_from += 1;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for index in self.scan_from..self.total {
            let Slot::InFlight(flight) = &mut self.slots[index] else {
                continue;
            };
            // Not started yet: its `Started` report will wake the driver. `Duration::MAX`
            // (a deadline past what an `Instant` holds) is never due.
            let Some(due) = flight
                .started
                .filter(|_| !flight.copied)
                .and_then(|started| started.checked_add(timeout))
            else {
                continue;
            };
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            if self.jobs >= self.opts.concurrency || self.waiting_for_room.is_some() {
                continue; // a job finishing, or room in the queue, wakes the driver
            }
            flight.copied = true;
            let Some(input) = flight
                .kept
                .as_ref()
                .and_then(|kept| clone_input(clone, kept))
            else {
                continue;
            };
            let copy = self.spawn(index, 1, input);
            if let Slot::InFlight(flight) = &mut self.slots[index] {
                flight.copies.second = Some(Box::new(copy));
            }
            self.submitted(index, 1);
        }
        next
    }

    fn report(&mut self) {
        let counts = (self.done, self.failed, self.not_started);
        if counts == self.last_reported {
            return;
        }
        self.last_reported = counts;
        // Nobody to tell: no clock to read.
        let listening = self.opts.on_progress.is_some();
        #[cfg(feature = "progress")]
        let listening = listening || self.bar.is_some();
        if !listening {
            return;
        }
        let progress = self.progress();
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.update(&progress);
        }
        if let Some(callback) = self.opts.on_progress.as_mut() {
            guard::quietly("an on_progress callback", || callback(progress));
        }
    }

    /// The batch is over: its callbacks, user values, go now, each through the guard, so
    /// that one whose captures panic when dropped costs no answer (`wait` and `.await` hand
    /// theirs out after this).
    fn let_go_of_callbacks(&mut self) {
        if let Some(callback) = self.opts.on_progress.take() {
            guard::drop("an on_progress callback", callback);
        }
        if let Some(predicate) = self.opts.fail_if.take() {
            guard::drop("a fail_if predicate", predicate);
        }
    }

    fn close_bar(&mut self) {
        #[cfg(feature = "progress")]
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }

    /// The blocking path: sleeps on the thread's waker or, on a thread of the batch's pool
    /// (inside a job), waits on one of the batch's handles, which runs that job here if
    /// nobody has started it.
    pub(super) fn next_blocking(&mut self) -> Option<Item<P::Output>> {
        let waker = thread_waker();
        loop {
            match self.advance(&waker) {
                Advance::Item(item) => return Some(item),
                Advance::Done => return None,
                Advance::Sleep(deadline) => {
                    if on_thread_of(self.program.pool().registry().id) {
                        if let Some((index, copy, handle)) = self.take_handle() {
                            self.collected(index, copy, unpack(handle.wait()));
                            continue;
                        }
                    }
                    match deadline {
                        None => thread::park(),
                        Some(deadline) => {
                            thread::park_timeout(deadline.saturating_duration_since(Instant::now()))
                        }
                    }
                }
            }
        }
    }

    /// The handle of a copy that no worker has started, the earliest submitted, for a nested
    /// wait to run it here: `(index, copy, handle)`. A copy already running elsewhere is not
    /// taken: waiting on it would hold back every other result until it ends.
    fn take_handle(&mut self) -> Option<(usize, usize, Handle<P, I>)> {
        let (start, end) = (self.scan_from, self.next_index);
        self.slots[start..end]
            .iter_mut()
            .enumerate()
            .find_map(|(offset, slot)| match slot {
                Slot::InFlight(flight) => {
                    let copy = (0..2).find(|&copy| {
                        flight
                            .copies
                            .get(copy)
                            .is_some_and(|c| c.handle.is_queued())
                    })?;
                    let c = flight.copies.take(copy)?;
                    Some((start + offset, copy, c.handle))
                }
                _ => None,
            })
    }

    /// Copy `copy` of item `index` was collected (by `poll_copy`, or by a nested wait), its
    /// handle taken out of the item. A result that came before the job left the pool (its
    /// deadline passed while it ran) leaves the copy counted until its ticket reports.
    fn collected(&mut self, index: usize, copy: usize, result: Result<P::Output, JobError>) {
        if self.waiting_for_room == Some((index, copy)) {
            self.waiting_for_room = None;
        }
        let gone = match &mut self.slots[index] {
            Slot::InFlight(flight) => {
                flight.early[copy] = !flight.released[copy];
                flight.released[copy]
            }
            _ => true,
        };
        self.resolve(index, result, gone);
    }

    /// The async path: the timer thread stands in for `park_timeout`.
    pub(super) fn poll_next_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item<P::Output>>> {
        match self.advance(cx.waker()) {
            Advance::Item(item) => Poll::Ready(Some(item)),
            Advance::Done => Poll::Ready(None),
            Advance::Sleep(deadline) => {
                if let Some(deadline) = deadline {
                    self.timers.arm(deadline, &self.shared);
                }
                Poll::Pending
            }
        }
    }
}

/// A copy's result, without the reference to the shared state its job handed back (let go
/// here, on the driver's thread, where it was taken).
fn unpack<O>(result: Result<Carried<O>, JobError>) -> Result<O, JobError> {
    result.map(|Carried { out, with }| {
        drop(with); // (here, on the driver's thread)
        out
    })
}

/// A batch dropped before its end (or whose results or inputs were not all taken) still
/// holds user values: inputs not submitted yet, inputs and outputs not handed out, its
/// callbacks and its captured context. Each goes through the guard on its own, so that one
/// whose `Drop` panics neither unwinds into the caller's drop of the batch nor, unwinding,
/// meets another's panic (which would abort). The handles in flight drop their own jobs'
/// values (see `JobHandle`'s `Drop`).
impl<P: ?Sized, I> Drop for Driver<P, I>
where
    P: Program<I>,
{
    fn drop(&mut self) {
        for input in std::mem::take(&mut self.pending) {
            guard::drop("an input", input);
        }
        let given = std::mem::take(&mut self.failed_inputs)
            .into_iter()
            .chain(std::mem::take(&mut self.unstarted_inputs));
        for (_, input) in given {
            guard::drop("an input", input);
        }
        for (_, result) in std::mem::take(&mut self.ready) {
            guard::drop("an output", result);
        }
        for event in std::mem::take(&mut self.events) {
            if let Event::Released { input, .. } = event {
                drop_input(input);
            }
        }
        for slot in std::mem::take(&mut self.slots) {
            if let Slot::InFlight(flight) = slot {
                let Flight {
                    copies,
                    kept,
                    returned,
                    ..
                } = flight;
                drop_input(kept);
                drop_input(returned);
                guard::drop("a batch item's handles", copies);
            }
        }
        guard::drop("a batch's callbacks", self.opts.on_progress.take());
        guard::drop("a batch's callbacks", self.opts.fail_if.take());
        guard::drop("a captured context", std::mem::take(&mut self.captured));
    }
}

/// Drops an input (user code), if there is one.
fn drop_input<I>(input: Option<I>) {
    if input.is_some() {
        guard::drop("an input", input);
    }
}

/// Clones an input (user code): `None`, reported, if the clone panics.
fn clone_input<I>(clone: fn(&I) -> I, input: &I) -> Option<I> {
    match guard::call(|| clone(input)) {
        Ok(copy) => Some(copy),
        Err(message) => {
            guard::warn(format_args!(
                "cloning a batch input panicked ({message}); the input is not kept"
            ));
            None
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::WorkerPool;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    fn drain<P: Program<u32>>(driver: &mut Driver<P, u32>) -> Vec<Item<P::Output>> {
        std::iter::from_fn(|| driver.next_blocking()).collect()
    }

    /// A panicking `fail_if` counts its item as failed, and every other result still arrives.
    #[test]
    fn a_panicking_fail_if_fails_its_item_and_loses_nothing() {
        let pool = WorkerPool::new(2);
        let id = pool.asyncify(|x: u32| x);
        let batch = id.batch(0..50).fail_if(|x| {
            assert!(*x != 7, "planned: fail_if on 7");
            false
        });
        let mut driver = Driver::new(batch);
        let mut items = drain(&mut driver);
        items.sort_by_key(|(i, _)| *i);
        assert_eq!(items.len(), 50);
        assert!(items.iter().all(|(i, r)| r == &Ok(*i as u32)));
        assert_eq!((driver.done, driver.failed, driver.not_started), (49, 1, 0));
        assert_eq!(driver.jobs, 0, "every copy's result was collected");
    }

    /// Events for an item already finished (a late wake-up, a straggler's losing copy) change
    /// nothing: items only move forward.
    #[test]
    fn events_for_a_finished_item_change_nothing() {
        let pool = WorkerPool::new(1);
        let id = pool.asyncify(|x: u32| x);
        let mut driver = Driver::new(id.batch(0..3));
        assert_eq!(drain(&mut driver).len(), 3);
        let counts = (driver.done, driver.failed, driver.not_started, driver.jobs);
        driver.process(Event::Woken { index: 1, copy: 0 });
        driver.process(Event::Woken { index: 1, copy: 1 });
        driver.process(Event::Started {
            index: 2,
            at: Instant::now(),
        });
        driver.process(Event::Released {
            index: 0,
            copy: 1,
            input: Some(0),
        });
        assert_eq!(
            (driver.done, driver.failed, driver.not_started, driver.jobs),
            counts
        );
        assert!(
            driver.unstarted_inputs.is_empty(),
            "a finished item that ran takes no input"
        );
        assert!(driver.ready.is_empty());
    }

    /// A program gated by `gate`: each run waits until the gate lets it through, and `runs`
    /// counts the runs that started.
    fn gated(
        pool: &WorkerPool,
        gate: &Arc<std::sync::Mutex<()>>,
    ) -> (
        AsyncProgram<impl Program<u32, Output = u32>>,
        Arc<AtomicUsize>,
    ) {
        let runs = Arc::new(AtomicUsize::new(0));
        let (gate, counted) = (Arc::clone(gate), Arc::clone(&runs));
        let program = pool.asyncify(move |x: u32| {
            counted.fetch_add(1, SeqCst);
            drop(gate.lock());
            x
        });
        (program, runs)
    }

    fn until(what: &str, done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out: {what}"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// A job that reports it left the pool before its result is stored (the driver looks in
    /// between) is polled with its lane as the waker, and its result still arrives.
    #[test]
    fn a_result_stored_after_its_report_arrives_through_the_lane() {
        let pool = WorkerPool::new(1);
        let gate = Arc::new(std::sync::Mutex::new(()));
        let closed = gate.lock().unwrap();
        let (program, runs) = gated(&pool, &gate);
        let mut driver = Driver::new(program.batch([7]));
        driver.start();
        driver.submit();
        until("the job to start", || runs.load(SeqCst) == 1);
        // As if its ticket had reported while the program still runs.
        driver.process(Event::Released {
            index: 0,
            copy: 0,
            input: None,
        });
        let Slot::InFlight(flight) = &driver.slots[0] else {
            panic!("the item is still in flight");
        };
        assert!(flight.copies.get(0).is_some_and(|c| c.lane.is_some()));
        drop(closed);
        assert_eq!(drain(&mut driver), [(0, Ok(7))]);
        assert_eq!(driver.jobs, 0);
    }

    /// A straggler's losing copy that has already left the pool when the other copy wins no
    /// longer counts against `concurrency`.
    #[test]
    fn a_losing_copy_already_gone_is_not_counted_as_in_the_pool() {
        let pool = WorkerPool::new(2);
        let gate = Arc::new(std::sync::Mutex::new(()));
        let (program, runs) = gated(&pool, &gate);
        let batch = program.batch([5]).stragglers(Duration::MAX, 1);
        let mut driver = Driver::new(batch);
        driver.start();
        driver.submit();
        until("the first copy's result", || match &driver.slots[0] {
            Slot::InFlight(flight) => flight.copies.get(0).is_some_and(|c| c.handle.is_finished()),
            _ => false,
        });
        // The second copy runs until the gate opens.
        let closed = gate.lock().unwrap();
        let copy = driver.spawn(0, 1, 5);
        if let Slot::InFlight(flight) = &mut driver.slots[0] {
            flight.copied = true;
            flight.copies.second = Some(Box::new(copy));
        }
        until("the second copy to start", || runs.load(SeqCst) == 2);
        // Its report is seen while its result is not in: it stays unresolved.
        driver.process(Event::Released {
            index: 0,
            copy: 1,
            input: None,
        });
        assert_eq!(driver.jobs, 2);
        // The first copy's result finishes the item and drops the second copy.
        assert_eq!(drain(&mut driver), [(0, Ok(5))]);
        assert_eq!(driver.jobs, 0, "the dropped copy had left the pool");
        drop(closed);
    }

    /// An item that never started gets its input back whichever comes first, its result or
    /// its job's report that it left the pool.
    #[test]
    fn an_unstarted_items_input_comes_back_after_its_result_too() {
        let pool = WorkerPool::new(1);
        let id = pool.asyncify(|x: u32| x);
        pool.shutdown();
        let mut driver = Driver::new(id.batch(0..2));
        driver.start();
        // Item 0 resolved (refused by the shut-down pool) before its ticket's report is seen.
        driver.submit();
        assert!(matches!(driver.slots[0], Slot::Finished { ran: false, .. }));
        let items = drain(&mut driver);
        assert_eq!(items.len(), 2);
        assert_eq!(driver.take_unstarted_inputs(), [(0, 0), (1, 1)]);
    }
}
