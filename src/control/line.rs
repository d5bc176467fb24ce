//! The lines calls wait in, at a limit or a limiter: what waits ([`Waiter`]), what it is let
//! out with ([`Grant`]), how a batch of waiters is let out ([`admit_all`]), and how the
//! entries of waiters that left are taken out ([`Leavers`], [`prune`]).
//!
//! A line holds each waiter as a `Weak`, which keeps the call's whole allocation (its input
//! inline) until the entry goes. A call that leaves without being let out (dropped, timed out,
//! aborted) says so, and once about as many have left as the line holds, the line is pruned:
//! so it holds at most about twice its live waiters (plus [`PRUNE_AFTER`]), whether or not a
//! slot or a token ever comes, and each prune, which walks the line, is paid for by the
//! waiters that left since the last.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Weak};

use super::limit::Slot;
use super::rate::Token;
use crate::guard;
use crate::pool::{hand_to_ringers, Registry, RingerTask};
use crate::sync::AtomicUsize;

/// Something waiting in a line (a limit's or a limiter's): a controlled call.
pub(crate) trait Waiter: Send + Sync {
    /// Its turn came: `grant` is what it waited for. Called with no lock held.
    fn admit(self: Arc<Self>, grant: Grant);
    /// True once it wants nothing any more (its caller left, or it ended): the line skips it.
    fn is_gone(&self) -> bool;
    /// The pool it runs on (for its timer, and to learn that it closed).
    fn registry(&self) -> &Arc<Registry>;
}

/// What a waiter is admitted with.
pub(crate) enum Grant {
    /// A slot of a concurrency limit, given back when dropped.
    Slot(Slot),
    /// A token of a rate limit (given back if dropped unspent).
    Token(Token),
    /// Its pool closed: it will not run.
    Closed,
}

/// Waiters let out of a line, each with what it waited for.
type Admissions = VecDeque<(Arc<dyn Waiter>, Grant)>;

thread_local! {
    /// Admissions out of lines this thread is handing out now, if it is (see [`admit_all`]).
    static ADMITTING: RefCell<Option<Admissions>> = const { RefCell::new(None) };
}

/// Hands each waiter its grant, outside every lock, through the guard. An admission may free a
/// slot that admits the next waiter, and so on down a line (at a pool's close, every call in a
/// limit's line): those are queued on this thread and handed out by the outermost call here, in
/// a loop, so that the stack does not grow with the line.
pub(crate) fn admit_all(mut admitted: Vec<(Arc<dyn Waiter>, Grant)>) {
    if admitted.is_empty() {
        return;
    }
    let mine = ADMITTING.try_with(|queue| match &mut *queue.borrow_mut() {
        Some(queue) => {
            queue.extend(admitted.drain(..));
            false
        }
        slot @ None => {
            *slot = Some(admitted.drain(..).collect());
            true
        }
    });
    match mine {
        Ok(false) => {}
        Ok(true) => {
            while let Some((waiter, grant)) =
                ADMITTING.with(|queue| queue.borrow_mut().as_mut().and_then(VecDeque::pop_front))
            {
                guard::quietly("a waiting call", || waiter.admit(grant));
            }
            ADMITTING.with(|queue| *queue.borrow_mut() = None);
        }
        // A thread-local destructor: no queue, hand out here.
        Err(_) => {
            for (waiter, grant) in admitted {
                guard::quietly("a waiting call", || waiter.admit(grant));
            }
        }
    }
}

/// Hands each waiter its grant as a task of its own for the ringers of a pool's timer, in
/// order, when an alarm lets a whole line go on a ringer (a limiter at the pool's close):
/// ending a call runs user code (its input's `Drop`, its waker) that may block, and the calls
/// behind one that blocks must not wait for it. Where the ringers take no task (off a ringer,
/// or once the timer's thread has left), each is handed out here, in turn.
pub(crate) fn admit_each_apart(admitted: Vec<(Arc<dyn Waiter>, Grant)>) {
    for (waiter, grant) in admitted {
        let task: RingerTask =
            Box::new(move || guard::quietly("a waiting call", || waiter.admit(grant)));
        if let Some(task) = hand_to_ringers(task) {
            task();
        }
    }
}

/// How many waiters must have left a line before it is pruned at all.
pub(crate) const PRUNE_AFTER: usize = 16;

/// The count of waiters that left a line without being let out, since its last prune (some of
/// them may have been taken out by the line's own round since: it only makes the next prune
/// come sooner).
#[derive(Default)]
pub(crate) struct Leavers(AtomicUsize);

impl Leavers {
    /// One more left. False if the line need not be looked at (too few have left).
    pub(crate) fn one_more(&self) -> bool {
        self.0.fetch_add(1, SeqCst) + 1 >= PRUNE_AFTER
    }

    /// Under the line's lock, with `len` entries in it: the count a prune now accounts for, or
    /// `None` if fewer than half the entries are of waiters that left.
    pub(crate) fn due(&self, len: usize) -> Option<usize> {
        let left = self.0.load(SeqCst);
        (left >= PRUNE_AFTER && left.saturating_mul(2) >= len).then_some(left)
    }

    /// After a prune that accounted for `seen` (from [`due`](Self::due), under the same lock):
    /// those who left meanwhile still count.
    pub(crate) fn pruned(&self, seen: usize) {
        self.0.fetch_sub(seen, SeqCst);
    }
}

/// Takes the entries of waiters that are gone out of `line`, in place, keeping the others in
/// order, and gives the room beyond four times what is left back to the allocator (as the
/// timer does after a burst). A dead `Weak` is dropped here (that frees memory and runs no user
/// code); the waiters it upgraded to look at are returned, to be dropped after the lock: one
/// may be a call's last owner by then, with user values in it.
pub(crate) fn prune(line: &mut VecDeque<Weak<dyn Waiter>>) -> Vec<Arc<dyn Waiter>> {
    let mut looked_at = Vec::new();
    line.retain(|entry| match entry.upgrade() {
        Some(waiter) => {
            let keep = !waiter.is_gone();
            looked_at.push(waiter);
            keep
        }
        None => false,
    });
    if line.capacity() > 4 * line.len() + 64 {
        line.shrink_to(2 * line.len() + 64);
    }
    looked_at
}
