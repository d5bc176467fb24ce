//! The jobs' side of a batch: the [`Ticket`] a batch job carries, the [`ItemWaker`] that tells
//! the driver a job's handle may be ready, and the [`Inbox`] they report to.
//!
//! A batch job is an ordinary pool job: its result (the program's output, or `Panicked` from
//! the pool's one panic guard) reaches the driver through the job's [`JobHandle`](crate::JobHandle),
//! and the handle's waker is an `ItemWaker` that posts "this copy may be ready" to the inbox.
//! The ticket only adds what the handle cannot say: when the program starts (for stragglers),
//! and that the job is gone from the pool, with the input if it never ran.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::time::Instant;

use crate::guard;
use crate::program::Program;
use crate::sync::{lock, Mutex};

/// What the jobs of a batch tell its driver.
pub(super) enum Event<I> {
    /// A job of item `index` is about to run the program (sent only with stragglers).
    Started { index: usize, at: Instant },
    /// The handle of copy `copy` of item `index` may be ready: poll it.
    Woken { index: usize, copy: usize },
    /// Copy `copy` of item `index` has left the pool (it ran, or was dropped unrun and hands
    /// its input back). Sent exactly once per job.
    Released {
        index: usize,
        copy: usize,
        input: Option<I>,
    },
}

/// Shared by the driver and every job of one batch.
pub(super) struct Inbox<I> {
    /// Stragglers need to know when each item started.
    track_starts: bool,
    state: Mutex<InboxState<I>>,
}

struct InboxState<I> {
    events: VecDeque<Event<I>>,
    /// The driver's, registered when it found no events; taken (so woken once) by the next one.
    waker: Option<Waker>,
}

impl<I> Inbox<I> {
    pub(super) fn new(track_starts: bool) -> Self {
        Inbox {
            track_starts,
            state: Mutex::new(InboxState {
                events: VecDeque::new(),
                waker: None,
            }),
        }
    }

    fn post(&self, event: Event<I>) {
        let waker = {
            let mut state = lock(&self.state);
            state.events.push_back(event);
            state.waker.take()
        };
        if let Some(waker) = waker {
            guard::wake(waker);
        }
    }

    /// Moves every event posted so far to the back of `into`; if there was none, registers
    /// `waker` to be woken by the next one. True if events were moved.
    pub(super) fn drain_into(&self, into: &mut VecDeque<Event<I>>, waker: &Waker) -> bool {
        let mut state = lock(&self.state);
        if !state.events.is_empty() {
            into.append(&mut state.events);
            return true;
        }
        if state.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return false;
        }
        drop(state);
        // The consumer's waker: cloning it is user code, so not under the lock.
        let new = waker.clone();
        let mut state = lock(&self.state);
        let old = state.waker.replace(new);
        let moved = !state.events.is_empty();
        into.append(&mut state.events);
        drop(state);
        guard::drop("a waker", old);
        moved
    }

    /// Wakes the driver (a straggler deadline passed).
    pub(super) fn wake(&self) {
        let waker = lock(&self.state).waker.take();
        if let Some(waker) = waker {
            guard::wake(waker);
        }
    }
}

/// The waker a batch polls a job's handle with: waking it posts [`Event::Woken`].
pub(super) struct ItemWaker<I> {
    pub(super) inbox: Arc<Inbox<I>>,
    pub(super) index: usize,
    pub(super) copy: usize,
}

impl<I: Send + 'static> Wake for ItemWaker<I> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.inbox.post(Event::Woken {
            index: self.index,
            copy: self.copy,
        });
    }
}

/// What a batch job carries: the program, the input, and where to report. Run, it runs the
/// program and returns its output; dropped (after running, or unrun), it reports
/// [`Event::Released`], with the input if the program never took it.
pub(super) struct Ticket<P: ?Sized, I> {
    pub(super) program: Arc<P>,
    pub(super) inbox: Arc<Inbox<I>>,
    pub(super) index: usize,
    pub(super) copy: usize,
    pub(super) input: Option<I>,
}

impl<P: ?Sized, I> Ticket<P, I>
where
    P: Program<I>,
{
    /// The job's work. A panic in the program unwinds out of here to the pool's guard, which
    /// makes it the job's `Panicked` result; the ticket is dropped on the way and reports.
    pub(super) fn run(mut self) -> P::Output {
        let input = self.input.take().expect("a ticket runs at most once");
        if self.inbox.track_starts {
            self.inbox.post(Event::Started {
                index: self.index,
                at: Instant::now(),
            });
        }
        self.program.run(input)
    }
}

impl<P: ?Sized, I> Drop for Ticket<P, I> {
    fn drop(&mut self) {
        self.inbox.post(Event::Released {
            index: self.index,
            copy: self.copy,
            input: self.input.take(),
        });
    }
}
