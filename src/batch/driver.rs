//! The batch's state machine, run by whoever consumes the batch: it submits items within the
//! concurrency cap, collects what the jobs report, keeps the counts and the error budget, stops
//! the batch, resubmits stragglers, and between steps sleeps the way its consumer does (parking
//! the thread, or leaving a waker and, for a deadline, a timer thread).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use super::builder::{Batch, Options, Stragglers};
use super::result::Progress;
use super::ticket::{Event, Inbox, Shared, Ticket};
use crate::capture::Captured;
use crate::error::JobError;
use crate::job::{thread_waker, JobHandle};
use crate::pool::on_thread_of;
use crate::program::Program;

pub(super) type Item<O> = (usize, Result<O, JobError>);

/// One item the pool has (or had) jobs for.
struct Flight<I> {
    /// The original's handle and the straggler copy's. `None` once dropped (to cancel) or
    /// taken (to help, in a nested wait).
    handles: [Option<JobHandle<()>>; 2],
    /// Jobs of this item that have not reported yet.
    live: u8,
    /// When the first copy started (only tracked with stragglers on).
    started: Option<Instant>,
    copied: bool,
    /// A clone of the input, for failed inputs or a straggler copy.
    kept: Option<I>,
}

enum Advance<O> {
    Item(Item<O>),
    Done,
    /// Nothing to hand out; the waker is registered. Wake up by the deadline, if any, to
    /// check for stragglers.
    Sleep(Option<Instant>),
}

/// The batch's state machine, run by whoever consumes the batch.
pub(super) struct Driver<P, I>
where
    P: Program<I>,
{
    shared: Arc<Shared<P, I>>,
    captured: Captured,
    opts: Options<I, P::Output>,
    /// Inputs not submitted yet; the next one has index `next_index`.
    pending: std::vec::IntoIter<I>,
    next_index: usize,
    /// Indexed by item; `Some` from submission until the item's result is known.
    flights: Vec<Option<Flight<I>>>,
    /// Items below this index are finished (a cursor for scans).
    scan_from: usize,
    total: usize,
    /// Jobs of this batch submitted and not reported yet (the `concurrency` gauge).
    jobs: usize,
    pub(super) done: usize,
    pub(super) failed: usize,
    pub(super) not_started: usize,
    pub(super) stopped: bool,
    /// Results known and not handed out yet, in completion order.
    ready: VecDeque<Item<P::Output>>,
    /// An empty event buffer, swapped with the inbox's so that draining allocates nothing.
    spare: VecDeque<Event<I, P::Output>>,
    failed_inputs: Vec<(usize, I)>,
    unstarted_inputs: Vec<(usize, I)>,
    started: Option<Instant>,
    last_reported: (usize, usize, usize),
    /// A job whose handle waits for room in the pool's full bounded queue: `(index, copy)`.
    waiting_for_room: Option<(usize, usize)>,
    /// The deadline of the last timer thread started (async straggler deadlines).
    timer: Option<Instant>,
    /// The timer threads started, to unpark when the driver goes, and the token whose end
    /// tells them to leave without waiting out their deadline.
    timers: Vec<thread::JoinHandle<()>>,
    alive: Option<Arc<()>>,
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
}

impl<P, I> Driver<P, I>
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

