//! The jobs' side of a batch: the [`Shared`] state every job of a batch reports to, the
//! [`Ticket`] a batch job carries, and the [`Lane`], the waker that names one job (its item
//! and copy) when its handle must be polled with one.
//!
//! A batch job is an ordinary pool job: its result (the program's output, or `Panicked` from
//! the pool's one panic guard) reaches the driver through the job's [`JobHandle`](crate::JobHandle).
//! The ticket says which handle to look at, and adds what the handle cannot say: when the
//! program starts (for stragglers), and that the job has left the pool, with the input if it
//! never ran.
//!
//! # One report per job
//!
//! Each job's ticket posts [`Event::Released`] exactly once: after the program returned (or,
//! dropped on the way, while it unwinds), or when the job is dropped unrun. The driver then
//! polls that copy's handle without a waker. A job that never ran was resolved before its work
//! was dropped, so its handle is ready. A job that ran stores its result just after its ticket
//! posted: if the driver looks in between, it polls again with the copy's [`Lane`] as the
//! waker, and the pool's wake-up posts [`Event::Woken`] (so does a full bounded queue that
//! makes room for a job waiting in its handle). So a job that runs costs one post (one lock
//! of the inbox) and, almost always, no waker to allocate, register or wake.
//!
//! # Cache lines
//!
//! A job that ran hands its reference to the shared state back with its output, and the
//! driver, which took it, lets it go: the shared state's counts change on the driver's thread
//! only (a job dropped unrun lets go of its own). Its inbox, which every job locks, sits on
//! cache lines of its own, away from those counts and from what the workers only read.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::time::Instant;

use crate::control::Carried;
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
    /// its input back): its handle has its result, or is about to. Sent exactly once per job.
    Released {
        index: usize,
        copy: usize,
        input: Option<I>,
    },
}

/// Shared by the driver, the jobs of one batch (through their tickets) and their lanes.
pub(super) struct Shared<P: ?Sized, I> {
    inbox: Inbox<I>,
    /// Stragglers need to know when each item started.
    track_starts: bool,
    program: Arc<P>,
}

/// The events posted and not drained yet, and the driver's waker. Aligned so that it shares
/// no cache line with the `Arc`'s counts or the fields the workers only read.
#[repr(align(128))]
struct Inbox<I> {
    state: Mutex<InboxState<I>>,
}

struct InboxState<I> {
    events: VecDeque<Event<I>>,
    /// The driver's, registered when it found no events; taken (so woken once) by the next one.
    waker: Option<Waker>,
}

/// Events left when the last of the driver, the jobs and the lanes lets go (a batch dropped
/// midway, whose jobs report after it): their inputs, and the waker, are user values, each
/// dropped through the guard on its own.
impl<I> Drop for InboxState<I> {
    fn drop(&mut self) {
        for event in std::mem::take(&mut self.events) {
            if let Event::Released {
                input: Some(input), ..
            } = event
            {
                guard::drop("an input", input);
            }
        }
        if let Some(waker) = self.waker.take() {
            guard::drop("a waker", waker);
        }
    }
}

impl<P: ?Sized, I> Shared<P, I> {
    pub(super) fn new(program: Arc<P>, track_starts: bool) -> Self {
        Shared {
            inbox: Inbox {
                state: Mutex::new(InboxState {
                    events: VecDeque::new(),
                    waker: None,
                }),
            },
            track_starts,
            program,
        }
    }

    fn post(&self, event: Event<I>) {
        let waker = {
            let mut state = lock(&self.inbox.state);
            state.events.push_back(event);
            state.waker.take()
        };
        if let Some(waker) = waker {
            guard::wake(waker);
        }
    }

    /// Moves every event posted so far to the back of `into` (an empty `into` trades buffers
    /// with the inbox: the lock is held for no copy); if there was none, registers `waker` to
    /// be woken by the next one. True if events were moved.
    pub(super) fn drain_into(&self, into: &mut VecDeque<Event<I>>, waker: &Waker) -> bool {
        let mut state = lock(&self.inbox.state);
        if !state.events.is_empty() {
            take_events(&mut state.events, into);
            return true;
        }
        if state.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return false;
        }
        drop(state);
        // The consumer's waker: cloning it is user code, so not under the lock.
        let new = waker.clone();
        let mut state = lock(&self.inbox.state);
        let old = state.waker.replace(new);
        let moved = !state.events.is_empty();
        take_events(&mut state.events, into);
        drop(state);
        guard::drop("a waker", old);
        moved
    }

    /// Wakes the driver (a straggler deadline passed).
    pub(super) fn wake(&self) {
        let waker = lock(&self.inbox.state).waker.take();
        if let Some(waker) = waker {
            guard::wake(waker);
        }
    }
}

/// Moves the events of `from` to the back of `into`, leaving `from` empty.
fn take_events<I>(from: &mut VecDeque<Event<I>>, into: &mut VecDeque<Event<I>>) {
    if into.is_empty() {
        std::mem::swap(from, into);
    } else {
        into.append(from);
    }
}

/// The waker of one job's handle, made the first time the driver has to wait on that handle:
/// waking it posts [`Event::Woken`] for its item and copy, so that each wake-up names its job.
pub(super) struct Lane<P: ?Sized, I> {
    shared: Arc<Shared<P, I>>,
    index: usize,
    copy: usize,
}

impl<P: ?Sized, I> Lane<P, I> {
    pub(super) fn new(shared: Arc<Shared<P, I>>, index: usize, copy: usize) -> Self {
        Lane {
            shared,
            index,
            copy,
        }
    }
}

impl<P: ?Sized, I> Wake for Lane<P, I>
where
    P: Program<I>,
    I: Send + 'static,
{
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.post(Event::Woken {
            index: self.index,
            copy: self.copy,
        });
    }
}

/// What a batch job carries: where to report, which item and copy it is, and the input. Run,
/// it runs the program, reports [`Event::Released`] and returns the output with its reference
/// to the shared state; dropped without that (unrun, or while the program unwinds), it
/// reports [`Event::Released`], with the input if the program never took it.
pub(super) struct Ticket<P: ?Sized, I> {
    /// `None` once handed back with the output.
    pub(super) shared: Option<Arc<Shared<P, I>>>,
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
    pub(super) fn run(mut self) -> Carried<P::Output>
    where
        I: Send + 'static,
    {
        let input = self.input.take().expect("a ticket runs at most once");
        let shared = self.shared.as_ref().expect("a ticket runs at most once");
        if shared.track_starts {
            shared.post(Event::Started {
                index: self.index,
                at: Instant::now(),
            });
        }
        let output = shared.program.run(input);
        let shared = self.shared.take().expect("a ticket runs at most once");
        shared.post(Event::Released {
            index: self.index,
            copy: self.copy,
            input: None,
        });
        Carried {
            out: output,
            with: shared,
        }
    }
}

impl<P: ?Sized, I> Drop for Ticket<P, I> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.post(Event::Released {
                index: self.index,
                copy: self.copy,
                input: self.input.take(),
            });
        }
    }
}
