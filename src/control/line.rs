//! The lines calls wait in, at a limit or a limiter: what waits ([`Waiter`]), what it is let
//! out with ([`Grant`]), and how a batch of waiters is let out ([`admit_all`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;

use super::limit::Slot;
use crate::guard;
use crate::pool::Registry;

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
    /// A token of a rate limit, spent.
    Token,
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