impl<P, I> Driver<P, I>
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
        Driver {
            shared: Arc::new(Shared {
                program,
                stopped: AtomicBool::new(false),
                track_starts: opts.stragglers.is_some(),
                inbox: Mutex::new(Inbox {
                    events: VecDeque::new(),
                    waker: None,
                }),
            }),
            captured,
            opts,
            pending: inputs.into_iter(),
            next_index: 0,
            flights: Vec::new(),
            scan_from: 0,
            total,
            jobs: 0,
            done: 0,
            failed: 0,
            not_started: 0,
            stopped: false,
            ready: VecDeque::new(),
            spare: VecDeque::new(),
            failed_inputs: Vec::new(),
            unstarted_inputs: Vec::new(),
            started: None,
            last_reported: (0, 0, 0),
            waiting_for_room: None,
            timer: None,
            timers: Vec::new(),
            alive: Some(Arc::new(())),
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

    fn start(&mut self) {
        if self.started.is_some() {
            return;
        }
        self.started = Some(Instant::now());
        self.flights = (0..self.total).map(|_| None).collect();
        let program = &self.shared.program;
        if let Some(Ok(workers)) = self.opts.workers {
            // Sized by `async_max_workers` as in force at `batch()`, like one `call` there.
            if program.pool().threads() != workers {
                let _ = program.pool().set_threads(workers);
            }
        }
        #[cfg(feature = "progress")]
        if self.opts.progress_bar {
            self.bar = Some(new_bar(self.total));
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
                self.close_bar();
                return Advance::Done;
            }
            self.submit(waker);
            let deadline = self.resubmit_stragglers(waker);
            let mut events = std::mem::take(&mut self.spare);
            {
                let mut inbox = self.shared.lock();
                if inbox.events.is_empty() {
                    match &inbox.waker {
                        Some(registered) if registered.will_wake(waker) => {}
                        _ => inbox.waker = Some(waker.clone()),
                    }
                    drop(inbox);
                    self.spare = events;
                    return Advance::Sleep(deadline);
                }
                std::mem::swap(&mut inbox.events, &mut events);
            }
            for event in events.drain(..) {
                self.process(event);
            }
            self.spare = events;
            self.report();
        }
    }

    /// Submits items while the batch may have more jobs in the pool.
    fn submit(&mut self, waker: &Waker) {
        // First, always: a job held back by a full queue is queued only when its handle is
        // polled, whether or not more items are to come.
        if !self.queue_has_room(waker)
            || self.stopped
            || self.jobs >= self.opts.concurrency
            || self.pending.len() == 0
        {
            return;
        }
        // Every job captures the context in force at `spawn`: put the batch's in force once
        // for the whole round.
        {
            while self.jobs < self.opts.concurrency {
                let Some(input) = self.pending.next() else {
                    break;
                };
                let index = self.next_index;
                self.next_index += 1;
                let kept = self.opts.clone_input.map(|clone| clone(&input));
                let handle = self.spawn(index, input);
                let waiting = handle.is_waiting_for_room();
                self.flights[index] = Some(Flight {
                    handles: [Some(handle), None],
                    live: 1,
                    started: None,
                    copied: false,
                    kept,
                });
                if waiting {
                    self.waiting_for_room = Some((index, 0));
                    if !self.queue_has_room(waker) {
                        break;
                    }
                }
            }
        }
    }

    fn spawn(&mut self, index: usize, input: I) -> JobHandle<()> {
        let ticket = Ticket {
            shared: Arc::clone(&self.shared),
            index,
            input: Some(input),
            reported: false,
        };
        self.jobs += 1;
        self.shared
            .program
            .pool()
            .registry()
            .submit(move || ticket.run(), self.captured.clone())
    }

    /// False while one of this batch's jobs waits for room in the pool's full bounded queue
    /// (its handle queues it when polled, and `waker` is woken when there is room).
    fn queue_has_room(&mut self, waker: &Waker) -> bool {
        let Some((index, copy)) = self.waiting_for_room else {
            return true;
        };
        let slot = self.flights[index]
            .as_mut()
            .and_then(|flight| flight.handles[copy].as_mut());
        if let Some(handle) = slot {
            if handle.is_waiting_for_room() {
                let mut cx = Context::from_waker(waker);
                if Pin::new(&mut *handle).poll(&mut cx).is_ready() {
                    // Resolved without running (the pool shut down): its ticket reported.
                    if let Some(flight) = self.flights[index].as_mut() {
                        flight.handles[copy] = None;
                    }
                } else if handle.is_waiting_for_room() {
                    return false;
                }
            }
        }
        self.waiting_for_room = None;
        true
    }

    fn process(&mut self, event: Event<I, P::Output>) {
        match event {
            Event::Started { index, at } => {
                if let Some(flight) = self.flights[index].as_mut() {
                    flight.started.get_or_insert(at);
                }
            }
            Event::Ran { index, result } => {
                self.jobs -= 1;
                if self.flights[index].is_some() {
                    self.finish(index, result, true, None);
                }
            }
            Event::NotRun { index, input } => {
                self.jobs -= 1;
                let Some(flight) = self.flights[index].as_mut() else {
                    return; // a straggler copy of an item already finished
                };
                flight.live -= 1;
                if flight.live == 0 {
                    let error = if self.stopped {
                        JobError::cancelled()
                    } else {
                        JobError::shut_down()
                    };
                    self.finish(index, Err(error), false, input);
                }
            }
        }
    }

    /// Records item `index`'s result (`ran`: the program ran; otherwise it never started).
    fn finish(
        &mut self,
        index: usize,
        result: Result<P::Output, JobError>,
        ran: bool,
        returned: Option<I>,
    ) {
        let flight = self.flights[index]
            .take()
            .expect("only items in flight finish");
        // A straggler copy still queued never runs; one still running sees `is_cancelled`.
        drop(flight.handles);
        if ran {
            let failed = match &result {
                Err(_) => true,
                Ok(output) => self.opts.fail_if.as_ref().is_some_and(|f| f(output)),
            };
            if failed {
                self.failed += 1;
                if let (true, Some(input)) = (self.opts.keep_failed_inputs, flight.kept) {
                    self.failed_inputs.push((index, input));
                }
            } else {
                self.done += 1;
            }
        } else {
            self.not_started += 1;
            if let Some(input) = returned.or(flight.kept) {
                self.unstarted_inputs.push((index, input));
            }
        }
        self.ready.push_back((index, result));
        if self.failed > self.opts.max_errors {
            self.stop();
        }
    }

    /// The error budget is spent: nothing more starts. Items not submitted finish now as
    /// cancelled; submitted ones still queued are revoked (their tickets report `NotRun`), and
    /// those running are flagged as cancelled by dropping their handles (they report when done).
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.shared.stopped.store(true, Relaxed);
        self.waiting_for_room = None;
        for input in std::mem::replace(&mut self.pending, Vec::new().into_iter()) {
            let index = self.next_index;
            self.next_index += 1;
            self.not_started += 1;
            self.unstarted_inputs.push((index, input));
            self.ready.push_back((index, Err(JobError::cancelled())));
        }
        for flight in self.flights.iter_mut().flatten() {
            for handle in flight.handles.iter_mut().filter_map(Option::take) {
                // Still queued: resolved now, and its ticket is dropped unrun. Running: dropping
                // the handle makes `is_cancelled()` true in the job.
                handle.revoke(JobError::cancelled());
            }
        }
    }

    /// Submits a second copy of each item that has run past the straggler timeout, once all
    /// items are submitted and few are left. Returns the next deadline to check again at.
    fn resubmit_stragglers(&mut self, waker: &Waker) -> Option<Instant> {
        let Stragglers { timeout, limit } = self.opts.stragglers?;
        let clone = self.opts.clone_input?;
        if self.stopped || self.pending.len() > 0 || self.total - self.finished() > limit {
            return None;
        }
        while self.scan_from < self.total && self.flights[self.scan_from].is_none() {
            self.scan_from += 1;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for index in self.scan_from..self.total {
            let Some(flight) = self.flights[index].as_mut() else {
                continue;
            };
            // Not started yet: its `Started` report will wake the driver.
            let Some(started) = flight.started.filter(|_| !flight.copied) else {
                continue;
            };
            let due = started + timeout;
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            if self.jobs >= self.opts.concurrency || self.waiting_for_room.is_some() {
                continue; // a job finishing, or room in the queue, wakes the driver
            }
            let input = clone(flight.kept.as_ref().expect("stragglers keep every input"));
            flight.copied = true;
            flight.live += 1;
            let handle = self.spawn(index, input);
            let waiting = handle.is_waiting_for_room();
            if let Some(flight) = self.flights[index].as_mut() {
                flight.handles[1] = Some(handle);
            }
            if waiting {
                self.waiting_for_room = Some((index, 1));
                self.queue_has_room(waker);
            }
        }
        next
    }

    fn report(&mut self) {
        let counts = (self.done, self.failed, self.not_started);
        if counts == self.last_reported {
            return;
        }
        self.last_reported = counts;
        let progress = self.progress();
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.set_position(progress.finished() as u64);
            match (progress.failed, progress.not_started) {
                (0, 0) => {}
                (failed, 0) => bar.set_message(format!("{failed} failed")),
                (failed, skipped) => {
                    bar.set_message(format!("{failed} failed, {skipped} not started"))
                }
            }
        }
        if let Some(callback) = self.opts.on_progress.as_mut() {
            callback(progress);
        }
    }

    fn close_bar(&mut self) {
        #[cfg(feature = "progress")]
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }

    /// The blocking path: sleeps on a thread waker, or, inside a pool job, waits on one of
    /// the batch's handles so that the worker runs queued jobs meanwhile.
    pub(super) fn next_blocking(&mut self) -> Option<Item<P::Output>> {
        loop {
            let waker = thread_waker();
            match self.advance(&waker) {
                Advance::Item(item) => return Some(item),
                Advance::Done => return None,
                Advance::Sleep(deadline) => {
                    if on_thread_of(self.shared.program.pool().registry().id) {
                        if let Some(handle) = self.take_handle() {
                            let _ = handle.wait();
                            continue;
                        }
                    }
                    match deadline {
                        None => thread::park(),
                        Some(deadline) => {
                            let now = Instant::now();
                            if deadline > now {
                                thread::park_timeout(deadline - now);
                            }
                        }
                    }
                }
            }
        }
    }

    /// A handle of a job in flight, the earliest submitted, for a nested wait to help with.
    fn take_handle(&mut self) -> Option<JobHandle<()>> {
        while self.scan_from < self.next_index && self.flights[self.scan_from].is_none() {
            self.scan_from += 1;
        }
        let end = self.next_index;
        self.flights[self.scan_from..end]
            .iter_mut()
            .flatten()
            .find_map(|flight| flight.handles.iter_mut().find_map(Option::take))
    }

    /// The async path: the timer thread stands in for `park_timeout`.
    pub(super) fn poll_next_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item<P::Output>>> {
        match self.advance(cx.waker()) {
            Advance::Item(item) => Poll::Ready(Some(item)),
            Advance::Done => Poll::Ready(None),
            Advance::Sleep(deadline) => {
                if let Some(deadline) = deadline {
                    self.arm_timer(deadline);
                }
                Poll::Pending
            }
        }
    }

    /// Makes sure the driver is woken by `deadline`: starts a thread that sleeps until then
    /// and wakes whatever waker is registered, unless one already pending fires earlier. The
    /// thread leaves early when the driver is dropped.
    fn arm_timer(&mut self, deadline: Instant) {
        let now = Instant::now();
        if matches!(self.timer, Some(t) if t > now && t <= deadline) {
            return;
        }
        let Some(alive) = self.alive.as_ref().map(Arc::downgrade) else {
            return;
        };
        let shared = Arc::downgrade(&self.shared);
        let spawned = thread::Builder::new()
            .name("asyncify-batch-timer".to_owned())
            .spawn(move || loop {
                if alive.strong_count() == 0 {
                    return;
                }
                let now = Instant::now();
                if now >= deadline {
                    if let Some(shared) = shared.upgrade() {
                        shared.wake();
                    }
                    return;
                }
                thread::park_timeout(deadline - now);
            });
        match spawned {
            Ok(timer) => {
                self.timers.retain(|t| !t.is_finished());
                self.timers.push(timer);
                self.timer = Some(deadline);
            }
            Err(e) => tracing::warn!(
                "asyncify-pool: no timer thread for a straggler deadline ({e}); \
                 it is checked when an item finishes"
            ),
        }
    }
}

impl<P, I> Drop for Driver<P, I>
where
    P: Program<I>,
{
    fn drop(&mut self) {
        // Before the handles go (with the fields, after this): a job the worker has already
        // taken then skips the program.
        self.shared.stopped.store(true, Relaxed);
        self.alive = None;
        for timer in &self.timers {
            timer.thread().unpark();
        }
    }
}

#[cfg(feature = "progress")]
fn new_bar(total: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    let template = "{elapsed_precise} [{wide_bar}] {pos}/{len} {rate} ETA {eta} {msg}";
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        let rate = |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
            let _ = write!(out, "{:.0} items/s", state.per_sec());
        };
        bar.set_style(style.with_key("rate", rate).progress_chars("=> "));
    }
    bar
}
