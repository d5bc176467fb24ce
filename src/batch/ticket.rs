//! The jobs' side of a batch: the [`Ticket`] the driver submits for one copy of one item, and
//! the [`Shared`] state through which it reports. Every job posts exactly one [`Event`] saying
//! how it ended (after a `Started` one, when stragglers are on) to the inbox, and wakes the
//! driver; the driver drains the inbox when it next runs.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Instant;

use crate::error::JobError;
use crate::program::{AsyncProgram, Program};

/// What a job tells its batch. Every job sends exactly one `Ran` or `NotRun`.
pub(super) enum Event<I, O> {
    /// The job is about to run the program (sent only when stragglers are on).
    Started { index: usize, at: Instant },
    /// The program ran and returned, or panicked.
    Ran {
        index: usize,
        result: Result<O, JobError>,
    },
    /// The job was dropped without running the program (cancelled, refused, or the batch had
    /// stopped when it was taken); the input comes back.
    NotRun { index: usize, input: Option<I> },
}

/// Shared by the driver and every job of one batch.
pub(super) struct Shared<P, I>
where
    P: Program<I>,
{
    pub(super) program: AsyncProgram<P>,
    /// Set when the batch stops or is dropped. A job that reads it set does not run the program.
    pub(super) stopped: AtomicBool,
    /// Stragglers need to know when each item started.
    pub(super) track_starts: bool,
    pub(super) inbox: Mutex<Inbox<I, P::Output>>,
}

pub(super) struct Inbox<I, O> {
    pub(super) events: VecDeque<Event<I, O>>,
    /// The driver's, registered when it found no events; taken (so woken once) by the next one.
    pub(super) waker: Option<Waker>,
}

impl<P, I> Shared<P, I>
where
    P: Program<I>,
{
    pub(super) fn lock(&self) -> MutexGuard<'_, Inbox<I, P::Output>> {
        // Nothing in this crate panics while holding it; a poisoned inbox is still consistent.
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn post(&self, event: Event<I, P::Output>) {
        let waker = {
            let mut inbox = self.lock();
            inbox.events.push_back(event);
            inbox.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    pub(super) fn wake(&self) {
        let waker = self.lock().waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The closure a batch submits for one copy of one item. Run, it runs the program and reports
/// the result; dropped unrun, it reports `NotRun` with the input.
pub(super) struct Ticket<P, I>
where
    P: Program<I>,
{
    pub(super) shared: Arc<Shared<P, I>>,
    pub(super) index: usize,
    pub(super) input: Option<I>,
    pub(super) reported: bool,
}

impl<P, I> Ticket<P, I>
where
    P: Program<I>,
{
    pub(super) fn run(mut self) {
        let input = self.input.take().expect("a ticket runs at most once");
        if self.shared.track_starts {
            let at = Instant::now();
            self.shared.post(Event::Started {
                index: self.index,
                at,
            });
        }
        let program = self.shared.program.program();
        let result = crate::guard::call(|| program.run(input)).map_err(JobError::panicked);
        self.reported = true;
        let index = self.index;
        self.shared.post(Event::Ran { index, result });
    }
}

impl<P, I> Drop for Ticket<P, I>
where
    P: Program<I>,
{
    fn drop(&mut self) {
        if !self.reported {
            self.reported = true;
            self.shared.post(Event::NotRun {
                index: self.index,
                input: self.input.take(),
            });
        }
    }
}
